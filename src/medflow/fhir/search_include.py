"""``_include`` and ``_revinclude`` (FHIR R4 search §3.1.1.5.4 ``#include``, ``#revinclude``),
with ``:iterate`` (R4's name for STU3's ``:recurse``, accepted too).

Round 0 applies every include to the page's matches; each later round applies the ``:iterate``
ones to what the previous round added, up to :data:`MAX_ITERATE` rounds. A resource appears
once (a match stays a match). At most :data:`MAX_INCLUDED` resources are included per page;
beyond that the bundle carries a warning. Each include is one SQL statement per batch of source
resources over ``fhir_reference``:

* ``_include=Type:param[:target]``: the targets of the sources' reference rows, joined on
  ``(target_type, target_id)`` = ``(resource_type, res_id)`` (the unique key of
  ``fhir_resource``);
* ``_revinclude=Type:param``: the resources whose reference rows point at the sources, found
  through the ``(resource_type, param, target_id, target_type)`` index.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import aliased

from medflow.fhir.models import FhirReference, FhirResource
from medflow.fhir.search_parse import Include
from medflow.fhir.search_sql import local_cond

MAX_ITERATE = 3
MAX_INCLUDED = 1000
BATCH = 500


@dataclass(frozen=True, slots=True)
class Found:
    """A resource row of a result: its key, type, id and JSON text."""

    pk: int
    resource_type: str
    res_id: str
    content: str


def found_rows(rows: Iterable[Any]) -> list[Found]:
    return [Found(r[0], r[1], r[2], r[3]) for r in rows if r[3] is not None]


def resolve(
    conn: Any,
    includes: Sequence[Include],
    matches: Sequence[Found],
    *,
    base_url: str | None = None,
) -> tuple[list[Found], bool]:
    """The included resources of a page (in order of discovery) and whether the
    :data:`MAX_INCLUDED` limit cut them short. Only local references are followed, relative
    or absolute under ``base_url`` (R4 §3.1.1.4.12): another server's ``Patient/1`` is not
    this server's."""
    seen = {m.pk for m in matches}
    out: list[Found] = []
    frontier: list[Found] = list(matches)
    for depth in range(MAX_ITERATE + 1):
        specs = [i for i in includes if depth == 0 or i.iterate]
        if not specs or not frontier:
            break
        added: list[Found] = []
        for spec in specs:
            room = MAX_INCLUDED - len(out) - len(added)
            for row in _fetch(conn, spec, frontier, room + 1, base_url):
                if row.pk in seen:
                    continue
                if len(out) + len(added) >= MAX_INCLUDED:
                    return out + added, True
                seen.add(row.pk)
                added.append(row)
        out.extend(added)
        frontier = added
    return out, False


def _fetch(
    conn: Any, spec: Include, frontier: Sequence[Found], limit: int, base_url: str | None
) -> list[Found]:
    if spec.reverse:
        groups: dict[str, list[str]] = {}
        for row in frontier:
            if spec.target_type is None or row.resource_type == spec.target_type:
                groups.setdefault(row.resource_type, []).append(row.res_id)
        batches = [
            (rtype, ids[i : i + BATCH])
            for rtype, ids in groups.items()
            for i in range(0, len(ids), BATCH)
        ]
        subs = [_revinclude_sub(spec, rtype, ids, base_url) for rtype, ids in batches]
    else:
        pks = [
            row.pk
            for row in frontier
            if spec.source_type is None or row.resource_type == spec.source_type
        ]
        subs = [_include_sub(spec, pks[i : i + BATCH], base_url) for i in range(0, len(pks), BATCH)]
    out: list[Found] = []
    for sub in subs:
        t = aliased(FhirResource)
        stmt = (
            select(t.pk, t.resource_type, t.res_id, t.content)
            .where(t.pk.in_(sub), t.deleted.is_(False))
            .order_by(t.pk)
            .limit(limit)
        )
        out.extend(found_rows(conn.execute(stmt)))
    return out


def _include_sub(spec: Include, pks: list[int], base_url: str | None) -> Any:
    ref, x = aliased(FhirReference), aliased(FhirResource)
    conds: list[Any] = [ref.resource_pk.in_(pks), local_cond(ref.url, base_url)]
    if spec.source_type is not None:
        conds.append(ref.resource_type == spec.source_type)
    if spec.param is not None:
        conds.append(ref.param == spec.param)
    if spec.target_type is not None:
        conds.append(ref.target_type == spec.target_type)
    return (
        select(x.pk)
        .join(ref, and_(x.resource_type == ref.target_type, x.res_id == ref.target_id))
        .where(*conds)
    )


def _revinclude_sub(spec: Include, target_type: str, ids: list[str], base_url: str | None) -> Any:
    ref = aliased(FhirReference)
    conds: list[Any] = [
        ref.target_type == target_type,
        ref.target_id.in_(ids),
        local_cond(ref.url, base_url),
    ]
    if spec.source_type is not None:
        conds.insert(0, ref.resource_type == spec.source_type)
    if spec.param is not None:
        conds.insert(1, ref.param == spec.param)
    return select(ref.resource_pk).where(*conds)
