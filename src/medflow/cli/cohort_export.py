"""``medflow cohort export FILE|ID --out DIR|FILE.zip``: evaluate a cohort and write its
patients' FHIR data (ndjson per resource type), the DICOM files of its studies and a manifest
(Parquet and CSV) into a folder or a zip, with a progress bar; a re-run over an interrupted
export finishes it (``medflow.cohort.export``). ``--deidentify PROFILE`` writes it
de-identified (``medflow.deid``; the key from ``MEDFLOW_DEID__KEY``)."""

from __future__ import annotations

import importlib
import importlib.util
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from medflow.cli.common import load_settings
from medflow.core.errors import MedflowError
from medflow.core.logging import configure

if TYPE_CHECKING:  # the heavy imports wait until the command runs
    from medflow.bootstrap import Container
    from medflow.cohort.export import ExportProgress, ExportSummary
    from medflow.cohort.schema import CohortDefinition
    from medflow.deid.service import Deidentification

console = Console()
TRACKING = "medflow.cohort.tracking"


class ExportLevel(StrEnum):
    study = "study"
    series = "series"


def export(
    cohort: Annotated[
        str, typer.Argument(help="A cohort definition (.json, .yaml) or a saved cohort's id")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder, or a file ending in .zip")],
    deidentify: Annotated[
        str | None,
        typer.Option(
            "--deidentify",
            help="De-identify: a DICOM profile (basic, research or a "
            "YAML/JSON file); the key is MEDFLOW_DEID__KEY",
        ),
    ] = None,
    rules: Annotated[
        Path | None, typer.Option("--rules", help="FHIR de-identification rules (YAML)")
    ] = None,
    level: Annotated[
        ExportLevel,
        typer.Option(help="study: whole studies; series: the series matching imaging criteria"),
    ] = ExportLevel.study,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Data directory (default: $MEDFLOW_DATA_DIR)"),
    ] = None,
) -> None:
    """Export a cohort: FHIR ndjson, DICOM files and a manifest; resumable (run it again)."""
    from medflow.bootstrap import build

    configure("warning")
    settings = load_settings(data_dir)
    deid = None
    if deidentify is not None or rules is not None:
        from medflow.deid.service import Deidentification

        try:
            deid = Deidentification.from_settings(settings, profile=deidentify, rules=rules)
        except MedflowError as exc:
            console.print(f"[red]--deidentify: {exc.message}[/red]")
            raise typer.Exit(2) from None
    container = build(settings)
    try:
        definition = _definition(cohort, container)
        summary = _run(container, definition, out, level.value, deid)
    except MedflowError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    finally:
        container.close()
    _report(summary)


def _definition(cohort: str, container: Container) -> CohortDefinition:
    """A definition file, or a saved cohort's definition (when cohort tracking exists)."""
    from medflow.cohort.schema import DefinitionError, load_definition

    path = Path(cohort)
    if path.is_file():
        try:
            return load_definition(path)
        except DefinitionError as exc:
            console.print(f"[red]{path.name} is not a valid cohort definition:[/red]")
            for where, message in exc.errors:
                console.print(f"  {where or '(top)'}: {message}", markup=False)
            raise typer.Exit(2) from None
    if importlib.util.find_spec(TRACKING) is None:
        console.print(f"[red]{cohort}: no such file (saved cohorts by id arrive with cohort "
                      "tracking; give a definition file)[/red]")  # fmt: skip
        raise typer.Exit(2)
    from medflow.cohort.service import CohortService

    tracking = importlib.import_module(TRACKING)  # wired while cohort tracking is being built
    tracker = tracking.CohortTracker(
        engine=container.store.engine,
        cohorts=CohortService(store=container.store, fhir=container.fhir),
        fhir=container.fhir,
    )
    definition: CohortDefinition = tracker.definition(ref=cohort)
    return definition


def _run(
    container: Container,
    definition: CohortDefinition,
    out: Path,
    level: str,
    deid: Deidentification | None,
) -> ExportSummary:
    from medflow.cohort.export import export_cohort
    from medflow.cohort.service import CohortService

    result = CohortService(store=container.store, fhir=container.fhir).evaluate(definition)
    console.print(f"{definition.name}: {len(result.patients)} patients")
    columns = (TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, TaskID] = {}

        def show(step: ExportProgress) -> None:
            if step.phase not in tasks:
                label = {"fhir": "FHIR records", "dicom": "DICOM files", "zip": "zip"}[step.phase]
                tasks[step.phase] = bar.add_task(label, total=step.total)
            bar.update(tasks[step.phase], completed=step.done)

        return export_cohort(result, store=container.store, fhir=container.fhir, out=out,
                             level="series" if level == "series" else "study",
                             definition=definition, progress=show, deidentify=deid)  # fmt: skip


def _report(summary: ExportSummary) -> None:
    types = ", ".join(f"{t} {n}" for t, n in summary.resources.items()) or "none"
    console.print(f"FHIR resources: {types}", markup=False)
    console.print(f"DICOM: {summary.instances} files of {summary.studies} studies "
                  f"({summary.bytes:,} bytes), {summary.written} written, "
                  f"{summary.skipped} already there")  # fmt: skip
    if summary.excluded:
        console.print(f"[yellow]{summary.excluded} instances left out by the de-identification "
                      "profile (excluded.csv)[/yellow]")  # fmt: skip
    if summary.missing_studies:
        console.print(f"[yellow]{len(summary.missing_studies)} studies are no longer in the "
                      "archive[/yellow]")  # fmt: skip
    console.print(f"written to {summary.archive or summary.folder}", markup=False)


__all__ = ["ExportLevel", "export"]
