"""FHIR R4 search conformance fixes on a small hand-built world of their own (SQLite and
PostgreSQL): local and foreign references (§3.1.1.4.12), shared parameters with ``_type``
(§3.1.1.4.24), unsupported modifiers (§3.1.1.4.4), ``_elements`` on choice elements
(§3.1.1.5.9) and Range targets of number and quantity parameters (§3.1.1.4.1, §3.1.1.4.6)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medflow.core.errors import InvalidInput
from medflow.fhir.search import find_ids, parse_query, search_bundle, search_statement
from medflow.fhir.service import FhirService
from tests.integration.fhir.conftest import BASE, World, make_engine, put

pytestmark = pytest.mark.integration

UCUM = "http://unitsofmeasure.org"
OTHER = "http://other.org/fhir"
"""Another server: its ``Patient/x1`` is not this server's Patient/x1."""
JSON = {"Content-Type": "application/fhir+json"}


def _obs(oid: str, code: str, subject: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": "urn:t", "code": code}]},
            "subject": {"reference": subject}, **extra}  # fmt: skip


def resources() -> list[dict[str, Any]]:
    return [
        {"resourceType": "Patient", "id": "x1", "name": [{"family": "Localperson"}]},
        {"resourceType": "Patient", "id": "x2", "name": [{"family": "Secondperson"}]},
        # x1 referred to relatively, absolutely under this server's base, and by another
        # server's URL that ends in the same Patient/x1
        _obs("r1", "a", "Patient/x1"),
        _obs("r2", "a", f"{BASE}/Patient/x1"),
        _obs("r3", "a", f"{OTHER}/Patient/x1"),
        _obs("r4", "b", f"{OTHER}/Patient/x2"),
        {"resourceType": "Questionnaire", "id": "q1", "status": "active",
         "url": "http://acme.org/Questionnaire/q1"},
        {"resourceType": "QuestionnaireResponse", "id": "qr1", "status": "completed",
         "questionnaire": "http://acme.org/Questionnaire/q1|1.0"},
        {"resourceType": "Condition", "id": "k1", "subject": {"reference": "Patient/x1"},
         "code": {"coding": [{"system": "urn:t", "code": "a"}]}},
        {"resourceType": "Condition", "id": "k2", "subject": {"reference": "Patient/x2"},
         "code": {"coding": [{"system": "urn:t", "code": "z"}]}},
        *ranges(),
        {"resourceType": "Observation", "id": "v1", "status": "final",
         "code": {"coding": [{"system": "urn:t", "code": "v"}]},
         "valueQuantity": {"value": 7, "unit": "kg"},
         "effectiveDateTime": "2024-01-02", "note": [{"text": "n"}]},
    ]  # fmt: skip


def ranges() -> list[dict[str, Any]]:
    """Number and quantity targets that are points and Ranges (closed and open)."""

    def risk(rid: str, **prediction: Any) -> dict[str, Any]:
        return {"resourceType": "RiskAssessment", "id": rid, "status": "final",
                "subject": {"reference": "Patient/x1"}, "prediction": [prediction]}  # fmt: skip

    def age(value: float) -> dict[str, Any]:
        return {"value": value, "system": UCUM, "code": "a", "unit": "yr"}

    return [
        risk("rp", probabilityDecimal=0.5),
        risk("rr", probabilityRange={"low": {"value": 0.2}, "high": {"value": 0.4}}),
        risk("ro", probabilityRange={"low": {"value": 0.7}}),  # open above
        risk("rl", probabilityRange={"high": {"value": 0.05}}),  # open below
        {"resourceType": "Condition", "id": "k3", "subject": {"reference": "Patient/x9"},
         "onsetRange": {"low": age(10), "high": age(20)}},
        {"resourceType": "Condition", "id": "k4", "subject": {"reference": "Patient/x9"},
         "onsetAge": age(15)},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cworld(search_db_url: str) -> Iterator[World]:
    engine = make_engine(search_db_url)
    fhir = FhirService(engine)
    for resource in resources():
        put(fhir, resource)
    try:
        yield World(engine, fhir, datetime.now(UTC), engine.dialect.name)
    finally:
        engine.dispose()


def entries(world: World, resource_type: str | None, query: str, **kw: Any) -> list[Any]:
    bundle = search_bundle(world.engine, resource_type, query, base_url=BASE, **kw)
    return [(e["search"]["mode"], e["resource"]["id"]) for e in bundle.get("entry", [])]


def match_ids(world: World, resource_type: str | None, query: str, **kw: Any) -> list[str]:
    return [rid for mode, rid in entries(world, resource_type, query, **kw) if mode == "match"]


def sqlite_plan(world: World, resource_type: str | None, query: str) -> list[str]:
    compiled = search_statement(parse_query(resource_type, query, base_url=BASE)).compile(
        dialect=world.engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    params = tuple(compiled.params[k] for k in compiled.positiontup or ())
    with world.engine.connect() as conn:
        return [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params)]


# --- 1. local and foreign references (§3.1.1.4.12) ------------------------------------------

LOCAL_REFERENCES = [
    ("Observation", "subject=Patient/x1", ["r1", "r2"]),
    ("Observation", "subject=x1", ["r1", "r2"]),  # any target type
    ("Observation", "patient=x1", ["r1", "r2"]),  # the parameter's only target
    ("Observation", "subject:Patient=x1", ["r1", "r2"]),
    ("Observation", f"subject={BASE}/Patient/x1", ["r1", "r2"]),
    ("Observation", f"subject={OTHER}/Patient/x1", ["r3"]),  # the URL as written
    ("Observation", "subject=Patient/x2", []),
    ("Observation", "subject.name=localperson", ["r1", "r2"]),  # chain
    ("Observation", "subject:Patient.name=secondperson", []),
    ("Patient", "_has:Observation:subject:code=urn:t|a", ["x1"]),  # reverse chain
    ("Patient", "_has:Observation:subject:code=urn:t|b", []),
    # a canonical that ends in Questionnaire/q1 is not the local Questionnaire/q1
    ("QuestionnaireResponse", "questionnaire=Questionnaire/q1", []),
    ("QuestionnaireResponse", "questionnaire=q1", []),
    ("QuestionnaireResponse", "questionnaire=http://acme.org/Questionnaire/q1|1.0", ["qr1"]),
]


@pytest.mark.parametrize(("resource_type", "query", "expected"), LOCAL_REFERENCES)
def test_type_id_means_a_local_reference(
    cworld: World, resource_type: str, query: str, expected: list[str]
) -> None:
    """``[type]/[id]`` is a local reference; an absolute URL under the server's base is the
    same resource, another server's URL ending in ``Patient/x1`` is not (R4 §3.1.1.4.12)."""
    assert match_ids(cworld, resource_type, query, strict=True) == expected


def test_includes_follow_local_references_only(cworld: World) -> None:
    assert entries(cworld, "Observation", "_id=r3,r4&_include=Observation:subject") == [
        ("match", "r3"), ("match", "r4"),
    ]  # fmt: skip
    assert entries(cworld, "Observation", "_id=r2,r3&_include=Observation:subject") == [
        ("match", "r2"), ("match", "r3"), ("include", "x1"),
    ]  # fmt: skip
    assert entries(cworld, "Patient", "_id=x1,x2&_revinclude=Observation:subject") == [
        ("match", "x1"), ("match", "x2"), ("include", "r1"), ("include", "r2"),
    ]  # fmt: skip
    assert entries(
        cworld, "QuestionnaireResponse", "_include=QuestionnaireResponse:questionnaire"
    ) == [("match", "qr1")]


def test_find_ids_without_base_url_counts_relative_references_only(cworld: World) -> None:
    assert find_ids(cworld.engine, "Observation", "subject=Patient/x1") == ["r1"]
    assert find_ids(cworld.engine, "Observation", "subject=Patient/x1", base_url=BASE) == [
        "r1", "r2",
    ]  # fmt: skip


def test_local_reference_plan_keeps_the_reference_index(cworld: World) -> None:
    """The url test is a residual filter after the (type, param, target_id, target_type)
    lookup."""
    if cworld.dialect != "sqlite":
        pytest.skip("SQLite's plan; PostgreSQL plans by statistics")
    for query in ("subject=Patient/x1", "patient=x1"):
        plan = sqlite_plan(cworld, "Observation", query)
        assert any("USING INDEX ix_fhir_reference_param_target" in step for step in plan), plan
        assert not any(re.match(r"SCAN ", step) for step in plan), plan


def test_conditional_operations_see_absolute_local_references(client: TestClient) -> None:
    """Conditional create/update/delete and a transaction's conditional references and
    ifNoneExist compare ``Patient/id`` with references under the request's base
    (``http://testserver/fhir``), not with another server's."""
    pid = client.post("/fhir/Patient", json={"resourceType": "Patient"}, headers=JSON).json()["id"]
    local = _obs("ignored", "c", f"http://testserver/fhir/Patient/{pid}")
    foreign = _obs("ignored", "c", f"{OTHER}/Patient/{pid}")
    local_id = client.post("/fhir/Observation", json=local, headers=JSON).json()["id"]
    foreign_id = client.post("/fhir/Observation", json=foreign, headers=JSON).json()["id"]
    query = f"subject=Patient/{pid}&code=urn:t|c"

    again = client.post("/fhir/Observation", json=local, headers={**JSON, "If-None-Exist": query})
    assert again.status_code == 200 and again.json()["id"] == local_id, again.text

    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation", "ifNoneExist": query},
         "resource": local},
        {"request": {"method": "POST", "url": "Observation"},
         "resource": {**_obs("ignored", "d", f"Patient/{pid}"),
                      "hasMember": [{"reference": f"Observation?{query}"}]}},
    ]}  # fmt: skip
    out = client.post("/fhir", json=bundle, headers=JSON)
    assert out.status_code == 200, out.text
    first, second = out.json()["entry"]
    assert first["response"]["status"] == "200 OK" and first["resource"]["id"] == local_id
    assert second["resource"]["hasMember"] == [{"reference": f"Observation/{local_id}"}]

    changed = {**local, "status": "amended"}
    del changed["id"]
    upd = client.put(f"/fhir/Observation?{query}", json=changed, headers=JSON)
    assert upd.status_code == 200 and upd.json()["id"] == local_id, upd.text
    assert client.delete(f"/fhir/Observation?{query}").status_code == 204
    assert client.get(f"/fhir/Observation/{local_id}").status_code == 410
    assert client.get(f"/fhir/Observation/{foreign_id}").status_code == 200


# --- 2. _type with shared parameters (§3.1.1.4.24) ------------------------------------------

SHARED = [
    ("_type=Patient&family=localperson", ["x1"]),
    ("family=secondperson&_type=Patient", ["x2"]),  # _type read first, wherever it stands
    ("_type=Patient&_has:Observation:subject:code=urn:t|a", ["x1"]),  # one type: its search
    ("_type=Patient&name:contains=person&_sort=-family", ["x2", "x1"]),
    ("_type=Observation,Condition&code=urn:t|a", ["r1", "r2", "r3", "k1"]),
    ("code=urn:t|z&_type=Condition,Observation", ["k2"]),
    ("_type=Observation,Condition&patient=x1", ["r1", "r2", "k1"]),  # per type, local only
    ("_type=Observation,Condition&subject=Patient/x2", ["k2"]),
    ("_type=Observation,Condition&code=urn:t|a&_sort=-_id&_count=2", ["r3", "r2"]),
]


@pytest.mark.parametrize(("query", "expected"), SHARED)
def test_type_allows_shared_parameters(cworld: World, query: str, expected: list[str]) -> None:
    """With ``_type`` the parameters every listed type has (same code and type) apply to
    each type (§3.1.1.4.24); they are neither dropped nor a warning."""
    bundle = search_bundle(cworld.engine, None, query, base_url=BASE, strict=True)
    assert [e["resource"]["id"] for e in bundle.get("entry", [])] == expected
    assert "family" not in query or "family" in bundle["link"][0]["url"]


@pytest.mark.parametrize(
    "query",
    [
        "_type=Observation,Patient&code=urn:t|a",  # Patient has no code
        "_type=Observation,Task&performer=x",  # a reference of one, a token of the other
        "family=localperson",  # no _type: only the parameters of all resources
    ],
)
def test_type_rejects_parameters_not_shared(cworld: World, query: str) -> None:
    """A parameter that not every listed type shares: a warning and ignored (lenient), 400
    (strict), as an unknown parameter."""
    bundle = search_bundle(cworld.engine, None, query, base_url=BASE)
    outcome = bundle["entry"][-1]
    assert outcome["search"]["mode"] == "outcome"
    assert "ignored" in outcome["resource"]["issue"][0]["diagnostics"]
    with pytest.raises(InvalidInput, match="strict"):
        search_bundle(cworld.engine, None, query, base_url=BASE, strict=True)


def test_type_shared_parameter_plan_uses_the_index(cworld: World) -> None:
    if cworld.dialect != "sqlite":
        pytest.skip("SQLite's plan; PostgreSQL plans by statistics")
    plan = sqlite_plan(cworld, None, "_type=Observation,Condition&code=urn:t|a")
    assert any("USING INDEX ix_fhir_token_param_code" in step for step in plan), plan
    assert not any(re.match(r"SCAN ", step) for step in plan), plan


# --- 3. unsupported modifiers are rejected; the Prefer header (RFC 7240) -----------------------


@pytest.mark.parametrize(
    ("resource_type", "query"),
    [
        ("Patient", "gender:in=http://hl7.org/fhir/ValueSet/administrative-gender"),
        ("Patient", "gender:below=male"),
        ("Patient", "gender:not-in=http://hl7.org/fhir/ValueSet/administrative-gender"),
        ("Observation", "subject:above=Patient/x1"),
        ("Patient", "family:not=x"),
    ],
)
def test_unsupported_modifier_is_rejected(cworld: World, resource_type: str, query: str) -> None:
    """Servers "SHALL reject any search request that contains a search parameter with an
    unsupported modifier" (§3.1.1.4 ``#modifiers``): 400 under lenient handling too."""
    for strict in (False, True):
        with pytest.raises(InvalidInput, match="not supported"):
            search_bundle(cworld.engine, resource_type, query, base_url=BASE, strict=strict)


def test_unsupported_modifier_is_a_400(client: TestClient) -> None:
    for prefer in ({}, {"Prefer": "handling=lenient"}, {"Prefer": "handling=strict"}):
        r = client.get("/fhir/Patient?gender:in=http://x.org/vs", headers=prefer)
        assert r.status_code == 400, r.text
        assert r.json()["issue"][0]["code"] == "invalid"


PREFER = [
    ("handling=strict", 400),
    ("handling = strict", 400),
    ("HANDLING=strict", 400),
    ("return=minimal, handling=strict", 400),
    ("respond-async;wait=10,handling=strict", 400),
    ("handling=lenient", 200),
    ("handling=strictly", 200),
    ('foo="handling=strict"', 200),
    ("", 200),
]


def test_prefer_handling_is_parsed(client: TestClient) -> None:
    """``Prefer`` per RFC 7240 §2 (comma-separated preferences, ``;`` parameters, whitespace
    around ``=``, case-insensitive names), not a substring test."""
    for prefer, status in PREFER:
        r = client.get("/fhir/Patient?nope=1", headers={"Prefer": prefer} if prefer else {})
        assert r.status_code == status, (prefer, r.text)


# --- 4. _elements names choice elements by their base name (§3.1.1.5.9) ----------------------


@pytest.mark.parametrize(
    ("elements", "kept"),
    [
        ("value", {"valueQuantity"}),
        ("value[x]", {"valueQuantity"}),
        ("Observation.value,effective", {"valueQuantity", "effectiveDateTime"}),
        ("valueQuantity", {"valueQuantity"}),  # the typed name still works
        ("valueString", set()),
        ("note", {"note"}),
    ],
)
def test_elements_keeps_choice_elements(cworld: World, elements: str, kept: set[str]) -> None:
    """``_elements=value`` keeps ``valueQuantity``: a choice element is listed by its base
    name (§3.1.1.5.9); resourceType, id, meta and the mandatory elements stay."""
    bundle = search_bundle(cworld.engine, "Observation", f"_id=v1&_elements={elements}",
                           base_url=BASE)  # fmt: skip
    resource = bundle["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "status", "code"} | kept


# --- 5. Range targets of number and quantity parameters -------------------------------------

RANGES = [
    # number (§3.1.1.4.1): rp 0.5, rr [0.2, 0.4], ro [0.7, ...), rl (..., 0.05]
    ("RiskAssessment", "probability=0.5", ["rp"]),
    ("RiskAssessment", "probability=0.2", []),  # a bound is not the range
    ("RiskAssessment", "probability=0.3", []),  # [0.25, 0.35) does not contain [0.2, 0.4]
    ("RiskAssessment", "probability=gt0.3", ["rp", "rr", "ro"]),  # the range above meets it
    ("RiskAssessment", "probability=ge0.4", ["rp", "rr", "ro"]),
    ("RiskAssessment", "probability=lt0.3", ["rr", "rl"]),
    ("RiskAssessment", "probability=le0.2", ["rr", "rl"]),
    ("RiskAssessment", "probability=sa0.3", ["rp", "ro"]),  # starts after
    ("RiskAssessment", "probability=eb0.45", ["rr", "rl"]),  # ends before
    ("RiskAssessment", "probability=eb0.3", ["rl"]),
    ("RiskAssessment", "probability=ne0.5", ["rr", "ro", "rl"]),
    ("RiskAssessment", "probability=ap0.3", ["rr"]),  # [0.27, 0.33] overlaps [0.2, 0.4]
    ("RiskAssessment", "probability=ap0.8", ["ro"]),
    ("RiskAssessment", "probability=gt0.3,lt0.01", ["rp", "rr", "ro", "rl"]),
    ("RiskAssessment", "subject=Patient/x1&probability=gt0.3", ["rp", "rr", "ro"]),  # a probe
    ("RiskAssessment", "probability:missing=false&probability=gt0.3", ["rp", "rr", "ro"]),
    ("RiskAssessment", "_sort=probability", ["rl", "rr", "rp", "ro"]),  # by the low bound
    ("RiskAssessment", "_sort=-probability", ["ro", "rp", "rr", "rl"]),  # by the high bound
    # quantity (§3.1.1.4.6): k3 [10, 20] a, k4 15 a
    ("Condition", "onset-age=15", ["k4"]),
    ("Condition", f"onset-age=15|{UCUM}|a", ["k4"]),
    ("Condition", "onset-age=10", []),
    ("Condition", f"onset-age=gt18|{UCUM}|a", ["k3"]),
    ("Condition", "onset-age=gt18||a", ["k3"]),
    ("Condition", "onset-age=gt18||mo", []),  # the unit applies to the range's part too
    ("Condition", "onset-age=lt12", ["k3"]),
    ("Condition", "onset-age=sa12", ["k4"]),
    ("Condition", "onset-age=eb25||a", ["k3", "k4"]),
    ("Condition", "onset-age=eb18", ["k4"]),
]


@pytest.mark.parametrize(("resource_type", "query", "expected"), RANGES)
def test_range_targets_are_intervals(
    cworld: World, resource_type: str, query: str, expected: list[str]
) -> None:
    """A Range target is one interval, not two points: eq is met when the search value's
    range contains it, sa/eb compare with its bounds, gt/lt when the range above/below the
    value meets it, a missing bound is open (§3.1.1.4.1 number, §3.1.1.4.6 quantity)."""
    assert match_ids(cworld, resource_type, query, strict=True) == expected


@pytest.mark.parametrize(
    ("resource_type", "query", "indexes"),
    [
        ("RiskAssessment", "probability=gt0.3",
         {"ix_fhir_number_param_value", "ix_fhir_number_param_high"}),
        ("RiskAssessment", "probability=0.3", {"ix_fhir_number_param_value"}),
        ("Condition", f"onset-age=gt18|{UCUM}|a",
         {"ix_fhir_quantity_param_code_value", "ix_fhir_quantity_param_high"}),
        ("Observation", f"value-quantity=120|{UCUM}|mm[Hg]",
         {"ix_fhir_quantity_param_code_value"}),
    ],
)  # fmt: skip
def test_range_plans_use_the_indexes(
    cworld: World, resource_type: str, query: str, indexes: set[str]
) -> None:
    """Points keep their index range on ``value``; the Ranges that only their high bound
    decides come from the partial ``(type, param, value_high)`` index."""
    if cworld.dialect != "sqlite":
        pytest.skip("SQLite's plan; PostgreSQL plans by statistics")
    plan = sqlite_plan(cworld, resource_type, query)
    used = {m.group(1) for step in plan if (m := re.search(r"USING INDEX (\w+)", step))}
    assert indexes <= used, plan
    assert not any(re.match(r"SCAN ", step) for step in plan), plan
