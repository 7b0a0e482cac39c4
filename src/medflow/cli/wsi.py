"""``medflow wsi``: whole-slide images (issue 9, docs/pathology.md).

``medflow wsi import FILE... [--patient-id ID --accession ACC --specimen ID ...]
[--url http://HOST:PORT | --data-dir DIR]`` converts each slide file to DICOM VL Whole Slide
Microscopy Image instances (PS3.3 A.32.8: the pyramid levels with their tiles copied, label,
overview, thumbnail) and stores them: locally through ``PathologyService`` (the change feed,
so the sync makes the ImagingStudy), or with ``--url`` through the server's STOW-RS, one
instance per request, streamed from disk. A sidecar ``<slide>.json`` next to a file gives
what no option says (``--no-sidecar`` ignores it); an archived study with the same accession
number gives the Study Instance UID and the patient (locally from the index, with ``--url``
by QIDO-RS). A file that fails is reported with its reason and the others go on; the exit
status is 1 when any failed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from medflow.cli.common import load_settings
from medflow.core.errors import InvalidInput, MedflowError, StorageFailure
from medflow.core.logging import configure
from medflow.dicom.multipart import new_boundary

if TYPE_CHECKING:
    from medflow.pathology.metadata import SlideMetadata
    from medflow.pathology.service import PathologyService

console = Console()
wsi_app = typer.Typer(help="Whole-slide images: convert to DICOM (wsidicomizer) and import.")

Opt = Annotated[str | None, typer.Option()]


def _endpoint(url: str) -> str:
    base = url.rstrip("/")
    return base if base.endswith("/dicomweb") else base + "/dicomweb"


def remote_studies(client: httpx.Client, url: str, accession: str) -> list[SlideMetadata]:
    """The studies of a server carrying ``accession`` (QIDO-RS, PS3.18 10.6)."""
    from medflow.pathology.metadata import STUDY_RETURN_KEYS, from_study_json

    params: list[tuple[str, str | int | float | bool | None]] = [
        ("AccessionNumber", accession),
        ("limit", "10"),
    ]
    params += [("includefield", tag) for tag in STUDY_RETURN_KEYS]
    response = client.get(_endpoint(url) + "/studies", params=params,
                          headers={"Accept": "application/dicom+json"})  # fmt: skip
    if response.status_code == 204:
        return []
    if response.status_code != 200:
        raise StorageFailure(f"QIDO-RS answered HTTP {response.status_code}")
    return [from_study_json(row) for row in response.json()]


def _multipart_file(path: Path, boundary: str) -> Iterator[bytes]:
    yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    with path.open("rb") as fp:
        while chunk := fp.read(1 << 22):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def stow_file(client: httpx.Client, url: str, path: Path) -> None:
    """STOW-RS one Part 10 file, streamed from disk; raises with the server's reason."""
    from medflow.cli.ingest import _outcome

    boundary = new_boundary()
    response = client.post(
        _endpoint(url) + "/studies",
        content=_multipart_file(path, boundary),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    outcome = _outcome(response)
    if isinstance(outcome, str):
        raise StorageFailure(f"STOW-RS failed: {outcome}")
    _stored, failed, anonymous = outcome
    reasons = [*failed.values(), *anonymous]
    if reasons:
        raise StorageFailure(f"STOW-RS refused an instance: {reasons[0]}", retryable=False)


def import_remote(
    url: str, path: Path, options: SlideMetadata, *, use_sidecar: bool, workers: int | None,
    work_dir: Path | None,
) -> dict[str, Any]:  # fmt: skip
    """Convert ``path`` in a temporary folder and send its instances to ``url``."""
    from medflow.pathology.convert import convert
    from medflow.pathology.metadata import read_sidecar, resolve
    from medflow.pathology.service import describe

    sidecar = read_sidecar(path) if use_sidecar else type(options)()
    accession = options.accession_number or sidecar.accession_number
    with httpx.Client(timeout=600) as client:
        existing = remote_studies(client, url, accession) if accession else []
        meta = resolve(options=options, existing=existing, sidecar=sidecar)
        with tempfile.TemporaryDirectory(prefix="medflow-wsi-", dir=work_dir) as tmp:
            conversion = convert(path, Path(tmp) / "dicom", metadata=meta, workers=workers)
            instances = []
            for file in conversion.files:
                facts = describe(file)
                stow_file(client, url, file)
                instances.append(facts)
    return {"source": path.name, "format": conversion.format,
            "study_uid": instances[0]["study_uid"], "series_uid": instances[0]["series_uid"],
            "joined_existing_study": bool(existing), "instances": instances,
            "pixels": conversion.pixels, "seconds": conversion.seconds}  # fmt: skip


def _options(**values: Any) -> SlideMetadata:
    from medflow.pathology.metadata import SlideMetadata

    birth = values.pop("patient_birth_date")
    return SlideMetadata(patient_birth_date=birth.replace("-", "") if birth else None, **values)


def _local(data_dir: Path | None, workers: int | None) -> tuple[Any, PathologyService]:
    from medflow.bootstrap import build
    from medflow.pathology.service import PathologyService

    container = build(load_settings(data_dir))
    return container, PathologyService(store=container.store, workers=workers)


@wsi_app.command("import")
def import_(
    files: Annotated[list[Path], typer.Argument(help="Slide files (SVS, NDPI, OME-TIFF, ...)")],
    patient_id: Annotated[str | None, typer.Option("--patient-id")] = None,
    patient_name: Annotated[str | None, typer.Option("--patient-name",
                                                     help="DICOM PN: Family^Given")] = None,
    birth_date: Annotated[str | None, typer.Option("--birth-date", help="YYYYMMDD")] = None,
    sex: Annotated[str | None, typer.Option("--sex", help="M, F or O")] = None,
    accession: Annotated[str | None, typer.Option("--accession")] = None,
    study_uid: Annotated[str | None, typer.Option("--study-uid")] = None,
    study_description: Annotated[str | None, typer.Option("--study-description")] = None,
    specimen: Annotated[str | None, typer.Option("--specimen",
                                                 help="Specimen Identifier")] = None,
    container_id: Annotated[str | None, typer.Option("--container",
                                                     help="Container (slide) Identifier")] = None,
    stain: Annotated[str | None, typer.Option("--stain", help="e.g. H&E")] = None,
    no_sidecar: Annotated[bool, typer.Option("--no-sidecar",
                                             help="Ignore <slide>.json next to a file")] = False,
    url: Annotated[str | None, typer.Option(help="Send to a running server's STOW-RS")] = None,
    data_dir: Annotated[Path | None, typer.Option("--data-dir")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="Conversion threads")] = None,
    work_dir: Annotated[Path | None, typer.Option("--work-dir",
                                                  help="Temporary folder with --url")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON")] = False,
) -> None:  # fmt: skip
    """Convert whole-slide files to DICOM and store them (locally or through STOW-RS)."""
    configure("warning")
    options = _options(patient_id=patient_id, patient_name=patient_name,
                       patient_birth_date=birth_date, patient_sex=sex,
                       accession_number=accession, study_uid=study_uid,
                       study_description=study_description, specimen_id=specimen,
                       container_id=container_id, stain=stain)  # fmt: skip
    results: list[dict[str, Any]] = []
    failures: list[tuple[str, str]] = []
    container, service = (None, None) if url else _local(data_dir, workers)
    try:
        for path in files:
            try:
                if not path.is_file():
                    raise InvalidInput(f"{path} is not a file")
                if url:
                    results.append(import_remote(url, path, options, use_sidecar=not no_sidecar,
                                                 workers=workers, work_dir=work_dir))  # fmt: skip
                else:
                    assert service is not None
                    done = service.import_slide(path=path, options=options,
                                                use_sidecar=not no_sidecar)  # fmt: skip
                    results.append(done.as_json())
            except MedflowError as exc:
                failures.append((str(path), exc.message))
            except httpx.HTTPError as exc:
                failures.append((str(path), f"cannot reach {url}: {type(exc).__name__}"))
    finally:
        if container is not None:
            container.close()
    _report(results, failures, as_json)
    if failures:
        raise typer.Exit(1)


def _report(results: list[dict[str, Any]], failures: list[tuple[str, str]], as_json: bool) -> None:
    if as_json:
        failed = [{"file": f, "reason": r} for f, r in failures]
        print(json.dumps({"imported": results, "failed": failed}, indent=1))
        return
    if results:
        table = Table("file", "format", "study", "series", "instances", "MPixel/s")
        for r in results:
            kinds = ", ".join(f"{i['image_type']} {i['columns']}x{i['rows']}"
                              for i in r["instances"])  # fmt: skip
            rate = r["pixels"] / max(r["seconds"], 1e-9) / 1e6
            table.add_row(r["source"], r["format"], r["study_uid"], r["series_uid"], kinds,
                          f"{rate:.0f}")  # fmt: skip
        console.print(table)
    console.print(f"{len(results)} imported, {len(failures)} failed")
    for label, reason in failures:
        console.print(f"[red]{escape(label)}: {escape(reason)}[/red]", highlight=False)
