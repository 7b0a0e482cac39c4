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
    operations = {o["name"]: o["definition"] for o in cs["rest"][0]["operation"]}
    assert operations["run"] == "http://sql-on-fhir.org/OperationDefinition/$run"
    view = {"resourceType": "ViewDefinition", "resource": "Patient", "status": "active",
            "select": [{"column": [{"name": "id", "path": "id"}]}]}  # fmt: skip
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "viewResource", "resource": view},
        {"name": "resource", "resource": patient(id="p1")},
        {"name": "_format", "valueCode": "json"}]}  # fmt: skip
    ran = client.post("/fhir/ViewDefinition/$run", json=body, headers=JSON)
    assert ran.status_code == 200 and ran.json() == [{"id": "p1"}]  # the listed operation runs


def test_changes_cursor(client: TestClient, container: Any) -> None:
    a = client.post("/fhir/Patient", json=patient(), headers=JSON).json()
    client.delete(f"/fhir/Patient/{a['id']}")
    changes = container.fhir.changes(after=0)
    assert [(c.method, c.version_id) for c in changes] == [("create", 1), ("delete", 2)]
    assert container.fhir.changes(after=changes[-1].seq) == []
    only = container.fhir.changes(after=0, types=("Observation",))
    assert [c.seq for c in only] == [c.seq for c in changes]  # the cursor passes every write
    assert all(c.resource is None for c in only)  # contents of other types are not read


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


def _entry(resource: dict[str, Any] | None, method: str, url: str, **request: str) -> Any:
    item: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        item["resource"] = resource
    return item


def test_transaction_conditional_create_and_references(client: TestClient) -> None:
    """ifNoneExist, conditional references (to the Bundle's own conditional create and to
    stored resources), conditional PUT/DELETE and GET searches inside a transaction (R4
    §3.1.0.11.2); the same Bundle posted twice creates the patient once."""
    mrn = "urn:medflow:mrn|TX-7"
    ident = [{"system": "urn:medflow:mrn", "value": "TX-7"}]

    def bundle() -> dict[str, Any]:
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
               "subject": {"reference": f"Patient?identifier={mrn}"}}  # fmt: skip
        return {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                _entry(obs, "POST", "Observation"),  # refers to a later entry by identifier
                _entry(
                    patient(identifier=ident), "POST", "Patient", ifNoneExist=f"identifier={mrn}"
                ),
                _entry(None, "GET", f"Patient?identifier={mrn}"),
            ],
        }

    first = client.post("/fhir", json=bundle(), headers=JSON)
    assert first.status_code == 200, first.text
    entries = first.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "201 Created", "200 OK"]
    pid = entries[1]["resource"]["id"]
    assert entries[0]["resource"]["subject"]["reference"] == f"Patient/{pid}"
    assert entries[2]["resource"]["type"] == "searchset"
    assert entries[2]["resource"]["total"] == 1  # the search sees the transaction's own write

    second = client.post("/fhir", json=bundle(), headers=JSON).json()["entry"]
    assert second[1]["response"]["status"] == "200 OK" and second[1]["resource"]["id"] == pid
    assert second[0]["resource"]["subject"]["reference"] == f"Patient/{pid}"
    found = client.get("/fhir/Patient", params={"identifier": mrn}).json()
    assert found["total"] == 1
    obs = client.get("/fhir/Observation", params={"subject": f"Patient/{pid}"}).json()
    assert obs["total"] == 2

    update = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            _entry(patient(identifier=ident, gender="other"), "PUT", f"Patient?identifier={mrn}"),
            _entry(None, "DELETE", "Observation?code:text=weight"),
        ],
    }
    r = client.post("/fhir", json=update, headers=JSON)
    assert r.status_code == 412, r.text  # two Observations match the conditional delete
    assert "entry[1]" in r.text
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "female"  # nothing written
    update["entry"][1] = _entry(None, "DELETE", f"Observation?_id={entries[0]['resource']['id']}")
    r = client.post("/fhir", json=update, headers=JSON)
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["200 OK", "204 No Content"]
    assert client.get(f"/fhir/Patient/{pid}").json()["gender"] == "other"


def test_transaction_unresolvable_conditional_reference_writes_nothing(client: TestClient) -> None:
    before = client.get("/fhir/_history").json()["total"]
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient?identifier=urn:medflow:mrn|NOBODY"}}  # fmt: skip
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_entry(patient(), "POST", "Patient"), _entry(obs, "POST", "Observation")],
    }
    r = client.post("/fhir", json=bundle, headers=JSON)
    assert r.status_code == 412, r.text
    assert "entry[1]" in r.text and "matches no Patient" in r.text
    assert client.get("/fhir/_history").json()["total"] == before
    bundle["type"] = "batch"
    r = client.post("/fhir", json=bundle, headers=JSON)
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created", "412"]


def test_batch_invalid_entry_fails_alone(client: TestClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            _entry(patient(birthDate="not-a-date"), "POST", "Patient"),
            _entry(patient(), "POST", "Patient"),
        ],
    }
    r = client.post("/fhir", json=bundle, headers=JSON)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["400", "201 Created"]
    assert "birthDate" in str(entries[0]["response"]["outcome"])


def test_transaction_of_mixed_index_rows_is_searchable(client: TestClient) -> None:
    """Index rows are written per table once per transaction: rows of different shapes (a
    composite over a Quantity and one over a string) go in one statement."""
    loinc = "http://loinc.org"
    hr = {"resourceType": "Observation", "status": "final",
          "code": {"coding": [{"system": loinc, "code": "8867-4"}]},
          "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org",
                            "code": "/min"}}  # fmt: skip
    note = {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": loinc, "code": "8251-1"}]},
            "valueString": "well"}  # fmt: skip
    bare = {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": loinc, "code": "8867-4"}]},
            "valueQuantity": {"value": 90}}  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [_entry(r, "POST", "Observation") for r in (hr, note, bare)]}  # fmt: skip
    r = client.post("/fhir", json=bundle, headers=JSON)
    assert r.status_code == 200, r.text
    q = client.get("/fhir/Observation", params={"code-value-quantity": f"{loinc}|8867-4$gt70"})
    assert q.json()["total"] == 2
    s = client.get("/fhir/Observation", params={"code-value-string": f"{loinc}|8251-1$well"})
    assert s.json()["total"] == 1


def test_total_is_counted_on_request_or_when_the_page_shows_the_end(client: TestClient) -> None:
    for i in range(5):
        body = patient(identifier=[{"system": "urn:medflow:mrn", "value": f"TOT-{i}"}])
        client.post("/fhir/Patient", json=body, headers=JSON)
    page = client.get("/fhir/Patient", params={"_count": 2}).json()
    assert "total" not in page and len(page["entry"]) == 2  # a next page: not counted
    accurate = client.get("/fhir/Patient", params={"_count": 2, "_total": "accurate"}).json()
    assert accurate["total"] == 5
    assert any(link["relation"] == "last" for link in accurate["link"])
    last = client.get("/fhir/Patient", params={"_count": 2, "_offset": 4}).json()
    assert last["total"] == 5  # the page shows the end: exact for free
    assert client.get("/fhir/Patient", params={"_summary": "count"}).json()["total"] == 5


def test_bundle_edge_cases(client: TestClient) -> None:
    """Entries without a resource, conditional urls without criteria, a DELETE before a
    conditional create of the same identifier, a repeated ifNoneExist, and a batch whose
    entries fail alone (R4 §3.1.0.11)."""

    def tx(*entries: Any, kind: str = "transaction") -> Any:
        return client.post("/fhir", json={"resourceType": "Bundle", "type": kind,
                                          "entry": list(entries)}, headers=JSON)  # fmt: skip

    assert tx({"request": {"method": "POST", "url": "Patient"}}).status_code == 400
    assert tx(_entry(None, "DELETE", "Patient?")).status_code == 400
    assert tx(_entry(patient(), "PUT", "Patient?_count=1")).status_code == 400
    ident = [{"system": "urn:medflow:mrn", "value": "EDGE-1"}]
    mrn = "identifier=urn:medflow:mrn|EDGE-1"
    old = client.post("/fhir/Patient", json=patient(identifier=ident), headers=JSON).json()["id"]
    r = tx(_entry(patient(identifier=ident), "POST", "Patient", ifNoneExist=mrn),
           _entry(None, "DELETE", f"Patient?{mrn}"))  # fmt: skip
    assert r.status_code == 200, r.text
    created = r.json()["entry"][0]
    assert created["response"]["status"] == "201 Created" and created["resource"]["id"] != old
    two = tx(*[_entry(patient(identifier=[{"system": "urn:medflow:mrn", "value": "EDGE-2"}]),
                      "POST", "Patient", ifNoneExist="identifier=urn:medflow:mrn|EDGE-2")
               for _ in range(2)])  # fmt: skip
    assert two.status_code == 200, two.text
    assert len({e["resource"]["id"] for e in two.json()["entry"]}) == 1
    found = client.get("/fhir/Patient", params={"identifier": "urn:medflow:mrn|EDGE-2"}).json()
    assert found["total"] == 1
    batch = tx({"request": {"method": "POST", "url": "Nope"}, "resource": patient()},
               {"request": {"method": "POST", "url": "Patient"}},
               _entry(patient(), "POST", "Patient"), kind="batch")  # fmt: skip
    assert batch.status_code == 200, batch.text
    assert [e["response"]["status"] for e in batch.json()["entry"]] == ["400", "400", "201 Created"]


def test_transaction_if_match(client: TestClient) -> None:
    pid = client.post("/fhir/Patient", json=patient(), headers=JSON).json()["id"]
    body = patient(id=pid, gender="other")

    def put(tag: str) -> Any:
        entry = _entry(body, "PUT", f"Patient/{pid}", ifMatch=tag)
        return client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction",
                                          "entry": [entry]}, headers=JSON)  # fmt: skip

    assert put('W/"2"').status_code == 412  # the current version is 1
    assert put("nonsense").status_code == 400
    ok = put('W/"1"')
    assert ok.status_code == 200, ok.text
    assert ok.json()["entry"][0]["response"]["etag"] == 'W/"2"'
