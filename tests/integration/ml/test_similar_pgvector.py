"""The similar images index as pgvector tables (issue 11), against a real PostgreSQL server
with the pgvector extension: ``MEDFLOW_TEST_PGVECTOR_URL``, else one started from the
``pgserver`` package (PostgreSQL 16 with pgvector, a dev dependency; Debian's PostgreSQL here
has no pgvector package). The same questions as the embedded usearch index: nearest
instances by cosine similarity against an exact ranking, filters, one hit per instance,
changes in ``ml_embedding`` followed; and ``SimilarService`` choosing pgvector on its own."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from medflow.core.errors import Unsupported
from medflow.db.engine import create_engine, upgrade
from medflow.ml.similar.index import VectorIndex
from medflow.ml.similar.pgvector import PgVectorIndex, pgvector_available, table_name
from medflow.ml.similar.service import SimilarService
from medflow.ml.similar.store import EmbeddingStore, NewEmbedding
from tests.conftest import need_peer

pytestmark = pytest.mark.integration
MODEL, DIM, N = "tiny:1", 32, 600
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("MEDFLOW_TEST_PGVECTOR_URL")
    if url:
        yield url
        return
    try:
        import pgserver  # type: ignore[import-untyped]
    except ImportError:
        need_peer(False, "pgvector: set MEDFLOW_TEST_PGVECTOR_URL or install pgserver (dev)")
    server = pgserver.get_server(tmp_path_factory.mktemp("pgvector"), cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


@pytest.fixture
def engine(server_url: str) -> Iterator[sa.Engine]:
    """A fresh database with medflow's schema on the pgvector server."""
    url = sa.engine.make_url(server_url).set(drivername="postgresql+psycopg")
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"medflow_pgv_{uuid.uuid4().hex[:10]}"
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    engine = create_engine(url.set(database=name).render_as_string(hide_password=False))
    try:
        upgrade(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, DIM))
    return (centres[rng.integers(0, 8, n)] + rng.normal(scale=0.4, size=(n, DIM))).astype(
        np.float32)  # fmt: skip


def fill(store: EmbeddingStore, vectors: np.ndarray, prefix: str = "1.2.9") -> list[str]:
    """One embedding per instance; five instances a study, two studies a patient."""
    rows = [NewEmbedding(sop_instance_uid=f"{prefix}.{i}", study_uid=f"{prefix}.s{i // 5}",
                         series_uid=f"{prefix}.r{i // 5}", patient_id=f"P{i // 10}", frame=1,
                         vector=v) for i, v in enumerate(vectors)]  # fmt: skip
    store.replace(model_ref=MODEL, rows=rows, now=NOW)
    return [r.sop_instance_uid for r in rows]


def exact(vectors: np.ndarray, sops: list[str], query: np.ndarray, k: int,
          keep: set[str] | None = None) -> list[str]:  # fmt: skip
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    order = [sops[i] for i in np.argsort(-scores, kind="stable")]
    return [s for s in order if keep is None or s in keep][:k]


def test_nearest_instances_filters_and_changes(engine: sa.Engine) -> None:
    assert pgvector_available(engine)
    store = EmbeddingStore(engine)
    vectors = clustered(N)
    sops = fill(store, vectors)
    index = PgVectorIndex.build(engine=engine, model_ref=MODEL, source=store)
    assert len(index) == N and index.dim == DIM and index.signature() == store.signature(MODEL)
    usearch = VectorIndex.build(model_ref=MODEL, source=store)
    rng = np.random.default_rng(1)
    recall = []
    for q in rng.integers(0, N, 20):
        hits = index.search(vectors[q], 10, exclude_instances={sops[q]})
        truth = exact(vectors, sops, vectors[q], 11)[1:]
        assert len(hits) == 10 and sops[q] not in [h.sop_instance_uid for h in hits]
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        recall.append(len({h.sop_instance_uid for h in hits} & set(truth)) / 10)
        mine = {h.sop_instance_uid: h.score for h in usearch.search(vectors[q], 10)}
        for h in hits:  # the same cosine similarity as the embedded index computes
            if h.sop_instance_uid in mine:
                assert h.score == pytest.approx(mine[h.sop_instance_uid], abs=1e-4)
    assert np.mean(recall) >= 0.95, recall

    allowed = set(sops[100:140])  # a cohort: ranked exactly
    hits = index.search(vectors[0], 5, allowed=allowed)
    assert [h.sop_instance_uid for h in hits] == exact(vectors, sops, vectors[0], 5, allowed)
    others = index.search(vectors[0], 10, where=lambda sop, study, patient: patient != "P0")
    assert all(h.patient_id != "P0" for h in others) and len(others) == 10
    assert index.search(vectors[0], 10, exclude_patients={"P0"}, exclude_studies={"1.2.9.s2"})

    store.delete_instances(sop_uids=sops[:50], now=NOW)
    fill(store, clustered(30, seed=7), prefix="1.2.8")
    assert index.sync(store) == 80
    assert len(index) == N - 50 + 30 and index.signature() == store.signature(MODEL)
    found = {h.sop_instance_uid for h in index.search(vectors[10], 50)}
    assert not found & set(sops[:50])
    again = PgVectorIndex(engine=engine, model_ref=MODEL)  # another process: the same table
    assert len(again) == len(index) and again.dim == DIM
    stored = again.vector(index.search(vectors[60], 1)[0].key)
    assert stored is not None and np.allclose(stored, vectors[60], atol=1e-5)


def test_the_service_uses_pgvector_on_its_own(engine: sa.Engine, tmp_path: Path) -> None:
    store = EmbeddingStore(engine)
    vectors = clustered(200, seed=3)
    sops = fill(store, vectors)
    service = SimilarService(engine=engine, data_dir=tmp_path)
    result = service.similar(instance=sops[0], k=5)
    assert service.status()["backend"] == "pgvector"
    assert [n.sop_instance_uid for n in result.results] == exact(
        vectors[10:], sops[10:], vectors[0], 5)  # its own patient left out  # fmt: skip
    assert result.searched == 200
    with engine.connect() as c:
        assert c.execute(sa.text(f"SELECT count(*) FROM {table_name(MODEL)}")).scalar() == 200
    assert not (tmp_path / "ml" / "similar").exists()  # no usearch files
    fill(store, clustered(10, seed=4), prefix="1.2.7")  # the next call catches up
    assert service.similar(instance="1.2.7.0", k=3, same_patient=True).searched == 210
    usearch = SimilarService(engine=engine, data_dir=tmp_path, backend="usearch")
    theirs = usearch.similar(instance=sops[0], k=5).results
    assert [n.sop_instance_uid for n in theirs] == [n.sop_instance_uid for n in result.results]
    assert [n.score for n in theirs] == pytest.approx([n.score for n in result.results], abs=1e-5)
    assert usearch.status()["backend"] == "usearch"


def test_without_pgvector(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'index.sqlite3'}")
    upgrade(engine)
    assert not pgvector_available(engine)
    with pytest.raises(Unsupported, match="pgvector"):
        _ = SimilarService(engine=engine, data_dir=tmp_path, backend="pgvector").uses_pgvector
    assert not SimilarService(engine=engine, data_dir=tmp_path).uses_pgvector
    assert table_name("cxr:3") == "ml_pgvector_cxr_3"
    assert len(table_name("x" * 100 + ":1")) <= 63
    engine.dispose()
