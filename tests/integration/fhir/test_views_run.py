"""``ViewDefinition/$run`` (SQL-on-FHIR v2): inline resources in json/ndjson/csv with the view's
column order, over the store's resources (paged; SQLite and PostgreSQL), shipped views by
reference, ``_limit``, and errors as OperationOutcome."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medflow.fhir import views_store
from medflow.fhir.views_store import shipped_views

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/fhir+json"}
VIEW: dict[str, Any] = {
    "resourceType": "ViewDefinition",
    "name": "patient_demo",
    "status": "active",
    "resource": "Patient",
    "select": [
        {
            "column": [
                {"name": "id", "path": "getResourceKey()"},
                {"name": "gender", "path": "gender"},
            ]
        },
        {
            "column": [
                {"name": "birth_year", "path": "birthDate.toString().substring(0, 4)"},
                {"name": "names", "path": "name.given", "collection": True},
            ]
        },
    ],
}


def patient(pid: str, gender: str, given: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "gender": gender,
        "birthDate": "1970-05-01",
        "name": [{"family": "Doe", "given": given}],
    }


def parameters(*params: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(params)}


def run(client: TestClient, body: dict[str, Any], query: str = "") -> Any:
    return client.post(f"/fhir/ViewDefinition/$run{query}", json=body, headers=JSON)


INLINE = [
    patient("a", "female", ["Ann", "Marie"]),
    patient("b", "male", ["Bob"]),
    {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}},
]


def test_run_inline_json_ndjson_csv(client: TestClient) -> None:
    resources = [{"name": "resource", "resource": r} for r in INLINE]
    body = parameters({"name": "viewResource", "resource": VIEW}, *resources)
    r = run(client, body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    rows = r.json()
    assert rows == [
        {"id": "a", "gender": "female", "birth_year": "1970", "names": ["Ann", "Marie"]},
        {"id": "b", "gender": "male", "birth_year": "1970", "names": ["Bob"]},
    ]
    assert list(json.loads(r.text, object_pairs_hook=list)[0]) == [
        ("id", "a"),
        ("gender", "female"),
        ("birth_year", "1970"),
        ("names", ["Ann", "Marie"]),
    ]  # keys in the view's column order

    nd = run(client, parameters(*body["parameter"], {"name": "_format", "valueCode": "ndjson"}))
    assert nd.headers["content-type"].startswith("application/x-ndjson")
    assert [json.loads(line) for line in nd.text.splitlines()] == rows

    text = run(client, body, "?_format=csv")
    assert text.headers["content-type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(text.text)))
    assert table == [
        ["id", "gender", "birth_year", "names"],
        ["a", "female", "1970", '["Ann","Marie"]'],
        ["b", "male", "1970", '["Bob"]'],
    ]
    no_header = run(
        client,
        parameters(
            *body["parameter"],
            {"name": "header", "valueBoolean": False},
            {"name": "_format", "valueString": "text/csv"},
        ),
    )
    assert no_header.text.splitlines()[0] == 'a,female,1970,"[""Ann"",""Marie""]"'

    limited = run(client, parameters(*body["parameter"], {"name": "_limit", "valueInteger": 1}))
    assert [row["id"] for row in limited.json()] == ["a"]


def test_run_over_the_store_paged(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views_store, "PAGE", 3)  # several pages: keyset paging
    for i in range(7):
        given = [f"G{i}"]
        client.put(
            f"/fhir/Patient/p{i}",
            json=patient(f"p{i}", "female" if i % 2 else "male", given),
            headers=JSON,
        )
    client.delete("/fhir/Patient/p6")
    client.post("/fhir/Observation", json=INLINE[2] | {"id": None}, headers=JSON)
    r = run(client, parameters({"name": "viewResource", "resource": VIEW}))
    assert r.status_code == 200, r.text
    assert sorted(row["id"] for row in r.json()) == [f"p{i}" for i in range(6)]

    shipped = run(
        client,
        parameters(
            {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/patient"}}
        ),
    )
    assert shipped.status_code == 200, shipped.text
    first = shipped.json()[0]
    assert list(first) == [c["name"] for c in shipped_views()["patient"]["select"][0]["column"]]
    assert first["family"] == "Doe" and first["deceased"] is False

    got = client.get("/fhir/ViewDefinition/patient/$run", params={"_format": "csv", "_limit": 2})
    assert got.status_code == 200, got.text
    assert len(got.text.splitlines()) == 3  # header and two rows


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (parameters({"name": "viewResource", "resource": VIEW | {"select": []}}), 400, "select"),
        (
            parameters(
                {
                    "name": "viewResource",
                    "resource": {k: v for k, v in VIEW.items() if k != "resource"},
                }
            ),
            400,
            "resource",
        ),
        (
            parameters(
                {
                    "name": "viewResource",
                    "resource": VIEW
                    | {"select": [{"column": [{"name": "x", "path": "name.given"}]}]},
                },
                {"name": "resource", "resource": INLINE[0]},
            ),
            400,
            "collection",
        ),
        (parameters({"name": "resource", "resource": INLINE[0]}), 400, "viewResource"),
        (
            parameters(
                {"name": "viewReference", "valueReference": {"reference": "ViewDefinition/nope"}}
            ),
            404,
            "nope",
        ),
        ({"resourceType": "Patient"}, 400, "Parameters"),
        (
            parameters(
                {"name": "viewResource", "resource": VIEW}, {"name": "_format", "valueCode": "xlsx"}
            ),
            501,
            "_format",
        ),
    ],
)
def test_run_errors_are_operation_outcomes(
    client: TestClient, body: dict[str, Any], status: int, words: str
) -> None:
    r = run(client, body)
    assert r.status_code == status, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert words in outcome["issue"][0]["diagnostics"]
