"""Every match of an R4 search as index values only (no resource JSON): its id, the patients
it refers to, its dates and tokens, read from the search-index tables in one statement. For
callers that need who and when of many matches (cohorts), not the resources themselves.

Also the distinct codes of a token parameter that start with a prefix (ICD-10 ``C40``), which
FHIR search cannot express (R4 token search has no prefix matching).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased

from medflow.fhir.models import FhirDate, FhirReference, FhirResource, FhirToken
from medflow.fhir.search import matching_pks

CHUNK = 500
"""Values per ``IN`` list of ``subjects`` and ``ids``."""


@dataclass(frozen=True)
class IndexedMatch:
    """One match of a search, as its index rows describe it."""

    res_id: str
    subjects: tuple[str, ...] = ()
    """Ids of the Patients the reference parameter points to (the resource's own id for a
    Patient search without a reference parameter)."""
    dates: tuple[datetime, ...] = ()
    """Low bounds of the date parameter's values (UTC), earliest first."""
    codes: tuple[tuple[str | None, str | None], ...] = ()
    """(system, code) of the token parameter's values."""


def index_matches(
    engine: Engine,
    resource_type: str,
    params: Sequence[tuple[str, str]],
    *,
    subject_param: str | None = None,
    date_param: str | None = None,
    code_param: str | None = None,
    code_system: str | None = None,
    subjects: Collection[str] | None = None,
    ids: Collection[str] | None = None,
) -> list[IndexedMatch]:
    """All matches of ``resource_type?params`` (strict parsing) with the values of one
    reference (Patient targets only), one date and one token parameter (of ``code_system``
    when given). Result parameters (``_count``, ``_sort``...) are ignored. ``subjects``:
    only matches whose ``subject_param`` refers to one of these Patient ids; ``ids``: only
    these logical ids (one ``IN`` each, in chunks of :data:`CHUNK`: cheaper to build than as
    many search values)."""
    if (subjects is not None and (not subjects or subject_param is None)) or (
        ids is not None and not ids
    ):
        return []
    out: list[IndexedMatch] = []
    for subject_chunk in _chunks(subjects):
        for id_chunk in _chunks(ids):
            stmt = matching_pks(resource_type, params)
            pk = stmt.selected_columns[0]
            if subject_chunk is not None:
                refs = select(FhirReference.resource_pk).where(
                    FhirReference.resource_type == resource_type,
                    FhirReference.param == subject_param,
                    FhirReference.target_id.in_(subject_chunk),
                    FhirReference.target_type == "Patient",
                )
                stmt = stmt.where(pk.in_(refs))
            if id_chunk is not None:
                stmt = stmt.where(pk.in_(select(FhirResource.pk).where(
                    FhirResource.resource_type == resource_type,
                    FhirResource.res_id.in_(id_chunk))))  # fmt: skip
            out += _one_statement(engine, stmt, subject_param, date_param, code_param,
                                  code_system)  # fmt: skip
    return out


def _chunks(values: Collection[str] | None) -> list[list[str] | None]:
    if values is None:
        return [None]
    ordered = sorted(set(values))
    return [ordered[i : i + CHUNK] for i in range(0, len(ordered), CHUNK)]


def _one_statement(
    engine: Engine,
    matching: Select[Any],
    subject_param: str | None,
    date_param: str | None,
    code_param: str | None,
    code_system: str | None,
) -> list[IndexedMatch]:
    base = matching.subquery("m")
    cols: list[Any] = [FhirResource.res_id]
    stmt = select().select_from(base).join(FhirResource, FhirResource.pk == base.c.pk)
    if subject_param is not None:
        ref = aliased(FhirReference, name="ref")
        on = and_(ref.resource_pk == base.c.pk, ref.param == subject_param,
                  ref.target_type == "Patient")  # fmt: skip
        stmt, cols = stmt.outerjoin(ref, on), [*cols, ref.target_id]
    if date_param is not None:
        dt = aliased(FhirDate, name="dt")
        stmt = stmt.outerjoin(dt, and_(dt.resource_pk == base.c.pk, dt.param == date_param))
        cols.append(dt.low)
    if code_param is not None:
        tok = aliased(FhirToken, name="tok")
        on = and_(tok.resource_pk == base.c.pk, tok.param == code_param)
        if code_system is not None:
            on = and_(on, tok.system == code_system)
        stmt, cols = stmt.outerjoin(tok, on), [*cols, tok.system, tok.code]
    with engine.connect() as conn:
        rows = conn.execute(stmt.add_columns(*cols)).all()
    return _gather(rows, subject_param, date_param, code_param)


def _gather(
    rows: Sequence[Any], subject_param: str | None, date_param: str | None, token: str | None
) -> list[IndexedMatch]:
    """Rows (one per combination of joined values) to one match per resource, in order."""
    found: dict[str, tuple[set[str], set[datetime], set[tuple[str | None, str | None]]]] = {}
    for row in rows:
        values = list(row)
        subjects, dates, tokens = found.setdefault(str(values.pop(0)), (set(), set(), set()))
        if subject_param is not None:
            target = values.pop(0)
            if target is not None:
                subjects.add(str(target))
        if date_param is not None:
            low = values.pop(0)
            if low is not None:
                dates.add(low)
        if token is not None:
            system, code = values.pop(0), values.pop(0)
            if code is not None:
                tokens.add((system, code))
    out = []
    for res_id, (subjects, dates, tokens) in found.items():
        ordered = sorted(tokens, key=lambda t: (t[0] or "", t[1] or ""))
        out.append(IndexedMatch(res_id, tuple(sorted(subjects)), tuple(sorted(dates)),
                                tuple(ordered)))  # fmt: skip
    return out


def codes_with_prefix(
    engine: Engine, resource_type: str, param: str, system: str, prefixes: Sequence[str]
) -> list[str]:
    """Distinct codes of ``system`` indexed for the token parameter that start with one of
    ``prefixes`` (case-sensitive), sorted: one index range per prefix."""
    wanted = [p for p in prefixes if p]
    if not wanted:
        return []
    ranges = [and_(FhirToken.code >= p, FhirToken.code < p[:-1] + chr(ord(p[-1]) + 1))
              for p in wanted]  # fmt: skip
    stmt = (
        select(FhirToken.code)
        .where(
            FhirToken.resource_type == resource_type,
            FhirToken.param == param,
            or_(*ranges),
            FhirToken.system == system,
        )
        .distinct()
    )
    with engine.connect() as conn:
        codes = {str(c) for (c,) in conn.execute(stmt) if c is not None}
    return sorted(c for c in codes if any(c.startswith(p) for p in wanted))


__all__ = ["IndexedMatch", "codes_with_prefix", "index_matches"]
