"""Composite criteria implied by separate ones (``Observation?code=…&value-quantity=…`` also
means ``code-value-quantity=…``, R4 §3.1.1.4.8) drive the search from the composite index;
the results are those of the separate criteria (SQLite and PostgreSQL)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from medflow.fhir.search import parse_query, search_bundle, search_statement
from medflow.fhir.search_parse import Leaf
from medflow.fhir.service import FhirService
from tests.integration.fhir.conftest import BASE, World, make_engine, put

pytestmark = pytest.mark.integration
LOINC, UCUM, LOCAL = "http://loinc.org", "http://unitsofmeasure.org", "urn:local"


def obs(oid: str, codes: list[tuple[str, str]], value: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "code": {"coding": [{"system": s, "code": c} for s, c in codes]}, **value}  # fmt: skip


def qty(value: float, code: str | None, system: str | None = UCUM) -> dict[str, Any]:
    q: dict[str, Any] = {"value": value, "unit": code or "?"}
    if code is not None and system is not None:
        q |= {"system": system, "code": code}
    return {"valueQuantity": q}


RESOURCES = [
    obs("hdl-low", [(LOINC, "2085-9")], qty(40, "mg/dL")),
    obs("hdl-high", [(LOINC, "2085-9"), (LOCAL, "HDL")], qty(90, "mg/dL")),
    obs("hdl-mmol", [(LOINC, "2085-9")], qty(2.1, "mmol/L")),
    obs("hdl-unit-only", [(LOINC, "2085-9")], qty(95, None)),
    obs("glucose", [(LOINC, "2345-7")], qty(120, "mg/dL")),
    obs("hdl-text", [(LOINC, "2085-9")], {"valueString": "high"}),
]
CASES = [
    (f"code={LOINC}|2085-9&value-quantity=gt77|{UCUM}|mg/dL", ["hdl-high"]),
    (f"code=2085-9&value-quantity=gt30|{UCUM}|mg/dL", ["hdl-high", "hdl-low"]),
    (f"code={LOCAL}|HDL&value-quantity=gt77|{UCUM}|mg/dL", ["hdl-high"]),
    (f"code={LOINC}|2085-9&value-quantity=gt77", ["hdl-high", "hdl-unit-only"]),
    (f"code={LOINC}|2085-9&value-quantity=lt3|{UCUM}|mmol/L", ["hdl-mmol"]),
    (f"code={LOINC}|2345-7&value-quantity=gt77|{UCUM}|mg/dL", ["glucose"]),
    (f"code={LOINC}|2345-7&value-quantity=gt200|{UCUM}|mg/dL", []),
]


@pytest.fixture(scope="module")
def qworld(search_db_url: str) -> Iterator[World]:
    engine = make_engine(search_db_url)
    fhir = FhirService(engine)
    for resource in RESOURCES:
        put(fhir, resource)
    try:
        yield World(engine, fhir, datetime.now(UTC), engine.dialect.name)
    finally:
        engine.dispose()


@pytest.mark.parametrize(("query", "expected"), CASES)
def test_implied_composite_keeps_the_results(
    qworld: World, query: str, expected: list[str]
) -> None:
    bundle = search_bundle(qworld.engine, "Observation", query, base_url=BASE)
    assert sorted(e["resource"]["id"] for e in bundle.get("entry", [])) == sorted(expected)


def test_only_plain_single_values_imply_a_composite() -> None:
    def implied(query: str) -> list[str]:
        plan = parse_query("Observation", query)
        return [c.param.code for c in plan.criteria
                if isinstance(c, Leaf) and c.param.type == "composite"]  # fmt: skip

    assert implied(f"code={LOINC}|2085-9&value-quantity=gt77|{UCUM}|mg/dL") == [
        "code-value-quantity"
    ]
    assert implied(f"code={LOINC}|2085-9&value-quantity=gt77||mg") == []  # unit form
    assert implied(f"code:text=hdl&value-quantity=gt77|{UCUM}|mg/dL") == []  # modifier
    assert implied(f"code=a,b&value-quantity=gt77|{UCUM}|mg/dL") == []  # OR list
    assert implied(f"value-quantity=gt77|{UCUM}|mg/dL") == []


def test_implied_composite_drives_from_its_index(qworld: World) -> None:
    if qworld.dialect != "sqlite":
        pytest.skip("SQLite's plan; PostgreSQL plans by statistics")
    plan = parse_query("Observation", CASES[0][0], base_url=BASE)
    compiled = search_statement(plan).compile(
        dialect=qworld.engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    params = tuple(compiled.params[k] for k in compiled.positiontup or ())
    with qworld.engine.connect() as conn:
        steps = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params)]
    text = "\n".join(steps)
    assert re.search(r"ix_fhir_composite_param_1_2 \(resource_type=\? AND param=\? AND "
                     r"c1_code=\? AND c1_system=\? AND c2_num>\?\)", text), text  # fmt: skip
