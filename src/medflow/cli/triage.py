"""``medflow triage ...``: the triage worker's commands on the local archive (the worker itself
runs inside ``medflow serve``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from medflow.cli.common import call

if TYPE_CHECKING:
    from medflow.bootstrap import Container

console = Console()
triage_app = typer.Typer(help="Triage: the archive's studies scored by the production models.")
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory")]


@triage_app.command("backfill")
def backfill(
    since: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d", "%Y%m%d"], help="Only studies of this date or later"),
    ] = None,
    modality: Annotated[
        list[str] | None,
        typer.Option("--modality", help="Repeatable (default: those the production models read)"),
    ] = None,
    rescore: Annotated[
        bool, typer.Option("--rescore", help="Also studies a production model scored already")
    ] = False,
    now: Annotated[
        bool,
        typer.Option("--now", help="Score them here now (else a running medflow serve does)"),
    ] = False,
    data_dir: DataDir = None,
) -> None:
    """Score studies already in the archive (triage follows only what arrives after it
    starts): they join the worker's pending list, settled."""

    def run(container: Container) -> tuple[int, int, int]:
        from medflow.bootstrap import triage_worker

        worker = triage_worker(container)
        if not worker.production_models():
            console.print("no binary model is in production: nothing would score them "
                          "(`medflow models promote NAME:V --stage production`)")  # fmt: skip
            raise typer.Exit(1)
        day = since.date() if since is not None else None
        queued = worker.backfill(modalities=modality or None, since=day, rescore=rescore)
        if not now or not queued:
            return queued, 0, 0
        return queued, worker.score_settled(), worker.status().pending

    queued, scored, left = call(data_dir, run, console)
    if not now:
        console.print(f"{queued} studies queued; a running `medflow serve` scores them "
                      "(or run again with --now)")  # fmt: skip
        return
    console.print(f"{queued} studies queued, {scored} scored"
                  + (f"; {left} still pending (`medflow serve` tries them again; "
                     "failures at /api/triage/failures)" if left else ""))  # fmt: skip
