"""``medflow cohort run FILE``: evaluate a cohort definition (JSON or YAML, docs/cohorts.md)
against the local data directory and print the attrition and the patients (MRN and counts of
what matched: no other identifying data), or the whole result as JSON (``--json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from medflow.cli.common import load_settings
from medflow.core.errors import MedflowError
from medflow.core.logging import configure

console = Console()
cohort_app = typer.Typer(help="Cohorts across FHIR and DICOM.")


@cohort_app.command("run")
def run(
    file: Annotated[Path, typer.Argument(help="Cohort definition (.json, .yaml)", exists=True)],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="Data directory")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON")] = False,
) -> None:
    """Evaluate FILE: patients meeting every criterion, what matched, the attrition."""
    from medflow.bootstrap import build
    from medflow.cohort.schema import DefinitionError, load_definition
    from medflow.cohort.service import CohortService

    configure("warning")
    try:
        definition = load_definition(file)
    except DefinitionError as exc:
        console.print(f"[red]{file.name} is not a valid cohort definition:[/red]")
        for path, message in exc.errors:
            console.print(f"  {path or '(top)'}: {message}", markup=False)
        raise typer.Exit(2) from None
    container = build(load_settings(data_dir))
    try:
        result = CohortService(store=container.store, fhir=container.fhir).evaluate(definition)
    except MedflowError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    finally:
        container.close()
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1))
        return
    attrition = Table("criterion", "patients", title=f"{result.name}: attrition")
    for step in result.attrition:
        attrition.add_row(step.criterion, str(step.patients))
    console.print(attrition)
    types = sorted({t for p in result.patients for t in p.resources})
    patients = Table("MRN", *types, "studies", title=f"{len(result.patients)} patients")
    for p in result.patients:
        counts = [str(len(p.resources.get(t, ()))) for t in types]
        patients.add_row(p.mrn or "-", *counts, str(len(p.studies)))
    console.print(patients)
    console.print(f"evaluated as of {result.evaluation_date} in {result.elapsed_s:.3f} s")


__all__ = ["cohort_app"]
