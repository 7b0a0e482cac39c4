"""FHIR R4 REST at /fhir (http.html §3.1.0): create, read, vread, update (also as create),
version-aware update (If-Match, 412), JSON Patch, delete (410 after), instance/type/system
history with _since and paging, structural errors as OperationOutcome with element paths,
CapabilityStatement; on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/fhir+json"}


def patient(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:medflow:mrn", "value": "MRN-1"}],
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "gender": "female",
        "birthDate": "1970-05-01",
        **extra,
    }


def test_create_read_update_delete_history(client: TestClient) -> None:
    r = client.post("/fhir/Patient", json=patient(id="ignored"), headers=JSON)
    assert r.status_code == 201, r.text
    created = r.json()
    pid = created["id"]
    assert pid != "ignored"
    assert created["meta"]["versionId"] == "1"
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"].endswith(f"/fhir/Patient/{pid}/_history/1")
    assert r.headers["content-type"].startswith("application/fhir+json")

    r = client.get(f"/fhir/Patient/{pid}")
    assert r.status_code == 200 and r.json()["name"][0]["family"] == "Doe"

    changed = {**created, "gender": "other"}
    r = client.put(f"/fhir/Patient/{pid}", json=changed, headers={**JSON, "If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    r = client.put(f"/fhir/Patient/{pid}", json=changed, headers={**JSON, "If-Match": 'W/"1"'})
    assert r.status_code == 412
    assert r.json()["resourceType"] == "OperationOutcome"

    same = client.put(f"/fhir/Patient/{pid}", json=changed, headers=JSON)
    assert same.status_code == 200 and same.json()["meta"]["versionId"] == "2"  # no-op update

    r = client.patch(
        f"/fhir/Patient/{pid}",
        json=[{"op": "replace", "path": "/birthDate", "value": "1971-01-01"}],
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["birthDate"] == "1971-01-01" and r.json()["meta"]["versionId"] == "3"

    assert client.get(f"/fhir/Patient/{pid}/_history/1").json()["gender"] == "female"
    assert client.get(f"/fhir/Patient/{pid}/_history/9").status_code == 404

    r = client.delete(f"/fhir/Patient/{pid}")
    assert r.status_code == 204
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 204  # idempotent

    bundle = client.get(f"/fhir/Patient/{pid}/_history").json()
    assert bundle["type"] == "history" and bundle["total"] == 4
    methods = [e["request"]["method"] for e in bundle["entry"]]
    assert methods == ["DELETE", "PATCH", "PUT", "POST"]  # newest first
    assert "resource" not in bundle["entry"][0]


def test_update_as_create_and_ids(client: TestClient) -> None:
    r = client.put("/fhir/Patient/p-42", json=patient(id="p-42"), headers=JSON)
    assert r.status_code == 201 and r.json()["id"] == "p-42"
    r = client.put("/fhir/Patient/p-43", json=patient(id="p-42"), headers=JSON)
    assert r.status_code == 400  # body id differs from the URL
    r = client.put("/fhir/Patient/bad$id", json=patient(id="bad$id"), headers=JSON)
    assert r.status_code == 400
    r = client.put("/fhir/Observation/p-42", json=patient(id="p-42"), headers=JSON)
    assert r.status_code == 400 and "does not match" in r.text


def test_bad_input_is_an_operation_outcome_with_the_path(client: TestClient) -> None:
    r = client.post("/fhir/Patient", content=b'{"resourceType": "Patient",', headers=JSON)
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"

    r = client.post("/fhir/Patient", json=patient(birthDate="1970-13-45"), headers=JSON)
    assert r.status_code == 400
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Patient.birthDate"]

    r = client.post("/fhir/Patient", json=patient(colour="blue"), headers=JSON)
    assert r.status_code == 400
    assert r.json()["issue"][0]["expression"] == ["Patient.colour"]

    r = client.post("/fhir/Observation", json={"resourceType": "Observation"}, headers=JSON)
    assert r.status_code == 400  # status and code are required
    paths = {i["expression"][0] for i in r.json()["issue"]}
    assert {"Observation.status", "Observation.code"} <= paths

    r = client.get("/fhir/Patient/nope")
    assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-found"
    r = client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})
    assert r.status_code == 406


def test_type_and_system_history_since_and_paging(client: TestClient) -> None:
    first = client.post("/fhir/Patient", json=patient(), headers=JSON).json()
    mark = first["meta"]["lastUpdated"]
    for i in range(4):
        obs = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "subject": {"reference": f"Patient/{first['id']}"},
            "valueQuantity": {"value": 120 + i, "unit": "mmHg"},
        }
        assert client.post("/fhir/Observation", json=obs, headers=JSON).status_code == 201
    assert client.get("/fhir/Observation/_history").json()["total"] == 4
    system = client.get("/fhir/_history", params={"_since": mark}).json()
    assert system["total"] == 5
    seen = []
    url: str | None = "/fhir/_history?_count=2"
    while url:
        page = client.get(url).json()
        seen += [e["fullUrl"] for e in page["entry"]]
        url = next((ln["url"] for ln in page["link"] if ln["relation"] == "next"), None)
    assert len(seen) == 5 and len(set(seen)) == 5
    assert client.get("/fhir/_history", params={"_since": "2020-01-01"}).status_code == 400


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_capability_statement(client: TestClient) -> None:
    cs = client.get("/fhir/metadata").json()
    assert cs["resourceType"] == "CapabilityStatement" and cs["fhirVersion"] == "4.0.1"
    types = {r["type"] for r in cs["rest"][0]["resource"]}
    assert {"Patient", "ImagingStudy", "DiagnosticReport", "Endpoint"} <= types
    assert len(types) >= 145


def test_changes_cursor(client: TestClient, container: Any) -> None:
    a = client.post("/fhir/Patient", json=patient(), headers=JSON).json()
    client.delete(f"/fhir/Patient/{a['id']}")
    changes = container.fhir.changes(after=0)
    assert [(c.method, c.version_id) for c in changes] == [("create", 1), ("delete", 2)]
    assert container.fhir.changes(after=changes[-1].seq) == []


def test_transaction_is_atomic_and_resolves_urn_uuid(client: TestClient) -> None:
    pid = "urn:uuid:0b8c1b0e-6a4d-4d54-9b0e-2a4c5e1d7f01"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:5f0c1a7e-0d5c-4c1e-8a43-7a6b2e9d3c11",
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "weight"},
                    "subject": {"reference": pid},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "fullUrl": pid,
                "resource": patient(),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": patient(id="tx-put"),
                "request": {"method": "PUT", "url": "Patient/tx-put"},
            },
        ],
    }
    r = client.post("/fhir", json=bundle, headers=JSON)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["201 Created", "201 Created", "201 Created"]
    obs, pat = out["entry"][0]["resource"], out["entry"][1]["resource"]
    assert obs["subject"]["reference"] == f"Patient/{pat['id']}"
    assert client.get(f"/fhir/Patient/{pat['id']}").status_code == 200

    before = client.get("/fhir/_history").json()["total"]
    bad = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {
                "resource": patient(id="x", birthDate="not-a-date"),
                "request": {"method": "PUT", "url": "Patient/x"},
            },
        ],
    }
    r = client.post("/fhir", json=bad, headers=JSON)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    assert "entry[1]" in r.text
    assert client.get("/fhir/_history").json()["total"] == before  # nothing written


def test_batch_entries_fail_alone(client: TestClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
            {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
            {"request": {"method": "DELETE", "url": "Patient/also-missing"}},
        ],
    }
    r = client.post("/fhir", json=bundle, headers=JSON)
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses == ["201 Created", "404", "204 No Content"]
    assert r.json()["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_patient_everything_is_the_compartment(client: TestClient) -> None:
    pid = client.post("/fhir/Patient", json=patient(), headers=JSON).json()["id"]
    other = client.post("/fhir/Patient", json=patient(), headers=JSON).json()["id"]
    mine = []
    for subject in (pid, pid, other):
        cond = {
            "resourceType": "Condition",
            "subject": {"reference": f"Patient/{subject}"},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "307576001"}]},
        }
        made = client.post("/fhir/Condition", json=cond, headers=JSON).json()
        if subject == pid:
            mine.append(made["id"])
    enc = {"resourceType": "Encounter", "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    enc_id = client.post("/fhir/Encounter", json=enc, headers=JSON).json()["id"]
    client.delete(f"/fhir/Condition/{mine[1]}")
    bundle = client.get(f"/fhir/Patient/{pid}/$everything").json()
    got = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]]
    assert got[0] == ("Patient", pid)
    assert sorted(got[1:]) == sorted([("Condition", mine[0]), ("Encounter", enc_id)])
    assert client.get("/fhir/Patient/nobody/$everything").status_code == 404


def test_search_and_conditional_operations(client: TestClient) -> None:
    for i in range(3):
        p = patient(identifier=[{"system": "urn:medflow:mrn", "value": f"S-{i}"}])
        assert client.post("/fhir/Patient", json=p, headers=JSON).status_code == 201
    found = client.get("/fhir/Patient", params={"identifier": "urn:medflow:mrn|S-1"}).json()
    assert found["type"] == "searchset" and found["total"] == 1
    by_post = client.post(
        "/fhir/Patient/_search",
        data={"identifier": "urn:medflow:mrn|S-2"},
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ).json()
    assert by_post["total"] == 1
    system = client.get("/fhir", params={"_type": "Patient", "family": "doe"}).json()
    assert system["total"] == 3

    body = patient(identifier=[{"system": "urn:medflow:mrn", "value": "S-1"}])
    again = client.post(
        "/fhir/Patient",
        json=body,
        headers={**JSON, "If-None-Exist": "identifier=urn:medflow:mrn|S-1"},
    )
    assert again.status_code == 200  # exists: not created twice
    many = client.post("/fhir/Patient", json=body, headers={**JSON, "If-None-Exist": "family=doe"})
    assert many.status_code == 412
    new = client.post(
        "/fhir/Patient", json=body, headers={**JSON, "If-None-Exist": "identifier=urn:x|none"}
    )
    assert new.status_code == 201

    upd = client.put(
        "/fhir/Patient?identifier=urn:medflow:mrn|S-2", json=patient(gender="other"), headers=JSON
    )
    assert upd.status_code == 200 and upd.json()["gender"] == "other"
    assert client.put("/fhir/Patient?family=doe", json=patient(), headers=JSON).status_code == 412
    gone = client.delete("/fhir/Patient?identifier=urn:medflow:mrn|S-0")
    assert gone.status_code == 204
    after = client.get("/fhir/Patient", params={"identifier": "urn:medflow:mrn|S-0"}).json()
    assert after["total"] == 0
