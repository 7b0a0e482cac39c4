"""The synthetic hospital's FHIR records: valid R4 (medflow's validator and the official JSON
Schema), deterministic, consistent with the plan's identifiers, and idempotent to load."""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from medflow.fhir.validation import validate
from medflow.synthetic.clinical import SYNTHETIC_SYSTEM, ground_truth, patient_bundle
from medflow.synthetic.plan import MRN_SYSTEM, TODAY, PatientPlan, plan_hospital

SCHEMA = Path(__file__).resolve().parents[3].parent / "shared/data/fhir-r4/fhir.schema.json"
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
DATE_KEYS = ("DateTime", "Date", "issued", "authoredOn", "start", "end", "recordedDate")


@pytest.fixture(scope="module")
def plans() -> list[PatientPlan]:
    return plan_hospital(0, 60)


@pytest.fixture(scope="module")
def bundles(plans: list[PatientPlan]) -> list[dict[str, Any]]:
    return [patient_bundle(p) for p in plans]


def _resources(bundle: dict[str, Any], rtype: str | None = None) -> list[dict[str, Any]]:
    found = [e["resource"] for e in bundle["entry"]]
    return [r for r in found if rtype is None or r["resourceType"] == rtype]


def _acsn(resource: dict[str, Any]) -> list[str]:
    return [
        i["value"]
        for i in resource.get("identifier", [])
        if any(c.get("code") == "ACSN" for c in i.get("type", {}).get("coding", []))
    ]


def _pathology(resource: dict[str, Any]) -> bool:
    return any(c["coding"][0]["code"] == "SP" for c in resource.get("category", []))


def _acsn_list(resources: list[dict[str, Any]]) -> list[str]:
    return [a for r in resources for a in _acsn(r)]


def test_every_resource_is_valid_r4(bundles: list[dict[str, Any]]) -> None:
    for bundle in bundles:
        assert validate(bundle) == []
        for resource in _resources(bundle):
            assert validate(resource) == [], resource


@cache
def _schema_validator(rtype: str) -> Any:
    import jsonschema  # type: ignore[import-untyped]

    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls({"$ref": f"#/definitions/{rtype}", "definitions": schema["definitions"]})


def test_every_resource_matches_the_official_json_schema(bundles: list[dict[str, Any]]) -> None:
    if not SCHEMA.exists():
        pytest.skip(f"the FHIR R4 JSON Schema is not here ({SCHEMA}): ../shared is absent")
    _schema_validator("Bundle").validate(bundles[0])
    for bundle in bundles:
        for resource in _resources(bundle):
            errors = list(_schema_validator(resource["resourceType"]).iter_errors(resource))
            assert errors == [], (resource["resourceType"], [e.message for e in errors[:3]])


def test_the_same_plan_gives_the_same_bytes(plans: list[PatientPlan]) -> None:
    for plan in plans[:20]:
        first = json.dumps(patient_bundle(plan), sort_keys=True)
        assert json.dumps(patient_bundle(plan), sort_keys=True) == first
        assert json.dumps(ground_truth(plan), sort_keys=True) == json.dumps(
            ground_truth(plan), sort_keys=True
        )


def test_identifiers_agree_with_the_plan(
    plans: list[PatientPlan], bundles: list[dict[str, Any]]
) -> None:
    for plan, bundle in zip(plans, bundles, strict=True):
        (patient,) = _resources(bundle, "Patient")
        mrn = patient["identifier"][0]
        assert (mrn["system"], mrn["value"]) == (MRN_SYSTEM, plan.mrn)
        assert mrn["type"]["coding"][0]["code"] == "MR"
        accessions = [s.accession for s in plan.studies]
        for rtype in ("ServiceRequest", "DiagnosticReport"):
            radiology = [r for r in _resources(bundle, rtype) if not _pathology(r)]
            assert [a for r in radiology for a in _acsn(r)] == accessions
        pathology = [r for r in _resources(bundle, "DiagnosticReport") if _pathology(r)]
        assert len(pathology) == (plan.biopsy is not None)
        assert all(_acsn(p) == [plan.pathology_accession] for p in pathology)
        specimens = _resources(bundle, "Specimen")
        assert [s["accessionIdentifier"]["value"] for s in specimens] == _acsn_list(pathology)


def test_every_entry_is_a_conditional_create_on_its_own_identifier(
    bundles: list[dict[str, Any]],
) -> None:
    seen: set[str] = set()
    for bundle in bundles:
        assert bundle["type"] == "transaction"
        for entry in bundle["entry"]:
            resource, request = entry["resource"], entry["request"]
            assert request["method"] == "POST"
            assert request["url"] == resource["resourceType"]
            system, value = request["ifNoneExist"].removeprefix("identifier=").split("|")
            assert {"system": system, "value": value} in [
                {k: i.get(k) for k in ("system", "value")} for i in resource["identifier"]
            ]
            assert system in (MRN_SYSTEM, SYNTHETIC_SYSTEM)
            assert entry["fullUrl"].startswith("urn:uuid:")
            assert value not in seen and entry["fullUrl"] not in seen
            seen |= {value, entry["fullUrl"]}


def test_references_point_inside_the_bundle(bundles: list[dict[str, Any]]) -> None:
    def refs(value: Any) -> list[str]:
        if isinstance(value, dict):
            own = [value["reference"]] if isinstance(value.get("reference"), str) else []
            return own + [r for v in value.values() for r in refs(v)]
        if isinstance(value, list):
            return [r for v in value for r in refs(v)]
        return []

    for bundle in bundles:
        urls = {e["fullUrl"] for e in bundle["entry"]}
        assert set(refs(_resources(bundle))) <= urls


def test_no_imaging_study_and_no_date_after_today(bundles: list[dict[str, Any]]) -> None:
    def dates(value: Any, key: str = "") -> list[str]:
        if isinstance(value, dict):
            return [d for k, v in value.items() for d in dates(v, k)]
        if isinstance(value, list):
            return [d for v in value for d in dates(v, key)]
        if isinstance(value, str) and key.endswith(DATE_KEYS) and DATE.match(value):
            return [value[:10]]
        return []

    for bundle in bundles:
        assert not _resources(bundle, "ImagingStudy")
        found = dates(_resources(bundle))
        assert found and max(found) <= TODAY.isoformat()


def test_the_record_follows_the_disease(
    plans: list[PatientPlan], bundles: list[dict[str, Any]]
) -> None:
    kinds: Counter[str] = Counter()
    for plan, bundle in zip(plans, bundles, strict=True):
        conditions = _resources(bundle, "Condition")
        rx = {
            c["code"]
            for m in _resources(bundle, "MedicationRequest")
            for c in m["medicationCodeableConcept"]["coding"]
        }
        loinc = {c["code"] for o in _resources(bundle, "Observation") for c in o["code"]["coding"]}
        sizes = [
            o
            for o in _resources(bundle, "Observation")
            if o["code"]["coding"][0]["code"] == "21889-1"
        ]
        assert len(sizes) == sum(s.finding.startswith("lesion") for s in plan.studies)
        assert all(o["valueQuantity"]["code"] == "mm" for o in sizes)
        if plan.disease.key == "screening":
            assert conditions == []
            for report in _resources(bundle, "DiagnosticReport"):
                assert report["conclusion"] == "No acute cardiopulmonary abnormality."
            continue
        kinds[plan.disease.key] += 1
        (condition,) = conditions
        systems = {c["system"]: c["code"] for c in condition["code"]["coding"]}
        assert systems["http://snomed.info/sct"] == plan.disease.snomed
        assert systems["http://hl7.org/fhir/sid/icd-10-cm"] == plan.disease.icd10
        assert condition["onsetDateTime"] == str(plan.onset)
        status = condition["clinicalStatus"]["coding"][0]["code"]
        assert status == {"remission": "remission", "resolved": "resolved"}.get(
            plan.outcome, "active"
        )
        procedures = {
            c["code"] for p in _resources(bundle, "Procedure") for c in p["code"]["coding"]
        }
        assert ("86273004" in procedures) == (plan.biopsy is not None)
        if plan.disease.key == "osteosarcoma" and "367336001" in procedures:
            assert {"6851", "2555", "3639"} <= rx
        if plan.disease.key == "pneumonia":
            assert "723" in rx
        if plan.disease.malignant:
            assert "97509-4" in loinc  # cancer disease status
        (patient,) = _resources(bundle, "Patient")
        assert ("deceasedDateTime" in patient) == (plan.outcome == "death")
    assert len(kinds) >= 4  # the 60 patients cover most diseases


def test_radiology_reports_are_worded_from_the_finding(
    plans: list[PatientPlan], bundles: list[dict[str, Any]]
) -> None:
    for plan, bundle in zip(plans, bundles, strict=True):
        findings = {s.accession: s for s in plan.studies}
        for report in _resources(bundle, "DiagnosticReport"):
            if _pathology(report):
                continue
            study = findings[_acsn(report)[0]]
            assert report["effectiveDateTime"] == str(study.day)
            assert report["category"][0]["coding"][0]["code"] == "RAD"
            text = report["conclusion"].lower()
            if study.finding == "pneumothorax":
                assert "pneumothorax" in text
            elif study.finding == "consolidation":
                assert "consolidation" in text
            elif study.finding == "lesion-malignant":
                assert "malignan" in text or "known lesion" in text
            elif study.finding == "":
                assert "no " in text


def test_ground_truth(plans: list[PatientPlan]) -> None:
    for plan in plans:
        truth = ground_truth(plan)
        json.dumps(truth)
        assert {"mrn", "disease", "malignant", "onset", "outcome", "studies"} <= set(truth)
        assert truth["mrn"] == plan.mrn
        assert truth["studies"] == {s.accession: s.finding for s in plan.studies}


@pytest.mark.integration
def test_loading_the_bundle_twice_adds_nothing(tmp_path: Path, plans: list[PatientPlan]) -> None:
    from medflow.bootstrap import build
    from medflow.core.settings import Settings
    from medflow.fhir.bundles import transaction

    container = build(Settings(data_dir=tmp_path))
    malignant = [p for p in plans if p.disease.malignant][:2]
    chosen = malignant + [p for p in plans if not p.disease.malignant][:2]
    expected = sum(len(patient_bundle(p)["entry"]) for p in chosen)
    for plan in chosen:
        response = transaction(container.fhir, patient_bundle(plan))
        assert all(e["response"]["status"].startswith("201") for e in response["entry"])
    _, total = container.fhir.history(count=1)
    assert total == expected
    for plan in chosen:
        transaction(container.fhir, patient_bundle(plan))
    _, again = container.fhir.history(count=1)
    assert again == total
    report = container.fhir.history(resource_type="DiagnosticReport", count=1000)[0]
    assert all(
        v.resource is None or v.resource["subject"]["reference"].startswith("Patient/")
        for v in report
    )
