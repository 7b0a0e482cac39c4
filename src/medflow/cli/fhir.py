"""``medflow fhir load FILES...``: load FHIR R4 ndjson (one resource per line, as bulk export
writes it) and Bundles (transaction or batch: run as such; other types: their resources) into
the embedded FHIR store, with a progress bar and a table of failures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medflow.cli.common import load_settings
from medflow.core.errors import MedflowError
from medflow.core.logging import configure

console = Console()
fhir_app = typer.Typer(help="The embedded FHIR R4 store.")
CHUNK = 500


def _files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".ndjson", ".json"))
        else:
            yield path


def _chunks(path: Path) -> Iterator[tuple[str, list[Any]]]:
    """(kind, resources) chunks of a file: ndjson lines, or one Bundle."""
    if path.suffix == ".ndjson":
        chunk: list[Any] = []
        with path.open(encoding="utf-8") as fp:
            for n, line in enumerate(fp, start=1):
                if not line.strip():
                    continue
                try:
                    chunk.append(json.loads(line))
                except ValueError as exc:
                    raise MedflowError(f"{path.name}:{n}: not JSON ({exc})") from exc
                if len(chunk) == CHUNK:
                    yield "resources", chunk
                    chunk = []
        if chunk:
            yield "resources", chunk
        return
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MedflowError(f"{path.name}: not JSON ({exc})") from exc
    if doc.get("resourceType") == "Bundle" and doc.get("type") in ("transaction", "batch"):
        yield str(doc["type"]), [doc]
    elif doc.get("resourceType") == "Bundle":
        yield "resources", [e["resource"] for e in doc.get("entry") or [] if "resource" in e]
    else:
        yield "resources", [doc]


@fhir_app.command("load")
def load(
    paths: Annotated[list[Path], typer.Argument(help="ndjson files, Bundle JSON files, folders")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data directory")] = None,
) -> None:
    """Load resources; each ndjson chunk of 500 and each Bundle is one transaction."""
    from medflow.bootstrap import build
    from medflow.fhir.bundles import batch, transaction

    configure("warning")
    container = build(load_settings(data_dir))
    failures: list[tuple[str, str]] = []
    loaded = 0
    files = list(_files(paths))
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console) as progress:  # fmt: skip
            task = progress.add_task("FHIR load", total=len(files))
            for path in files:
                try:
                    for kind, items in _chunks(path):
                        if kind == "transaction":
                            loaded += len(transaction(container.fhir, items[0])["entry"])
                        elif kind == "batch":
                            loaded += len(batch(container.fhir, items[0])["entry"])
                        else:
                            loaded += len(container.fhir.load(items))
                except MedflowError as exc:
                    failures.append((path.name, exc.message))
                progress.advance(task)
    finally:
        container.close()
    console.print(f"{loaded} resources written from {len(files)} files, {len(failures)} failed")
    if failures:
        table = Table("file", "reason")
        for name, reason in failures:
            table.add_row(name, reason)
        console.print(table)
        raise typer.Exit(1)
