"""``medflow cohort``: evaluate cohort definitions (JSON or YAML, docs/cohorts.md) against the
local data directory, and keep tracked cohorts there.

``run FILE`` evaluates a file without saving anything; ``save FILE`` saves it as a tracked
cohort (a new version when it changed) and prints its id; ``run ID`` runs a tracked cohort
(the run is stored and the cohort's FHIR Group updated) and shows who entered and who left
since the run before; ``list``, ``show ID`` and ``diff ID`` read them back. Patients are shown
by MRN with counts of what matched (no other identifying data), or as JSON (``--json``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from medflow.cli.common import call

if TYPE_CHECKING:
    from medflow.cohort.results import CohortResult
    from medflow.cohort.schema import CohortDefinition
    from medflow.cohort.tracking import CohortTracker, RunDiff

console = Console()
cohort_app = typer.Typer(help="Cohorts across FHIR and DICOM.")
T = TypeVar("T")
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON")]


def _definition(file: Path) -> CohortDefinition:
    """The file's definition, or its errors printed (exit status 2)."""
    from medflow.cohort.schema import DefinitionError, load_definition

    try:
        return load_definition(file)
    except DefinitionError as exc:
        console.print(f"[red]{file.name} is not a valid cohort definition:[/red]")
        for path, message in exc.errors:
            console.print(f"  {path or '(top)'}: {message}", markup=False)
        raise typer.Exit(2) from None


def _call(data_dir: Path | None, action: Callable[[CohortTracker], T]) -> T:
    """``action`` on the data directory's tracked cohorts; medflow errors printed (exit 1)."""
    return call(data_dir, lambda c: action(c.cohorts), console)


def _as_of(value: str | None) -> date | None:
    try:
        return None if value is None else date.fromisoformat(value)
    except ValueError:
        console.print(f"[red]--as-of {value!r} is not an ISO date (YYYY-MM-DD)[/red]")
        raise typer.Exit(2) from None


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=1))


@cohort_app.command("run")
def run(
    target: Annotated[
        str, typer.Argument(help="A definition file (.json, .yaml) or a cohort id or name")
    ],
    data_dir: DataDir = None,
    as_json: AsJson = False,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Evaluate as of this day (YYYY-MM-DD)")
    ] = None,
) -> None:
    """Evaluate a FILE (nothing is saved), or run a saved cohort by ID (the run is stored):
    patients meeting every criterion, what matched, the attrition."""
    day = _as_of(as_of)
    if Path(target).is_file():
        definition = _definition(Path(target))
        result = _call(data_dir, lambda t: t.evaluate(definition=definition, as_of=day))
        if as_json:
            _echo_json(result.to_dict())
        else:
            _print_result(result)
        return
    if target.endswith((".json", ".yaml", ".yml")):
        console.print(f"[red]no such file: {target}[/red]", markup=True)
        raise typer.Exit(2)
    outcome = _call(data_dir, lambda t: t.run(ref=target, as_of=day))
    if as_json:
        _echo_json(outcome.to_dict())
        return
    console.print(f"run {outcome.run.id} of cohort {outcome.run.cohort_id} ({outcome.name}) "
                  f"version {outcome.run.version}; FHIR Group/{outcome.group}",
                  markup=False)  # fmt: skip
    _print_tables(outcome.name, outcome.run.attrition, outcome.run.patients or [])
    console.print(f"evaluated as of {outcome.run.evaluation_date} in "
                  f"{outcome.run.elapsed_s:.3f} s")  # fmt: skip
    _print_diff(outcome.diff)


def _print_result(result: CohortResult) -> None:
    data = result.to_dict()
    _print_tables(result.name, data["attrition"], data["patients"])
    console.print(f"evaluated as of {result.evaluation_date} in {result.elapsed_s:.3f} s")


def _print_tables(
    name: str, attrition: list[dict[str, Any]], patients: list[dict[str, Any]]
) -> None:
    table = Table("criterion", "patients", title=f"{name}: attrition")
    for step in attrition:
        table.add_row(str(step["criterion"]), str(step["patients"]))
    console.print(table)
    types = sorted({t for p in patients for t in p["resources"]})
    rows = Table("MRN", *types, "studies", title=f"{len(patients)} patients")
    for p in patients:
        counts = [str(len(p["resources"].get(t, ()))) for t in types]
        rows.add_row(p["mrn"] or "-", *counts, str(len(p["studies"])))
    console.print(rows)


def _print_diff(diff: RunDiff) -> None:
    since = "no run before" if diff.from_run is None else f"run {diff.from_run}"
    console.print(f"since {since}: {len(diff.entered)} entered, {len(diff.left)} left, "
                  f"{diff.stayed} stayed (run {diff.to_run})")  # fmt: skip
    for label, rows in (("entered", diff.entered), ("left", diff.left)):
        if rows:
            console.print(f"  {label}: " + ", ".join(p["mrn"] or "-" for p in rows),
                          markup=False)  # fmt: skip


@cohort_app.command("save")
def save(
    file: Annotated[Path, typer.Argument(help="Cohort definition (.json, .yaml)", exists=True)],
    name: Annotated[
        str | None, typer.Option("--name", help="Cohort name (default: the definition's)")
    ] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Save FILE as a tracked cohort (a new version when it changed); prints the id."""
    definition = _definition(file)
    saved = _call(data_dir, lambda t: t.save(definition=definition, name=name))
    if as_json:
        _echo_json(saved.to_dict())
        return
    what = "new version" if saved.created else "unchanged"
    Console(stderr=True).print(f"cohort {saved.name!r} version {saved.version} ({what})",
                               markup=False)  # fmt: skip
    typer.echo(str(saved.id))


@cohort_app.command("list")
def list_cohorts(data_dir: DataDir = None, as_json: AsJson = False) -> None:
    """The tracked cohorts: latest version, runs, last run."""
    cohorts = _call(data_dir, lambda t: t.list_cohorts())
    if as_json:
        _echo_json([c.to_dict() for c in cohorts])
        return
    table = Table("id", "name", "version", "runs", "last run", "as of", "patients")
    for c in cohorts:
        last = c.last_run
        table.add_row(str(c.id), c.name, str(c.version), str(c.runs),
                      "-" if last is None else last.run_at.strftime("%Y-%m-%d %H:%M"),
                      "-" if last is None else last.evaluation_date.isoformat(),
                      "-" if last is None else str(last.patient_count))  # fmt: skip
    console.print(table)


@cohort_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="Cohort id or name")],
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """A tracked cohort: its definition, versions and runs."""
    info, runs = _call(data_dir, lambda t: (t.show(ref=ref), t.runs(ref=ref)))
    if as_json:
        _echo_json({**info.to_dict(), "run_list": [r.to_dict() for r in runs]})
        return
    console.print(f"cohort {info.id}: {info.name}, version {info.version}, FHIR Group/"
                  f"{info.group}", markup=False)  # fmt: skip
    versions = Table("version", "saved", "evaluation date", "digest", title="versions")
    for v in info.versions or []:
        versions.add_row(str(v.version), v.created_at.strftime("%Y-%m-%d %H:%M"),
                         str(v.definition.get("evaluation_date")), v.digest[:12])  # fmt: skip
    console.print(versions)
    table = Table("run", "version", "ran at", "as of", "patients", title="runs")
    for r in runs:
        table.add_row(str(r.id), str(r.version), r.run_at.strftime("%Y-%m-%d %H:%M:%S"),
                      r.evaluation_date.isoformat(), str(r.patient_count))  # fmt: skip
    console.print(table)
    if info.versions:
        console.print_json(json.dumps(info.versions[-1].definition))


@cohort_app.command("diff")
def diff(
    ref: Annotated[str, typer.Argument(help="Cohort id or name")],
    from_run: Annotated[int | None, typer.Option("--from", help="Earlier run id")] = None,
    to_run: Annotated[int | None, typer.Option("--to", help="Later run id")] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Who entered and who left between two runs (default: the last two)."""
    changes = _call(data_dir, lambda t: t.diff(ref=ref, from_run=from_run, to_run=to_run))
    if as_json:
        _echo_json(changes.to_dict())
        return
    _print_diff(changes)


__all__ = ["cohort_app"]
