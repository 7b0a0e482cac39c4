"""``medflow aet add|list|remove`` (the remote AE table) and ``medflow send`` (C-STORE SCU)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medflow.cli.common import load_settings
from medflow.core.errors import MedflowError
from medflow.core.logging import configure

if TYPE_CHECKING:  # the heavy imports wait until a command runs
    from medflow.bootstrap import Container
    from medflow.store.aes import RemoteEntity
    from medflow.store.records import InstanceRecord

console = Console()
aet_app = typer.Typer(help="Known remote AEs (C-MOVE destinations, `medflow send` peers).")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default: $MEDFLOW_DATA_DIR or ./medflow-data)"
    ),
]


def _container(data_dir: Path | None) -> Container:
    from medflow.bootstrap import build

    configure("warning")
    return build(load_settings(data_dir))


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(2)


@aet_app.command("add")
def aet_add(
    ae_title: Annotated[str, typer.Argument(help="AE title (1-16 characters)")],
    host: Annotated[str, typer.Argument(help="Host name or address")],
    port: Annotated[int, typer.Argument(help="DIMSE port")],
    description: Annotated[str | None, typer.Option(help="Free text")] = None,
    data_dir: DataDir = None,
) -> None:
    """Add a remote AE, or change its address (a running server sees it at once)."""
    container = _container(data_dir)
    try:
        entity = container.aes.put(ae_title, host, port, description)
    except MedflowError as exc:
        raise _fail(exc.message) from None
    finally:
        container.close()
    console.print(f"{entity.ae_title} → {entity.address}")


@aet_app.command("list")
def aet_list(data_dir: DataDir = None) -> None:
    """List the known remote AEs."""
    container = _container(data_dir)
    try:
        entries = container.aes.entries()
    finally:
        container.close()
    table = Table("AE title", "host", "port", "description")
    for e in entries:
        table.add_row(e.ae_title, e.host, str(e.port), e.description or "")
    console.print(table)


@aet_app.command("remove")
def aet_remove(
    ae_title: Annotated[str, typer.Argument(help="AE title")], data_dir: DataDir = None
) -> None:
    """Forget a remote AE."""
    container = _container(data_dir)
    try:
        removed = container.aes.remove(ae_title)
    finally:
        container.close()
    if not removed:
        raise _fail(f"no remote AE {ae_title.strip()!r}")
    console.print(f"removed {ae_title.strip()}")


def resolve_destination(container: Container, ae: str) -> RemoteEntity:
    """``HOST:PORT:AET`` or the title of a known remote AE."""
    from medflow.store.aes import RemoteEntity, normalize_ae_title, parse_address

    if ae.count(":") >= 2:
        address, _, title = ae.rpartition(":")
        host, port = parse_address(address)
        return RemoteEntity(normalize_ae_title(title), host, port)
    known = container.aes.get(ae)
    if known is None:
        raise MedflowError(f"unknown AE {ae!r}: give HOST:PORT:AET or add it with `medflow aet`")
    return known


def select(container: Container, uids: list[str], query: list[str]) -> list[InstanceRecord]:
    """Instances of the given study, series or instance UIDs, and of the studies matching
    every ``KEY=VALUE`` of ``query`` (QIDO-RS study-level keys and matching, PS3.18 10.6.1)."""
    from medflow.dicom.matching import parse_attribute, parse_match
    from medflow.store.query import Query

    store = container.store
    found: dict[str, InstanceRecord] = {}
    for uid in uids:
        records = (
            store.select_instances(study_uids=[uid])
            or store.select_instances(series_uids=[uid])
            or store.select_instances(sop_uids=[uid])
        )
        if not records:
            raise MedflowError(f"no study, series or instance {uid}")
        found.update((r.sop_instance_uid, r) for r in records)
    if query:
        matches = []
        for item in query:
            key, sep, value = item.partition("=")
            if not sep:
                raise MedflowError(f"--query {item!r}: expected KEY=VALUE")
            matches.append(parse_match(parse_attribute(key.strip()), value))
        studies: list[str] = []
        offset = 0
        while True:
            page = store.search(
                Query(level="study", matches=tuple(matches), limit=1000, offset=offset)
            )
            studies += [row["0020000D"]["Value"][0] for row in page.rows]
            if not page.more:
                break
            offset += 1000
        if studies:
            found.update(
                (r.sop_instance_uid, r) for r in store.select_instances(study_uids=studies)
            )
    return list(found.values())


def send(
    uids: Annotated[
        list[str] | None, typer.Argument(help="Study, series or SOP instance UIDs")
    ] = None,
    ae: Annotated[
        str, typer.Option("--ae", help="Destination: HOST:PORT:AET, or a known AE title")
    ] = "",
    query: Annotated[
        list[str] | None,
        typer.Option("--query", "-q", help="Study-level key, e.g. PatientID=123 (repeatable)"),
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Send stored instances to a remote AE with C-STORE (PS3.4 B), as stored when it
    accepts their transfer syntax; ends with completed/warning/failed counts."""
    if not ae:
        raise _fail("--ae HOST:PORT:AET is required")
    if not uids and not query:
        raise _fail("give study/series/instance UIDs or --query KEY=VALUE")
    from medflow.dimse.scu import StoreScu

    container = _container(data_dir)
    try:
        destination = resolve_destination(container, ae)
        records = select(container, uids or [], query or [])
        scu = StoreScu(container.store, container.settings.dimse)
        with Progress(
            TextColumn("C-STORE"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("send", total=len(records))
            report = scu.send(
                records,
                destination.host,
                destination.port,
                destination.ae_title,
                on_sent=lambda _r, _s: progress.advance(task),
            )
    except MedflowError as exc:
        raise _fail(exc.message) from None
    finally:
        container.close()
    console.print(
        f"{destination.ae_title}@{destination.address}: {report.completed} completed, "
        f"{report.warning} warning, {len(report.failed)} failed"
    )
    if report.failed:
        table = Table("SOP Instance UID", "reason")
        for uid, reason in report.failed[:100]:
            table.add_row(uid, reason)
        console.print(table)
        raise typer.Exit(1)
