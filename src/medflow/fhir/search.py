"""FHIR R4 search (search.html §3.1.1) over the index tables: type and system searches as a
``searchset`` Bundle, and the matching ids that conditional create/update/delete and a
transaction's conditional references need.

A query is parsed into a :class:`~medflow.fhir.search_parse.SearchPlan`
(:mod:`medflow.fhir.search_parse`), its criteria compiled to one SQL statement
(:mod:`medflow.fhir.search_sql`), includes resolved in SQL too
(:mod:`medflow.fhir.search_include`) and the Bundle built by :mod:`medflow.fhir.search_bundle`.

Paging (§3.1.1.5.2 ``_count``, §3.1.1.6 ``#paging``): ``_count`` (default
:data:`DEFAULT_COUNT`, at most :data:`MAX_COUNT`) rows from ``_offset``, in the ``_sort`` order
completed by the primary key, so that the links are stable while the data do not change. One
row more than the page is read to know whether there is a next page. ``_total``
(§3.1.1.5.5): ``none`` omits the total; ``accurate`` counts it (``COUNT(*)``
over the same conditions); ``estimate`` takes PostgreSQL's row estimate (``EXPLAIN``) and
counts on SQLite; without ``_total`` nothing is counted (:data:`DEFAULT_TOTAL`). When the
page itself shows the end (no next page) offset + rows is exact for free and no query is
made. ``_summary=count`` and
``_count=0`` return the total alone (always counted).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Connection, Engine, Select, func, select
from sqlalchemy.orm import Session, aliased

from medflow.core.errors import InvalidInput
from medflow.fhir.definitions import SearchParamRegistry
from medflow.fhir.models import FhirResource
from medflow.fhir.repository import flush_index
from medflow.fhir.search_bundle import bundle
from medflow.fhir.search_include import Found, found_rows, resolve
from medflow.fhir.search_parse import (
    DEFAULT_COUNT,
    MAX_COUNT,
    Has,
    QueryInput,
    SearchPlan,
    parse_query,
)
from medflow.fhir.search_sql import sort_columns, where_criteria

Bind = Engine | Connection | Session
DEFAULT_TOTAL = "auto"
"""The ``_total`` of a query that names none (``auto``): no count (``Bundle.total`` is
optional, R4 bundle.html), except that a page which shows the end of the results gives the
exact total for free. Counting every match of a broad query at 1M resources costs several
times the page itself; a client that needs the total asks ``_total=accurate`` (or
``estimate``, from the planner on PostgreSQL); ``_summary=count`` always counts."""

__all__ = [
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "Bind",
    "SearchPage",
    "SearchPlan",
    "find_ids",
    "find_pks",
    "matching_pks",
    "parse_query",
    "run_search",
    "search_bundle",
    "search_statement",
]


@dataclass(frozen=True)
class SearchPage:
    """One page of a search: the matches, the included resources, the total (None when not
    asked for) and whether a next page exists."""

    plan: SearchPlan
    matches: list[Found]
    included: list[Found]
    total: int | None
    has_next: bool
    warnings: tuple[str, ...]


@contextmanager
def _reader(bind: Bind) -> Iterator[Connection | Session]:
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            yield conn
    else:
        if isinstance(bind, Session):
            flush_index(bind)  # index rows the caller's transaction has queued
        yield bind


def _types(plan: SearchPlan) -> tuple[str | None, tuple[str, ...]]:
    """The plan's resource type, or a system search's ``_type`` list; a single ``_type`` is
    a resource type."""
    if plan.resource_type is None and len(plan.types) == 1:
        return plan.types[0], ()
    return plan.resource_type, plan.types


def _matching(
    plan: SearchPlan,
    r: Any,
    columns: tuple[Any, ...],
    *,
    whole: bool = False,
    walk: bool = False,
) -> Select[Any]:
    """SELECT ``columns`` FROM fhir_resource r WHERE type, not deleted, and every criterion
    (a system search with a single ``_type`` is that type's search). ``whole``: every match
    is wanted (a count), so chains and ``_has`` are sets rather than per-resource probes;
    ``walk``: see :func:`walk_instead`."""
    rtype, types = _types(plan)
    conds = where_criteria(rtype, plan.criteria, r, types=types, probe_joins=not whole, walk=walk)
    return select(*columns).where(*conds, r.deleted.is_(False))


def search_statement(plan: SearchPlan, *, walk: bool = False) -> Select[Any]:
    """The page query of a plan: ``(pk, resource_type, res_id, content)`` of the matches in
    ``_sort`` order (then ``pk``), ``_count`` + 1 rows from ``_offset`` (for EXPLAIN too)."""
    r = aliased(FhirResource, name="r")
    return (
        _matching(plan, r, (r.pk, r.resource_type, r.res_id, r.content), walk=walk)
        .order_by(*sort_columns(plan.sort, _types(plan)[0], r))
        .limit(plan.count + 1)
        .offset(plan.offset)
    )


def _count(conn: Connection | Session, plan: SearchPlan, r: Any) -> int:
    """``COUNT(*)``; for ``_total=estimate`` on PostgreSQL the planner's row estimate of the
    same query instead (``EXPLAIN``, no execution: cheap however many resources match; the
    caller raises it to what the page has shown to exist)."""
    connection = conn.connection() if isinstance(conn, Session) else conn
    if plan.total == "estimate" and connection.dialect.name == "postgresql":
        stmt = _matching(plan, r, (r.pk,))
        compiled = stmt.compile(
            dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
        )
        explained = connection.exec_driver_sql(
            f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params
        ).scalar_one()
        doc = json.loads(explained) if isinstance(explained, str) else explained
        return int(doc[0]["Plan"]["Plan Rows"])
    return int(conn.execute(_matching(plan, r, (func.count(),), whole=True)).scalar_one())


WALK_SOURCES = 2000
"""A ``_has`` driver with at least this many source resources is a candidate for the walk."""
WALK_PAGES = 4
"""Walk when the expected probes for the page are fewer than the driver's sources / this."""


def walk_instead(conn: Connection | Session, plan: SearchPlan) -> bool:
    """Whether the page is cheaper found by walking the type in ``pk`` order with every
    criterion probed than by collecting the driver's matches first.

    Only for a ``_has`` that would drive a ``pk``-ordered page (``Patient?_has:Condition:
    subject:code=<a common diagnosis>``): collecting its matches costs one lookup per source
    resource (thousands), while walking the patients finds a page after about
    ``(offset + count) / share`` probes, ``share`` being the matches' share of the type. Two
    capped counts (source rows, resources of the type) estimate both.
    """
    if plan.sort or plan.resource_type is None or len(plan.criteria) != 1:
        return False
    has = plan.criteria[0]
    if not isinstance(has, Has):
        return False
    s = aliased(FhirResource, name="src")
    cap = WALK_SOURCES * 10
    sources_q = (
        select(s.pk)
        .where(*where_criteria(has.source_type, [has.inner], s), s.deleted.is_(False))
        .limit(cap)
    )
    sources = int(conn.execute(select(func.count()).select_from(sources_q.subquery())).scalar_one())
    if sources < WALK_SOURCES:
        return False
    t = aliased(FhirResource, name="typ")
    type_q = select(t.pk).where(t.resource_type == plan.resource_type).limit(cap * 50)
    size = int(conn.execute(select(func.count()).select_from(type_q.subquery())).scalar_one())
    share = min(1.0, sources / max(size, 1))  # sources per resource: at most one match each
    probes = (plan.offset + plan.count + 1) / max(share, 1e-9)
    return probes * WALK_PAGES < sources


def run_search(bind: Bind, plan: SearchPlan, *, default_total: str = DEFAULT_TOTAL) -> SearchPage:
    """Execute a parsed search: one statement for the page, one for the total when needed,
    one per include and batch. ``default_total`` applies when the query has no ``_total``."""
    only_total = plan.summary == "count" or plan.count == 0
    if plan.total is None:
        plan = replace(plan, total="accurate" if only_total else default_total)
    r = aliased(FhirResource, name="r")
    matches: list[Found] = []
    included: list[Found] = []
    has_next, truncated = False, False
    total: int | None = None
    with _reader(bind) as conn:
        if not only_total:
            walk = walk_instead(conn, plan)
            matches = found_rows(conn.execute(search_statement(plan, walk=walk)))
            has_next = len(matches) > plan.count
            matches = matches[: plan.count]
            if plan.includes and matches:
                included, truncated = resolve(conn, plan.includes, matches, base_url=plan.base_url)
        if only_total or plan.total != "none":
            if not only_total and not has_next and (matches or plan.offset == 0):
                total = plan.offset + len(matches)  # the page shows the end: exact for free
            elif plan.total != "auto":
                seen = plan.offset + len(matches) + int(has_next) if matches else 0
                total = max(_count(conn, plan, r), seen)
    warnings = plan.warnings
    if truncated:
        warnings += ("too many resources to include: the includes of this page are cut short",)
    return SearchPage(plan, matches, included, total, has_next, warnings)


def search_bundle(
    bind: Bind,
    resource_type: str | None,
    params: QueryInput,
    *,
    base_url: str,
    strict: bool = False,
    registry: SearchParamRegistry | None = None,
    default_total: str = DEFAULT_TOTAL,
) -> dict[str, Any]:
    """Search ``resource_type`` (None: all types) and return the ``searchset`` Bundle.

    ``params``: a query string, (name, value) pairs or a mapping to values. ``strict``: the
    client sent ``Prefer: handling=strict`` (unknown parameters are an ``InvalidInput``
    instead of warnings). ``base_url`` is the FHIR base (``https://host/fhir``): entries'
    ``fullUrl`` and the paging links start with it, and references given as absolute URLs
    under it are local. ``default_total`` (``auto``, ``none``, ``accurate`` or ``estimate``)
    is the ``_total`` of a query that gives none.
    """
    plan = parse_query(resource_type, params, strict=strict, base_url=base_url, registry=registry)
    page = run_search(bind, plan, default_total=default_total)
    return bundle(
        plan,
        base_url=base_url,
        matches=page.matches,
        included=page.included,
        total=page.total,
        has_next=page.has_next,
        warnings=page.warnings,
    )


def matching_pks(
    resource_type: str,
    query: QueryInput,
    *,
    strict: bool = True,
    registry: SearchParamRegistry | None = None,
) -> Select[Any]:
    """``SELECT pk`` of the live ``resource_type`` resources matching the query's criteria, to
    embed in another statement (``pk IN (...)``): bulk export's ``_typeFilter`` uses it. The
    query is parsed (and rejected with ``InvalidInput`` when strict and not understood) here."""
    plan = parse_query(resource_type, query, strict=strict, registry=registry)
    r = aliased(FhirResource, name="tf")
    return _matching(plan, r, (r.pk,))


def _match_rows(
    bind: Bind,
    resource_type: str,
    query: QueryInput,
    *,
    strict: bool,
    limit: int | None,
    base_url: str | None,
    registry: SearchParamRegistry | None,
) -> list[Any]:
    plan = parse_query(resource_type, query, strict=strict, base_url=base_url, registry=registry)
    if not plan.criteria:  # a conditional operation must never select every resource
        raise InvalidInput(f"the {resource_type} query has no search criteria")
    r = aliased(FhirResource, name="r")
    stmt = _matching(plan, r, (r.pk, r.res_id)).order_by(r.pk)
    if limit is not None:
        stmt = stmt.limit(limit)
    with _reader(bind) as conn:
        return list(conn.execute(stmt).all())


def find_pks(
    bind: Bind,
    resource_type: str,
    query: QueryInput,
    *,
    strict: bool = True,
    limit: int | None = None,
    base_url: str | None = None,
    registry: SearchParamRegistry | None = None,
) -> list[int]:
    """Primary keys of the live ``resource_type`` resources matching the query's criteria, in
    ``pk`` order (result parameters such as ``_count``/``_sort``/``_include`` are ignored).

    Strict by default: a conditional create/update/delete must not widen its match by
    ignoring a parameter it does not understand (R4 http §3.1.0.4.2 ``#cond-update``).
    ``bind`` may be the caller's ``Session`` (inside its transaction) or ``Connection``.
    """
    rows = _match_rows(
        bind, resource_type, query, strict=strict, limit=limit, base_url=base_url,
        registry=registry,
    )  # fmt: skip
    return [int(row[0]) for row in rows]


def find_ids(
    bind: Bind,
    resource_type: str,
    query: QueryInput,
    *,
    strict: bool = True,
    limit: int | None = None,
    base_url: str | None = None,
    registry: SearchParamRegistry | None = None,
) -> list[str]:
    """Logical ids of the matching resources (see :func:`find_pks`); with ``limit=2`` a
    conditional operation tells none, one and several apart in one cheap query."""
    rows = _match_rows(
        bind, resource_type, query, strict=strict, limit=limit, base_url=base_url,
        registry=registry,
    )  # fmt: skip
    return [str(row[1]) for row in rows]
