"""``medflow views``: flat tables for BI tools (issue 7) from SQL-on-FHIR v2 ViewDefinitions
over the embedded FHIR store, plus the archive's index as ``dicom_studies`` and
``dicom_series``, written as Parquet files, CSV files or one DuckDB database.

``medflow views run [VIEWS...] --out PATH [--format parquet|csv|duckdb]``: VIEWS are
ViewDefinition JSON files or folders; none runs the shipped views and the DICOM tables.
``medflow views list`` shows the shipped views and their columns.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table as RichTable

from medflow.cli.common import load_settings
from medflow.core.errors import MedflowError
from medflow.core.logging import configure

if TYPE_CHECKING:
    from medflow.bootstrap import Container
    from medflow.fhir.views_output import Table
    from medflow.store.query import Level

console = Console()
views_app = typer.Typer(help="Flat tables for BI tools (SQL-on-FHIR views, DICOM index).")
DICOM_PAGE = 1000
DICOM_TABLES = {
    "dicom_studies": "the archive's studies (index): uid, patient, accession, date, modalities",
    "dicom_series": "the archive's series (index): uid, study, modality, body part, counts",
}
# (column, FHIR type, DICOM tag) of the DICOM index tables
_STUDY = [
    ("study_uid", "string", "0020000D"),
    ("patient_id", "string", "00100020"),
    ("patient_name", "string", "00100010"),
    ("accession", "string", "00080050"),
    ("study_date", "date", "00080020"),
    ("study_time", "string", "00080030"),
    ("modalities", "string", "00080061"),
    ("description", "string", "00081030"),
    ("referring_physician", "string", "00080090"),
    ("number_of_series", "integer", "00201206"),
    ("number_of_instances", "integer", "00201208"),
]
_SERIES = [
    ("series_uid", "string", "0020000E"),
    ("study_uid", "string", "0020000D"),
    ("patient_id", "string", "00100020"),
    ("accession", "string", "00080050"),
    ("study_date", "date", "00080020"),
    ("modality", "string", "00080060"),
    ("series_number", "integer", "00200011"),
    ("description", "string", "0008103E"),
    ("body_part", "string", "00180015"),
    ("number_of_instances", "integer", "00201209"),
]


# -- the DICOM index tables ---------------------------------------------------------------------


def _dicom_value(obj: dict[str, Any], tag: str, kind: str) -> Any:
    """A DICOM JSON attribute as one plain value: PN alphabetic, multiple values joined with
    ``,``, DA as ``YYYY-MM-DD``."""
    values = [v for v in (obj.get(tag) or {}).get("Value") or [] if v is not None]
    values = [v.get("Alphabetic") if isinstance(v, dict) else v for v in values]
    if not values:
        return None
    if kind == "date":
        text = str(values[0])
        return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 else None
    if kind == "integer":
        return int(values[0])
    return ",".join(str(v) for v in values if v is not None)


def _dicom_rows(container: Container, level: Level) -> Iterator[list[dict[str, Any]]]:
    """Rows of the study or series index, page by page through ``StoreService.search``."""
    from medflow.store.query import Query

    spec = _STUDY if level == "study" else _SERIES
    offset = 0
    while True:
        found = container.store.search(Query(level=level, limit=DICOM_PAGE, offset=offset))
        rows = [
            {name: _dicom_value(obj, tag, kind) for name, kind, tag in spec} for obj in found.rows
        ]
        if rows:
            yield rows
        if not found.more:
            return
        offset += DICOM_PAGE


def _dicom_tables(container: Container) -> list[Table]:
    from medflow.fhir.views_output import Column, Table

    def columns(spec: list[tuple[str, str, str]]) -> list[Column]:
        return [Column(name, kind) for name, kind, _ in spec]

    return [
        Table("dicom_studies", columns(_STUDY), _dicom_rows(container, "study")),
        Table("dicom_series", columns(_SERIES), _dicom_rows(container, "series")),
    ]


# -- views ------------------------------------------------------------------------------------


def _view_tables(container: Container, views: dict[str, dict[str, Any]]) -> list[Table]:
    from medflow.fhir.views_output import Table, view_columns
    from medflow.fhir.views_store import row_batches, store_resources, view_resource_type

    tables = []
    for name, view in views.items():
        rtype = view_resource_type(view)  # checks every view before any is run
        resources = store_resources(container.engine, rtype)
        tables.append(Table(name, view_columns(view), row_batches(view, resources)))
    return tables


@dataclass
class _Timing:
    """Rows and seconds per table, measured while the writer pulls the batches."""

    rows: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _timed(table: Table, timing: _Timing, progress: Progress, task: Any) -> Table:
    from medflow.fhir.views_output import Table

    def batches() -> Iterator[list[dict[str, Any]]]:
        start = time.perf_counter()
        count = 0
        progress.update(task, description=f"{table.name}: 0 rows")
        for rows in table.batches:
            count += len(rows)
            progress.update(task, description=f"{table.name}: {count:,} rows")
            yield rows
        timing.rows[table.name] = count
        timing.seconds[table.name] = time.perf_counter() - start

    return Table(table.name, list(table.columns), batches())


def _report(timing: _Timing, out: Path, fmt: str) -> None:
    table = RichTable(title=f"{fmt} → {out}")
    for heading in ("table", "rows", "seconds", "rows/s"):
        table.add_column(heading, justify="left" if heading == "table" else "right")
    for name, rows in timing.rows.items():
        seconds = timing.seconds[name]
        rate = rows / seconds if seconds > 0 else 0.0
        table.add_row(name, f"{rows:,}", f"{seconds:.2f}", f"{rate:,.0f}")
    console.print(table)
    total = sum(timing.rows.values())
    console.print(f"{total:,} rows in {len(timing.rows)} tables written to {out}")


@views_app.command("run")
def run(
    out: Annotated[Path, typer.Option("--out", help="Output folder, or DuckDB file")],
    views: Annotated[
        list[Path] | None,
        typer.Argument(
            help="ViewDefinition JSON files or folders (default: the shipped views "
            "and the DICOM tables)"
        ),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="parquet, csv or duckdb (default: duckdb when --out ends "
            "in .duckdb, else parquet)",
        ),
    ] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data directory")] = None,
) -> None:
    """Materialize views over the store as Parquet files, CSV files or a DuckDB database."""
    from medflow.bootstrap import build
    from medflow.fhir.views_output import write_tables
    from medflow.fhir.views_store import load_view_files, shipped_views

    configure("warning")
    fmt = fmt or ("duckdb" if out.suffix == ".duckdb" else "parquet")
    container = build(load_settings(data_dir))
    timing = _Timing()
    try:
        chosen = load_view_files(views) if views else shipped_views()
        tables = _view_tables(container, chosen)
        if not views:
            tables += _dicom_tables(container)
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as progress:
            task = progress.add_task("starting", total=None)
            timed = [_timed(t, timing, progress, task) for t in tables]
            write_tables(timed, out, fmt)
    except MedflowError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc
    finally:
        container.close()
    _report(timing, out, fmt)


@views_app.command("list")
def list_views() -> None:
    """The shipped views (and the DICOM index tables) with their resource type and columns."""
    from medflow.fhir.views_output import view_columns
    from medflow.fhir.views_store import shipped_views

    rows = [
        (name, str(view["resource"]), ", ".join(c.name for c in view_columns(view)),
         str(view.get("title", "")))
        for name, view in shipped_views().items()
    ]  # fmt: skip
    rows += [
        (name, "(DICOM index)", ", ".join(n for n, _, _ in spec), DICOM_TABLES[name])
        for name, spec in (("dicom_studies", _STUDY), ("dicom_series", _SERIES))
    ]
    table = RichTable(title="shipped views")
    # The name is the table (or file) the view becomes, what a user queries next: never cut it,
    # however narrow the terminal; the columns and the title wrap instead.
    table.add_column("name", no_wrap=True, min_width=max(len(row[0]) for row in rows))
    table.add_column("resource", no_wrap=True)
    table.add_column("columns", overflow="fold")
    table.add_column("title", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)
