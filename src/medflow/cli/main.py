"""The ``medflow`` command line (typer). Conventions: ``--data-dir`` where a command works on
local data, ``--url`` where it talks to a running server."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from medflow import __version__
from medflow.cli.cohort import cohort_app
from medflow.cli.cohort_export import export as cohort_export
from medflow.cli.common import export_settings, load_settings
from medflow.cli.deid import deid_app
from medflow.cli.demo import demo_app, start_demo_loader
from medflow.cli.dimse import aet_app, send
from medflow.cli.fhir import fhir_app
from medflow.cli.ingest import discover, ingest_local, ingest_remote
from medflow.cli.labels import labels_app
from medflow.cli.ml import models_app, train
from medflow.cli.sync import sync_app
from medflow.cli.triage import triage_app
from medflow.cli.views import views_app
from medflow.cli.wsi import wsi_app
from medflow.core.logging import configure

app = typer.Typer(
    help="medflow: imaging archive, clinical records and AI on one platform.", no_args_is_help=True
)
console = Console()
app.add_typer(aet_app, name="aet")
app.add_typer(fhir_app, name="fhir")
app.add_typer(sync_app, name="sync")
app.add_typer(demo_app, name="demo")
app.add_typer(views_app, name="views")
app.add_typer(cohort_app, name="cohort")
app.add_typer(deid_app, name="deid")
app.add_typer(wsi_app, name="wsi")
app.add_typer(labels_app, name="labels")
app.add_typer(models_app, name="models")
app.add_typer(triage_app, name="triage")
cohort_app.command("export")(cohort_export)
app.command()(send)
app.command()(train)

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default: $MEDFLOW_DATA_DIR or ./medflow-data)"
    ),
]


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default 8080)")] = None,
    dimse_port: Annotated[
        int | None, typer.Option("--dimse-port", help="DIMSE port (default 11112; 0 disables)")
    ] = None,
    log_level: Annotated[str, typer.Option(help="Logging level")] = "info",
    workers: Annotated[
        int, typer.Option(help="HTTP worker processes over the same index and blobs")
    ] = 1,
    demo_patients: Annotated[
        int,
        typer.Option(
            "--demo-patients",
            help="Generate and load this many synthetic patients on first start (make run: 200)",
        ),
    ] = 0,
    demo_seed: Annotated[int, typer.Option("--demo-seed", help="The demo hospital's seed")] = 0,
) -> None:
    """Run medflow: the home page at /, DICOMweb at /dicomweb, FHIR R4 at /fhir, DIMSE."""
    import uvicorn

    from medflow.bootstrap import (
        build,
        create_app,
        start_dimse,
        start_embedding,
        start_sync,
        start_triage,
    )
    from medflow.pathology.convert import preload as preload_converter

    configure(log_level)
    if demo_patients > 0 and port == 0:
        raise typer.BadParameter(
            "the demo is loaded through the server's port: give one", param_hint="--port"
        )
    settings = load_settings(data_dir)
    http = settings.http.model_copy(
        update={k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    )
    dimse = settings.dimse.model_copy(update={"port": dimse_port} if dimse_port is not None else {})
    settings = settings.model_copy(update={"http": http, "dimse": dimse})
    container = build(settings)
    preload_converter()  # wsidicomizer's import touches pydicom's settings: before threads run
    dimse_server = start_dimse(container, host=http.host)
    start_sync(container)
    start_triage(container)
    start_embedding(container)
    base = _base_url(http.host, http.port)
    console.print(f"medflow {__version__}, data in {settings.data_dir}")
    for what, where in (("home", f"{base}/"), ("DICOMweb", f"{base}/dicomweb"),
                        ("FHIR R4", f"{base}/fhir"), ("API docs", f"{base}/docs"),
                        ("DIMSE", f"{dimse.ae_title}@{http.host}:{dimse.port}"
                         if dimse_server else "off")):  # fmt: skip
        console.print(f"  {what:<9} {where}")
    demo_stop = threading.Event()
    if demo_patients > 0:
        start_demo_loader(settings.data_dir, url=base, patients=demo_patients, seed=demo_seed,
                          say=console.print, stop=demo_stop, container=container)  # fmt: skip
    options: dict[str, Any] = {
        "host": http.host,
        "port": http.port,
        "log_level": log_level.lower(),
        "access_log": False,
    }
    try:
        if workers > 1:  # the DIMSE listener stays in this (parent) process
            export_settings(settings)
            uvicorn.run(
                "medflow.bootstrap:app_from_environment", factory=True, workers=workers, **options
            )
        else:
            uvicorn.run(create_app(container), **options)
    finally:
        demo_stop.set()
        if dimse_server is not None:
            dimse_server.stop()
        container.close()


def _base_url(host: str, port: int) -> str:
    """The URL to print and to load the demo through: a wildcard bind address is reached on
    loopback; an IPv6 literal goes in brackets (RFC 3986 §3.2.2)."""
    if host in ("0.0.0.0", "::"):  # noqa: S104  (an address to print, not to bind)
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files, folders or .zip archives")],
    url: Annotated[
        str | None, typer.Option(help="Send to a running server's STOW-RS instead")
    ] = None,
    data_dir: DataDir = None,
) -> None:
    """Store DICOM files through the same service as STOW-RS; never stops at a bad file."""
    configure("warning")
    sources = list(discover(paths))
    with Progress(console=console) as progress:
        if url:
            failures = ingest_remote(url, sources, progress)
        else:
            from medflow.bootstrap import build

            container = build(load_settings(data_dir))
            try:
                failures = ingest_local(container.store, sources, progress)
            finally:
                container.close()
    console.print(f"{len(sources) - len(failures)} stored, {len(failures)} failed")
    if failures:
        table = Table("file", "reason")
        for label, reason in failures:
            table.add_row(label, reason)
        console.print(table)
        raise typer.Exit(1)


@app.command()
def verify(
    data_dir: DataDir = None,
    hashes: Annotated[bool, typer.Option(help="Re-hash every blob (SHA-256)")] = True,
) -> None:
    """Report blobs missing, corrupted (SHA-256 differs) or orphaned (no index row)."""
    from medflow.bootstrap import build

    configure("warning")
    container = build(load_settings(data_dir))
    try:
        report = container.store.verify(check_hashes=hashes)
    finally:
        container.close()
    console.print(f"checked {report.checked} instances")
    for name in ("missing", "corrupted", "orphaned"):
        items = getattr(report, name)
        console.print(f"{name}: {len(items)}")
        for item in items[:50]:
            console.print(f"  {item}")
    if not report.ok:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
