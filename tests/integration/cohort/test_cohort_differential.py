"""The cohort engine against the same questions asked by plain FHIR R4 search over the REST
API and QIDO-RS, on a synthetic hospital loaded through the public APIs (FHIR transactions at
POST /fhir, STOW-RS), on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medflow.cohort.results import CohortResult, PatientResult
from medflow.cohort.schema import load_definition, parse_definition, shift
from medflow.cohort.service import CohortService
from medflow.synthetic.writer import generate
from tests.conftest import loaded_hospital

pytestmark = pytest.mark.integration
SEED, PATIENTS = 8, 80
TODAY = date(2026, 11, 1)
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
MRN = "urn:medflow:mrn"
EXAMPLE = Path(__file__).parents[3] / "docs" / "examples" / "osteosarcoma.yaml"


@dataclass
class Hospital:
    client: TestClient
    cohorts: CohortService
    mrn_of: dict[str, str]
    """FHIR Patient id -> MRN (read over REST)."""


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort-hospital")
    generate(root, patients=PATIENTS, seed=SEED, size=16, slides=False)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hospital(
    request: pytest.FixtureRequest, generated: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hospital]:
    tmp = tmp_path_factory.mktemp(f"cohort-{request.param}")
    with loaded_hospital(generated, request.param, tmp) as (container, client):
        patients = fhir_all(client, "Patient", [])
        mrn_of = {p["id"]: next(i["value"] for i in p["identifier"] if i["system"] == MRN)
                  for p in patients}  # fmt: skip
        yield Hospital(client, CohortService(store=container.store, fhir=container.fhir),
                       mrn_of)  # fmt: skip


# -- the same questions over REST --------------------------------------------------------------
def fhir_all(client: TestClient, rtype: str, params: list[tuple[str, str]]) -> list[Any]:
    """Every match of a FHIR search, following the Bundle's next links."""
    out: list[Any] = []
    r = client.get(f"/fhir/{rtype}", params=[*params, ("_count", "200")])
    while True:
        assert r.status_code == 200, r.text
        bundle = r.json()
        out += [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        nxt = next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"),
                   None)  # fmt: skip
        if nxt is None:
            return out
        r = client.get(nxt)


def subjects(client: TestClient, rtype: str, params: list[tuple[str, str]]) -> set[str]:
    return {res["subject"]["reference"].removeprefix("Patient/")
            for res in fhir_all(client, rtype, params)}  # fmt: skip


def patients_rest(client: TestClient, params: list[tuple[str, str]]) -> set[str]:
    return {p["id"] for p in fhir_all(client, "Patient", params)}


def qido_patients(h: Hospital, params: dict[str, str]) -> set[str]:
    r = h.client.get("/dicomweb/studies", params={**params, "limit": "10000"})
    assert r.status_code in (200, 204), r.text
    mrns = {s["00100020"]["Value"][0] for s in (r.json() if r.status_code == 200 else [])}
    return {pid for pid, mrn in h.mrn_of.items() if mrn in mrns}


def older_than(client: TestClient, years: int) -> set[str]:
    return patients_rest(client, [("birthdate", f"le{shift(TODAY, f'-{years + 1}y')}")])


def osteo_rest(client: TestClient, since: date) -> set[str]:
    return subjects(client, "Condition", [("code", f"{ICD10}|C40.20"),
                                          ("onset-date", f"ge{since}"),
                                          ("onset-date", f"le{TODAY}")])  # fmt: skip


def run(h: Hospital, *criteria: dict[str, Any], collect: Any = ()) -> CohortResult:
    definition = parse_definition(
        {
            "name": "t",
            "evaluation_date": TODAY.isoformat(),
            "criteria": list(criteria),
            "collect": list(collect),
        }
    )
    return h.cohorts.evaluate(definition)


def ids(result: CohortResult) -> set[str]:
    return {p.patient_id for p in result.patients}


OSTEO = {"condition": {"codes": [{"system": "icd10", "prefixes": ["C40", "C41"]}],
                       "onset": {"within": "2y"}}}  # fmt: skip
LUNG = {"condition": {"codes": [{"system": "snomed", "codes": ["363358000"]}]}}
MR = {"imaging": {"modality": ["MR"], "date": {"from": "-3y", "to": "0d"}}}
CR = {"imaging": {"modality": ["cr"]}}
AGE = {"demographics": {"age": {"min": 46}}}


# -- tests -------------------------------------------------------------------------------------
def test_age_condition_medication_imaging_alone(hospital: Hospital) -> None:
    c = hospital.client
    assert ids(run(hospital, AGE)) == older_than(c, 45)
    young = run(hospital, {"demographics": {"age": {"max": 30}, "gender": ["female"]}})
    born_after = shift(TODAY, "-31y") + timedelta(days=1)
    assert ids(young) == patients_rest(c, [("birthdate", f"ge{born_after}"), ("gender", "female")])
    assert ids(run(hospital, OSTEO)) == osteo_rest(c, shift(TODAY, "-2y"))
    assert ids(run(hospital, {"medication": {}})) == subjects(c, "MedicationRequest", [])
    mr_since = shift(TODAY, "-3y").strftime("%Y%m%d")
    expected = qido_patients(hospital, {"ModalitiesInStudy": "MR",
                                        "StudyDate": f"{mr_since}-{TODAY:%Y%m%d}"})  # fmt: skip
    assert ids(run(hospital, MR)) == expected and expected


def test_combinations_with_and_or_not(hospital: Hospital) -> None:
    c = hospital.client
    old, osteo = older_than(c, 45), osteo_rest(c, shift(TODAY, "-2y"))
    lung = subjects(c, "Condition", [("code", f"{SNOMED}|363358000")])
    cr = qido_patients(hospital, {"ModalitiesInStudy": "CR"})
    everyone = set(hospital.mrn_of)
    assert ids(run(hospital, AGE, OSTEO)) == old & osteo
    assert ids(run(hospital, {"or": [OSTEO, LUNG]})) == osteo | lung
    assert ids(run(hospital, {"not": CR})) == everyone - cr
    combined = run(hospital, AGE, {"or": [OSTEO, LUNG]}, {"not": CR})
    assert ids(combined) == (old & (osteo | lung)) - cr
    nested = run(hospital, {"and": [{"not": AGE}, {"or": [LUNG, {"medication": {}}]}]})
    meds = subjects(c, "MedicationRequest", [])
    assert ids(nested) == (everyone - old) & (lung | meds)
    counts = [step.patients for step in combined.attrition]
    assert counts == [PATIENTS, len(old), len(old & (osteo | lung)), len(ids(combined))]


def test_temporal_imaging_after_diagnosis(hospital: Hospital) -> None:
    c = hospital.client
    expected = set()
    for cond in fhir_all(c, "Condition", [("code", f"{SNOMED}|307576001")]):
        pid = cond["subject"]["reference"].removeprefix("Patient/")
        onset = date.fromisoformat(cond["onsetDateTime"][:10])
        day = f"{onset:%Y%m%d}-{onset + timedelta(days=30):%Y%m%d}"
        found = qido_patients(hospital, {"ModalitiesInStudy": "MR", "StudyDate": day})
        expected |= found & {pid}
    result = run(
        hospital,
        {
            "temporal": {
                "anchor": {"condition": {"codes": [{"system": "snomed", "codes": ["307576001"]}]}},
                "event": {"imaging": {"modality": ["MR"]}},
                "days_after": {"min": 0, "max": 30},
            }
        },
    )
    assert ids(result) == expected and expected
    for patient in result.patients:
        assert patient.studies and patient.resources["Condition"]


def test_reference_example_as_shipped(hospital: Hospital) -> None:
    c = hospital.client
    definition = load_definition(EXAMPLE)
    started = time.perf_counter()
    result = hospital.cohorts.evaluate(definition)
    elapsed = time.perf_counter() - started
    print(f"reference query: {len(result.patients)} patients in {elapsed * 1000:.1f} ms")
    expected = older_than(c, 45) & osteo_rest(c, shift(TODAY, "-2y"))
    assert ids(result) == expected and len(expected) >= 2
    assert [s.patients for s in result.attrition] == [PATIENTS, len(older_than(c, 45)),
                                                      len(expected)]  # fmt: skip
    for patient in result.patients:
        assert patient.mrn == hospital.mrn_of[patient.patient_id]
        meds = {
            m["id"]
            for m in fhir_all(
                c, "MedicationRequest", [("subject", f"Patient/{patient.patient_id}")]
            )
        }
        assert meds and set(patient.resources["MedicationRequest"]) == meds
        # the staging chest CT (the knee is imaged by MR) and its radiology report
        _studies_and_reports_match(c, patient, "CT")


def test_reference_example_with_mr_lists_studies_and_reports(hospital: Hospital) -> None:
    data = load_definition(EXAMPLE).model_dump(by_alias=True, exclude_none=True)
    data["collect"][1]["imaging"]["modality"] = ["MR"]
    result = hospital.cohorts.evaluate(parse_definition(data))
    assert result.patients
    for patient in result.patients:
        _studies_and_reports_match(hospital.client, patient, "MR")


def _studies_and_reports_match(c: TestClient, patient: PatientResult, modality: str) -> None:
    """The patient's studies of ``modality`` (QIDO-RS) are the cohort's, and their reports
    (DiagnosticReports by the studies' accession numbers) its DiagnosticReports."""
    r = c.get("/dicomweb/studies", params={"PatientID": patient.mrn, "ModalitiesInStudy": modality})
    studies = {s["0020000D"]["Value"][0]: s["00080050"]["Value"][0] for s in r.json()}
    assert set(patient.studies) == set(studies) and studies
    reports = set()
    for accession in studies.values():
        token = f"http://terminology.hl7.org/CodeSystem/v2-0203|ACSN|{accession}"
        reports |= {x["id"] for x in fhir_all(c, "DiagnosticReport",
                                              [("identifier:of-type", token)])}  # fmt: skip
    assert set(patient.resources["DiagnosticReport"]) == reports and reports


def test_report_text_observation_value_and_procedure(hospital: Hospital) -> None:
    c = hospital.client
    result = run(hospital, {"diagnostic_report": {"category": ["SP"], "text_contains": "osteo"}})
    reports = fhir_all(c, "DiagnosticReport", [("category", "SP")])
    expected = {r["subject"]["reference"].removeprefix("Patient/") for r in reports
                if "osteo" in (r.get("conclusion") or "").lower()
                or "osteo" in str(r.get("conclusionCode")).lower()}  # fmt: skip
    assert ids(result) == expected and expected
    big = run(hospital, {"observation": {"codes": [{"system": "loinc", "codes": ["21889-1"]}],
                                         "value": {"min": 30, "unit": "mm"}}})  # fmt: skip
    assert ids(big) == subjects(c, "Observation", [("code", "http://loinc.org|21889-1"),
                                                   ("value-quantity", "ge30||mm")])  # fmt: skip
    biopsy = run(hospital, {"procedure": {"codes": [{"system": "snomed", "codes": ["86273004"]}]}})
    assert ids(biopsy) == subjects(c, "Procedure", [("code", f"{SNOMED}|86273004")]) != set()
