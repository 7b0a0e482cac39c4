"""``medflow demo ...``: the synthetic hospital (no real patient data)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

console = Console()
demo_app = typer.Typer(help="The synthetic demo hospital.")


@demo_app.command("generate")
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder to write (created)")],
    patients: Annotated[int, typer.Option(help="How many patients")] = 200,
    seed: Annotated[int, typer.Option(help="The hospital's seed (same seed, same bytes)")] = 0,
    metadata_only: Annotated[
        bool, typer.Option("--metadata-only", help="Tiny 8x8 pixel matrices (benchmarks)")
    ] = False,
    size: Annotated[int | None, typer.Option(help="Image matrix size (default 256)")] = None,
) -> None:
    """Write patients' FHIR Bundles, DICOM studies and the ground truth under --out."""
    from medflow.synthetic.writer import generate as write

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:  # fmt: skip
        task = progress.add_task("patients", total=patients)
        done = write(out, patients=patients, seed=seed, metadata_only=metadata_only, size=size,
                     progress=lambda n: progress.update(task, completed=n))  # fmt: skip
    console.print(f"{done.patients} patients, {done.resources} FHIR resources, "
                  f"{done.studies} studies, {done.instances} DICOM instances in {out}")  # fmt: skip


@demo_app.command("load")
def load(
    folder: Annotated[Path, typer.Argument(help="A folder written by `medflow demo generate`")],
    url: Annotated[str, typer.Option(help="The running medflow, e.g. http://127.0.0.1:8080")],
) -> None:
    """Send the folder through the public APIs: FHIR Bundles, then DICOM by STOW-RS."""
    from medflow.synthetic.loader import load as send

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:  # fmt: skip
        tasks: dict[str, TaskID] = {}

        def show(kind: str, n: int, total: int) -> None:
            if kind not in tasks:
                tasks[kind] = progress.add_task(kind, total=total)
            progress.update(tasks[kind], completed=n)

        try:
            done = send(folder, url=url, progress=show)
        except (RuntimeError, OSError) as exc:
            console.print(f"load failed: {exc}")
            raise typer.Exit(1) from exc
    console.print(f"{done.bundles} FHIR Bundles, {done.studies} studies "
                  f"({done.instances} instances) sent to {url}")  # fmt: skip
