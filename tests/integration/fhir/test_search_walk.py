"""A page whose only criterion is a broad ``_has`` is found by walking the type in ``pk``
order with the criterion probed (``search.walk_instead``): the same results, pages and
order as collecting the matches first (SQLite and PostgreSQL)."""

from __future__ import annotations

import re

import pytest

import medflow.fhir.search as search
from medflow.fhir.search import parse_query, search_bundle, search_statement, walk_instead
from tests.integration.fhir.conftest import BASE, World

pytestmark = pytest.mark.integration

QUERIES = [
    ("Patient", "_has:Observation:patient:code=http://loinc.org|8480-6"),
    ("Patient", "_has:Condition:subject:code=I10"),
    ("Patient", "_has:Observation:patient:value-quantity=gt140"),
    ("Practitioner", "_has:Patient:general-practitioner:_has:Condition:patient:code=44054006"),
    ("Patient", "_has:Observation:patient:encounter.status=finished"),
    ("Patient", "_has:Observation:patient:status=final&_count=1"),
    ("Patient", "_has:Observation:patient:status=final&_count=1&_offset=1"),
]


def ids(world: World, resource_type: str, query: str) -> list[str]:
    bundle = search_bundle(world.engine, resource_type, query, base_url=BASE)
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


@pytest.mark.parametrize(("resource_type", "query"), QUERIES)
def test_walk_finds_the_same_pages(
    world: World, resource_type: str, query: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    collected = ids(world, resource_type, query)
    monkeypatch.setattr(search, "WALK_SOURCES", 1)
    monkeypatch.setattr(search, "WALK_PAGES", 0)  # walk whenever there is a source
    plan = parse_query(resource_type, query, base_url=BASE)
    with world.engine.connect() as conn:
        assert walk_instead(conn, plan) == bool(collected)
    assert ids(world, resource_type, query) == collected


def test_walk_is_chosen_only_for_a_broad_has(world: World) -> None:
    plan = parse_query("Patient", "_has:Condition:subject:code=I10", base_url=BASE)
    with world.engine.connect() as conn:
        assert not walk_instead(conn, plan)  # one source: collecting is cheaper
        two = parse_query("Patient", "_has:Condition:subject:code=I10&gender=female")
        assert not walk_instead(conn, two)  # several criteria: the driver is chosen as usual


def test_walk_uses_the_type_index(world: World) -> None:
    if world.dialect != "sqlite":
        pytest.skip("SQLite's plan; PostgreSQL plans by statistics")
    plan = parse_query("Patient", "_has:Condition:subject:code=I10", base_url=BASE)
    compiled = search_statement(plan, walk=True).compile(
        dialect=world.engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    params = tuple(compiled.params[k] for k in compiled.positiontup or ())
    with world.engine.connect() as conn:
        steps = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params)]
    text = "\n".join(steps)
    assert re.search(r"SEARCH r USING INDEX ix_fhir_resource_type_pk \(resource_type=\?\)", text)
    assert "TEMP B-TREE" not in text, text  # pk order straight from the index
