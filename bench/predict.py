"""Prediction latency benchmark (issue 11, Serving): one chest X-ray per request, on the CPU.

1. Data: bench/train.py's cache (``bench/.cache/train-<seed>-<patients>-<size>``: the synthetic
   hospital's CR images stored in a data dir, and its manifest) with ``--patients`` (default
   200, generated and stored when absent, through bench/train.py's own ``prepare``).
2. Model: ``--model`` (default ``bench-cxr-small``, what bench/train.py registers) from that
   data dir's registry: its production version, else its latest; when there is none, a small
   CNN is trained there for ``--epochs`` (default 2) and registered.
3. Latency of single-image predictions, ``--requests`` (default 200), each a different
   stored CR image of the test split in turn (20 untimed warm-ups first):
   - in-process: ``Predictor.predict([dataset])`` on a parsed dataset, and ``parse_dicom`` of
     the Part 10 bytes plus that (what the HTTP upload does after reading the body);
   - HTTP through the ASGI app in process (``fastapi.testclient.TestClient``), upload;
   - HTTP to a real ``medflow serve`` on a free loopback port over that data dir (httpx,
     keep-alive; its sync worker off, ``OMP_NUM_THREADS`` = ``--threads``): the upload
     (``application/dicom``) and a JSON reference (``{"study", "instances": [uid]}``, read
     from the archive). The first request's time (model loaded, torch imported) is shown
     separately.
   p50/p95 are nearest-rank percentiles (bench/_measure.py).

    .venv/bin/python bench/predict.py                  # 200 patients at 128 px, 200 requests
    .venv/bin/python bench/predict.py --patients 3200  # bench/train.py's hospital and model

Run by hand; numbers in docs/serving.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import httpx  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from _measure import percentile  # noqa: E402
from _servers import start_medflow  # noqa: E402
from medflow.bootstrap import Container, build, create_app  # noqa: E402
from medflow.core.errors import NotFound  # noqa: E402
from medflow.core.settings import Settings  # noqa: E402
from medflow.ml.registry.service import ModelInfo  # noqa: E402
from medflow.ml.serving.service import parse_dicom  # noqa: E402
from medflow.ml.train.service import TrainConfig, train_model  # noqa: E402
from medflow.store.records import InstanceRecord  # noqa: E402
from train import prepare  # noqa: E402

console = Console()
DICOM = {"Content-Type": "application/dicom"}


def model_for(container: Container, manifest: Path, args: argparse.Namespace) -> ModelInfo:
    """The production (else latest) version of ``--model``; trained here when absent."""
    registry = container.registry
    try:
        return registry.production(name=args.model)
    except NotFound:
        pass
    versions = registry.list(name=args.model)
    if versions:
        return versions[-1]
    console.print(f"training {args.model} ({args.epochs} epochs) ...")
    config = TrainConfig(
        arch="small", size=args.size, epochs=args.epochs, seed=args.seed, bootstrap=200
    )
    result = train_model(
        store=container.store, manifest=manifest, config=config, registry=registry, name=args.model
    )
    assert result.model is not None
    return registry.promote(name=args.model, version=result.model.version, stage="production")


def timed(n: int, call: Callable[[int], Any], warmup: int = 20) -> list[float]:
    """Milliseconds of ``call(i)`` for i in 0..n-1, after ``warmup`` untimed calls."""
    for i in range(warmup):
        call(i)
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(i)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _ok(response: httpx.Response) -> None:
    if response.status_code != 200:
        raise RuntimeError(f"{response.status_code}: {response.text[:300]}")


def cr_test_images(container: Container, manifest: Path, limit: int) -> list[InstanceRecord]:
    """The manifest's test split's CR images (at most ``limit``), as stored."""
    rows = pq.read_table(manifest).to_pylist()
    uids = sorted(r["sop_instance_uid"] for r in rows if r["split"] == "test")[:limit]
    return container.store.select_instances(sop_uids=uids)


def measure(
    container: Container, info: ModelInfo, data_dir: Path, manifest: Path, args: argparse.Namespace
) -> tuple[list[tuple[str, list[float]]], dict[str, float]]:
    store = container.store
    records = cr_test_images(container, manifest, args.images)
    blobs = [b"".join(store.iter_bytes(r)) for r in records]
    datasets = [parse_dicom(b) for b in blobs]
    k = len(blobs)
    extra: dict[str, float] = {"images cycled through": k}
    t0 = time.perf_counter()
    predictor = container.models.get(info.name, info.version)
    extra["model load in process (ms)"] = (time.perf_counter() - t0) * 1000
    rows: list[tuple[str, list[float]]] = []
    n = args.requests
    rows.append(
        (
            "in-process Predictor.predict (parsed dataset)",
            timed(n, lambda i: predictor.predict([datasets[i % k]])),
        )
    )
    rows.append(
        (
            "in-process parse_dicom + predict (bytes)",
            timed(n, lambda i: predictor.predict([parse_dicom(blobs[i % k])])),
        )
    )
    path = f"/api/models/{info.name}/versions/{info.version}/predict"
    with TestClient(create_app(container)) as client:
        rows.append(
            (
                "HTTP in process (TestClient), application/dicom",
                timed(n, lambda i: _ok(client.post(path, content=blobs[i % k], headers=DICOM))),
            )
        )
    work = REPO / "bench" / ".cache" / "work"
    work.mkdir(parents=True, exist_ok=True)
    server = start_medflow(
        work,
        data_dir=data_dir,
        keep=True,
        env={"MEDFLOW_SYNC__ENABLED": "false", "OMP_NUM_THREADS": str(args.threads)},
    )
    try:
        url = server.base_url + path
        with httpx.Client(timeout=600, headers={"Accept-Encoding": "identity"}) as http:
            t0 = time.perf_counter()
            _ok(http.post(url, content=blobs[0], headers=DICOM))
            extra["medflow serve: first request, model loaded (ms)"] = (
                time.perf_counter() - t0
            ) * 1000
            rows.append(
                (
                    "HTTP medflow serve, application/dicom",
                    timed(n, lambda i: _ok(http.post(url, content=blobs[i % k], headers=DICOM))),
                )
            )
            refs = [{"study": r.study_uid, "instances": [r.sop_instance_uid]} for r in records]
            rows.append(
                (
                    "HTTP medflow serve, JSON reference (archive read)",
                    timed(n, lambda i: _ok(http.post(url, json=refs[i % k]))),
                )
            )
    finally:
        server.stop(remove=False)
    extra["image bytes (mean)"] = statistics.mean(len(b) for b in blobs)
    return rows, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--model", default="bench-cxr-small")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--images", type=int, default=50, help="distinct test images cycled")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both processes)")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data_dir, manifest, timings = prepare(args)
    container = build(Settings(data_dir=data_dir))
    try:
        info = model_for(container, manifest, args)
        rows, extra = measure(container, info, data_dir, manifest, args)
    finally:
        container.close()
    table = Table(
        title=f"bench/predict.py: {info.ref} ({info.architecture}, "
        f"{info.input_spec['size']} px), CPU, {torch.get_num_threads()} torch threads, "
        f"{os.cpu_count()} cores"
    )
    for col in ("single-image prediction", "n", "p50 ms", "p95 ms", "mean ms", "req/s"):
        table.add_column(col, justify="left" if col.startswith("single") else "right")
    for name, values in rows:
        mean = statistics.mean(values)
        table.add_row(
            name,
            str(len(values)),
            f"{percentile(values, 50):.2f}",
            f"{percentile(values, 95):.2f}",
            f"{mean:.2f}",
            f"{1000 / mean:.0f}",
        )
    console.print(table)
    facts = Table(show_header=False)
    for key, value in {**timings, **extra}.items():
        facts.add_row(key, f"{value:.1f}" if isinstance(value, float) else str(value))
    console.print(facts)


if __name__ == "__main__":
    main()
