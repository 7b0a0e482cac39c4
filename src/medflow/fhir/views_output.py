"""Rows of SQL-on-FHIR views as files: Parquet (one file per view), CSV (one per view) or one
DuckDB database (one table per view), written in batches (never a whole table in memory), and
the text encodings of the ``$run`` operation (JSON array, ndjson, CSV).

Column types come from the view's column ``type`` (FHIR primitive type names) when given:
``integer``/``positiveInt``/``unsignedInt``/``integer64`` → int64, ``decimal`` → float64,
``boolean`` → bool, ``date`` → date (a partial date, ``1990`` or ``1990-05``, is its first
day), ``dateTime``/``instant`` → timestamp in UTC (a value without a time or zone is read as
UTC midnight / UTC), ``time`` → time; every other type is a string. Without a ``type`` it is
inferred from the first batch's values (bool, int64, float64, else string; objects as JSON
text). ``collection: true`` columns are lists of that type (JSON text in CSV).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from medflow.core.errors import InvalidInput
from medflow.fhir.views import column_names

Row = dict[str, Any]
BATCH = 10_000
"""Rows per Arrow record batch (and Parquet row group at most)."""
INTEGERS = frozenset({"integer", "positiveInt", "unsignedInt", "integer64"})
TIMESTAMP = pa.timestamp("us", tz="UTC")
_ARROW: dict[str, pa.DataType] = {
    **dict.fromkeys(INTEGERS, pa.int64()),
    "decimal": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "dateTime": TIMESTAMP,
    "instant": TIMESTAMP,
    "time": pa.time64("us"),
}
FORMATS = ("parquet", "csv", "duckdb")


@dataclass(frozen=True)
class Column:
    """A column of a table: its name, FHIR type (None: inferred) and whether it is a list."""

    name: str
    type: str | None = None
    collection: bool = False


@dataclass
class Table:
    """A table to write: a name, its columns and its rows in batches (lists of row dicts)."""

    name: str
    columns: list[Column]
    batches: Iterable[list[Row]]


def view_columns(view: dict[str, Any]) -> list[Column]:
    """The columns of a ViewDefinition, in order, with their ``type`` and ``collection``
    (``InvalidInput`` for an invalid view)."""
    found: dict[str, Column] = {}

    def walk(node: dict[str, Any]) -> None:
        for column in node.get("column") or []:
            name = column["name"]
            found.setdefault(name, Column(name, column.get("type"), bool(column.get("collection"))))
        for key in ("select", "unionAll"):
            for child in node.get(key) or []:
                walk(child)

    names = column_names(view)
    walk({"select": view["select"]})
    return [found[name] for name in names]


# -- values -----------------------------------------------------------------------------------


def _parse_date(value: Any) -> date | None:
    if isinstance(value, date):
        return value
    text = str(value)[:10]
    parts = text.split("-")
    try:
        return date(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1,
                    int(parts[2]) if len(parts) > 2 else 1)  # fmt: skip
    except (ValueError, IndexError):
        return None


def _parse_timestamp(value: Any) -> datetime | None:
    text = str(value)
    if len(text) <= 10:  # a date (or a partial one): UTC midnight
        day = _parse_date(text)
        return datetime(day.year, day.month, day.day, tzinfo=UTC) if day else None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def _parse_time(value: Any) -> time | None:
    try:
        return time.fromisoformat(str(value))
    except ValueError:
        return None


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def _integer(value: Any) -> int | None:
    if isinstance(value, float) and not value.is_integer():
        raise InvalidInput(f"{value!r} is not an integer: give the column type decimal")
    return int(value)


_CONVERT: dict[pa.DataType, Callable[[Any], Any]] = {
    pa.int64(): _integer,
    pa.float64(): float,
    pa.bool_(): lambda v: v if isinstance(v, bool) else str(v).lower() == "true",
    pa.date32(): _parse_date,
    TIMESTAMP: _parse_timestamp,
    pa.time64("us"): _parse_time,
    pa.string(): _text,
}


def _infer(values: Iterable[Any]) -> pa.DataType:
    """The type of untyped values: bool, int64, float64 (ints and floats mixed), else string."""
    kinds = {type(v) for v in values if v is not None}
    if kinds == {bool}:
        return pa.bool_()
    if kinds and kinds <= {int}:
        return pa.int64()
    if kinds and kinds <= {int, float}:
        return pa.float64()
    return pa.string()


def arrow_schema(columns: list[Column], sample: list[Row]) -> pa.Schema:
    """The Arrow schema of ``columns``; untyped ones inferred from the ``sample`` rows."""
    fields = []
    for col in columns:
        kind = _ARROW.get(col.type or "")
        if kind is None and col.type is not None:
            kind = pa.string()
        if kind is None:
            values = [r.get(col.name) for r in sample]
            if col.collection:
                values = [v for items in values if items for v in items]
            kind = _infer(values)
        fields.append(pa.field(col.name, pa.list_(kind) if col.collection else kind))
    return pa.schema(fields)


def _convert(value: Any, kind: pa.DataType) -> Any:
    return None if value is None else _CONVERT[kind](value)


def record_batch(rows: list[Row], schema: pa.Schema) -> pa.RecordBatch:
    """``rows`` as an Arrow record batch of ``schema`` (values converted to the column types)."""
    arrays = []
    for fld in schema:
        if pa.types.is_list(fld.type):
            item = fld.type.value_type
            data: list[Any] = [
                None if r.get(fld.name) is None else [_convert(v, item) for v in r[fld.name]]
                for r in rows
            ]
        else:
            data = [_convert(r.get(fld.name), fld.type) for r in rows]
        arrays.append(pa.array(data, type=fld.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def rebatch(batches: Iterable[list[Row]], size: int = BATCH) -> Iterator[list[Row]]:
    """Row lists regrouped into lists of ``size`` rows (the last one shorter)."""
    pending: list[Row] = []
    for rows in batches:
        pending.extend(rows)
        while len(pending) >= size:
            yield pending[:size]
            pending = pending[size:]
    if pending:
        yield pending


def arrow_batches(table: Table) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
    """The schema of ``table`` (from its first batch) and its rows as Arrow record batches."""
    groups = rebatch(table.batches)
    first = next(groups, [])
    schema = arrow_schema(table.columns, first)

    def batches() -> Iterator[pa.RecordBatch]:
        if first:
            yield record_batch(first, schema)
        for rows in groups:
            yield record_batch(rows, schema)

    return schema, batches()


# -- files ------------------------------------------------------------------------------------

Progress = Callable[[str, int], None]
"""Called with a table's name and the rows written so far, after each batch."""


def write_parquet(table: Table, path: Path, progress: Progress | None = None) -> int:
    """``table`` as a Parquet file (zstd), one row group per batch; returns the row count."""
    schema, batches = arrow_batches(table)
    count = 0
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for batch in batches:
            writer.write_batch(batch)
            count += batch.num_rows
            if progress:
                progress(table.name, count)
    return count


def write_csv(table: Table, path: Path, progress: Progress | None = None) -> int:
    """``table`` as a CSV file with a header row (UTF-8); returns the row count."""
    names = [c.name for c in table.columns]
    count = 0
    with path.open("w", encoding="utf-8", newline="") as fp:
        writer = csv.writer(fp)
        writer.writerow(names)
        for rows in table.batches:
            writer.writerows(csv_values(row, names) for row in rows)
            count += len(rows)
            if progress:
                progress(table.name, count)
    return count


def write_duckdb(
    tables: Iterable[Table], path: Path, progress: Progress | None = None
) -> dict[str, int]:
    """``tables`` into one DuckDB database file (each replaced if present), created from Arrow
    record batches; returns the row count per table."""
    import duckdb

    counts: dict[str, int] = {}
    with duckdb.connect(str(path)) as con:
        for table in tables:
            schema, batches = arrow_batches(table)
            ident = '"' + table.name.replace('"', '""') + '"'
            con.register("medflow_empty", pa.Table.from_batches([], schema=schema))
            con.execute(f"CREATE OR REPLACE TABLE {ident} AS SELECT * FROM medflow_empty")
            con.unregister("medflow_empty")
            count = 0
            for batch in batches:
                con.register("medflow_batch", pa.Table.from_batches([batch]))
                con.execute(f"INSERT INTO {ident} SELECT * FROM medflow_batch")
                con.unregister("medflow_batch")
                count += batch.num_rows
                if progress:
                    progress(table.name, count)
            counts[table.name] = count
    return counts


def write_tables(
    tables: Iterable[Table], out: Path, fmt: str, progress: Progress | None = None
) -> dict[str, int]:
    """Write ``tables`` in ``fmt``: ``parquet``/``csv`` into the folder ``out`` (created;
    ``<name>.parquet``/``<name>.csv``), ``duckdb`` into the database file ``out``. Returns the
    row count per table."""
    if fmt not in FORMATS:
        raise InvalidInput(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "duckdb":
        out.parent.mkdir(parents=True, exist_ok=True)
        return write_duckdb(tables, out, progress)
    out.mkdir(parents=True, exist_ok=True)
    write = write_parquet if fmt == "parquet" else write_csv
    return {t.name: write(t, out / f"{t.name}.{fmt}", progress) for t in tables}


# -- $run encodings ---------------------------------------------------------------------------


def csv_values(row: Row, names: list[str]) -> list[str]:
    """A row's CSV fields: null empty, booleans ``true``/``false``, lists and objects JSON."""
    return ["" if row.get(n) is None else _text(row.get(n)) for n in names]


def encode_rows(
    fmt: str, names: list[str], batches: Iterable[list[Row]], *, header: bool = True
) -> Iterator[bytes]:
    """The ``$run`` output of row batches: ``json`` (one JSON array of row objects, keys in
    column order), ``ndjson`` (a row object per line) or ``csv`` (header row unless
    ``header`` is false)."""
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    if fmt == "csv":
        if header:
            yield _csv_text([names])
        for rows in batches:
            yield _csv_text(csv_values(r, names) for r in rows)
        return
    first = True
    if fmt == "json":
        yield b"["
    for rows in batches:
        for row in rows:
            text = dumps({n: row.get(n) for n in names})
            if fmt == "ndjson":
                yield (text + "\n").encode()
            else:
                yield (text if first else "," + text).encode()
            first = False
    if fmt == "json":
        yield b"]"


def _csv_text(rows: Iterable[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return buf.getvalue().encode()
