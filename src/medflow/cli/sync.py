"""``medflow sync ...``: the DICOM -> FHIR sync.

``medflow sync --dicomweb-url URL --fhir-url URL --state FILE`` runs it standalone against any
DICOMweb server with a change feed and any FHIR R4 server (cursor and dead letters in the state
file); ``once``, ``failures`` and ``replay`` work on the local archive and FHIR store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from medflow.cli.common import load_settings
from medflow.core.logging import configure

if TYPE_CHECKING:
    from medflow.sync.worker import SyncWorker

console = Console()
sync_app = typer.Typer(help="DICOM -> FHIR sync (ImagingStudy, Patient, Endpoint).")
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory")]


@sync_app.callback(invoke_without_command=True)
def standalone(
    ctx: typer.Context,
    dicomweb_url: Annotated[str | None, typer.Option(help="DICOMweb base URL to follow")] = None,
    fhir_url: Annotated[str | None, typer.Option(help="FHIR R4 base URL to write to")] = None,
    state: Annotated[Path | None, typer.Option(help="JSON file for cursor + dead letters")] = None,
    once: Annotated[bool, typer.Option(help="Stop when the change feed is drained")] = False,
    replay: Annotated[bool, typer.Option(help="Retry the state file's dead letters")] = False,
) -> None:
    """Run the sync standalone (with the URLs), or one of the commands below."""
    if ctx.invoked_subcommand is not None:
        return
    if not (dicomweb_url and fhir_url and state):
        console.print("give --dicomweb-url, --fhir-url and --state (or a command)")
        raise typer.Exit(2)
    import signal
    import threading

    from medflow.core.errors import MedflowError
    from medflow.core.settings import Settings
    from medflow.sync.remote import Http, HttpArchive, HttpFhir
    from medflow.sync.state import FileState
    from medflow.sync.worker import SyncWorker

    configure("info")
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # its request lines carry queries
    http = Http()
    target = HttpFhir(fhir_url, http)
    try:
        target.check_capabilities()
    except MedflowError as exc:
        console.print(f"the FHIR server cannot be used: {exc.message}")
        raise typer.Exit(1) from exc
    worker = SyncWorker(store=HttpArchive(dicomweb_url, http), target=target,
                        settings=Settings().sync, dicomweb_url=dicomweb_url,
                        state=FileState(state), fhir_changes=target.changes)  # fmt: skip
    if replay:
        ok, failed = worker.replay()
        console.print(f"{ok} studies synced, {failed} still failing")
        raise typer.Exit(1 if failed else 0)
    if once:
        try:
            worker.run_until_idle()
        except MedflowError as exc:  # the peer is down or refuses: the cursor stays
            console.print(f"sync stopped: {exc.message}")
            raise typer.Exit(1) from exc
    else:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        worker.run(stop)
    _print_status(worker)


@contextmanager
def _local_worker(data_dir: Path | None) -> Iterator[SyncWorker]:
    """The sync worker over the local archive and FHIR store (the container closed after)."""
    from medflow.bootstrap import build, sync_worker

    configure("warning")
    container = build(load_settings(data_dir))
    try:
        yield sync_worker(container)
    finally:
        container.close()


def _print_status(worker: SyncWorker) -> None:
    status = worker.status()
    console.print(f"synced {status.synced_studies} studies; cursor {status.cursor}, "
                  f"backlog {status.backlog}, dead letters {status.failures}")  # fmt: skip


@sync_app.command("once")
def once(data_dir: DataDir = None) -> None:
    """Sync everything the change feeds hold now, then stop (``medflow serve`` does this
    continuously)."""
    with _local_worker(data_dir) as worker:
        worker.run_until_idle()
        _print_status(worker)


@sync_app.command("failures")
def failures(
    data_dir: DataDir = None,
    all_: Annotated[bool, typer.Option("--all", help="Also the resolved ones")] = False,
) -> None:
    """The studies that could not be synced, with the reason."""
    with _local_worker(data_dir) as worker:
        rows = worker.failures(include_resolved=all_)
    table = Table("study", "attempts", "last attempt", "resolved", "reason")
    for row in rows:
        table.add_row(row.study_uid, str(row.attempts), row.last_attempt_at.isoformat(),
                      "yes" if row.resolved else "no", row.reason)  # fmt: skip
    console.print(table if rows else "no dead letters")


@sync_app.command("replay")
def replay(data_dir: DataDir = None) -> None:
    """Try the dead letters again (after fixing what they say); exit 1 if some still fail."""
    with _local_worker(data_dir) as worker:
        ok, failed = worker.replay()
    console.print(f"{ok} studies synced, {failed} still failing")
    if failed:
        raise typer.Exit(1)
