"""Bulk data $export (FHIR Bulk Data Access IG): kick-off needs Prefer: respond-async and
answers 202 + Content-Location; the status endpoint answers 202 while running and then the
manifest; files are ndjson; system, Patient and Group level, _type, _since and
_typeFilter."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/fhir+json"}
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


def export(client: TestClient, url: str) -> dict[str, list[dict[str, Any]]]:
    r = client.get(url, headers=ASYNC)
    assert r.status_code == 202, r.text
    status_url = r.headers["Content-Location"]
    for _ in range(200):
        st = client.get(status_url)
        if st.status_code != 202:
            break
        time.sleep(0.05)
    assert st.status_code == 200, st.text
    out: dict[str, list[dict[str, Any]]] = {}
    for item in st.json()["output"]:
        body = client.get(item["url"])
        assert body.headers["content-type"].startswith("application/fhir+ndjson")
        rows = [json.loads(line) for line in body.text.splitlines() if line]
        assert len(rows) == item["count"]
        out[item["type"]] = rows
    return out


def seed(client: TestClient) -> tuple[list[str], str]:
    pids = []
    for i in range(3):
        pid = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "male"},
                          headers=JSON).json()["id"]  # fmt: skip
        pids.append(pid)
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": f"o{i}"},
               "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
        client.post("/fhir/Observation", json=obs, headers=JSON)
    client.post("/fhir/Practitioner", json={"resourceType": "Practitioner"}, headers=JSON)
    group = {"resourceType": "Group", "type": "person", "actual": True,
             "member": [{"entity": {"reference": f"Patient/{pids[1]}"}}]}  # fmt: skip
    gid = client.post("/fhir/Group", json=group, headers=JSON).json()["id"]
    return pids, gid


def test_export_levels_and_filters(client: TestClient) -> None:
    pids, gid = seed(client)
    everything = export(client, "/fhir/$export")
    assert {k: len(v) for k, v in everything.items()} == {
        "Group": 1, "Observation": 3, "Patient": 3, "Practitioner": 1,
    }  # fmt: skip
    patients = export(client, "/fhir/Patient/$export")
    assert set(patients) == {"Group", "Observation", "Patient"}  # compartment types only
    group = export(client, f"/fhir/Group/{gid}/$export")
    assert [p["id"] for p in group["Patient"]] == [pids[1]]
    assert [o["subject"]["reference"] for o in group["Observation"]] == [f"Patient/{pids[1]}"]
    only = export(client, "/fhir/$export?_type=Patient")
    assert set(only) == {"Patient"}
    assert export(client, "/fhir/$export?_since=2999-01-01T00:00:00Z") == {}

    # _typeFilter: a filtered type keeps the matches of any of its filters, others are whole;
    # a comma inside a query (an OR of values) is not a separator
    filtered = export(
        client,
        "/fhir/$export?_type=Patient,Observation"
        "&_typeFilter=Observation?code:text=o0,o1,Observation?code:text=o2%26subject=Patient/"
        + pids[2],
    )
    assert sorted(o["code"]["text"] for o in filtered["Observation"]) == ["o0", "o1", "o2"]
    assert len(filtered["Patient"]) == 3
    one = export(client, "/fhir/Patient/$export?_typeFilter=Observation?code:text=o1")
    assert [o["code"]["text"] for o in one["Observation"]] == ["o1"]
    assert len(one["Patient"]) == 3 and "Group" in one


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_export_errors(client: TestClient) -> None:
    assert client.get("/fhir/$export").status_code == 400  # no Prefer: respond-async
    assert client.get("/fhir/$export?_type=Nope", headers=ASYNC).status_code == 400
    assert client.get("/fhir/$export?_outputFormat=csv", headers=ASYNC).status_code == 501
    assert client.get("/fhir/Group/none/$export", headers=ASYNC).status_code == 404
    for bad in ("Observation", "Observation?nope=1", "Nope?x=1"):
        r = client.get(f"/fhir/$export?_typeFilter={bad}", headers=ASYNC)
        assert r.status_code == 400, (bad, r.text)
    r = client.get("/fhir/$export?_type=Patient&_typeFilter=Observation?code=x", headers=ASYNC)
    assert r.status_code == 400 and "not in _type" in r.text
    assert client.get("/fhir/$export-status/nope").status_code == 404
    r = client.get("/fhir/$export", headers=ASYNC)
    job = r.headers["Content-Location"].rsplit("/", 1)[1]
    assert client.delete(f"/fhir/$export-status/{job}").status_code == 202
    r = client.get(f"/fhir/$export-file/{job}/..%2F..%2Findex.sqlite3")
    assert r.status_code == 404  # no way out of the job's folder
