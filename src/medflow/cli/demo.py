"""``medflow demo ...``: the synthetic hospital (no real patient data)."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
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

from medflow.core.errors import InvalidInput, MedflowError

if TYPE_CHECKING:
    from medflow.bootstrap import Container
    from medflow.ml.demo import DemoModelOptions, DemoModelResult

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
    slides: Annotated[
        bool, typer.Option("--slides/--no-slides", help="Whole-slide TIFFs for biopsies")
    ] = True,
    slide_size: Annotated[
        int | None, typer.Option(help="Slide base level, a power of two (default 2048)")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Processes writing patients (default: one per CPU)")
    ] = 0,
) -> None:
    """Write patients' FHIR Bundles, DICOM studies and the ground truth under --out."""
    from medflow.synthetic.writer import generate as write

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:  # fmt: skip
        task = progress.add_task("patients", total=patients)
        try:
            done = write(out, patients=patients, seed=seed, metadata_only=metadata_only,
                         size=size, slides=slides, slide_size=slide_size,
                         workers=workers or _cpus(),
                         progress=lambda n: progress.update(task, completed=n))  # fmt: skip
        except InvalidInput as exc:
            console.print(f"cannot generate: {exc}")
            raise typer.Exit(2) from exc
    console.print(f"{done.patients} patients, {done.resources} FHIR resources, "
                  f"{done.studies} studies, {done.instances} DICOM instances, "
                  f"{done.slides} whole-slide images in {out}")  # fmt: skip


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


# ------------------------------------------------------------------------------------------
# The demo hospital of `make run` (`medflow serve --demo-patients N`) and `medflow demo reset`
# ------------------------------------------------------------------------------------------
DEMO_FOLDER = "demo"
"""Under the data dir: the generated hospital (kept: `medflow ingest` and the pathology
conversion can use it again) and ``loaded.json``, written once it is loaded."""


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _present(url: str, seed: int, patients: int) -> bool:
    """Whether the last patient of the hospital is in the FHIR store and its first study in the
    archive (the marker file alone would not see an index deleted or replaced)."""
    from medflow.synthetic.plan import MRN_SYSTEM, plan_patient

    last = plan_patient(seed, patients - 1)
    query = {"identifier": f"{MRN_SYSTEM}|{last.mrn}", "_summary": "count"}
    fhir = httpx.get(f"{url}/fhir/Patient", params=query, timeout=30)
    if fhir.status_code != 200 or not fhir.json().get("total"):
        return False
    if not last.studies:
        return True
    study = last.studies[0].study_uid
    qido = httpx.get(f"{url}/dicomweb/studies", params={"StudyInstanceUID": study}, timeout=30)
    return qido.status_code == 200 and bool(qido.content.strip()) and bool(qido.json())


DEMO_LABEL_SET: dict[str, Any] = {
    "name": "chest-xray",
    "description": "Chest X-ray findings (the demo hospital's CR studies)",
    "classes": [
        {"name": "normal"},
        {"name": "pneumothorax",
         "code": {"scheme": "SCT", "value": "36118008", "meaning": "Pneumothorax"}},
        {"name": "consolidation",
         "code": {"scheme": "SCT", "value": "95436008", "meaning": "Lung consolidation"}},
    ],
    "negative_class": "normal",
    "scope": "instance",
    "region_types": ["none", "box", "polygon"],
    "kos_title": {"scheme": "DCM", "value": "113000", "meaning": "Of Interest"},
}  # fmt: skip
"""The label set a new user finds in the labeling UI (``/labeling/chest-xray?modality=CR``)."""


def _demo_label_set(url: str, say: Callable[[str], None]) -> None:
    """Define :data:`DEMO_LABEL_SET` through the labels API (unchanged: nothing new)."""
    r = httpx.post(f"{url}/api/labels/sets", json=DEMO_LABEL_SET, timeout=30)
    if r.status_code == 201:
        say(f"demo hospital: label set {DEMO_LABEL_SET['name']!r} for the labeling UI "
            f"({url}/labeling/{DEMO_LABEL_SET['name']}?modality=CR)")  # fmt: skip
    elif r.status_code != 200:
        say(f"demo hospital: could not define the demo label set ({r.status_code})")


def ensure_demo(
    data_dir: Path, *, url: str, patients: int, seed: int, say: Callable[[str], None],
    stop: threading.Event | None = None,
) -> bool:  # fmt: skip
    """Make sure the demo hospital ``(seed, patients)`` is loaded into the medflow at ``url``
    once its ``/healthz`` answers: generate it under ``data_dir/demo`` unless that very
    hospital (same generator version) is there already, then send it through the public APIs
    (FHIR Bundles, STOW-RS). Returns False when it is loaded already (``demo/loaded.json``
    and the last patient found over HTTP): nothing is sent again. Loading is idempotent, so an
    interrupted first start loads again next time. ``stop`` cancels the generation."""
    from medflow.synthetic.loader import load as send
    from medflow.synthetic.loader import wait_healthy
    from medflow.synthetic.writer import VERSION
    from medflow.synthetic.writer import generate as write

    folder = data_dir / DEMO_FOLDER
    want = {"seed": seed, "patients": patients, "version": VERSION}
    wait_healthy(url, timeout=120)
    if _read_json(folder / "loaded.json") == want and _present(url, seed, patients):
        _demo_label_set(url, say)
        say(f"demo hospital: {patients} patients (seed {seed}) already loaded; "
            "`medflow demo reset` starts over")  # fmt: skip
        return False
    started = time.monotonic()
    (folder / "loaded.json").unlink(missing_ok=True)
    meta = _read_json(folder / "hospital.json") or {}
    if (
        {k: meta.get(k) for k in want} != want
        or meta.get("metadata_only")
        or meta.get("slide_size") is None
    ):
        say(f"demo hospital: generating {patients} synthetic patients (seed {seed}) ...")
        write(folder, patients=patients, seed=seed, workers=_cpus(),
              cancelled=None if stop is None else stop.is_set)  # fmt: skip
    say("demo hospital: loading through FHIR and STOW-RS ...")
    done = send(folder, url=url)
    (folder / "loaded.json").write_text(json.dumps(want, sort_keys=True) + "\n")
    _demo_label_set(url, say)
    say(f"demo hospital ready: {done.bundles} patients, {done.studies} studies, "
        f"{done.instances} instances ({time.monotonic() - started:.0f} s)")  # fmt: skip
    return True


def _cpus() -> int:
    return os.cpu_count() or 1


def demo_model_step(
    container: Container, *, folder: Path, url: str, say: Callable[[str], None],
    stop: threading.Event, options: DemoModelOptions | None = None,
) -> DemoModelResult:  # fmt: skip
    """After the demo hospital is in the archive (``folder``: the generated hospital, with
    its ``truth.json``): the demo model trained and promoted unless one is registered
    (:func:`medflow.ml.demo.ensure_demo_model`, in this process: see there why), then the
    archive's studies it reads and has not scored put on triage's pending list
    (``TriageWorker.backfill``, nothing when they are scored already), and the embedding
    worker woken (a newly promoted model embeds the whole archive from its own cursor)."""
    from medflow.ml.demo import ensure_demo_model

    truth = json.loads((folder / "truth.json").read_text())
    result = ensure_demo_model(
        store=container.store, labels=container.labels, registry=container.registry,
        data_dir=container.settings.data_dir, truth=truth, say=say, options=options,
        cancelled=stop.is_set,
    )  # fmt: skip
    info = result.model
    if info.stage != "production":
        say(f"demo model: {info.ref} is registered but not in production; left as it is "
            f"(`medflow models promote {info.ref} --stage production`)")  # fmt: skip
        return result
    if not result.created:
        say(f"demo model: {info.ref} already registered")
    if container.embedding is not None:
        container.embedding.wake()
    if container.triage is None:
        say("demo model: triage is off (MEDFLOW_TRIAGE__ENABLED=false): no worklist")
        return result
    modality = str(info.input_spec.get("modality") or "CR")
    queued = container.triage.backfill(modalities=[modality])
    if queued:
        say(f"demo model: {queued} {modality} studies of the archive queued for triage; "
            f"the worklist fills in: {url}/worklist")  # fmt: skip
    return result


def start_demo_loader(
    data_dir: Path, *, url: str, patients: int, seed: int, say: Callable[[str], None],
    stop: threading.Event, container: Container | None = None,
) -> threading.Thread:  # fmt: skip
    """``ensure_demo`` in a daemon thread beside the server, then (given the server's
    ``container``) :func:`demo_model_step`; a failure is reported, never raised (the
    archive keeps serving). Set ``stop`` when the server stops (training stops too)."""

    def run() -> None:
        try:
            ensure_demo(data_dir, url=url, patients=patients, seed=seed, say=say, stop=stop)
        except Exception as exc:  # noqa: BLE001  (report it; the archive keeps serving)
            if not stop.is_set():
                say(f"demo hospital: loading failed: {type(exc).__name__}: {exc}")
            return
        if container is None or stop.is_set():
            return
        try:
            demo_model_step(container, folder=data_dir / DEMO_FOLDER, url=url, say=say,
                            stop=stop)  # fmt: skip
        except MedflowError as exc:  # e.g. too few patients for both classes in every split
            if not stop.is_set():
                say(f"demo model: not trained: {exc.message}")
        except Exception as exc:  # noqa: BLE001  (report it; the archive keeps serving)
            if not stop.is_set():
                say(f"demo model: failed: {type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, name="medflow-demo", daemon=True)
    thread.start()
    return thread


EMBEDDED_FILES = ("index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm")
EMBEDDED_DIRS = ("blobs", "tmp", "exports", DEMO_FOLDER)


@demo_app.command("reset")
def reset(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Data directory (default: $MEDFLOW_DATA_DIR)"),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask")] = False,
) -> None:
    """Start over: delete the embedded index, the blobs, exports and the generated demo
    hospital of a data dir (stop `medflow serve` first). The next `make run` loads a new one."""
    from medflow.cli.common import load_settings

    settings = load_settings(data_dir)
    if settings.database_url or settings.blobs.backend != "filesystem" or settings.blobs.path:
        console.print("reset only removes the embedded default (SQLite and blobs under the data "
                      "dir); drop an external database or bucket with its own tools")  # fmt: skip
        raise typer.Exit(2)
    root = settings.data_dir
    if not (root / EMBEDDED_FILES[0]).is_file():  # not a medflow data dir: touch nothing
        console.print(f"nothing to reset in {root} (no medflow index there)")
        return
    targets = [root / n for n in EMBEDDED_FILES + EMBEDDED_DIRS if (root / n).exists()]
    names = ", ".join(p.name for p in targets)
    if not yes and not typer.confirm(f"delete {names} (archive, FHIR store, demo) in {root}?"):
        raise typer.Exit(1)
    for path in targets:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    console.print(f"reset {root}: removed {names}")
