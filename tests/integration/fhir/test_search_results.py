"""FHIR R4 search results (search.html §3.1.1.5, §3.1.1.6) on a real index, SQLite and
PostgreSQL: ``_include``/``_revinclude`` with ``:iterate`` and ``*``, ``_sort`` on several keys
and every sortable type, paging through next/previous links without duplicates or gaps,
``_total``, ``_summary``, ``_elements``, the Bundle's shape, and ``find_ids``/``find_pks`` for
conditional operations (also inside the caller's transaction)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy.orm import Session

from medflow.core.errors import InvalidInput
from medflow.db.engine import write_session
from medflow.fhir import search_include
from medflow.fhir.search import find_ids, find_pks, parse_query, run_search, search_bundle
from tests.integration.fhir.conftest import BASE, World

pytestmark = pytest.mark.integration


def run(world: World, resource_type: str | None, query: Any, **kw: Any) -> dict[str, Any]:
    """A search that counts its total unless told otherwise (the server's default is none)."""
    kw.setdefault("default_total", "accurate")
    return search_bundle(world.engine, resource_type, query, base_url=BASE, **kw)


def entries(bundle: dict[str, Any], mode: str) -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == mode
    ]


def ids(bundle: dict[str, Any]) -> list[str]:
    return [ref.split("/")[1] for ref in entries(bundle, "match")]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in bundle["link"] if x["relation"] == relation), None)


def follow(world: World, url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    assert url.startswith(BASE + "/")
    return run(world, parts.path.rsplit("/", 1)[1], parts.query)


# --- _include / _revinclude (§3.1.1.5.4) --------------------------------------------------------

INCLUDES = [
    ("Condition", "_id=c1&_include=Condition:subject", ["Patient/p1"]),
    ("Condition", "_id=c1&_include=Condition:subject:Patient", ["Patient/p1"]),
    ("Condition", "_id=c1&_include=Condition:*", ["Patient/p1"]),  # subject and patient: once
    ("Condition", "code=38341003&_include=Condition:patient", ["Patient/p1", "Patient/p3"]),
    ("Condition", "code=38341003&_include=Condition:patient&_include=Patient:general-practitioner",
     ["Patient/p1", "Patient/p3"]),  # not :iterate: Patients are not matches
    ("Condition", "code=38341003&_include=Condition:patient"
     "&_include:iterate=Patient:general-practitioner",
     ["Patient/p1", "Patient/p3", "Practitioner/pr1", "Organization/org1"]),
    ("Condition", "code=38341003&_include=Condition:patient"
     "&_include:recurse=Patient:general-practitioner:Organization",
     ["Patient/p1", "Patient/p3", "Organization/org1"]),
    ("Observation", "_id=o1&_include=*", ["Patient/p1", "Encounter/e1"]),
    ("MedicationRequest", "_include=MedicationRequest:medication", ["Medication/med1"]),
    ("DiagnosticReport", "_include=DiagnosticReport:imaging-study", ["ImagingStudy/is1"]),
    ("Patient", "_id=p1&_revinclude=Condition:subject", ["Condition/c1", "Condition/c3"]),
    ("Patient", "_id=p1&_revinclude=Observation:subject"
     "&_revinclude:iterate=DiagnosticReport:result",
     ["Observation/o1", "Observation/o2", "DiagnosticReport/dr1"]),
    ("Patient", "_id=p3&_revinclude=*", ["Condition/c4", "Observation/o4", "Observation/o5"]),
    ("Patient", "_id=p1,p2&_include=Patient:link", []),  # p1 is a match: not repeated
    ("Patient", "_id=p2&_include:iterate=Patient:link&_revinclude:iterate=Patient:link",
     ["Patient/p1"]),  # a cycle ends
    ("Practitioner", "_id=pr1&_revinclude=Patient:general-practitioner"
     "&_revinclude:iterate=Condition:patient&_include:iterate=Condition:encounter",
     ["Patient/p1", "Condition/c1", "Condition/c3"]),
    ("ImagingStudy", "_revinclude=DiagnosticReport:imaging-study", ["DiagnosticReport/dr1"]),
]  # fmt: skip


@pytest.mark.parametrize(("resource_type", "query", "expected"), INCLUDES)
def test_includes(world: World, resource_type: str, query: str, expected: list[str]) -> None:
    bundle = run(world, resource_type, query, strict=True)
    assert sorted(entries(bundle, "include")) == sorted(expected)
    assert len(entries(bundle, "include")) == len(set(entries(bundle, "include")))
    assert bundle["total"] == len(entries(bundle, "match"))  # includes are not counted


def test_include_limit_is_reported(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_include, "MAX_INCLUDED", 1)
    bundle = run(world, "Patient", "_id=p1&_revinclude=Condition:subject")
    assert len(entries(bundle, "include")) == 1
    assert "cut short" in bundle["entry"][-1]["resource"]["issue"][0]["diagnostics"]


# --- _sort (§3.1.1.5.1) ------------------------------------------------------------------------

SORTS = [
    ("Patient", "_sort=gender,-birthdate", ["p3", "p2", "p1", "p4"]),  # missing values last
    ("Patient", "_sort=-gender,birthdate", ["p1", "p2", "p3", "p4"]),
    ("Patient", "_sort=family", ["p4", "p3", "p1", "p2"]),  # doe_50%, muller, smith, smithson
    ("Patient", "_sort=-_id", ["p4", "p3", "p2", "p1"]),
    ("Patient", "_sort=-_lastUpdated&_count=1", ["p4"]),
    ("Patient", "_sort=active,_id", ["p2", "p4", "p1", "p3"]),
    ("Condition", "_sort=onset-date", ["c2", "c1", "c3", "c4", "c5", "c6", "c9"]),
    ("Condition", "_sort=-onset-date", ["c4", "c3", "c1", "c2", "c5", "c6", "c9"]),
    ("Condition", "_sort=subject", ["c9", "c1", "c3", "c2", "c4", "c5", "c6"]),
    ("Observation", "code=8480-6&_sort=-value-quantity", ["o2", "o1", "o6"]),
    ("RiskAssessment", "_sort=-probability", ["ra1", "ra2"]),
    ("ValueSet", "_sort=-url", ["vs3", "vs2", "vs1"]),
    ("Observation", "_sort=status,-date", ["o3", "o2", "o1", "o5", "o6", "o7", "o4"]),
]


@pytest.mark.parametrize(("resource_type", "query", "expected"), SORTS)
def test_sort(world: World, resource_type: str, query: str, expected: list[str]) -> None:
    assert ids(run(world, resource_type, query, strict=True)) == expected


# --- paging (§3.1.1.6) -------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["_count=2&_sort=status", "_count=3", "_count=1&_sort=-_id"])
def test_paging_through_next_and_previous(world: World, query: str) -> None:
    count = int(query.split("&")[0].removeprefix("_count="))
    unpaged = "&".join([*query.split("&")[1:], "_count=100"])
    everything = ids(run(world, "Observation", unpaged))
    pages, bundle = [], run(world, "Observation", query)
    while True:
        assert bundle["total"] == 7 and len(ids(bundle)) <= count
        pages.append(ids(bundle))
        nxt = link(bundle, "next")
        if nxt is None:
            break
        bundle = follow(world, nxt)
    assert [i for page in pages for i in page] == everything  # no duplicates, no gaps
    assert len(pages) == -(-7 // count)
    assert link(bundle, "last") == link(bundle, "self")
    back = []
    while (prev := link(bundle, "previous")) is not None:
        bundle = follow(world, prev)
        back.insert(0, ids(bundle))
    assert back == pages[:-1]
    assert link(bundle, "self") == link(bundle, "first")


def test_links_are_complete_urls(world: World) -> None:
    bundle = run(world, "Patient", "family=smi&_sort=-birthdate&_count=1")
    assert bundle["type"] == "searchset" and bundle["total"] == 2
    assert link(bundle, "self") == f"{BASE}/Patient?family=smi&_sort=-birthdate&_count=1"
    assert link(bundle, "next") == f"{BASE}/Patient?family=smi&_sort=-birthdate&_count=1&_offset=1"
    assert link(bundle, "previous") is None
    entry = bundle["entry"][0]
    assert entry["fullUrl"] == f"{BASE}/Patient/p2" and entry["search"] == {"mode": "match"}


def test_page_past_the_end(world: World) -> None:
    bundle = run(world, "Observation", "_offset=100")
    assert "entry" not in bundle and bundle["total"] == 7
    assert link(bundle, "previous") == f"{BASE}/Observation?_count=20&_offset=80"


# --- _total, _summary, _elements, _count=0 (§3.1.1.5) ------------------------------------------


@pytest.mark.parametrize(
    ("query", "total", "n_entries"),
    [
        ("_total=none", None, 4),
        ("_total=accurate&_count=1", 4, 1),
        ("_count=1", 4, 1),
        ("_summary=count", 4, 0),
        ("_summary=count&gender=female", 2, 0),
        ("_count=0", 4, 0),
    ],
)
def test_total(world: World, query: str, total: int | None, n_entries: int) -> None:
    bundle = run(world, "Patient", query, strict=True)
    assert bundle.get("total") == total
    assert len(bundle.get("entry", [])) == n_entries
    if n_entries == 0:
        assert [x["relation"] for x in bundle["link"]] == ["self"]


def test_total_estimate_and_default(world: World) -> None:
    """estimate: PostgreSQL's planner estimate (never below what the page proves), a count on
    SQLite; a page that shows the end needs no count at all."""
    bundle = run(world, "Patient", "_total=estimate&_count=1")
    assert bundle["total"] >= 2 and len(bundle["entry"]) == 1
    if world.dialect == "sqlite":
        assert bundle["total"] == 4
    assert run(world, "Patient", "_total=estimate")["total"] == 4  # one page: exact
    assert "total" not in run(world, "Patient", "_count=1", default_total="none")
    default = search_bundle(world.engine, "Patient", "_count=1", base_url=BASE)
    assert "total" not in default  # the server's default: no count
    assert run(world, "Patient", "_count=1&_total=accurate", default_total="none")["total"] == 4


def _subsetted(resource: dict[str, Any]) -> bool:
    return any(t.get("code") == "SUBSETTED" for t in resource["meta"].get("tag", []))


def test_elements(world: World) -> None:
    bundle = run(world, "Patient", "_id=p1&_elements=name,gender&_revinclude=Condition:subject")
    patient = bundle["entry"][0]["resource"]
    assert set(patient) == {"resourceType", "id", "meta", "name", "gender"}
    assert _subsetted(patient) and {"system": "urn:tags", "code": "vip"} in patient["meta"]["tag"]
    condition = bundle["entry"][1]["resource"]  # included resources are whole
    assert "code" in condition and "tag" not in condition["meta"]
    observation = run(world, "Observation", "_id=o1&_elements=Observation.subject")["entry"][0]
    assert set(observation["resource"]) == {
        "resourceType", "id", "meta", "subject", "status", "code",  # status, code: mandatory
    }  # fmt: skip


def test_summary(world: World) -> None:
    full = run(world, "Patient", "_id=p1&_summary=false")["entry"][0]["resource"]
    assert "text" in full and not _subsetted(full)
    summary = run(world, "Patient", "_id=p1&_summary=true")["entry"][0]["resource"]
    assert "text" not in summary and _subsetted(summary)
    assert {"identifier", "name", "gender", "birthDate", "active"} <= set(summary)
    assert "generalPractitioner" not in summary  # not a summary element of Patient
    data = run(world, "Patient", "_id=p1&_summary=data")["entry"][0]["resource"]
    assert "text" not in data and "generalPractitioner" in data
    text = run(world, "Patient", "_id=p1&_summary=text")["entry"][0]["resource"]
    assert set(text) == {"resourceType", "id", "meta", "text"}


# --- the lower level: plans, pages, find_ids / find_pks ------------------------------------------


def test_parse_and_run(world: World) -> None:
    plan = parse_query("Patient", [("family", "smi"), ("_count", "1"), ("foo", "1")])
    assert plan.count == 1 and plan.used == (("family", "smi"),) and len(plan.warnings) == 1
    page = run_search(world.engine, plan, default_total="accurate")
    assert [m.res_id for m in page.matches] == ["p1"] and page.has_next and page.total == 2
    assert run_search(world.engine, plan).total is None  # the default counts nothing


def test_find_ids(world: World) -> None:
    assert find_ids(world.engine, "Patient", "identifier=urn:mrn|MRN-1") == ["p1"]
    assert find_ids(world.engine, "Patient", {"family": "smi", "_count": "1"}) == ["p1", "p2"]
    assert find_ids(world.engine, "Patient", "family=smi", limit=1) == ["p1"]
    assert find_ids(world.engine, "Condition", "subject:Patient.identifier=MRN-1") == ["c1", "c3"]
    assert find_ids(world.engine, "Patient", "identifier=nope") == []
    with pytest.raises(InvalidInput):  # strict by default: never widen a conditional match
        find_ids(world.engine, "Patient", "foo=1&family=smi")
    assert find_ids(world.engine, "Patient", "foo=1&family=smi", strict=False) == ["p1", "p2"]
    pks = find_pks(world.engine, "Patient", "family=smi")
    assert len(pks) == 2 and all(isinstance(pk, int) for pk in pks)
    with Session(world.engine) as session:
        assert find_ids(session, "Patient", [("gender", "female")]) == ["p2", "p3"]


def test_find_ids_sees_the_callers_transaction(world: World) -> None:
    """A transaction's conditional references resolve against what it wrote so far."""
    body = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "NEW-1"}]}
    with write_session(world.engine) as session:
        world.fhir.write_in(session, "Patient", "new1", {**body, "id": "new1"}, method="update")
        assert find_ids(session, "Patient", "identifier=urn:mrn|NEW-1") == ["new1"]
        session.rollback()
    assert find_ids(world.engine, "Patient", "identifier=urn:mrn|NEW-1") == []
