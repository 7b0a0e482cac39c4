"""Training benchmark (issue 10): a chest X-ray finding classifier on the synthetic hospital.

1. The hospital (``medflow.synthetic.writer.generate``, ``--seed``, ``--patients``, DICOM at
   ``--size`` pixels, no slides) written under ``bench/.cache/train-<seed>-<patients>-<size>``
   (kept: a later run reuses it; ``--fresh`` rebuilds). 3,200 patients give ~2,080 CR images.
2. Its CR studies stored into a data dir there through the store service (``medflow ingest``'s
   path); FHIR is not loaded (no tabular features here).
3. A manifest from ``truth.json``: ``finding`` (pneumothorax, consolidation) vs ``normal`` per
   CR image, split by patient (stratified) 60/20/20, so the test split has > 400 images.
4. ``medflow.ml.train.service.train_model`` on the CPU (``--arch``, ``--epochs``...), the model
   registered in the data dir; prints a table: images per split, decode and training time,
   training images/s, test AUC with its bootstrap 95 % CI, sensitivity/specificity at the
   validation Youden point, Brier score, ECE.

    .venv/bin/python bench/train.py                      # 3,200 patients, 128 px, small CNN
    .venv/bin/python bench/train.py --arch resnet18 --epochs 10

Target (issue 10): test AUC >= 0.90 in <= 15 min of training on 2 cores. Run by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pydicom  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402

from medflow.bootstrap import build  # noqa: E402
from medflow.cli.ingest import discover, ingest_local  # noqa: E402
from medflow.core.settings import Settings  # noqa: E402
from medflow.ml.registry.service import ModelRegistry  # noqa: E402
from medflow.ml.train.manifest import COLUMNS  # noqa: E402
from medflow.ml.train.service import TrainConfig, train_model  # noqa: E402
from medflow.synthetic.writer import generate  # noqa: E402

console = Console()


def cr_manifest(folder: Path, out: Path, fractions: tuple[float, float, float]) -> Path:
    findings = {acc: f for rec in json.loads((folder / "truth.json").read_text())
                for acc, f in rec["studies"].items()}  # fmt: skip
    rows: list[dict[str, Any]] = []
    for path in sorted((folder / "dicom").glob("*/*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "Modality", "AccessionNumber", "SOPInstanceUID", "StudyInstanceUID",
            "SeriesInstanceUID", "PatientID"])  # fmt: skip
        if ds.Modality != "CR":
            continue
        positive = bool(findings[ds.AccessionNumber])
        rows.append(
            {
                "sop_instance_uid": ds.SOPInstanceUID,
                "frame": 1,
                "study_uid": ds.StudyInstanceUID,
                "series_uid": ds.SeriesInstanceUID,
                "patient_id": ds.PatientID,
                "label": "finding" if positive else "normal",
                "value": int(positive),
                "roi": None,
                "source_uid": "",
                "label_set": "cxr-finding",
                "label_set_version": 1,
                "split": "",
            }
        )
    first: dict[str, int] = {}
    for r in rows:
        first.setdefault(r["patient_id"], r["value"])
    split_of: dict[str, str] = {}
    for value in (0, 1):
        pids = sorted(
            (p for p, v in first.items() if v == value),
            key=lambda p: hashlib.sha256(p.encode()).hexdigest(),
        )
        n_train, n_val = round(len(pids) * fractions[0]), round(len(pids) * fractions[1])
        for i, pid in enumerate(pids):
            split_of[pid] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    for r in rows:
        r["split"] = split_of[r["patient_id"]]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(list(COLUMNS.items()))), out)
    return out


def prepare(args: argparse.Namespace) -> tuple[Path, Path, dict[str, float]]:
    cache = REPO / "bench" / ".cache" / f"train-{args.seed}-{args.patients}-{args.size}"
    if args.fresh:
        shutil.rmtree(cache, ignore_errors=True)
    timings: dict[str, float] = {}
    hospital, data_dir = cache / "hospital", cache / "data"
    if not (hospital / "hospital.json").is_file():
        shutil.rmtree(data_dir, ignore_errors=True)
        t0 = time.perf_counter()
        with Progress(console=console) as progress:
            task = progress.add_task("generate", total=args.patients)
            generate(hospital, patients=args.patients, seed=args.seed, size=args.size,
                     slides=False, workers=args.workers,
                     progress=lambda n: progress.update(task, completed=n))  # fmt: skip
        timings["generate_s"] = time.perf_counter() - t0
    manifest = cache / "manifest.parquet"
    if not (data_dir / ".loaded").is_file():
        manifest = cr_manifest(hospital, manifest, (0.6, 0.2, 0.2))
        uids = {r["study_uid"] for r in pq.read_table(manifest).to_pylist()}
        t0 = time.perf_counter()
        container = build(Settings(data_dir=data_dir))
        try:
            with Progress(console=console) as progress:
                failures = ingest_local(container.store, list(discover(
                    [hospital / "dicom" / uid for uid in sorted(uids)])), progress)  # fmt: skip
        finally:
            container.close()
        if failures:
            raise SystemExit(f"{len(failures)} CR files not stored: {failures[:3]}")
        (data_dir / ".loaded").write_text("ok\n")
        timings["store_s"] = time.perf_counter() - t0
    return data_dir, manifest, timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=3200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--arch", default="small")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir, manifest, timings = prepare(args)
    config = TrainConfig(
        arch=args.arch,
        size=args.size,
        epochs=args.epochs,
        seed=args.seed,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
    )
    container = build(Settings(data_dir=data_dir))
    try:
        registry = ModelRegistry(
            engine=container.engine, blobs=container.blobs, spool_dir=container.settings.spool_dir()
        )
        decode_cache = manifest.parent / "decoded"
        t0 = time.perf_counter()
        with Progress(console=console) as progress:
            tasks: dict[str, Any] = {}

            def update(phase: str, done: int, total: int, values: Any) -> None:
                if phase not in tasks:
                    tasks[phase] = progress.add_task(phase, total=total)
                progress.update(
                    tasks[phase],
                    completed=done,
                    total=total,
                    description=f"{phase} " + " ".join(f"{k}={v:.3f}" for k, v in values.items()),
                )

            result = train_model(
                store=container.store,
                manifest=manifest,
                config=config,
                registry=registry,
                name=f"bench-cxr-{args.arch}",
                cache_dir=decode_cache,
                progress=update,
            )
        total = time.perf_counter() - t0
    finally:
        container.close()
    _table(result, args, timings, total)


def _table(result: Any, args: argparse.Namespace, timings: dict[str, float], total: float) -> None:
    m, info = result.metrics, result.model
    training = m["training"]
    splits = info.lineage["splits"]
    table = Table(
        title=f"bench/train.py: {info.ref}, {args.arch} at {args.size} px, "
        f"{torch.get_num_threads()} threads"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        *[(f"{k} (s)", f"{v:.1f}") for k, v in timings.items()],
        *[
            (
                f"{s} images / patients / per class",
                f"{v['images']} / {v['patients']} / {v['per_class']}",
            )
            for s, v in splits.items()
        ],
        ("epochs run (best)", f"{training['epochs_run']} ({training['best_epoch']})"),
        ("training time (s)", f"{training['seconds']:.1f}"),
        ("training images/s", f"{training['images_per_s']:.1f}"),
        ("decode + train + evaluate (s)", f"{total:.1f}"),
        ("best validation AUC", f"{training['best_val_auc']:.4f}"),
        ("test AUC [95% CI]", f"{m['auc']:.4f} [{m['auc_ci95'][0]:.4f}, {m['auc_ci95'][1]:.4f}]"),
        ("threshold (val Youden)", f"{m['threshold']:.3f}"),
        ("sensitivity / specificity", f"{m['sensitivity']:.3f} / {m['specificity']:.3f}"),
        ("Brier / ECE", f"{m['brier']:.4f} / {m['ece']:.4f}"),
        (
            "target: AUC >= 0.90, training <= 900 s",
            "met" if m["auc"] >= 0.9 and training["seconds"] <= 900 else "missed",
        ),
    ]
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


if __name__ == "__main__":
    main()
