"""Database operations of the FHIR store, inside a caller's transaction (no commits here).

A write replaces the current row, appends a ``fhir_history`` version and rewrites the resource's
search-index rows, all in the same transaction. On PostgreSQL an advisory transaction lock orders
writers, so a consumer reading history after ``seq`` N never misses a version committed later
with a smaller number (the same rule as the archive's change feed).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, event, func, insert, select, update
from sqlalchemy.orm import Session

from medflow.fhir.models import (
    FhirComposite,
    FhirDate,
    FhirHistory,
    FhirNumber,
    FhirQuantity,
    FhirReference,
    FhirResource,
    FhirString,
    FhirToken,
    FhirUri,
)

FHIR_FEED_LOCK = 0x46484952  # "FHIR"
INDEX_TABLES_BY_ROW = {
    "TokenRow": FhirToken,
    "StringRow": FhirString,
    "DateRow": FhirDate,
    "ReferenceRow": FhirReference,
    "QuantityRow": FhirQuantity,
    "NumberRow": FhirNumber,
    "UriRow": FhirUri,
}


_RES: Any = FhirResource.__table__
_HIST: Any = FhirHistory.__table__
# Statements built once: constructing a SQLAlchemy statement costs more than running it.
_CURRENT = select(
    _RES.c.pk, _RES.c.version_id, _RES.c.last_updated, _RES.c.deleted, _RES.c.content
).where(_RES.c.resource_type == bindparam("q_type"), _RES.c.res_id == bindparam("q_id"))
_CURRENT_FOR_UPDATE = _CURRENT.with_for_update()
_INSERT_RESOURCE = insert(_RES).returning(_RES.c.pk)
_UPDATE_RESOURCE = (
    update(_RES)
    .where(_RES.c.pk == bindparam("b_pk"))
    .values(
        version_id=bindparam("version_id"),
        last_updated=bindparam("last_updated"),
        deleted=bindparam("deleted"),
        content=bindparam("content"),
    )
)
_INSERT_HISTORY = insert(_HIST)
_INDEX_TABLES: list[Any] = [t.__table__ for t in (*INDEX_TABLES_BY_ROW.values(), FhirComposite)]
_DELETE_INDEX = [delete(t).where(t.c.resource_pk == bindparam("b_pk")) for t in _INDEX_TABLES]
_INSERT_INDEX = {t.name: insert(t) for t in _INDEX_TABLES}
_COLUMNS = {t.name: tuple(c.name for c in t.c if not c.primary_key) for t in _INDEX_TABLES}
_LENGTHS = {
    t.name: {c.name: c.type.length for c in t.c if getattr(c.type, "length", None)}
    for t in _INDEX_TABLES
}


def lock_feed(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(FHIR_FEED_LOCK)))


@dataclass(frozen=True)
class Current:
    """The current row of a resource (a plain record, no ORM state)."""

    pk: int
    version_id: int
    last_updated: datetime
    deleted: bool
    content: str | None


def current(
    session: Session, resource_type: str, res_id: str, *, for_update: bool = False
) -> Current | None:
    lock = for_update and session.get_bind().dialect.name == "postgresql"
    found = (
        session.connection()
        .execute(
            _CURRENT_FOR_UPDATE if lock else _CURRENT, {"q_type": resource_type, "q_id": res_id}
        )
        .first()
    )
    return Current(*found) if found is not None else None


def content_page(
    session: Session, conditions: Sequence[Any], *, after: int, limit: int
) -> list[tuple[int, str | None]]:
    """``(pk, content)`` of the resources meeting ``conditions`` with ``pk > after``, in pk
    order: keyset paging for readers that walk many resources (bulk export, reindexing)."""
    rows = session.execute(
        select(_RES.c.pk, _RES.c.content)
        .where(*conditions, _RES.c.pk > after)
        .order_by(_RES.c.pk)
        .limit(limit)
    ).all()
    return [(int(pk), content) for pk, content in rows]


def dumps(resource: dict[str, Any]) -> str:
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False)


def write_version(
    session: Session,
    *,
    row: Current | None,
    resource_type: str,
    res_id: str,
    version_id: int,
    content: dict[str, Any] | None,
    method: str,
    now: datetime,
    index_rows: Sequence[object] = (),
) -> int:
    """Make ``content`` (None: deleted) version ``version_id`` of the resource; returns its pk.
    Core statements (no ORM unit of work); the history row and the index rows are queued and
    written per table in one ``executemany`` at commit (:func:`flush_index`)."""
    text = dumps(content) if content is not None else None
    conn = session.connection()
    values = {"version_id": version_id, "last_updated": now, "deleted": content is None,
              "content": text}  # fmt: skip
    if row is None:
        pk = conn.execute(
            _INSERT_RESOURCE, {"resource_type": resource_type, "res_id": res_id, **values}
        ).scalar_one()
    else:
        pk = row.pk
        conn.execute(_UPDATE_RESOURCE, {"b_pk": pk, **values})
    _buffer(session).setdefault(_HIST.name, []).append(
        {"resource_type": resource_type, "res_id": res_id, "version_id": version_id,
         "last_updated": now, "method": method, "content": text},
    )  # fmt: skip
    replace_index(session, pk, resource_type, index_rows, fresh=row is None)
    return int(pk)


def replace_index(
    session: Session,
    resource_pk: int,
    resource_type: str,
    rows: Iterable[object],
    *,
    fresh: bool = False,
) -> None:
    """Delete the resource's index rows (unless it is ``fresh``: new, it has none) and queue
    ``rows`` (``medflow.fhir.indexing`` rows) for insertion.

    Inserts are buffered per transaction and written with one ``executemany`` per table when
    the transaction commits or before anything reads the index inside it
    (:func:`flush_index`): a Bundle of 100 resources costs a handful of insert statements
    instead of hundreds."""
    conn = session.connection()
    if not fresh:
        flush_index(session)  # rows queued for this resource earlier in the transaction
        for stmt in _DELETE_INDEX:
            conn.execute(stmt, {"b_pk": resource_pk})
    buffer = _buffer(session)
    for row in rows:
        name = type(row).__name__
        if name == "CompositeRow":
            composite = _composite(resource_pk, row)
            composite["resource_type"] = resource_type
            buffer.setdefault(FhirComposite.__tablename__, []).append(composite)
            continue
        table = INDEX_TABLES_BY_ROW[name]
        values = _values(row)
        values["resource_pk"] = resource_pk
        values["resource_type"] = resource_type
        buffer.setdefault(table.__tablename__, []).append(_fit(table, values))


_BUFFER_KEY = "medflow.fhir.index_buffer"


_LISTENING_KEY = "medflow.fhir.index_buffer.listening"


def _buffer(session: Session) -> dict[str, list[dict[str, Any]]]:
    if not session.info.get(_LISTENING_KEY):  # once per session, however many transactions
        session.info[_LISTENING_KEY] = True
        event.listen(session, "before_commit", flush_index)
        event.listen(session, "after_transaction_end", _end_of_transaction)
    buffer: dict[str, list[dict[str, Any]]] = session.info.setdefault(_BUFFER_KEY, {})
    return buffer


def _end_of_transaction(session: Session, transaction: Any) -> None:
    """The root transaction ended (committed: flushed already; rolled back: its queued rows
    go with it). A savepoint's end keeps the outer transaction's rows."""
    if transaction.parent is None:
        session.info.pop(_BUFFER_KEY, None)


def flush_index(session: Session) -> None:
    """Write the history and index rows queued in this transaction (a search or a history
    read inside the transaction calls it first, so it sees the transaction's own writes)."""
    buffer: dict[str, list[dict[str, Any]]] | None = session.info.pop(_BUFFER_KEY, None)
    if not buffer:
        return
    conn = session.connection()
    history = buffer.pop(_HIST.name, None)
    if history:  # in write order: seq follows it
        conn.execute(_INSERT_HISTORY, history)
    for name, rows in buffer.items():
        if rows:  # every row names every column: executemany compiles from the first one
            columns = _COLUMNS[name]
            conn.execute(_INSERT_INDEX[name], [{c: r.get(c) for c in columns} for r in rows])


def _values(row: object) -> dict[str, Any]:
    assert is_dataclass(row)
    out = {f.name: getattr(row, f.name) for f in fields(row)}
    if "value" in out and type(row).__name__ in ("QuantityRow", "NumberRow"):
        out["value"] = float(out["value"])
    return out


def _fit(table: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Cut text to the column's length (the resource keeps it whole; the index what fits)."""
    for key, length in _LENGTHS[table.__tablename__].items():
        value = values.get(key)
        if isinstance(value, str) and len(value) > length:
            values[key] = value[:length]
    return values


def _composite(resource_pk: int, row: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"resource_pk": resource_pk, "param": row.param}
    for n, part in enumerate(row.components[:3], start=1):
        kind = type(part).__name__
        if kind == "TokenRow":
            values[f"c{n}_system"], values[f"c{n}_code"] = part.system, part.code
        elif kind == "StringRow":
            values[f"c{n}_code"] = part.norm
        elif kind == "UriRow":
            values[f"c{n}_code"] = part.value
        elif kind == "ReferenceRow":
            values[f"c{n}_system"], values[f"c{n}_code"] = part.target_type, part.target_id
        elif kind in ("QuantityRow", "NumberRow"):
            values[f"c{n}_num"] = float(part.value)
            values[f"c{n}_system"] = getattr(part, "system", None)
            values[f"c{n}_code"] = getattr(part, "code", None)
        elif kind == "DateRow":
            values[f"c{n}_low"], values[f"c{n}_high"] = part.low, part.high
    return _fit(FhirComposite, values)


def history(
    session: Session,
    *,
    resource_type: str | None = None,
    res_id: str | None = None,
    since: datetime | None = None,
    at: datetime | None = None,
    limit: int = 100,
    offset: int = 0,
) -> tuple[list[FhirHistory], int]:
    """Versions newest first (FHIR R4 http §3.1.0.8), and how many there are in all."""
    flush_index(session)
    conds = []
    if resource_type is not None:
        conds.append(FhirHistory.resource_type == resource_type)
    if res_id is not None:
        conds.append(FhirHistory.res_id == res_id)
    if since is not None:
        conds.append(FhirHistory.last_updated >= since)
    if at is not None:
        conds.append(FhirHistory.last_updated <= at)
    total = session.scalar(select(func.count()).select_from(FhirHistory).where(*conds)) or 0
    rows = session.scalars(
        select(FhirHistory)
        .where(*conds)
        .order_by(FhirHistory.seq.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), total


def version(
    session: Session, resource_type: str, res_id: str, version_id: int
) -> FhirHistory | None:
    """One version of a resource (vread), by the (type, id, version) unique key."""
    flush_index(session)
    return session.scalars(
        select(FhirHistory).where(
            FhirHistory.resource_type == resource_type,
            FhirHistory.res_id == res_id,
            FhirHistory.version_id == version_id,
        )
    ).one_or_none()


def changes_after(session: Session, seq: int, limit: int) -> list[FhirHistory]:
    """Versions with ``seq`` greater than a consumer's cursor, oldest first."""
    flush_index(session)
    return list(
        session.scalars(
            select(FhirHistory).where(FhirHistory.seq > seq).order_by(FhirHistory.seq).limit(limit)
        ).all()
    )
