"""FHIR de-identification by rules (medflow.deid.fhir): the synthetic hospital's records lose
names, MRNs, addresses, free text and original ids; patients become their DICOM pseudonyms and
every reference follows; dates move by the patient's shift at their own precision; the output
still validates as R4; rules files are checked with clear errors."""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from medflow.core.errors import InvalidInput
from medflow.deid.fhir import (
    DAR_URL,
    FHIR_PATIENT_SYSTEM,
    FhirDeidentifier,
    FhirRuleParameters,
    FhirRules,
    deidentify_ndjson_tree,
    load_rules,
)
from medflow.deid.keys import DeidKeys
from medflow.fhir.identifiers import ACSN, DICOM_UID_SYSTEM, MRN_SYSTEM
from medflow.fhir.validation import validate
from medflow.synthetic.clinical import patient_bundle
from medflow.synthetic.plan import PatientPlan, plan_hospital

KEY = b"fhir-deid-test-key-0123456789"
STUDY_UID = "1.2.826.0.1.3680043.8.498.1"
SERIES_UID = "1.2.826.0.1.3680043.8.498.1.1"
SOP_UID = "1.2.826.0.1.3680043.8.498.1.1.1"


@pytest.fixture(scope="module")
def plans() -> list[PatientPlan]:
    found = plan_hospital(7, 12)
    with_conclusion = [p for p in found if p.studies and p.onset is not None]
    return with_conclusion[:3]


@pytest.fixture(scope="module")
def keys() -> DeidKeys:
    return DeidKeys(KEY)


def _deid(keys: DeidKeys, rules: FhirRules | None = None, **kwargs: Any) -> FhirDeidentifier:
    return FhirDeidentifier(rules or load_rules(), keys, **kwargs)


def _stored(plan: PatientPlan) -> list[dict[str, Any]]:
    """The plan's bundle as a FHIR store holds it: ids, relative references, versions."""
    bundle = patient_bundle(plan)
    ids = {}
    for n, entry in enumerate(bundle["entry"]):
        rtype = entry["resource"]["resourceType"]
        ids[entry["fullUrl"]] = f"{rtype}/{plan.mrn.lower()}-{n}"
    text = json.dumps([e["resource"] for e in bundle["entry"]])
    for full_url, ref in ids.items():
        text = text.replace(full_url, ref)
    resources: list[dict[str, Any]] = json.loads(text)
    for resource, ref in zip(resources, ids.values(), strict=True):
        resource["id"] = ref.split("/")[1]
        resource["meta"] = {"versionId": "3", "lastUpdated": "2026-01-02T03:04:05Z"}
    return resources


def _imaging_study(patient_ref: str) -> dict[str, Any]:
    """An ImagingStudy as the sync writes one (R4 imagingstudy.html, urn:dicom:uid)."""
    return {
        "resourceType": "ImagingStudy", "id": "study-1", "status": "available",
        "identifier": [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{STUDY_UID}"},
                       {"type": {"coding": [{"system": ACSN[0], "code": ACSN[1]}]},
                        "value": "ACC-123"}],
        "subject": {"reference": patient_ref, "display": "DOE^JANE"},
        "started": "2024-03-05T10:20:30.123+01:00", "description": "CT CHEST JANE DOE",
        "numberOfSeries": 1, "numberOfInstances": 1,
        "series": [{"uid": SERIES_UID, "modality": {"system": "http://dicom.nema.org/resources/"
                    "ontology/DCM", "code": "CT"}, "description": "AX 5mm",
                    "instance": [{"uid": SOP_UID, "sopClass": {
                        "system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2.840.10008.5.1.4.1.1.2"},
                        "title": "image of Jane"}]}],
    }  # fmt: skip


def _all_strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _all_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _all_strings(v)]
    return [value] if isinstance(value, str) else []


def test_default_rules_load_and_document_themselves() -> None:
    rules = load_rules()
    assert rules.fhir_version == "R4"
    methods = {r.method for r in rules.rules}
    assert {"keep", "redact", "dateshift", "pseudonym", "generalize"} <= methods


def test_no_phi_left_in_a_deidentified_bundle(keys: DeidKeys, plans: list[PatientPlan]) -> None:
    deid = _deid(keys)
    bundles = [patient_bundle(p) for p in plans]
    assert deid.prepare(bundles) == len(plans)
    for plan, bundle in zip(plans, bundles, strict=True):
        out = deid.deidentify(bundle)
        assert out is not None
        text = json.dumps(out)
        secrets = [plan.mrn, plan.family, plan.given, plan.city, plan.birth_date.isoformat()]
        secrets += [e["fullUrl"] for e in bundle["entry"]]
        secrets += [r["conclusion"] for r in _resources(bundle, "DiagnosticReport")]
        for secret in secrets:
            assert secret not in text
        for study in plan.studies:
            assert study.accession not in text
        assert validate(out) == []
        for resource in _resources(out):
            assert validate(resource) == []
            assert "text" not in resource and "note" not in resource
            assert {"code": "PSEUDED"}.items() <= resource["meta"]["security"][0].items()


def _resources(bundle: dict[str, Any], rtype: str | None = None) -> list[dict[str, Any]]:
    found = [e["resource"] for e in bundle["entry"]]
    return [r for r in found if rtype is None or r["resourceType"] == rtype]


def test_bundle_references_follow_the_rewritten_full_urls(
    keys: DeidKeys, plans: list[PatientPlan]
) -> None:
    deid = _deid(keys)
    bundle = patient_bundle(plans[0])
    deid.prepare([bundle])
    out = deid.deidentify(bundle)
    assert out is not None
    full_urls = {e["fullUrl"] for e in out["entry"]}
    assert len(full_urls) == len(bundle["entry"])
    references = [s for s in _all_strings(out["entry"]) if s.startswith("urn:uuid:")]
    assert set(references) - full_urls == set()
    patient_entry = out["entry"][0]
    patient = patient_entry["resource"]
    pseudonym = keys.patient_pseudonym(MRN_SYSTEM, plans[0].mrn)
    assert patient["id"] == pseudonym
    assert patient["identifier"] == [{"system": MRN_SYSTEM, "value": pseudonym}]
    subjects = {r["subject"]["reference"] for r in _resources(out)[1:] if "subject" in r}
    assert subjects == {patient_entry["fullUrl"]}
    assert patient_entry["request"]["ifNoneExist"] == f"identifier={MRN_SYSTEM}|{pseudonym}"
    for entry in out["entry"][1:]:  # conditional creates by pseudonymized identifiers
        system, value = entry["request"]["ifNoneExist"].removeprefix("identifier=").split("|")
        assert {"system": system, "value": value} in entry["resource"]["identifier"]


def test_stored_resources_point_at_the_pseudonymous_patient(
    keys: DeidKeys, plans: list[PatientPlan]
) -> None:
    plan = plans[0]
    stored = _stored(plan)
    deid = _deid(keys)
    deid.prepare(stored)
    out = [deid.deidentify(r) for r in stored]
    pseudonym = keys.patient_pseudonym(MRN_SYSTEM, plan.mrn)
    assert out[0] is not None and out[0]["id"] == pseudonym
    original_ids = {r["id"] for r in stored}
    text = json.dumps(out)
    for original in original_ids:
        assert original not in text
    for resource in out[1:]:
        assert resource is not None
        assert resource["id"] == keys.resource_id(resource["resourceType"], _orig(stored, resource))
        if "subject" in resource:
            assert resource["subject"] == {"reference": f"Patient/{pseudonym}"}
        assert "versionId" not in resource["meta"] and "lastUpdated" not in resource["meta"]
        assert validate(resource) == []
    encounters = {r["id"] for r in out if r and r["resourceType"] == "Encounter"}
    for resource in out:
        ref = (resource or {}).get("encounter", {}).get("reference")
        if ref:
            assert ref.removeprefix("Encounter/") in encounters


def _orig(stored: list[dict[str, Any]], resource: dict[str, Any]) -> str:
    """The original id of a de-identified resource (same position in the record)."""
    for original in stored:
        rtype = original["resourceType"]
        new_id = DeidKeys(KEY).resource_id(rtype, original["id"])
        if rtype == resource["resourceType"] and new_id == resource["id"]:
            return str(original["id"])
    raise AssertionError("no original")


def _day(value: str) -> date:
    return date.fromisoformat(value[:10])


def test_dates_move_by_the_patients_shift(keys: DeidKeys, plans: list[PatientPlan]) -> None:
    plan = plans[0]
    stored = _stored(plan)
    deid = _deid(keys)
    deid.prepare(stored)
    shift = keys.date_shift(MRN_SYSTEM, plan.mrn)
    pairs = []
    for original in stored:
        new = deid.deidentify(original)
        assert new is not None
        for name in ("onsetDateTime", "performedDateTime", "effectiveDateTime", "issued",
                     "authoredOn", "recordedDate"):  # fmt: skip
            if name in original:
                pairs.append((original[name], new[name]))
        if "period" in original:
            pairs.append((original["period"]["start"], new["period"]["start"]))
    assert len(pairs) > 10
    for old, new in pairs:
        assert _day(new) - _day(old) == shift
        assert old[10:] == new[10:]  # the time and zone of a dateTime stay
    conditions = [r for r in stored if r["resourceType"] == "Condition"]
    procedures = [r for r in stored if r["resourceType"] == "Procedure"]
    if conditions and procedures:  # the interval between diagnosis and treatment is kept
        before = _day(procedures[0]["performedDateTime"]) - _day(conditions[0]["onsetDateTime"])
        c, p = deid.deidentify(conditions[0]), deid.deidentify(procedures[0])
        assert c and p
        assert _day(p["performedDateTime"]) - _day(c["onsetDateTime"]) == before


def test_precision_time_and_zone_are_kept(keys: DeidKeys) -> None:
    deid = _deid(keys)
    shift = keys.date_shift(FHIR_PATIENT_SYSTEM, "p1")
    values = {
        "2020": r"\d{4}",
        "2020-05": r"\d{4}-\d{2}",
        "2020-05-05": r"\d{4}-\d{2}-\d{2}",
        "2020-05-05T10:11:12.123+02:00": r"\d{4}-\d{2}-\d{2}T10:11:12\.123\+02:00",
    }
    obs: dict[str, Any] = {}
    out: dict[str, Any] | None = None
    for value, pattern in values.items():
        obs = {"resourceType": "Observation", "id": "o", "status": "final",
               "code": {"text": "x"}, "subject": {"reference": "Patient/p1"},
               "effectiveDateTime": value}  # fmt: skip
        out = deid.deidentify(obs)
        assert out is not None and re.fullmatch(pattern, out["effectiveDateTime"])
    assert out is not None
    month = date(2020, 5, 15) + shift  # a month moves by its middle day, a year by its middle
    assert _deid(keys).deidentify({**obs, "effectiveDateTime": "2020-05"}) == {
        **out, "effectiveDateTime": f"{month.year:04d}-{month.month:02d}"}  # fmt: skip
    year = (date(2020, 7, 2) + shift).year
    assert _deid(keys).deidentify({**obs, "effectiveDateTime": "2020"}) == {
        **out, "effectiveDateTime": str(year)}  # fmt: skip
    out = deid.deidentify({**obs, "effectiveDateTime": "2020-05-05T10:11:12Z"})
    assert out is not None
    assert out["effectiveDateTime"] == (date(2020, 5, 5) + shift).isoformat() + "T10:11:12Z"


def test_ages_over_89_are_grouped(keys: DeidKeys) -> None:
    defaults = load_rules()
    rules = FhirRules(
        fhirPathRules=defaults.rules,
        parameters=FhirRuleParameters(ageReferenceDate=date(2026, 6, 1)),
    )
    deid = _deid(keys, rules)
    old = {"resourceType": "Patient", "id": "old", "birthDate": "1931-02-03",
           "identifier": [{"system": MRN_SYSTEM, "value": "OLD1"}]}  # fmt: skip
    out = deid.deidentify(old)
    assert out is not None
    shifted_today = date(2026, 6, 1) + keys.date_shift(MRN_SYSTEM, "OLD1")
    assert out["birthDate"] == str(shifted_today.year - 90)
    young = {**old, "birthDate": "1990-02-03"}
    out = deid.deidentify(young)
    assert out is not None
    assert _day(out["birthDate"]) == date(1990, 2, 3) + keys.date_shift(MRN_SYSTEM, "OLD1")
    died_young = {**old, "birthDate": "1900-02-03", "deceasedDateTime": "1950-01-01"}
    out = deid.deidentify(died_young)
    assert out is not None and len(out["birthDate"]) == 10  # age 49 at death: not grouped
    assert validate(out) == []


def test_imaging_study_carries_the_dicom_pseudonyms(keys: DeidKeys) -> None:
    patient = {"resourceType": "Patient", "id": "pat-9",
               "identifier": [{"system": MRN_SYSTEM, "value": "MRN-9"},
                              {"system": "urn:ssn", "value": "123-45-6789"}],
               "name": [{"family": "Doe", "given": ["Jane"]}],
               "telecom": [{"system": "phone", "value": "555-0100"}]}  # fmt: skip
    study = _imaging_study("Patient/pat-9")
    deid = _deid(keys)
    deid.prepare([patient, study])
    new_patient, new_study = deid.deidentify(patient), deid.deidentify(study)
    assert new_patient and new_study
    pseudonym = keys.patient_pseudonym(MRN_SYSTEM, "MRN-9")
    assert new_patient["id"] == pseudonym
    assert new_patient["identifier"] == [{"system": MRN_SYSTEM, "value": pseudonym}]
    assert new_study["subject"] == {"reference": f"Patient/{pseudonym}"}
    assert new_study["identifier"][0] == {
        "system": DICOM_UID_SYSTEM, "value": f"urn:oid:{keys.uid(STUDY_UID)}"}  # fmt: skip
    assert new_study["identifier"][1]["value"] == keys.identifier("accession", "ACC-123")
    series = new_study["series"][0]
    assert series["uid"] == keys.uid(SERIES_UID)
    assert series["instance"][0]["uid"] == keys.uid(SOP_UID)
    assert series["instance"][0]["sopClass"]["code"] == "urn:oid:1.2.840.10008.5.1.4.1.1.2"
    text = json.dumps([new_patient, new_study])
    for secret in ("Jane", "JANE", "555-0100", "123-45-6789", "MRN-9", "pat-9", STUDY_UID,
                   "ACC-123", "image of"):  # fmt: skip
        assert secret not in text
    shift = keys.date_shift(MRN_SYSTEM, "MRN-9")
    assert new_study["started"] == (date(2024, 3, 5) + shift).isoformat() + "T10:20:30.123+01:00"
    assert validate(new_patient) == [] and validate(new_study) == []


def test_same_key_same_output_other_key_other_output(plans: list[PatientPlan]) -> None:
    bundle = patient_bundle(plans[1])

    def run(key: bytes) -> str:
        deid = _deid(DeidKeys(key))
        deid.prepare([bundle])
        return json.dumps(deid.deidentify(bundle), sort_keys=True)

    assert run(KEY) == run(KEY)
    assert run(KEY) != run(KEY + b"x")


def test_references_of_every_form(keys: DeidKeys) -> None:
    deid = _deid(keys, base_urls=["https://pacs.example.org/fhir/"])
    new_id = keys.resource_id("Encounter", "e1")
    assert deid.rewrite_reference("Encounter/e1") == f"Encounter/{new_id}"
    assert deid.rewrite_reference("Encounter/e1/_history/4") == f"Encounter/{new_id}"
    assert deid.rewrite_reference("https://pacs.example.org/fhir/Encounter/e1") == (
        f"Encounter/{new_id}")  # fmt: skip
    assert deid.rewrite_reference("https://other.org/fhir/Encounter/e1") == (
        f"https://other.org/fhir/Encounter/{new_id}")  # fmt: skip
    assert deid.rewrite_reference("#med1") == "#med1"
    assert deid.rewrite_reference("Patient?identifier=x|y") is None
    unknown = deid.rewrite_reference("Patient/nobody")
    assert unknown == f"Patient/{keys.resource_id('Patient', 'nobody')}"
    uuid_ref = deid.rewrite_reference("urn:uuid:2b6f1f0e-9d2b-4c3a-8f1e-1c2d3e4f5a6b")
    assert uuid_ref and re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", uuid_ref)
    obs = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "Patient/nobody"},
        "contained": [{"resourceType": "Medication", "id": "med1", "code": {"text": "aspirin"}}],
        "focus": [{"reference": "#med1"}],
        "derivedFrom": [{"reference": "Patient?identifier=x|y", "display": "John"}],
    }
    out = deid.deidentify(obs)
    assert out is not None
    assert out["contained"][0]["id"] == "med1" and out["focus"] == [{"reference": "#med1"}]
    assert "derivedFrom" not in out  # nothing left of that reference
    assert validate(out) == []


def test_free_text_extensions_and_required_elements(keys: DeidKeys) -> None:
    obs = {"resourceType": "Observation", "id": "o2", "status": "final",
           "text": {"status": "generated", "div": "<div>Jane Doe's result</div>"},
           "extension": [{"url": "http://example.org/x", "valueString": "Jane"}],
           "code": {"text": "note"}, "subject": {"reference": "Patient/p"},
           "valueString": "called Jane at home", "note": [{"text": "Jane said so"}],
           "_status": {"extension": [{"url": "http://example.org/y", "valueString": "Jane"}]},
           "performer": [{"reference": "Practitioner/dr", "display": "Dr Who"}]}  # fmt: skip
    out = _deid(keys).deidentify(obs)
    assert out is not None
    assert "Jane" not in json.dumps(out) and "Dr Who" not in json.dumps(out)
    assert validate(out) == []
    rules = FhirRules.model_validate(
        {"fhirPathRules": [{"path": "Observation.code", "method": "redact"},
                           {"path": "Observation.status", "method": "redact"},
                           {"path": "Observation.subject", "method": "keep"}]}
    )  # fmt: skip
    out = _deid(keys, rules).deidentify(obs)
    assert out is not None
    masked = {"extension": [{"url": DAR_URL, "valueCode": "masked"}]}
    assert out["code"] == masked and out["_status"] == masked and "status" not in out
    assert validate(out) == []


def test_rules_can_drop_types_and_substitute(keys: DeidKeys, plans: list[PatientPlan]) -> None:
    rules = FhirRules.model_validate(
        {"fhirPathRules": [{"path": "Observation", "method": "redact"},
                           {"path": "Patient.gender", "method": "substitute",
                            "replaceWith": "unknown"},
                           *load_rules().model_dump(by_alias=True)["fhirPathRules"]]}
    )  # fmt: skip
    deid = _deid(keys, rules)
    bundle = patient_bundle(plans[0])
    deid.prepare([bundle])
    assert deid.deidentify({"resourceType": "Observation", "status": "final",
                            "code": {"text": "x"}}) is None  # fmt: skip
    out = deid.deidentify(bundle)
    assert out is not None
    types = {r["resourceType"] for r in _resources(out)}
    assert "Observation" not in types and "Patient" in types
    assert _resources(out, "Patient")[0]["gender"] == "unknown"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fhirPathRules: [{path: Patient.nickname, method: redact}]", "no element 'nickname'"),
        ("fhirPathRules: [{path: Patiente.name, method: redact}]", "'Patiente' is neither"),
        ("fhirPathRules: [{path: Patient.name, method: scramble}]", "fhirPathRules.0.method"),
        ("fhirPathRules: [{path: Patient.name, method: substitute}]", "needs replaceWith"),
        ("fhirPathRules: [{path: Patient.gender, method: generalize}]", "generalize applies"),
        ("fhirPathRules: [{path: Patient, method: keep}]", "can only be redacted"),
        ("fhirPathRules: [{path: Patient..name, method: keep}]", "separated by dots"),
        ("fhirPathRules: []", "fhirPathRules"),
        ("rules: [{path: Patient.name, method: redact}]", "fhirPathRules: Field required"),
        ("fhirPathRules: [{path: Patient.name, method: redact", "not YAML"),
    ],
)
def test_rule_file_errors_are_clear(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=re.escape(message)) as info:
        load_rules(path)
    assert str(path) in str(info.value)


def test_rules_accept_the_ms_tool_names(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"fhirVersion": "R4", "fhirPathRules": [
        {"path": "Resource.id", "method": "cryptoHash"},
        {"path": "Observation.value", "method": "redact"},
        {"path": "dateTime", "method": "dateShift"}]}))  # fmt: skip
    assert [r.method for r in load_rules(path).rules] == ["pseudonym", "redact", "dateshift"]
    with pytest.raises(InvalidInput, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


def test_ndjson_tree(tmp_path: Path, keys: DeidKeys, plans: list[PatientPlan]) -> None:
    src, dst = tmp_path / "export", tmp_path / "out"
    (src / "bundles").mkdir(parents=True)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for plan in plans[:2]:
        for resource in _stored(plan):
            by_type.setdefault(resource["resourceType"], []).append(resource)
    for rtype, items in by_type.items():
        (src / f"{rtype}.ndjson").write_text("".join(json.dumps(r) + "\n" for r in items))
    (src / "bundles" / "p2.json").write_text(json.dumps(patient_bundle(plans[2])))
    summary = _deid(keys).deidentify_ndjson_tree(src, dst)
    written = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    expected = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    assert written == expected
    assert summary.files == len(expected) and summary.dropped == 0
    assert summary.resources["Patient"] == 2 and summary.resources["Bundle"] == 1
    patients = [json.loads(line) for line in (dst / "Patient.ndjson").read_text().splitlines()]
    assert {p["id"] for p in patients} == {
        keys.patient_pseudonym(MRN_SYSTEM, p.mrn) for p in plans[:2]}  # fmt: skip
    text = "".join(p.read_text() for p in dst.rglob("*") if p.is_file())
    for plan in plans:
        assert plan.mrn not in text and plan.family not in text
    for line in (dst / "Observation.ndjson").read_text().splitlines():
        obs = json.loads(line)
        assert obs["subject"]["reference"].removeprefix("Patient/") in {p["id"] for p in patients}
        assert validate(obs) == []
    assert summary.to_dict()["resources"]["Bundle"] == 1
    single = deidentify_ndjson_tree(src / "bundles" / "p2.json", tmp_path / "one", _deid(keys))
    assert single.files == 1 and (tmp_path / "one" / "p2.json").is_file()
    (src / "bad.ndjson").write_text('{"resourceType": "Patient"}\nnot json\n')
    with pytest.raises(InvalidInput, match=r"bad\.ndjson:2"):
        _deid(keys).deidentify_ndjson_tree(src, tmp_path / "out2")
    with pytest.raises(InvalidInput, match="outside"):
        _deid(keys).deidentify_ndjson_tree(src, src / "inner")


def test_patient_details_go_and_stand_ins_stay_valid(keys: DeidKeys) -> None:
    birth_time = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
    patient: dict[str, Any] = {"resourceType": "Patient", "id": "p1", "birthDate": "1950-02-03",
               "identifier": [{"system": MRN_SYSTEM, "value": "M1"}],
               "_birthDate": {"extension": [{"url": birth_time,
                                             "valueDateTime": "1950-02-03T10:00:00Z"}]},
               "name": [{"use": "official", "family": "Doe", "given": ["Jane"]}],
               "telecom": [{"system": "email", "value": "jane@example.org"}],
               "contact": [{"name": {"family": "Roe"}, "telecom": [{"system": "phone",
                                                                    "value": "555"}]}],
               "photo": [{"contentType": "image/png", "data": "AAAA"}],
               "address": [{"use": "home", "line": ["1 Main St"], "city": "Springfield",
                            "postalCode": "01101", "state": "MA", "country": "US"}]}  # fmt: skip
    document: dict[str, Any] = {"resourceType": "DocumentReference", "id": "d1",
                "status": "current",
                "subject": {"reference": "Patient/p1"}, "description": "letter on Jane",
                "content": [{"attachment": {"contentType": "text/plain",
                                            "data": "SmFuZQ=="}}]}  # fmt: skip
    searchset: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "total": 1,
                 "link": [{"relation": "self", "url": "https://h.org/fhir/Patient?name=Doe"}],
                 "entry": [{"fullUrl": "https://h.org/fhir/Patient/p1", "resource": patient,
                            "search": {"mode": "match"}}]}  # fmt: skip
    deid = _deid(keys, base_urls=["https://h.org/fhir"])
    deid.prepare([searchset, document])
    new_patient, new_document, new_bundle = map(deid.deidentify, (patient, document, searchset))
    assert new_patient and new_document and new_bundle
    assert set(new_patient) == {"resourceType", "id", "meta", "identifier", "birthDate", "address"}
    assert new_patient["address"] == [{"use": "home", "state": "MA", "country": "US"}]
    assert new_patient["birthDate"] != patient["birthDate"]
    pseudonym = keys.patient_pseudonym(MRN_SYSTEM, "M1")
    assert new_document["subject"] == {"reference": f"Patient/{pseudonym}"}
    assert new_document["content"][0]["attachment"]["extension"][0]["valueCode"] == "masked"
    assert "Jane" not in json.dumps(new_document) and "SmFuZQ" not in json.dumps(new_document)
    assert new_bundle["entry"][0]["fullUrl"] == f"https://h.org/fhir/Patient/{pseudonym}"
    assert "link" not in new_bundle
    for out in (new_patient, new_document, new_bundle):
        assert validate(out) == []


def test_transaction_requests_are_rewritten_without_prepare(keys: DeidKeys) -> None:
    patient = {"resourceType": "Patient", "id": "p5", "birthDate": "1980-01-01",
               "identifier": [{"system": MRN_SYSTEM, "value": "MRN-0005"}]}  # fmt: skip
    obs = {"resourceType": "Observation", "id": "o5", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "urn:uuid:0c2f7d3e-1111-4a4a-9b9b-222233334444"},
           "effectiveDateTime": "1990-01-01"}  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0c2f7d3e-1111-4a4a-9b9b-222233334444", "resource": patient,
         "request": {"method": "PUT", "url": f"Patient?identifier={MRN_SYSTEM}|MRN-0005"}},
        {"fullUrl": "urn:uuid:9d9d9d9d-1111-4a4a-9b9b-222233334444", "resource": obs,
         "request": {"method": "PUT", "url": "Observation/o5", "ifMatch": 'W/"2"'}}]}  # fmt: skip
    deid = _deid(keys)
    assert deid.prepare([patient, patient]) == 2
    out = _deid(keys).deidentify(bundle)  # a fresh one: learns the Bundle's own Patient
    assert out is not None
    pseudonym = keys.patient_pseudonym(MRN_SYSTEM, "MRN-0005")
    first, second = out["entry"]
    assert first["request"] == {"method": "PUT",
                                "url": f"Patient?identifier={MRN_SYSTEM}|{pseudonym}"}  # fmt: skip
    assert second["request"] == {
        "method": "PUT", "url": f"Observation/{keys.resource_id('Observation', 'o5')}"}  # fmt: skip
    assert second["resource"]["subject"]["reference"] == first["fullUrl"]
    shift = keys.date_shift(MRN_SYSTEM, "MRN-0005")
    assert second["resource"]["effectiveDateTime"] == (date(1990, 1, 1) + shift).isoformat()
    assert "MRN-0005" not in json.dumps(out) and validate(out) == []
