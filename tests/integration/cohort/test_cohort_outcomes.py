"""Similar patients and their outcomes on a synthetic hospital loaded through the public APIs
(FHIR transactions, STOW-RS), on SQLite and PostgreSQL: the treatment x outcome counts equal
what the FHIR resources say when read over REST, and the survival estimates are probabilities
that never increase."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medflow.bootstrap import Container
from medflow.cohort.outcomes import OutcomeTable, outcomes, similar_definition
from medflow.cohort.schema import load_definition
from medflow.cohort.service import CohortService
from medflow.cohort.survival import km_svg
from medflow.core.errors import InvalidInput, NotFound
from medflow.synthetic.writer import generate
from tests.conftest import loaded_hospital
from tests.integration.cohort.test_cohort_differential import fhir_all

pytestmark = pytest.mark.integration
SEED, PATIENTS = 11, 80  # seed 11: 22 cancers, 6 of them fatal
TODAY = date(2026, 11, 1)
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"
EXAMPLE = Path(__file__).parents[3] / "docs" / "examples" / "osteosarcoma.yaml"
# what the synthetic hospital records, classified here independently of the module
KINDS = {"367336001": "chemotherapy", "108290001": "radiotherapy", "387713003": "surgery",
         "173171007": "surgery", "392021009": "surgery"}  # fmt: skip
ORDER = ("surgery", "chemotherapy", "radiotherapy")
STATUS = {"260415000": "remission", "268910001": "response", "359746009": "stable",
          "271299001": "progression"}  # fmt: skip


@dataclass
class Hospital:
    client: TestClient
    container: Container


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("outcomes-hospital")
    generate(root, patients=PATIENTS, seed=SEED, size=16, slides=False)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hospital(
    request: pytest.FixtureRequest, generated: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hospital]:
    tmp = tmp_path_factory.mktemp(f"outcomes-{request.param}")
    with loaded_hospital(generated, request.param, tmp) as (container, client):
        yield Hospital(client, container)


def run(h: Hospital, **kw: Any) -> OutcomeTable:
    return outcomes(store=h.container.store, fhir=h.container.fhir, as_of=TODAY, **kw)


# -- the same facts over REST ----------------------------------------------------------------
def day(value: str) -> date:
    return date.fromisoformat(value[:10])


def rest_record(c: TestClient, pid: str) -> dict[str, Any]:
    """Group, latest disease status, death and diagnosis of a patient, read over REST."""
    subject = [("subject", f"Patient/{pid}")]
    procs = {KINDS[p["code"]["coding"][0]["code"]] for p in fhir_all(c, "Procedure", subject)
             if p["code"]["coding"][0]["code"] in KINDS}  # fmt: skip
    drugs = sorted({m["medicationCodeableConcept"]["coding"][0]["display"].lower()
                    for m in fhir_all(c, "MedicationRequest", subject)})  # fmt: skip
    label = " + ".join(k for k in ORDER if k in procs)
    if drugs:
        label = f"{label} with {' + '.join(drugs)}" if label else " + ".join(drugs)
    statuses = sorted(fhir_all(c, "Observation", [*subject, ("code", "http://loinc.org|97509-4")]),
                      key=lambda o: o["effectiveDateTime"])  # fmt: skip
    status = "unknown"
    if statuses:
        status = STATUS[statuses[-1]["valueCodeableConcept"]["coding"][0]["code"]]
    patient = c.get(f"/fhir/Patient/{pid}").json()
    onset = min(day(x["onsetDateTime"]) for x in fhir_all(c, "Condition", subject))
    died = patient.get("deceasedDateTime")
    return {"group": label or "no recorded treatment", "status": status,
            "died": day(died) if died else None, "onset": onset}  # fmt: skip


def same_diagnosis(c: TestClient, snomed: str, icd10: str) -> set[str]:
    """Patients with a Condition of this SNOMED code or this ICD-10-CM category."""
    out = set()
    for cond in fhir_all(c, "Condition", []):
        codes = {(x["system"], x["code"]) for x in cond["code"]["coding"]}
        if (SNOMED, snomed) in codes or any(s == ICD10 and k[:3] == icd10[:3] for s, k in codes):
            out.add(cond["subject"]["reference"].removeprefix("Patient/"))
    return out


def index_patient(c: TestClient, prefix: str) -> tuple[str, str, str]:
    """(patient id, SNOMED, ICD-10) of the first patient with an ICD-10 code ``prefix``..."""
    for cond in fhir_all(c, "Condition", [("_sort", "_id")]):
        codes = {x["system"]: x["code"] for x in cond["code"]["coding"]}
        if codes.get(ICD10, "").startswith(prefix):
            return (
                cond["subject"]["reference"].removeprefix("Patient/"),
                codes[SNOMED],
                codes[ICD10],
            )
    raise AssertionError(f"no {prefix} patient")


def check_counts(h: Hospital, table: OutcomeTable, expected_ids: set[str]) -> None:
    """Rows, statuses, deaths and follow-up times against the REST record."""
    c = h.client
    assert {p.patient_id for p in table.patients} == expected_ids
    records = {pid: rest_record(c, pid) for pid in expected_ids}
    n = Counter(r["group"] for r in records.values())
    by_status = Counter((r["group"], r["status"]) for r in records.values())
    deaths = Counter(r["group"] for r in records.values() if r["died"])
    assert {row.group: row.n for row in table.rows} == dict(n)
    for row in table.rows:
        assert {s: k for s, k in row.statuses.items() if k} == {
            s: k for (g, s), k in by_status.items() if g == row.group
        }
        assert row.deaths == deaths[row.group]
    assert table.overall.n == len(expected_ids)
    assert table.overall.deaths == sum(deaths.values())
    for p in table.patients:
        r = records[p.patient_id]
        assert p.diagnosis == r["onset"] and p.deceased == (r["died"] is not None)
        if r["died"]:
            assert p.years == pytest.approx((r["died"] - r["onset"]).days / 365.25)
        assert p.years is not None and 0 <= p.years <= (TODAY - r["onset"]).days / 365.25


def check_survival(table: OutcomeTable) -> None:
    """Probabilities in [0, 1], never increasing over time; counts adding up."""
    for row in (table.overall, *table.rows):
        values = [s.survival for s in row.survival if s.survival is not None]
        assert all(0 <= v <= 1 for v in values)
        assert values == sorted(values, reverse=True)
        for s in row.survival:
            assert s.at_risk + s.events + s.censored == row.n
            if s.survival is not None:
                assert s.lower is not None and s.upper is not None
                assert 0 <= s.lower <= s.survival <= s.upper <= 1
        assert row.survival[0].survival is None or 0 <= row.survival[0].survival <= 1
    for curve in table.curves.values():
        steps = curve.survival.tolist()
        assert steps == sorted(steps, reverse=True) and all(0 <= v <= 1 for v in steps)


# -- tests -----------------------------------------------------------------------------------
def test_similar_lung_cancer_patients(hospital: Hospital) -> None:
    c = hospital.client
    pid, snomed, icd10 = index_patient(c, "C34")
    table = run(hospital, patient_id=pid, age_band=None)
    expected = same_diagnosis(c, snomed, icd10) - {pid}
    assert len(expected) >= 5
    assert pid not in {p.patient_id for p in table.patients}
    check_counts(hospital, table, expected)
    check_survival(table)
    # the hospital treats lung cancer by lobectomy + chemotherapy or by chemoradiation
    assert {r.group for r in table.rows} <= {
        "surgery + chemotherapy with cisplatin + pemetrexed",
        "chemotherapy + radiotherapy with cisplatin + pemetrexed",
        "surgery with cisplatin + pemetrexed",  # chemotherapy not yet given by today
        "surgery",
    }
    assert table.overall.survival[0].survival is not None  # 1 year: follow-up allows
    data = table.to_dict()
    assert data["index_patient"] == pid and len(data["patients"]) == len(expected)
    assert data["definition"]["criteria"][0]["condition"]["codes"]
    root = ET.fromstring(km_svg(table.curves, title="lung cancer"))
    assert len(root.findall(".//{http://www.w3.org/2000/svg}path")) == len(table.curves) > 0


def test_definition_with_age_and_gender(hospital: Hospital) -> None:
    c = hospital.client
    pid, snomed, icd10 = index_patient(c, "C40")
    fhir = hospital.container.fhir
    definition = similar_definition(fhir, pid, age_band=15, same_gender=True, as_of=TODAY)
    kinds = [crit.kind for crit in definition.criteria]
    assert kinds == ["condition", "demographics", "demographics"]
    patient = c.get(f"/fhir/Patient/{pid}").json()
    born = day(patient["birthDate"])
    age = TODAY.year - born.year - ((TODAY.month, TODAY.day) < (born.month, born.day))
    expected = set()
    for other in same_diagnosis(c, snomed, icd10) - {pid}:
        p = c.get(f"/fhir/Patient/{other}").json()
        b = day(p["birthDate"])
        a = TODAY.year - b.year - ((TODAY.month, TODAY.day) < (b.month, b.day))
        if abs(a - age) <= 15 and p["gender"] == patient["gender"]:
            expected.add(other)
    table = run(hospital, definition=definition, patient_id=pid)
    check_counts(hospital, table, expected)
    check_survival(table)


def test_outcomes_of_a_stored_definition(hospital: Hospital) -> None:
    """The reference osteosarcoma cohort (no index patient), and the same as of a later day."""
    definition = load_definition(EXAMPLE)
    table = run(hospital, definition=definition)
    cohort = CohortService(store=hospital.container.store, fhir=hospital.container.fhir)
    expected = {p.patient_id for p in cohort.evaluate(definition).patients}
    check_counts(hospital, table, expected)
    check_survival(table)
    assert table.index_patient is None and table.evaluation_date == definition.evaluation_date


def test_errors(hospital: Hospital) -> None:
    with pytest.raises(NotFound):
        run(hospital, patient_id="no-such-patient")
    with pytest.raises(InvalidInput):
        run(hospital)
    healthy = next(p["id"] for p in fhir_all(hospital.client, "Patient", [])
                   if not fhir_all(hospital.client, "Condition",
                                   [("subject", f"Patient/{p['id']}")]))  # fmt: skip
    with pytest.raises(InvalidInput):
        run(hospital, patient_id=healthy)
