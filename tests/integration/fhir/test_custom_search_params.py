"""Custom search parameters as SearchParameter resources (R4 searchparameter.html): an active
one is checked, registered once its write commits, the resources of its base are reindexed so
that it finds what was stored before; retiring it removes it; a new server process over the
same database registers the stored ones again. On SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from medflow.bootstrap import build, create_app
from medflow.core.settings import Settings
from medflow.fhir.definitions import default_registry, search_params

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/fhir+json"}
CODE = "test-hair-colour"


def search_parameter(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "SearchParameter",
        "url": "https://medflow.example.org/fhir/SearchParameter/test-hair-colour",
        "name": "HairColour",
        "status": "active",
        "description": "The hair colour extension of a Patient",
        "code": CODE,
        "base": ["Patient"],
        "type": "token",
        "expression": "Patient.extension.where(url = 'urn:test:hair').value",
        **extra,
    }


def patient(colour: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "extension": [{"url": "urn:test:hair", "valueCode": colour}],
    }


def ids(client: TestClient, query: dict[str, str]) -> set[str]:
    r = client.get("/fhir/Patient", params=query, headers={"Prefer": "handling=strict"})
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


def test_search_parameter_resource_registers_reindexes_and_retires(
    client: TestClient, settings: Settings
) -> None:
    red = client.post("/fhir/Patient", json=patient("red"), headers=JSON).json()["id"]
    client.post("/fhir/Patient", json=patient("black"), headers=JSON)
    unknown = client.get(f"/fhir/Patient?{CODE}=red", headers={"Prefer": "handling=strict"})
    assert unknown.status_code == 400  # not a parameter yet

    bad = client.post(
        "/fhir/SearchParameter", json=search_parameter(expression="Patient.(("), headers=JSON
    )
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    assert CODE not in search_params("Patient")

    made = client.post("/fhir/SearchParameter", json=search_parameter(), headers=JSON)
    assert made.status_code == 201, made.text
    sp_id = made.json()["id"]
    try:
        assert ids(client, {CODE: "red"}) == {red}  # stored before the parameter: reindexed
        later = client.post("/fhir/Patient", json=patient("red"), headers=JSON).json()["id"]
        assert ids(client, {CODE: "red"}) == {red, later}
        capability = client.get("/fhir/metadata").json()
        patient_rest = next(r for r in capability["rest"][0]["resource"] if r["type"] == "Patient")
        assert CODE in {p["name"] for p in patient_rest["searchParam"]}

        # a second server process over the same database registers it at start
        default_registry().unregister("Patient", CODE)
        assert CODE not in search_params("Patient")
        with TestClient(create_app(second := build(settings))) as again:
            assert ids(again, {CODE: "red"}) == {red, later}
        second.close()

        retired = client.put(
            f"/fhir/SearchParameter/{sp_id}",
            json=search_parameter(id=sp_id, status="retired"),
            headers=JSON,
        )
        assert retired.status_code == 200, retired.text
        assert CODE not in search_params("Patient")
        gone = client.get(f"/fhir/Patient?{CODE}=red", headers={"Prefer": "handling=strict"})
        assert gone.status_code == 400
    finally:
        client.delete(f"/fhir/SearchParameter/{sp_id}")
        default_registry().unregister("Patient", CODE)


def test_search_parameter_in_a_failed_transaction_registers_nothing(client: TestClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": search_parameter(),
             "request": {"method": "POST", "url": "SearchParameter"}},
            {"resource": {"resourceType": "Patient", "birthDate": "nope"},
             "request": {"method": "POST", "url": "Patient"}},
        ],
    }  # fmt: skip
    assert client.post("/fhir", json=bundle, headers=JSON).status_code == 400
    assert CODE not in search_params("Patient")


def test_loading_a_standard_search_parameter_changes_nothing(client: TestClient) -> None:
    before = search_params("Patient")["family"]
    standard = {
        "resourceType": "SearchParameter",
        "url": "http://hl7.org/fhir/SearchParameter/individual-family",
        "name": "family",
        "status": "active",
        "description": "A portion of the family name of the patient",
        "code": "family",
        "base": ["Patient", "Practitioner"],
        "type": "string",
        "expression": "Patient.name.family | Practitioner.name.family",
    }
    assert client.post("/fhir/SearchParameter", json=standard, headers=JSON).status_code == 201
    assert search_params("Patient")["family"] is before
