"""Similar images benchmark (issue 11): index latency at 100k vectors, and the quality of a
trained classifier's embeddings on the synthetic hospital.

1. **Latency** (``--n`` vectors, default 100,000, ``--dim`` wide, default 128: the small
   CNN's penultimate width): clustered synthetic vectors (``--clusters`` Gaussian clusters)
   written as ``ml_embedding`` rows into a fresh SQLite data dir under
   ``bench/.cache/similar-latency/``; the index built from the table
   (``VectorIndex.build``: read, insert, save), its memory (usearch's own and the process RSS
   growth), file sizes and load time; p50/p95/p99 of ``VectorIndex.search`` (k=10, the query
   instance excluded) unfiltered, with 10 % of the instances allowed (a large cohort: the
   oversampled graph search) and 0.5 % (a small one: exact ranking); recall@10 against brute
   force; and ``SimilarService.similar`` end to end (the query's embedding read from the
   table, the index's staleness check, the neighbours' rows).
2. **Quality**: the chest X-rays of the synthetic hospital (bench/train.py's cache
   ``bench/.cache/train-<seed>-<patients>-<size>``, generated and stored when missing), a
   small CNN trained on the finding classes of ``truth.json`` (normal, pneumothorax,
   consolidation; split by patient 60/20/20), registered, every CR image embedded by the
   ``EmbeddingWorker`` through the archive (the served ``Predictor``'s ``embed``), and for
   each test image the 10 nearest other patients' images (``SimilarService.similar``):
   precision@10 for the query's finding class against that class's prior (its share of the
   searched images), over the whole archive and over held-out (val + test) images only.
   bench/train.py's model is reused when its cache has one (``--reuse-train``): it is trained
   for finding vs normal, so the classes are then that.

    .venv/bin/python bench/similar.py                       # both parts
    .venv/bin/python bench/similar.py --only latency --n 100000
    .venv/bin/python bench/similar.py --only quality --patients 1600 --size 128
    .venv/bin/python bench/similar.py --only pgvector --n 100000   # pgvector (pgserver)

3. **pgvector** (``--only pgvector``): the same vectors and queries in a pgvector table of a
   PostgreSQL server (``--pgvector-url``, else PostgreSQL 16 + pgvector from the ``pgserver``
   package), through ``PgVectorIndex`` and ``SimilarService``.

Targets (issue 11): precision@10 >= 2x the class prior; search p95 < 50 ms at 100k. By hand.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pydicom  # noqa: E402
import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from rich.table import Table  # noqa: E402
from sqlalchemy import insert  # noqa: E402

from medflow.bootstrap import build  # noqa: E402
from medflow.core.errors import NotFound, Unsupported  # noqa: E402
from medflow.core.settings import Settings  # noqa: E402
from medflow.db.engine import create_engine, upgrade  # noqa: E402
from medflow.ml.registry.service import ModelInfo, ModelRegistry  # noqa: E402
from medflow.ml.similar.index import VectorIndex  # noqa: E402
from medflow.ml.similar.models import Embedding  # noqa: E402
from medflow.ml.similar.service import SimilarService  # noqa: E402
from medflow.ml.similar.store import EmbeddingStore, to_bytes  # noqa: E402
from medflow.ml.similar.worker import EmbeddingWorker, WorkerOptions  # noqa: E402
from medflow.ml.train.images import frame_to_array  # noqa: E402
from medflow.ml.train.manifest import COLUMNS  # noqa: E402
from medflow.ml.train.service import TrainConfig, load_model, train_model  # noqa: E402

console = Console(width=max(110, Console().width))
CACHE = REPO / "bench" / ".cache"
FINDINGS = ("normal", "pneumothorax", "consolidation")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))]


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- 1. latency -------------------------------------------------------------------------------
def clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + 0.6 * rng.normal(size=(n, dim))).astype(np.float32)


def search_times(index: Any, vectors: np.ndarray[Any, Any], sops: list[str], picks: list[int],
                 cohorts: dict[str, set[str]]) -> dict[str, list[float]]:  # fmt: skip
    """ms of ``index.search`` (k=10, the query excluded) for each pick, unfiltered and within
    each cohort, after 20 warm-up searches."""

    def timed(allowed: set[str] | None) -> list[float]:
        times = []
        for i in picks:
            t = time.perf_counter()
            hits = index.search(vectors[i], 10, allowed=allowed, exclude_instances={sops[i]})
            times.append((time.perf_counter() - t) * 1000)
            assert len(hits) == 10
        return times

    for _ in range(20):
        index.search(vectors[picks[0]], 10)
    return {"all": timed(None)} | {k: timed(v) for k, v in cohorts.items()}


def recall_at_10(index: Any, vectors: np.ndarray[Any, Any], sops: list[str],
                 picks: list[int]) -> float:  # fmt: skip
    """The share of the true 10 nearest (brute force) that the index answers."""
    norm = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    recalls = []
    for i in picks:
        scores = norm @ norm[i]
        scores[i] = -2
        truth = set(np.argpartition(-scores, 10)[:10].tolist())
        hits = index.search(vectors[i], 10, exclude_instances={sops[i]})
        found = {int(h.sop_instance_uid.rsplit(".", 1)[1]) - 1 for h in hits}
        recalls.append(len(truth & found) / 10)
    return statistics.mean(recalls)


def bench_latency(args: argparse.Namespace) -> dict[str, Any]:
    work = CACHE / "similar-latency"
    shutil.rmtree(work, ignore_errors=True)
    engine = create_engine(f"sqlite:///{work / 'index.sqlite3'}")
    upgrade(engine)
    ref, n, dim = "bench-synthetic:1", args.n, args.dim
    vectors = clustered(n, dim, args.clusters, args.seed)
    sops = [f"2.25.{i + 1}" for i in range(n)]
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        for start in range(0, n, 10_000):
            conn.execute(insert(Embedding), [
                {"model_ref": ref, "sop_instance_uid": sops[i], "study_uid": f"2.25.9{i // 4}",
                 "series_uid": f"2.25.8{i // 4}", "patient_id": f"P{i // 8}", "frame": 1,
                 "dim": dim, "vector": to_bytes(vectors[i]), "created_at": now}
                for i in range(start, min(n, start + 10_000))
            ])  # fmt: skip
    out: dict[str, Any] = {"n": n, "dim": dim, "rows_insert_s": time.perf_counter() - t0}
    store = EmbeddingStore(engine)
    path = work / "data" / "ml" / "similar" / "bench-synthetic@1.usearch"
    rss0 = rss_mb()
    t0 = time.perf_counter()
    index = VectorIndex.build(model_ref=ref, source=store, path=path)
    out["build_s"] = time.perf_counter() - t0
    out["rss_growth_mb"] = rss_mb() - rss0
    out["usearch_mb"] = index.memory_bytes() / 1e6
    out["files_mb"] = (path.stat().st_size + VectorIndex.keys_path(path).stat().st_size) / 1e6
    t0 = time.perf_counter()
    loaded = VectorIndex.load(path, model_ref=ref)
    out["load_s"] = time.perf_counter() - t0
    assert loaded is not None and len(loaded) == n
    del loaded
    rng = random.Random(args.seed)
    picks = rng.sample(range(n), args.queries)
    cohorts = {"10 %": set(rng.sample(sops, n // 10)), "0.5 %": set(rng.sample(sops, n // 200))}

    out["search_ms"] = search_times(index, vectors, sops, picks, cohorts)
    out["recall_at_10"] = recall_at_10(index, vectors, sops, picks[:200])
    service = SimilarService(engine=engine, data_dir=work / "data")
    service.similar(instance=sops[picks[0]], k=10, model=ref)  # loads the saved index
    times = []
    for i in picks[: min(300, len(picks))]:
        t = time.perf_counter()
        service.similar(instance=sops[i], k=10, model=ref)
        times.append((time.perf_counter() - t) * 1000)
    out["service_ms"] = times
    engine.dispose()
    return out


def pgvector_engine(args: argparse.Namespace) -> tuple[Any, Any]:
    """A fresh database on ``--pgvector-url``, else on a PostgreSQL 16 + pgvector started from
    the ``pgserver`` package: (engine, the server to stop or None)."""
    import uuid

    import sqlalchemy as sa

    server = None
    url = args.pgvector_url
    if not url:
        import pgserver  # type: ignore[import-untyped]

        server = pgserver.get_server(CACHE / "pgvector-server", cleanup_mode="stop")
        url = str(server.get_uri())
    base = sa.engine.make_url(url).set(drivername="postgresql+psycopg")
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    name = f"bench_similar_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    engine = create_engine(base.set(database=name).render_as_string(hide_password=False))
    upgrade(engine)
    return engine, server


def bench_pgvector(args: argparse.Namespace) -> dict[str, Any]:
    """The same vectors and queries as the usearch latency, in a pgvector table (HNSW, m=16,
    ef_construction=64) searched through ``PgVectorIndex``."""
    from medflow.ml.similar.pgvector import PgVectorIndex, pgvector_available

    engine, server = pgvector_engine(args)
    try:
        if not pgvector_available(engine):  # also CREATE EXTENSION vector in the new database
            raise SystemExit("this PostgreSQL server does not offer the pgvector extension")
        ref, n, dim = "bench-synthetic:1", args.n, args.dim
        vectors = clustered(n, dim, args.clusters, args.seed)
        sops = [f"2.25.{i + 1}" for i in range(n)]
        now = datetime.now(UTC)
        with engine.begin() as conn:
            for start in range(0, n, 10_000):
                conn.execute(insert(Embedding), [
                    {"model_ref": ref, "sop_instance_uid": sops[i],
                     "study_uid": f"2.25.9{i // 4}", "series_uid": f"2.25.8{i // 4}",
                     "patient_id": f"P{i // 8}", "frame": 1, "dim": dim,
                     "vector": to_bytes(vectors[i]), "created_at": now}
                    for i in range(start, min(n, start + 10_000))
                ])  # fmt: skip
        t0 = time.perf_counter()
        index = PgVectorIndex.build(engine=engine, model_ref=ref, source=EmbeddingStore(engine))
        out: dict[str, Any] = {"n": n, "dim": dim, "build_s": time.perf_counter() - t0}
        rng = random.Random(args.seed)
        picks = rng.sample(range(n), min(args.queries, 300))
        cohorts = {"10 %": set(rng.sample(sops, n // 10)),
                   "0.5 %": set(rng.sample(sops, n // 200))}  # fmt: skip

        out["search_ms"] = search_times(index, vectors, sops, picks, cohorts)
        out["recall_at_10"] = recall_at_10(index, vectors, sops, picks[:200])
        service = SimilarService(engine=engine, data_dir=CACHE / "similar-pgvector")
        service.similar(instance=sops[picks[0]], k=10, model=ref)
        times = []
        for i in picks:
            t = time.perf_counter()
            service.similar(instance=sops[i], k=10, model=ref)
            times.append((time.perf_counter() - t) * 1000)
        out["service_ms"] = times
        return out
    finally:
        engine.dispose()
        if server is not None:
            server.cleanup()


def pgvector_table(r: dict[str, Any]) -> Table:
    t = Table(title=f"bench/similar.py pgvector: {r['n']:,} vectors x {r['dim']}, pgvector "
              f"HNSW cosine in PostgreSQL, {os.cpu_count()} CPUs")  # fmt: skip
    for column in ("measure", "p50 ms", "p95 ms", "p99 ms"):
        t.add_column(column, justify="left" if column == "measure" else "right")
    for name, times in r["search_ms"].items():
        t.add_row(f"search k=10 ({name} allowed)" if name != "all" else "search k=10",
                  *(f"{percentile(times, q):.2f}" for q in (50, 95, 99)))  # fmt: skip
    t.add_row("SimilarService.similar (PostgreSQL)",
              *(f"{percentile(r['service_ms'], q):.2f}" for q in (50, 95, 99)))  # fmt: skip
    t.add_section()
    t.add_row("table and HNSW index built (s)", f"{r['build_s']:.1f}", "", "")
    t.add_row("recall@10 vs brute force", f"{r['recall_at_10']:.3f}", "", "")
    p95 = percentile(r["search_ms"]["all"], 95)
    t.add_row("target: search p95 < 50 ms", "met" if p95 < 50 else "missed", "", "")
    return t


# -- 2. quality ---------------------------------------------------------------------------------
class UntrainedEmbedder:
    """The same small CNN with its initial (seed 0) weights: what the embeddings are worth
    before training (the baseline)."""

    def __init__(self, size: int) -> None:
        from medflow.ml.train.nets import build_network

        torch.manual_seed(0)
        self.net = build_network("small", in_channels=1, classes=3).eval()
        self.ref, self.dim, self.size = "bench-untrained:0", 128, size

    def accepts(self, dataset: Any) -> bool:
        return str(dataset.get("Modality", "")) == "CR"

    @torch.inference_mode()
    def embed(self, datasets: Any) -> np.ndarray[Any, Any]:
        x = np.stack([frame_to_array(ds, 1, self.size) for ds in datasets])[:, None]
        return np.asarray(self.net.backbone(torch.from_numpy(x)).numpy())


class ModelEmbedder:
    """A registered model as the worker's embedder: the served ``Predictor`` when this
    checkout has it, else the same computation here (backbone features of ``frame_to_array``
    images); reads the spec's modality only."""

    def __init__(self, registry: ModelRegistry, info: ModelInfo) -> None:
        self.ref, self.info = info.ref, info
        self.modality = str(info.input_spec.get("modality", "CR"))
        self.size = int(info.input_spec["size"])
        try:
            from medflow.ml.serving.predictor import Predictor

            self.predictor: Any = Predictor(registry=registry, info=info)
            self.dim = int(self.predictor.dim)
            self.net = None
        except ImportError:
            self.predictor = None
            self.net = load_model(registry, info)
            self.dim = int(self.net.head.in_features)
        self.via = "Predictor.embed" if self.predictor is not None else "backbone (local)"

    def accepts(self, dataset: Any) -> bool:
        return str(dataset.get("Modality", "")) == self.modality

    @torch.inference_mode()
    def embed(self, datasets: Any) -> np.ndarray[Any, Any]:
        if self.predictor is not None:
            return np.asarray(self.predictor.embed(datasets))
        if any(str(ds.get("Modality", "")) != self.modality for ds in datasets):
            raise Unsupported(f"the model reads {self.modality} only")
        x = np.stack([frame_to_array(ds, 1, self.size) for ds in datasets])[:, None]
        assert self.net is not None
        return np.asarray(self.net.backbone(torch.from_numpy(x)).numpy())


def finding_of(hospital: Path) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (finding class, PatientID) of every CR image."""
    findings = {acc: f for rec in json.loads((hospital / "truth.json").read_text())
                for acc, f in rec["studies"].items()}  # fmt: skip
    out = {}
    for path in sorted((hospital / "dicom").glob("*/*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[
            "Modality", "AccessionNumber", "SOPInstanceUID", "PatientID"])  # fmt: skip
        if ds.Modality == "CR":
            out[str(ds.SOPInstanceUID)] = (findings[ds.AccessionNumber] or "normal", ds.PatientID)
    return out


def class_manifest(binary: Path, classes: dict[str, tuple[str, str]], out: Path) -> Path:
    """bench/train.py's manifest (same rows and split) labelled with the finding class."""
    rows = pq.read_table(binary).to_pylist()
    for r in rows:
        finding = classes[r["sop_instance_uid"]][0]
        r["label"], r["value"] = finding, FINDINGS.index(finding)
        r["label_set"] = "cxr-finding-class"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(list(COLUMNS.items()))), out)
    return out


def model_for(args: argparse.Namespace, container: Any, registry: ModelRegistry,
              manifest: Path) -> tuple[ModelInfo, float | None]:  # fmt: skip
    """bench/train.py's model when reused, else ours (trained once, then kept)."""
    if args.reuse_train:
        try:
            return registry.get(name="bench-cxr-small"), None
        except NotFound:  # bench/train.py did not train one here
            pass
    try:
        return registry.get(name="bench-similar-small"), None
    except NotFound:  # the first run: train it
        pass
    config = TrainConfig(arch="small", size=args.size, epochs=args.epochs, seed=args.seed,
                         batch_size=32, lr=2e-3, patience=args.patience, bootstrap=200)  # fmt: skip
    t0 = time.perf_counter()
    result = train_model(store=container.store, manifest=manifest, config=config,
                         registry=registry, name="bench-similar-small",
                         cache_dir=manifest.parent / "decoded-classes")  # fmt: skip
    assert result.model is not None
    return result.model, time.perf_counter() - t0


def bench_quality(args: argparse.Namespace) -> dict[str, Any]:
    from train import prepare  # bench/train.py: the hospital, its CR images stored

    patients = args.patients
    trained = CACHE / f"train-{args.seed}-3200-{args.size}" / "data" / ".loaded"
    if args.reuse_train and trained.is_file():
        patients = 3200  # bench/train.py's hospital (its default size)
    prep = argparse.Namespace(patients=patients, seed=args.seed, size=args.size,
                              workers=args.workers, fresh=False)  # fmt: skip
    data_dir, binary_manifest, timings = prepare(prep)
    hospital = data_dir.parent / "hospital"
    classes = finding_of(hospital)
    manifest = class_manifest(binary_manifest, classes, data_dir.parent / "classes.parquet")
    split = {r["sop_instance_uid"]: r["split"] for r in pq.read_table(manifest).to_pylist()}
    container = build(Settings(data_dir=data_dir))
    out: dict[str, Any] = {"timings": timings}
    try:
        registry = ModelRegistry(engine=container.engine, blobs=container.blobs,
                                 spool_dir=container.settings.spool_dir())  # fmt: skip
        info, train_s = model_for(args, container, registry, manifest)
        embedder = ModelEmbedder(registry, info)
        out |= {"model": info.ref, "classes": info.input_spec["classes"], "train_s": train_s,
                "via": embedder.via, "dim": embedder.dim,
                "test_auc": info.metrics.get("auc") or info.metrics.get("auc_macro")}  # fmt: skip
        embeddings = EmbeddingStore(container.engine)
        embeddings.delete_model(model_ref=info.ref)  # a rerun embeds (and times) everything again
        shutil.rmtree(data_dir / "ml" / "similar", ignore_errors=True)
        t0 = time.perf_counter()
        worker = EmbeddingWorker(
            store=container.store,
            embeddings=embeddings,
            embedders=[embedder],
            options=WorkerOptions(embed_batch=32),
        )
        worker.run_once()
        out["embed_s"] = time.perf_counter() - t0
        (status,) = worker.status()
        out["embedded"], out["failures"] = status.embedded, status.failures
        service = SimilarService(engine=container.engine, data_dir=data_dir)
        out["archive"] = precision(service, info.ref, classes, split, held_out=False)
        out["held_out"] = precision(service, info.ref, classes, split, held_out=True)
        baseline = UntrainedEmbedder(args.size)
        embeddings.delete_model(model_ref=baseline.ref)
        EmbeddingWorker(store=container.store, embeddings=embeddings, embedders=[baseline],
                        options=WorkerOptions(embed_batch=32)).run_once()  # fmt: skip
        out["untrained"] = precision(service, baseline.ref, classes, split, held_out=False)
        service.close()
    finally:
        container.close()
    return out


def precision(service: SimilarService, ref: str, classes: dict[str, tuple[str, str]],
              split: dict[str, str], *, held_out: bool) -> dict[str, Any]:  # fmt: skip
    """Precision@10 of the test images' finding class, per class, against the prior: the
    class's share of the images searched (the query's own patient left out, as the API
    does). ``held_out``: only val and test images are searched."""
    index = service.index(ref)
    pool = {u for u in classes if not held_out or split.get(u) in ("val", "test")}
    queries = [u for u in classes if split.get(u) == "test"]
    per_class: dict[str, list[float]] = defaultdict(list)
    priors: dict[str, list[float]] = defaultdict(list)
    by_patient: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for u in pool:
        finding, patient = classes[u]
        by_patient[patient][finding] += 1
        totals[finding] += 1
    times = []
    for q in queries:
        finding, patient = classes[q]
        t = time.perf_counter()
        if held_out:
            vector = service.embeddings.of_instance(sop_uid=q, model_ref=ref)[0].vector
            assert vector is not None
            hits = index.search(vector, 10, allowed=pool, exclude_patients={patient})
            found = [h.sop_instance_uid for h in hits]
        else:
            answer = service.similar(instance=q, k=10, model=ref)
            found = [n.sop_instance_uid for n in answer.results]
        times.append((time.perf_counter() - t) * 1000)
        per_class[finding].append(sum(classes[u][0] == finding for u in found) / max(1, len(found)))
        others = sum(totals.values()) - sum(by_patient[patient].values())
        priors[finding].append((totals[finding] - by_patient[patient][finding]) / others)
    return {"per_class": {c: (statistics.mean(per_class[c]), statistics.mean(priors[c]),
                              len(per_class[c])) for c in sorted(per_class)},
            "all": (statistics.mean([p for v in per_class.values() for p in v]),
                    statistics.mean([p for v in priors.values() for p in v]), len(queries)),
            "pool": len(pool), "query_ms": times}  # fmt: skip


# -- output ---------------------------------------------------------------------------------------
def latency_table(r: dict[str, Any]) -> Table:
    t = Table(title=f"bench/similar.py latency: {r['n']:,} vectors x {r['dim']}, usearch "
              f"HNSW cosine, {os.cpu_count()} CPUs")  # fmt: skip
    t.add_column("measure")
    t.add_column("p50 ms", justify="right")
    t.add_column("p95 ms", justify="right")
    t.add_column("p99 ms", justify="right")
    for name, times in r["search_ms"].items():
        t.add_row(f"search k=10 ({name} allowed)" if name != "all" else "search k=10",
                  *(f"{percentile(times, q):.2f}" for q in (50, 95, 99)))  # fmt: skip
    t.add_row("SimilarService.similar (SQLite)",
              *(f"{percentile(r['service_ms'], q):.2f}" for q in (50, 95, 99)))  # fmt: skip
    t.add_section()
    for key, label in (("rows_insert_s", "rows written (s)"), ("build_s", "index built (s)"),
                       ("load_s", "index loaded (s)"), ("usearch_mb", "usearch memory (MB)"),
                       ("rss_growth_mb", "process RSS growth (MB)"), ("files_mb", "files (MB)"),
                       ("recall_at_10", "recall@10 vs brute force")):  # fmt: skip
        t.add_row(label, f"{r[key]:.3f}" if key == "recall_at_10" else f"{r[key]:.1f}", "", "")
    p95 = percentile(r["search_ms"]["all"], 95)
    t.add_row("target: search p95 < 50 ms", "met" if p95 < 50 else "missed", "", "")
    return t


def quality_table(r: dict[str, Any]) -> Table:
    t = Table(title=f"bench/similar.py quality: {r['model']} ({r['dim']} features via "
              f"{r['via']}), classes {r['classes']}")  # fmt: skip
    t.add_column("searched")
    t.add_column("query class")
    t.add_column("queries", justify="right")
    t.add_column("precision@10", justify="right")
    t.add_column("prior", justify="right")
    t.add_column("ratio", justify="right")
    for key, label in (("archive", "all CR images"), ("held_out", "val + test only")):
        part = r[key]
        for c, (p, prior, n) in part["per_class"].items():
            t.add_row(f"{label} ({part['pool']})", c, str(n), f"{p:.3f}", f"{prior:.3f}",
                      f"{p / prior:.2f}x")  # fmt: skip
        p, prior, n = part["all"]
        t.add_row(f"{label} ({part['pool']})", "all (query-weighted)", str(n), f"{p:.3f}",
                  f"{prior:.3f}", f"{p / prior:.2f}x", end_section=True)  # fmt: skip
    p, prior, n = r["untrained"]["all"]
    t.add_row(f"untrained CNN, all CR ({r['untrained']['pool']})", "all (query-weighted)", str(n),
              f"{p:.3f}", f"{prior:.3f}", f"{p / prior:.2f}x", end_section=True)  # fmt: skip
    p, prior, _ = r["archive"]["all"]
    auc = r.get("test_auc")
    t.add_row("model", f"test AUC {auc:.4f}" if auc else "", "", "", "", "")
    t.add_row("embedding worker", f"{r['embedded']} images, {r['failures']} failures",
              "", f"{r['embed_s']:.1f} s", "", "")  # fmt: skip
    if r.get("train_s"):
        t.add_row("training", "", "", f"{r['train_s']:.1f} s", "", "")
    t.add_row("query p95 (ms)", "", "", f"{percentile(r['archive']['query_ms'], 95):.2f}",
              "", "")  # fmt: skip
    t.add_row("target: >= 2x prior", "met" if p >= 2 * prior else "missed", "", "", "", "")
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["latency", "pgvector", "quality"])
    parser.add_argument("--pgvector-url", default=None,
                        help="PostgreSQL with pgvector (default: one started from pgserver)")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=200)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--patients", type=int, default=1600)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--workers", type=int, default=2, help="generator processes")
    parser.add_argument("--reuse-train", action=argparse.BooleanOptionalAction, default=True,
                        help="use bench/train.py's model when its cache has one")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results: dict[str, Any] = {}
    if args.only in (None, "latency"):
        with Progress(console=console, transient=True) as progress:
            progress.add_task("latency", total=None)
            results["latency"] = bench_latency(args)
        console.print(latency_table(results["latency"]))
    if args.only in (None, "pgvector"):
        with Progress(console=console, transient=True) as progress:
            progress.add_task("pgvector", total=None)
            results["pgvector"] = bench_pgvector(args)
        console.print(pgvector_table(results["pgvector"]))
    if args.only in (None, "quality"):
        results["quality"] = bench_quality(args)
        console.print(quality_table(results["quality"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
