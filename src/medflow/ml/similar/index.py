"""An embedded vector index per model (usearch HNSW, cosine), a derived copy of the model's
``ml_embedding`` rows.

Keys are the rows' primary keys; the index keeps, per key, the instance, study and patient
(for filters and exclusions) and persists as two files under ``<data_dir>/ml/similar/``:
``<model>.usearch`` (usearch's own format) and ``<model>.keys.parquet`` (key, SOP Instance UID,
Study Instance UID, PatientID; the model ref and width in the file's metadata), replaced
atomically. A loaded pair whose keys disagree is thrown away and rebuilt from the table.

:meth:`VectorIndex.sync` brings it up to date with the table by comparing
:class:`~medflow.ml.similar.store.Signature` values (count, largest key, sum of keys): rows
above its largest key are added; when the signatures still differ, the key sets are compared
and the difference added and removed (deletions, a re-embedded instance, or rows committed out
of key order on PostgreSQL).

Filters: usearch's Python API has no predicate search, so :meth:`VectorIndex.search`
oversamples (the number of candidates grows by the selectivity of ``allowed`` and by 4x per
round until ``k`` pass) and, when ``allowed`` names few vectors (``EXACT_LIMIT``), ranks just
those exactly. Every method holds one lock: adds, removals, searches and saves are thread-safe.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
from numpy.typing import NDArray
from usearch.index import Index

from medflow.core.errors import InvalidInput
from medflow.ml.similar.store import IndexRow, Signature

log = logging.getLogger(__name__)
FloatArray = NDArray[np.float32]
EXACT_LIMIT = 4096
"""``allowed`` instances up to this many are ranked exactly (no graph search)."""
GRAPH_LIMIT = 10_000
"""Candidate counts above this use usearch's exact (brute force) search."""
SYNC_CHUNK = 2048
"""Rows read from the table (and added under the lock) at a time."""
FORMAT = "medflow-similar-1"
CONNECTIVITY = 16
EXPANSION_ADD = 64
EXPANSION_SEARCH = 64


class IndexSource(Protocol):
    """The rows an index copies (``EmbeddingStore``)."""

    def signature(self, model_ref: str) -> Signature: ...

    def keys(self, model_ref: str) -> NDArray[np.int64]: ...

    def rows(
        self, model_ref: str, *, after: int = 0, keys: Sequence[int] | None = None,
        limit: int = 5000,
    ) -> list[IndexRow]: ...  # fmt: skip


@dataclass(frozen=True)
class Hit:
    """A found vector: its key, instance, study, patient and cosine similarity (-1..1)."""

    key: int
    sop_instance_uid: str
    study_uid: str
    patient_id: str
    score: float


def file_stem(model_ref: str) -> str:
    """The files' name for a model ref: "cxr:3" -> "cxr@3" (other characters outside
    ``[A-Za-z0-9._-]`` as "_")."""
    return re.sub(r"[^A-Za-z0-9._@-]+", "_", model_ref.replace(":", "@")) or "_"


class VectorIndex:
    """The vectors of one model (``model_ref``), ``dim`` wide (known from the first vector when
    not given), persisted at ``path`` (``*.usearch``; None: in memory only)."""

    def __init__(self, *, model_ref: str, path: Path | None = None, dim: int | None = None,
                 expansion_add: int = EXPANSION_ADD) -> None:  # fmt: skip
        self.model_ref, self.path, self.dim = model_ref, path, dim
        self.expansion_add = expansion_add
        self._index: Index | None = None
        self._entries: dict[int, tuple[str, str, str]] = {}
        """key -> (SOP Instance UID, Study Instance UID, PatientID)"""
        self._by_sop: dict[str, list[int]] = {}
        self._strings: dict[str, str] = {}
        self._key_sum = 0
        self._max_key = 0
        self._lock = threading.RLock()
        self.dirty = False
        self.saved_at = time.monotonic()
        self.generation = -1
        """The table's generation the index was last brought up to (set by its owner)."""

    # -- state -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def signature(self) -> Signature:
        with self._lock:
            return Signature(len(self._entries), self._max_key, self._key_sum)

    def keys(self) -> NDArray[np.int64]:
        with self._lock:
            return np.fromiter(self._entries, dtype=np.int64, count=len(self._entries))

    def memory_bytes(self) -> int:
        """usearch's own memory (vectors and graph), not the key map."""
        with self._lock:
            return int(self._index.memory_usage) if self._index is not None else 0

    def _intern(self, text: str) -> str:
        return self._strings.setdefault(text, text)

    def _usearch(self, dim: int) -> Index:
        if self._index is None:
            self.dim = dim
            self._index = Index(ndim=dim, metric="cos", dtype="f32", connectivity=CONNECTIVITY,
                                expansion_add=self.expansion_add,
                                expansion_search=EXPANSION_SEARCH)  # fmt: skip
        return self._index

    # -- changes -----------------------------------------------------------------------------
    def add(self, rows: Sequence[IndexRow]) -> int:
        """Add rows whose key is not in the index yet; returns how many were added. A vector
        of another width than the index's is left out (logged)."""
        with self._lock:
            fresh = [r for r in rows if r.key not in self._entries]
            if not fresh:
                return 0
            dim = self.dim or int(fresh[0].vector.size)
            wrong = [r for r in fresh if r.vector.size != dim]
            if wrong:
                log.warning("%d vectors of %s are not %d wide; left out of the index",
                            len(wrong), self.model_ref, dim)  # fmt: skip
                fresh = [r for r in fresh if r.vector.size == dim]
            if not fresh:
                return 0
            keys = np.array([r.key for r in fresh], dtype=np.uint64)
            vectors = np.vstack([r.vector.reshape(1, dim) for r in fresh]).astype(np.float32)
            self._usearch(dim).add(keys, vectors)
            for r in fresh:
                entry = (r.sop_instance_uid, self._intern(r.study_uid), self._intern(r.patient_id))
                self._entries[r.key] = entry
                self._by_sop.setdefault(r.sop_instance_uid, []).append(r.key)
                self._key_sum += r.key
                self._max_key = max(self._max_key, r.key)
            self.dirty = True
            return len(fresh)

    def remove(self, keys: Collection[int]) -> int:
        """Remove these keys (unknown ones ignored); returns how many were removed."""
        with self._lock:
            gone = [int(k) for k in keys if int(k) in self._entries]
            if not gone or self._index is None:
                return 0
            self._index.remove(np.array(gone, dtype=np.uint64))
            for key in gone:
                sop = self._entries.pop(key)[0]
                left = [k for k in self._by_sop.get(sop, []) if k != key]
                if left:
                    self._by_sop[sop] = left
                else:
                    self._by_sop.pop(sop, None)
                self._key_sum -= key
            if self._max_key in gone:
                self._max_key = max(self._entries, default=0)
            self.dirty = True
            return len(gone)

    def sync(self, source: IndexSource, *, budget: int | None = None) -> int:
        """Bring the index up to the table's rows (see the module's docstring); returns the
        number of vectors added or removed. With ``budget``, stop once about that many were
        added (the next call goes on)."""
        return sync_from(self, source, budget=budget)

    @classmethod
    def build(cls, *, model_ref: str, source: IndexSource, path: Path | None = None,
              expansion_add: int = EXPANSION_ADD) -> VectorIndex:  # fmt: skip
        """A new index of every row of the model (saved when it has a ``path``)."""
        index = cls(model_ref=model_ref, path=path, expansion_add=expansion_add)
        index.sync(source)
        if path is not None:
            index.save()
        return index

    # -- search ------------------------------------------------------------------------------
    def vector(self, key: int) -> FloatArray | None:
        with self._lock:
            if key not in self._entries or self._index is None:
                return None
            return np.asarray(self._index.get(np.uint64(key)), dtype=np.float32)

    def search(
        self,
        vector: NDArray[Any],
        k: int,
        *,
        allowed: Collection[str] | None = None,
        exclude_instances: Collection[str] = (),
        exclude_studies: Collection[str] = (),
        exclude_patients: Collection[str] = (),
        where: Callable[[str, str, str], bool] | None = None,
    ) -> list[Hit]:
        """The ``k`` instances whose vectors are nearest ``vector`` by cosine similarity,
        best first, one hit per instance (its best frame): only instances in ``allowed``
        (SOP Instance UIDs) when given, none of ``exclude_instances``, none of the studies in
        ``exclude_studies`` and of the patients in ``exclude_patients`` (an empty PatientID
        is no patient), and only those ``where(sop_uid, study_uid, patient_id)`` accepts."""
        query = check_query(vector, self.dim)
        accepts = acceptor(allowed, exclude_instances, exclude_studies, exclude_patients, where)

        def accept(entry: tuple[str, str, str]) -> bool:
            return accepts(*entry)

        with self._lock:
            n = len(self._entries)
            if k <= 0 or n == 0 or self._index is None:
                return []
            fraction = 1.0
            if allowed is not None:
                if len(allowed) <= EXACT_LIMIT:
                    keys = [key for sop in allowed for key in self._by_sop.get(sop, ())]
                    return self._exact(query, keys, k, accept)
                fraction = min(1.0, len(allowed) / max(1, len(self._by_sop)))
            wanted = k + 16 + len(exclude_instances)
            count = min(n, max(4 * k, math.ceil(wanted / fraction * 2)))
            while True:
                found = self._index.search(query, count, exact=count > GRAPH_LIMIT)
                hits = self._collect(found.keys, 1.0 - found.distances, k, accept)
                if len(hits) >= k or count >= n:
                    return hits
                count = min(n, count * 4)

    def _exact(self, query: FloatArray, keys: list[int], k: int,
               accept: Callable[[tuple[str, str, str]], bool]) -> list[Hit]:  # fmt: skip
        if not keys or self._index is None:
            return []
        found: Any = self._index.get(np.array(keys, dtype=np.uint64))
        matrix = np.vstack(found).astype(np.float32)
        norms = np.linalg.norm(matrix, axis=1) * float(np.linalg.norm(query))
        scores = (matrix @ query) / np.where(norms > 0, norms, 1.0)
        order = np.argsort(-scores, kind="stable")
        return self._collect(np.asarray(keys)[order], scores[order], k, accept)

    def _collect(self, keys: NDArray[Any], scores: NDArray[Any], k: int,
                 accept: Callable[[tuple[str, str, str]], bool]) -> list[Hit]:  # fmt: skip
        hits: list[Hit] = []
        seen: set[str] = set()
        for key, score in zip(keys.tolist(), scores.tolist(), strict=True):
            entry = self._entries.get(int(key))
            if entry is None or entry[0] in seen or not accept(entry) or math.isnan(score):
                continue
            seen.add(entry[0])
            hits.append(Hit(int(key), entry[0], entry[1], entry[2], float(score)))
            if len(hits) >= k:
                break
        return hits

    # -- files --------------------------------------------------------------------------------
    @staticmethod
    def keys_path(path: Path) -> Path:
        return path.with_name(path.name.removesuffix(".usearch") + ".keys.parquet")

    def save(self) -> None:
        """Write both files (temporary names, fsync, rename: a reader sees the old pair or
        the new one; a crash between the renames leaves a pair :meth:`load` refuses)."""
        if self.path is None:
            return
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            keys = sorted(self._entries)
            table = pa.table(
                {
                    "key": pa.array(keys, type=pa.int64()),
                    "sop_instance_uid": [self._entries[k][0] for k in keys],
                    "study_uid": [self._entries[k][1] for k in keys],
                    "patient_id": [self._entries[k][2] for k in keys],
                }
            ).replace_schema_metadata({"format": FORMAT, "model_ref": self.model_ref,
                                       "dim": str(self.dim or 0)})  # fmt: skip
            keys_tmp = self.path.with_name(f".{self.path.name}.keys.tmp")
            index_tmp = self.path.with_name(f".{self.path.name}.tmp")
            pq.write_table(table, keys_tmp)
            if self._index is not None:
                self._index.save(str(index_tmp))
            for tmp, final in ((index_tmp, self.path), (keys_tmp, self.keys_path(self.path))):
                if tmp.exists():
                    _fsync(tmp)
                    tmp.replace(final)
            if self._index is None:
                self.path.unlink(missing_ok=True)
            _fsync_dir(self.path.parent)
            self.dirty = False
            self.saved_at = time.monotonic()

    @classmethod
    def load(cls, path: Path, *, model_ref: str) -> VectorIndex | None:
        """The index saved at ``path``, or None when it is missing, unreadable, of another
        model or its two files disagree (then it is rebuilt from the table)."""
        keys_path = cls.keys_path(path)
        if not keys_path.is_file():
            return None
        try:
            table = pq.read_table(keys_path)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
            restored = Index.restore(str(path)) if path.is_file() else None
        except (OSError, ValueError, RuntimeError, pa.ArrowException) as exc:
            log.warning("the similarity index at %s is unreadable (%s); rebuilding", path, exc)
            return None
        if meta.get("format") != FORMAT or meta.get("model_ref") != model_ref:
            return None
        keys = table.column("key").to_numpy()
        stored = np.sort(np.asarray(restored.keys, dtype=np.int64)) if restored else np.array([])
        if not np.array_equal(np.sort(keys.astype(np.int64)), stored):
            log.warning("the similarity index at %s disagrees with its keys; rebuilding", path)
            return None
        index = cls(model_ref=model_ref, path=path, dim=int(meta.get("dim", "0")) or None)
        index._index = restored
        columns = [table.column(c).to_pylist() for c in ("sop_instance_uid", "study_uid",
                                                          "patient_id")]  # fmt: skip
        for key, sop, study, patient in zip(keys.tolist(), *columns, strict=True):
            index._entries[int(key)] = (sop, index._intern(study), index._intern(patient))
            index._by_sop.setdefault(sop, []).append(int(key))
        index._key_sum = int(keys.sum()) if keys.size else 0
        index._max_key = int(keys.max()) if keys.size else 0
        return index


class Synced(Protocol):
    """An index that copies a model's rows (usearch here, pgvector in ``pgvector.py``)."""

    model_ref: str

    def signature(self) -> Signature: ...

    def keys(self) -> NDArray[np.int64]: ...

    def add(self, rows: Sequence[IndexRow]) -> int: ...

    def remove(self, keys: Collection[int]) -> int: ...


def sync_from(index: Synced, source: IndexSource, *, budget: int | None = None) -> int:
    """Bring ``index`` up to the model's rows in ``source`` (see the module's docstring);
    returns the number of vectors added or removed. With ``budget``, stop once about that
    many were added (the next call goes on)."""
    target = source.signature(index.model_ref)
    if target == index.signature():
        return 0
    changed = 0
    after = index.signature().max_key
    while target.max_key > after:
        rows = source.rows(index.model_ref, after=after, limit=SYNC_CHUNK)
        if not rows:
            break
        changed += index.add(rows)
        after = rows[-1].key
        if budget is not None and changed >= budget:
            return changed
    if index.signature() == source.signature(index.model_ref):
        return changed
    table, mine = source.keys(index.model_ref), index.keys()
    changed += index.remove(np.setdiff1d(mine, table, assume_unique=True).tolist())
    missing = np.setdiff1d(table, mine, assume_unique=True).tolist()
    for i in range(0, len(missing), SYNC_CHUNK):
        keys = missing[i : i + SYNC_CHUNK]
        changed += index.add(source.rows(index.model_ref, keys=keys, limit=len(keys)))
    return changed


def check_query(vector: NDArray[Any], dim: int | None) -> FloatArray:
    """The query as a flat float32 vector: ``dim`` wide (when known), finite, not zero."""
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    if dim is not None and query.size != dim:
        raise InvalidInput(f"a {query.size}-wide vector for a {dim}-wide index")
    norm = float(np.linalg.norm(query))
    if not math.isfinite(norm) or norm == 0.0:
        raise InvalidInput("the query vector is zero or not finite")
    return query


def acceptor(
    allowed: Collection[str] | None,
    exclude_instances: Collection[str],
    exclude_studies: Collection[str],
    exclude_patients: Collection[str],
    where: Callable[[str, str, str], bool] | None,
) -> Callable[[str, str, str], bool]:
    """Whether a (SOP Instance UID, Study Instance UID, PatientID) passes a search's filters
    (an empty PatientID is no patient)."""

    def accept(sop: str, study: str, patient: str) -> bool:
        return (
            (allowed is None or sop in allowed)
            and sop not in exclude_instances
            and study not in exclude_studies
            and not (patient and patient in exclude_patients)
            and (where is None or where(sop, study, patient))
        )

    return accept


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse a directory fsync
        _fsync(path)


__all__ = ["EXACT_LIMIT", "Hit", "IndexSource", "Synced", "VectorIndex", "acceptor",
           "check_query", "file_stem", "sync_from"]  # fmt: skip
