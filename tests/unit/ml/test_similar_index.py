"""The similarity vector index (usearch, cosine) on its own: add, search (best first, one hit
per instance), filters and exclusions (exact and oversampled paths agree with brute force),
removal, persistence and reload, files that disagree, catching up with a table (a fake
``IndexSource``) by signature, concurrent adds and searches; and the worker's plan of a batch."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from medflow.core.errors import InvalidInput
from medflow.ml.similar import index as index_module
from medflow.ml.similar.index import VectorIndex, file_stem
from medflow.ml.similar.store import IndexRow, Signature, from_bytes, to_bytes
from medflow.ml.similar.worker import _own_document, _plan
from medflow.store.records import ChangeEvent

DIM = 16


def clustered(
    n: int, *, clusters: int = 8, seed: int = 0
) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, DIM))
    labels = rng.integers(0, clusters, n)
    return (centres[labels] + 0.3 * rng.normal(size=(n, DIM))).astype(np.float32), labels


def rows(vectors: NDArray[np.float32], *, start: int = 1, per_study: int = 2,
         per_patient: int = 4) -> list[IndexRow]:  # fmt: skip
    return [
        IndexRow(start + i, f"1.2.{start + i}", f"study{(start + i) // per_study}",
                 f"p{(start + i) // per_patient}", v)
        for i, v in enumerate(vectors)
    ]  # fmt: skip


def brute(vectors: NDArray[np.float32], query: NDArray[np.float32]) -> NDArray[np.float64]:
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)
    return np.asarray((vectors @ query) / norms, dtype=np.float64)


class FakeSource:
    """A table of rows in memory (what ``EmbeddingStore`` answers)."""

    def __init__(self, ref: str, table: list[IndexRow]) -> None:
        self.ref, self.table = ref, {r.key: r for r in table}
        self.reads = 0

    def signature(self, model_ref: str) -> Signature:
        keys = list(self.table) if model_ref == self.ref else []
        return Signature(len(keys), max(keys, default=0), sum(keys))

    def keys(self, model_ref: str) -> NDArray[np.int64]:
        return np.array(sorted(self.table), dtype=np.int64)

    def rows(self, model_ref: str, *, after: int = 0, keys: Sequence[int] | None = None,
             limit: int = 5000) -> list[IndexRow]:  # fmt: skip
        self.reads += 1
        wanted = set(keys) if keys is not None else None
        out = [r for k, r in sorted(self.table.items())
               if (k in wanted if wanted is not None else k > after)]  # fmt: skip
        return out[:limit]


def test_vectors_round_trip_as_float32_bytes() -> None:
    v = np.array([1.5, -2.0, 3.25], dtype=np.float64)
    data = to_bytes(v)
    assert len(data) == 12 and np.array_equal(from_bytes(data), v.astype(np.float32))


def test_file_stem_is_a_safe_name() -> None:
    assert file_stem("cxr:3") == "cxr@3"
    assert file_stem("a b/../c:1") == "a_b_.._c@1"


def test_search_ranks_by_cosine_one_hit_per_instance() -> None:
    vectors, _ = clustered(300)
    index = VectorIndex(model_ref="m:1")
    assert index.add(rows(vectors)) == 300
    assert index.add(rows(vectors[:5])) == 0  # keys already there: nothing added
    query = vectors[10]
    hits = index.search(query, 10)
    expected = np.argsort(-brute(vectors, query))[:10]
    assert [h.key for h in hits] == [int(i) + 1 for i in expected]
    assert hits[0].sop_instance_uid == "1.2.11" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))
    # two frames of one instance: the instance is answered once, with its best frame
    index.add([IndexRow(1000, "1.2.11", "study5", "p2", vectors[10] * 0.5 + vectors[11] * 0.5)])
    hits = index.search(query, 10)
    assert [h.sop_instance_uid for h in hits].count("1.2.11") == 1
    assert hits[0].key == 11


def test_exclusions_of_instance_study_and_patient() -> None:
    vectors, _ = clustered(200)
    index = VectorIndex(model_ref="m:1")
    index.add(rows(vectors))
    q = index.search(vectors[0], 1)[0]
    hits = index.search(vectors[0], 20, exclude_instances={q.sop_instance_uid},
                        exclude_studies={q.study_uid}, exclude_patients={"p3"})  # fmt: skip
    assert len(hits) == 20
    assert all(h.sop_instance_uid != q.sop_instance_uid for h in hits)
    assert all(h.study_uid != q.study_uid and h.patient_id != "p3" for h in hits)
    odd = index.search(vectors[0], 20, where=lambda sop, study, patient: int(sop[4:]) % 2 == 1)
    assert len(odd) == 20 and all(int(h.sop_instance_uid[4:]) % 2 for h in odd)


@pytest.mark.parametrize("allowed_count", [50, 3000])
def test_allowed_instances_exact_and_oversampled(
    allowed_count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``allowed`` is ranked exactly (few) or by an oversampled graph search (many); both
    give the brute force answer over the allowed vectors."""
    monkeypatch.setattr(index_module, "EXACT_LIMIT", 100)
    vectors, _ = clustered(6000, clusters=20, seed=1)
    index = VectorIndex(model_ref="m:1")
    index.add(rows(vectors))
    rng = np.random.default_rng(2)
    chosen = rng.choice(6000, allowed_count, replace=False)
    allowed = {f"1.2.{i + 1}" for i in chosen}
    query = vectors[7]
    hits = index.search(query, 10, allowed=allowed)
    assert len(hits) == 10 and all(h.sop_instance_uid in allowed for h in hits)
    scores = brute(vectors[chosen], query)
    best = sorted(scores, reverse=True)[:10]
    found = [h.score for h in hits]
    # the graph search may miss a near tie, never return worse than the 20th best
    assert found[0] == pytest.approx(best[0], abs=1e-4)
    assert min(found) >= sorted(scores, reverse=True)[19] - 1e-4
    assert index.search(query, 10, allowed=set()) == []
    assert index.search(query, 10, allowed={"not-there"}) == []


def test_a_rare_filter_still_finds_its_k() -> None:
    """Oversampling grows until k pass (a filter matching 1 % of the vectors)."""
    vectors, _ = clustered(5000, seed=3)
    index = VectorIndex(model_ref="m:1")
    index.add(rows(vectors))
    allowed = {f"1.2.{i}" for i in range(1, 5001, 100)}  # 50 of 5000, exact path
    assert len(index.search(vectors[0], 10, allowed=allowed)) == 10
    patients = {f"p{i}" for i in range(0, 1251) if i % 50}  # exclude 98 % of the patients
    hits = index.search(vectors[0], 10, exclude_patients=patients)
    assert len(hits) == 10 and all(h.patient_id not in patients for h in hits)


def test_bad_queries_are_invalid_input() -> None:
    vectors, _ = clustered(20)
    index = VectorIndex(model_ref="m:1")
    assert index.search(vectors[0], 5) == []  # empty index
    index.add(rows(vectors))
    with pytest.raises(InvalidInput):
        index.search(np.zeros(DIM, dtype=np.float32), 5)
    with pytest.raises(InvalidInput):
        index.search(np.ones(DIM + 1, dtype=np.float32), 5)
    with pytest.raises(InvalidInput):
        index.search(np.full(DIM, np.nan, dtype=np.float32), 5)
    # a vector of another width is left out
    assert index.add([IndexRow(999, "x", "s", "p", np.ones(DIM + 2, dtype=np.float32))]) == 0


def test_remove_and_signature() -> None:
    vectors, _ = clustered(50)
    index = VectorIndex(model_ref="m:1")
    index.add(rows(vectors))
    assert index.signature() == Signature(50, 50, sum(range(1, 51)))
    assert index.remove([50, 3, 777]) == 2
    assert index.signature() == Signature(48, 49, sum(range(1, 51)) - 53)
    assert all(h.key not in (3, 50) for h in index.search(vectors[2], 48))
    assert index.vector(3) is None
    assert np.allclose(index.vector(4), vectors[3])  # type: ignore[arg-type]


def test_save_and_load(tmp_path: Path) -> None:
    vectors, _ = clustered(500)
    path = tmp_path / "similar" / f"{file_stem('m:1')}.usearch"
    index = VectorIndex(model_ref="m:1", path=path)
    index.add(rows(vectors))
    index.remove([7])
    index.save()
    assert path.is_file() and VectorIndex.keys_path(path).is_file() and not index.dirty
    assert not list(path.parent.glob(".*tmp"))
    again = VectorIndex.load(path, model_ref="m:1")
    assert again is not None and again.signature() == index.signature() and again.dim == DIM
    a, b = index.search(vectors[3], 10), again.search(vectors[3], 10)
    assert [(h.key, h.sop_instance_uid, h.study_uid, h.patient_id) for h in a] == [
        (h.key, h.sop_instance_uid, h.study_uid, h.patient_id) for h in b]  # fmt: skip
    assert VectorIndex.load(path, model_ref="m:2") is None  # another model's files
    assert VectorIndex.load(tmp_path / "none.usearch", model_ref="m:1") is None


def test_files_that_disagree_are_refused(tmp_path: Path) -> None:
    vectors, _ = clustered(40)
    path = tmp_path / "m@1.usearch"
    index = VectorIndex(model_ref="m:1", path=path)
    index.add(rows(vectors))
    index.save()
    keys = VectorIndex.keys_path(path).read_bytes()
    index.add(rows(vectors[:3], start=100))
    index.save()
    VectorIndex.keys_path(path).write_bytes(keys)  # a crash between the two renames
    assert VectorIndex.load(path, model_ref="m:1") is None
    path.write_bytes(b"not an index")
    assert VectorIndex.load(path, model_ref="m:1") is None


def test_sync_follows_the_table() -> None:
    vectors, _ = clustered(400)
    source = FakeSource("m:1", rows(vectors[:300]))
    index = VectorIndex.build(model_ref="m:1", source=source)
    assert index.signature() == source.signature("m:1") and len(index) == 300
    reads = source.reads
    assert index.sync(source) == 0 and source.reads == reads  # unchanged: one aggregate only
    # new rows above the largest key
    for r in rows(vectors[300:], start=301):
        source.table[r.key] = r
    assert index.sync(source) == 100 and len(index) == 400
    # a deletion and a re-embedded instance (delete + insert: a new key)
    del source.table[5]
    old = source.table.pop(10)
    source.table[401] = IndexRow(401, old.sop_instance_uid, old.study_uid, old.patient_id,
                                 vectors[0])  # fmt: skip
    assert index.sync(source) == 3
    assert index.signature() == source.signature("m:1")
    # out of key order (PostgreSQL): a smaller key committed after a larger one, while
    # another row went: the count and largest key alike, the sum differs
    del source.table[20]
    source.table[5] = IndexRow(5, "1.2.late", "s", "p", vectors[1])
    assert index.signature().count == source.signature("m:1").count
    assert index.sync(source) == 2
    assert index.signature() == source.signature("m:1")
    assert index.search(vectors[1], 1, allowed={"1.2.late"})[0].key == 5


def test_sync_budget_stops_early() -> None:
    vectors, _ = clustered(600)
    source = FakeSource("m:1", rows(vectors))
    index = VectorIndex(model_ref="m:1")
    monkey = index_module.SYNC_CHUNK
    try:
        index_module.SYNC_CHUNK = 100
        assert index.sync(source, budget=150) == 200
        assert index.sync(source) == 400
    finally:
        index_module.SYNC_CHUNK = monkey


def test_concurrent_adds_and_searches() -> None:
    vectors, _ = clustered(2000)
    index = VectorIndex(model_ref="m:1")
    index.add(rows(vectors[:200]))
    errors: list[BaseException] = []

    def writer() -> None:
        for i in range(200, 2000, 100):
            index.add(rows(vectors[i : i + 100], start=i + 1))

    def reader() -> None:
        try:
            for i in range(200):
                assert len(index.search(vectors[i], 5)) == 5
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(index) == 2000


# -- the worker's plan of a batch ------------------------------------------------------------
def _event(seq: int, sop: str, action: str, state: str, meta: dict[str, object] | None = None
           ) -> ChangeEvent:  # fmt: skip
    return ChangeEvent(seq, "st", "se", sop, action, state, datetime.now(UTC),
                       json.dumps(meta or {"7FE00010": {"vr": "OW"}}) if state == "current"
                       else None)  # fmt: skip


def test_plan_takes_the_last_entry_of_each_instance() -> None:
    events = [
        _event(1, "a", "create", "current"),
        _event(2, "b", "create", "replaced"),  # updated later, beyond this batch: wait
        _event(3, "c", "create", "deleted"),
        _event(4, "c", "delete", "deleted"),
        _event(5, "d", "delete", "deleted"),
        _event(6, "d", "create", "current"),  # deleted and stored again: replaces
        _event(7, "e", "update", "current"),
    ]
    todo, deletes = _plan(events)
    assert [(t.event.sop_instance_uid, replace) for t, replace in todo] == [
        ("a", False), ("d", True), ("e", True)]  # fmt: skip
    assert deletes == {"c", "d", "e"}


def test_own_documents_are_recognised() -> None:
    kos = {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.88.59"]}}
    ours = {"00080070": {"vr": "LO", "Value": ["medflow"]}}
    image = {"00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.1"]},
             "00080070": {"vr": "LO", "Value": ["ACME"]}}  # fmt: skip
    assert _own_document(kos) and _own_document(ours) and not _own_document(image)
