"""Tracked cohorts on a synthetic hospital loaded through the public APIs, on SQLite and
PostgreSQL: save and version rules, runs stored and compared (a patient who starts matching
through a FHIR write enters, one whose diagnosis is deleted leaves), the cohort's FHIR Group and
its bulk ``$export``, runs as of another day, and the ``/api/cohorts`` edge with its problem
details."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medflow.bootstrap import Container
from medflow.cohort.schema import DefinitionError, parse_definition
from medflow.cohort.tracking import COHORT_SYSTEM, CohortTracker
from medflow.core.errors import NotFound
from medflow.synthetic.writer import generate
from tests.conftest import loaded_hospital

pytestmark = pytest.mark.integration
MRN = "urn:medflow:mrn"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
PNEUMONIA: dict[str, Any] = {
    "name": "pneumonia",
    "evaluation_date": "2026-11-01",
    "criteria": [{"label": "pneumonia", "condition": {"codes": [{"system": "icd10",
                                                                  "prefixes": ["J18"]}]}}],
    "collect": [{"label": "medications", "medication": {}}],
}  # fmt: skip


@dataclass
class Hospital:
    client: TestClient
    container: Container

    @property
    def tracker(self) -> CohortTracker:
        return self.container.cohorts


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tracking-hospital")
    generate(root, patients=20, seed=3, size=16, slides=False)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hospital(
    request: pytest.FixtureRequest, generated: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hospital]:
    tmp = tmp_path_factory.mktemp(f"tracking-{request.param}")
    with loaded_hospital(generated, request.param, tmp) as (container, client):
        yield Hospital(client, container)


def definition(name: str, **changes: Any) -> Any:
    return parse_definition({**PNEUMONIA, "name": name, **changes})


def pneumonia_patients(client: TestClient) -> set[str]:
    r = client.get("/fhir/Condition", params={"code": f"{ICD10}|J18.9", "_count": "500"})
    return {e["resource"]["subject"]["reference"].removeprefix("Patient/")
            for e in r.json().get("entry", [])}  # fmt: skip


def add_pneumonia_patient(client: TestClient, mrn: str) -> str:
    patient = {"resourceType": "Patient", "identifier": [{"system": MRN, "value": mrn}],
               "gender": "female", "birthDate": "1950-03-04"}  # fmt: skip
    pid = client.post("/fhir/Patient", json=patient, headers=FHIR_JSON).json()["id"]
    condition = {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
                 "code": {"coding": [{"system": ICD10, "code": "J18.9"}]},
                 "onsetDateTime": "2026-06-01"}  # fmt: skip
    r = client.post("/fhir/Condition", json=condition, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    return str(pid)


def remove_pneumonia(client: TestClient, pid: str) -> None:
    r = client.get("/fhir/Condition", params={"subject": f"Patient/{pid}", "_count": "100"})
    for entry in r.json().get("entry", []):
        codes = {c["code"] for c in entry["resource"]["code"]["coding"]}
        if "J18.9" in codes:
            assert client.delete(f"/fhir/Condition/{entry['resource']['id']}").status_code in (
                200, 204)  # fmt: skip


def export(client: TestClient, url: str) -> dict[str, list[dict[str, Any]]]:
    r = client.get(url, headers=ASYNC)
    assert r.status_code == 202, r.text
    status_url = r.headers["Content-Location"]
    for _ in range(400):
        st = client.get(status_url)
        if st.status_code != 202:
            break
        time.sleep(0.05)
    assert st.status_code == 200, st.text
    out: dict[str, list[dict[str, Any]]] = {}
    for item in st.json()["output"]:
        body = client.get(item["url"])
        out[item["type"]] = [json.loads(line) for line in body.text.splitlines() if line]
    return out


# -- versions --------------------------------------------------------------------------------
def test_save_versions(hospital: Hospital) -> None:
    t = hospital.tracker
    first = t.save(definition=definition("versions"))
    assert (first.name, first.version, first.created) == ("versions", 1, True)
    again = t.save(definition=definition("versions"))
    assert (again.id, again.version, again.created) == (first.id, 1, False)
    # defaults written out are the same definition
    explicit = {**PNEUMONIA["collect"][0], "medication": {"resource": ["MedicationRequest"]}}
    same = t.save(definition=definition("versions", collect=[explicit]))
    assert (same.version, same.created) == (1, False)
    changed = t.save(definition=definition("versions", evaluation_date="2026-12-01"))
    assert (changed.id, changed.version, changed.created) == (first.id, 2, True)
    renamed = t.save(definition=definition("versions"), name="versions-copy")
    assert renamed.id != first.id and (renamed.name, renamed.version) == ("versions-copy", 1)

    shown = t.show(ref=first.id)
    assert [v.version for v in shown.versions or []] == [1, 2]
    assert shown.versions and shown.versions[-1].definition["evaluation_date"] == "2026-12-01"
    assert shown.runs == 0 and shown.last_run is None and shown.group == f"cohort-{first.id}"
    assert t.show(ref="versions").id == first.id  # by name too
    assert t.definition(ref=first.id, version=1).evaluation_date == date(2026, 11, 1)
    names = [c.name for c in t.list_cohorts()]
    assert "versions" in names and "versions-copy" in names
    with pytest.raises(DefinitionError):
        t.save(definition=definition("versions"), name="1234")
    with pytest.raises(DefinitionError):
        t.save(definition=definition("versions"), name="")
    with pytest.raises(NotFound):
        t.show(ref="no-such-cohort")
    with pytest.raises(NotFound):
        t.diff(ref=first.id)  # no run yet


# -- runs, diffs, the Group ------------------------------------------------------------------
def test_run_diff_group_and_export(hospital: Hospital) -> None:
    t, client = hospital.tracker, hospital.client
    saved = t.save(definition=definition("tracked-pneumonia"))
    expected = pneumonia_patients(client)
    assert len(expected) >= 3
    first = t.run(ref=saved.id)
    members = {p["id"] for p in first.run.patients or []}
    assert members == expected and first.run.patient_count == len(expected)
    assert first.run.evaluation_date == date(2026, 11, 1) and first.run.as_of is None
    assert [a["patients"] for a in first.run.attrition][1] == len(expected)
    assert first.diff.from_run is None and len(first.diff.entered) == len(expected)

    group = client.get(f"/fhir/Group/{first.group}").json()
    assert (group["type"], group["actual"], group["quantity"]) == ("person", True, len(expected))
    assert group["identifier"] == [{"system": COHORT_SYSTEM, "value": "tracked-pneumonia/1"}]
    assert "tracked-pneumonia" in group["name"] and "version 1" in group["name"]
    assert {m["entity"]["reference"] for m in group["member"]} == {
        f"Patient/{p}" for p in expected}  # fmt: skip

    newcomer = add_pneumonia_patient(client, f"TRK-{uuid.uuid4().hex[:8]}")
    leaver = sorted(expected)[0]
    remove_pneumonia(client, leaver)
    second = t.run(ref="tracked-pneumonia")
    assert second.diff.from_run == first.run.id and second.diff.to_run == second.run.id
    assert [p["id"] for p in second.diff.entered] == [newcomer]
    assert [p["id"] for p in second.diff.left] == [leaver]
    assert second.diff.stayed == len(expected) - 1
    assert t.diff(ref=saved.id) == second.diff
    back = t.diff(ref=saved.id, from_run=second.run.id, to_run=first.run.id)
    assert [p["id"] for p in back.entered] == [leaver]
    assert [p["id"] for p in back.left] == [newcomer]

    now = expected - {leaver} | {newcomer}
    group = client.get(f"/fhir/Group/{second.group}").json()
    assert group["meta"]["versionId"] == "2"
    assert {m["entity"]["reference"] for m in group["member"]} == {f"Patient/{p}" for p in now}
    exported = export(client, f"/fhir/Group/{second.group}/$export")
    assert {p["id"] for p in exported["Patient"]} == now
    subjects = {c["subject"]["reference"].removeprefix("Patient/")
                for c in exported["Condition"]}  # fmt: skip
    assert subjects <= now and newcomer in subjects
    assert all(m["subject"]["reference"].removeprefix("Patient/") in now
               for m in exported.get("MedicationRequest", []))  # fmt: skip

    runs = t.runs(ref=saved.id)
    assert [r.id for r in runs] == [second.run.id, first.run.id]
    assert all(r.patients is None for r in runs)
    stored = t.get_run(ref=saved.id, run_id=second.run.id)
    assert stored.patients == second.run.patients
    with pytest.raises(NotFound):
        t.get_run(ref=saved.id, run_id=10**9)


def test_run_as_of_is_stored_and_reproducible(hospital: Hospital) -> None:
    t = hospital.tracker
    windowed = [{"condition": {"codes": [{"system": "icd10", "prefixes": ["J18"]}],
                               "onset": {"within": "10y"}}}]  # fmt: skip
    saved = t.save(definition=definition("as-of", criteria=windowed))
    early = t.run(ref=saved.id, as_of=date(1900, 1, 1))
    assert early.run.patient_count == 0
    assert (early.run.evaluation_date, early.run.as_of) == (date(1900, 1, 1), date(1900, 1, 1))
    again = t.evaluate(definition=t.definition(ref=saved.id), as_of=early.run.evaluation_date)
    assert again.patients == []
    normal = t.run(ref=saved.id)
    assert normal.run.evaluation_date == date(2026, 11, 1) and normal.run.as_of is None
    assert len(normal.diff.entered) == normal.run.patient_count > 0
    shown = t.show(ref=saved.id)
    assert shown.runs == 2 and shown.last_run is not None
    assert shown.last_run.id == normal.run.id


# -- the REST edge ---------------------------------------------------------------------------
def test_api(hospital: Hospital) -> None:
    client = hospital.client
    body = "name: api-pneumonia\nevaluation_date: 2026-11-01\ncriteria:\n" \
           "  - condition: {codes: [{system: icd10, prefixes: [J18]}]}\n"  # fmt: skip
    r = client.post("/api/cohorts", content=body, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201, r.text
    saved = r.json()
    assert (saved["name"], saved["version"], saved["created"]) == ("api-pneumonia", 1, True)
    cid = saved["id"]
    as_json = {"name": "other", "evaluation_date": "2026-11-01", "criteria": [
        {"condition": {"codes": [{"system": "icd10", "prefixes": ["J18"]}]}}]}  # fmt: skip
    same = client.post("/api/cohorts", json=as_json, params={"name": "api-pneumonia"}).json()
    assert (same["id"], same["version"]) == (cid, 1)

    listed = client.get("/api/cohorts").json()
    assert any(c["id"] == cid and c["version"] == 1 for c in listed)
    shown = client.get(f"/api/cohorts/{cid}").json()
    assert shown["definition"]["name"] == "api-pneumonia" and len(shown["versions"]) == 1

    ran = client.post(f"/api/cohorts/{cid}/$run")
    assert ran.status_code == 200, ran.text
    result = ran.json()
    assert result["attrition"][0]["criterion"] == "all patients"
    assert result["patient_count"] == len(result["patients"]) > 0
    assert result["changes"]["from_run"] is None and result["group"] == f"cohort-{cid}"
    ran2 = client.post(f"/api/cohorts/{cid}/$run", json={"as_of": "1900-01-01"}).json()
    assert ran2["evaluation_date"] == "1900-01-01" and ran2["as_of"] == "1900-01-01"
    runs = client.get(f"/api/cohorts/{cid}/runs").json()
    assert [r["id"] for r in runs] == [ran2["id"], result["id"]]
    one = client.get(f"/api/cohorts/{cid}/runs/{result['id']}").json()
    assert one["patients"] == result["patients"]
    diff = client.get(f"/api/cohorts/{cid}/diff").json()
    assert diff["from_run"] == result["id"] and diff["stayed"] == ran2["patient_count"]
    diff = client.get(f"/api/cohorts/{cid}/diff",
                      params={"from": ran2["id"], "to": result["id"]}).json()  # fmt: skip
    assert len(diff["entered"]) == result["patient_count"] - ran2["patient_count"]

    evaluated = client.post("/api/cohorts/$evaluate", json=PNEUMONIA)
    assert evaluated.status_code == 200, evaluated.text
    assert {p["id"] for p in evaluated.json()["patients"]} == {
        p["id"] for p in result["patients"]}  # fmt: skip
    assert "pneumonia" not in {c["name"] for c in client.get("/api/cohorts").json()}  # unsaved


def problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


def test_api_errors(hospital: Hospital) -> None:
    client = hospital.client
    bad = {**PNEUMONIA, "criteria": [{"condition": {"codes": [{"system": "icd9",
                                                                "codes": ["1"]}]}}]}  # fmt: skip
    body = problem(client.post("/api/cohorts", json=bad), 422)
    assert body["errors"][0]["path"] == "criteria.0.condition.codes.0.system"
    assert "icd9" in body["errors"][0]["message"]
    body = problem(client.post("/api/cohorts", json={"name": "x"}), 422)
    assert {e["path"] for e in body["errors"]} >= {"evaluation_date", "criteria"}
    garbage = client.post("/api/cohorts", content=b"{: [", headers={"Content-Type": "text/plain"})
    problem(garbage, 422)
    problem(client.post("/api/cohorts/$evaluate", json=bad), 422)
    problem(client.post("/api/cohorts", json=PNEUMONIA, params={"name": "42"}), 422)
    problem(client.get("/api/cohorts/no-such-cohort"), 404)
    problem(client.get("/api/cohorts/999999"), 404)
    problem(client.get("/api/cohorts/²"), 404)  # not an id: looked up (and not found) by name
    problem(client.get("/api/cohorts/" + "9" * 25), 404)  # beyond a 64-bit id: a name
    problem(client.post("/api/cohorts/999999/$run"), 404)
    cid = client.post("/api/cohorts", json={**PNEUMONIA, "name": "api-errors"}).json()["id"]
    problem(client.get(f"/api/cohorts/{cid}/diff"), 404)  # no run yet
    problem(client.post(f"/api/cohorts/{cid}/$run", params={"as_of": "yesterday"}), 422)
    problem(client.post(f"/api/cohorts/{cid}/$run", json={"as_of": "yesterday"}), 400)
    problem(client.post(f"/api/cohorts/{cid}/$run", params={"version": 7}), 404)
    problem(client.get(f"/api/cohorts/{cid}/diff", params={"from": "abc"}), 422)
    problem(client.get(f"/api/cohorts/{cid}/runs/999999"), 404)
