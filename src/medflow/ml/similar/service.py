"""Similar images: what other code (the API, the UI) calls.

:meth:`SimilarService.similar` takes an archived instance, the model whose embeddings to
compare (``name:version``, a name for its newest version with embeddings, or by default the
service's default model, else the newest model that embedded the instance), and answers the
``k`` most similar other instances by cosine similarity of their embeddings.

What a radiologist asking "show me similar images" expects is other patients' cases, so by
default the query's own patient (its other studies: priors look alike because they are the
same anatomy) and study are left out; ``same_study`` lets the study's other images in and
``same_patient`` the patient's other studies. The query image itself is never answered.

``cohort`` (a saved cohort's id or name) restricts the answers to the cohort's patients: its
latest version is evaluated as of its evaluation date (no run stored; the result is kept for
``cohort_ttl_s``), and the images of its patients' MRNs (DICOM PatientIDs) and of the studies
its criteria matched are allowed.

The vector index of each model is a pgvector table in the PostgreSQL database when the server
has the extension (``backend``; :mod:`medflow.ml.similar.pgvector`), else an embedded usearch
index (:mod:`medflow.ml.similar.index`). A usearch index is opened on first use: loaded from
``<data_dir>/ml/similar/`` and brought up to date with ``ml_embedding`` (by the rows'
signature: count, largest and sum of keys), or rebuilt from the table when missing or
unreadable. Each call then reads the model's generation (``ml_embedding_model``, one primary
key read, moved by every write in the writing transaction, in any process) and catches up only
when it moved. A
rebuild of more than ``inline_build_limit`` vectors runs in a thread and the call raises
:class:`IndexBuilding` (``StorageFailure``, retryable: HTTP 503 with Retry-After) meanwhile;
catching up after many new embeddings goes on in a thread while searches use the index as it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from sqlalchemy.engine import Engine

from medflow.core.errors import InvalidInput, NotFound, StorageFailure, Unsupported
from medflow.ml.similar.index import VectorIndex, file_stem
from medflow.ml.similar.pgvector import PgVectorIndex, pgvector_available
from medflow.ml.similar.store import EmbeddingStore, StoredEmbedding

if TYPE_CHECKING:
    from medflow.cohort.tracking import CohortTracker

log = logging.getLogger(__name__)
MAX_K = 100
AnyIndex = VectorIndex | PgVectorIndex
BACKENDS = ("auto", "usearch", "pgvector")


class NotEmbedded(NotFound):
    """The instance has no embedding (yet) for the model."""


class IndexBuilding(StorageFailure):
    """The model's index is being rebuilt from the table; try again shortly."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


@dataclass(frozen=True)
class Neighbour:
    """A similar instance (or the query itself), ``score`` the cosine similarity (1: same
    direction)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    frame: int
    patient_id: str
    score: float | None = None


@dataclass(frozen=True)
class CohortScope:
    id: int
    name: str
    version: int
    patients: int
    instances: int
    """The model's embedded instances of the cohort."""


@dataclass(frozen=True)
class SimilarResult:
    model: str
    query: Neighbour
    results: list[Neighbour]
    k: int
    same_study: bool
    same_patient: bool
    cohort: CohortScope | None = None
    searched: int = 0
    """Vectors of the model in the index that was searched."""
    elapsed_ms: float = 0.0


@dataclass
class _CohortCache:
    at: float
    scope: CohortScope
    allowed: frozenset[str]


@dataclass
class _State:
    indexes: dict[str, AnyIndex] = field(default_factory=dict)
    building: set[str] = field(default_factory=set)
    syncing: set[str] = field(default_factory=set)
    locks: dict[str, threading.Lock] = field(default_factory=dict)
    cohorts: dict[tuple[str, int, int], _CohortCache] = field(default_factory=dict)


class SimilarService:
    def __init__(
        self,
        *,
        engine: Engine,
        data_dir: Path,
        cohorts: CohortTracker | None = None,
        default_model: Callable[[], str | None] | None = None,
        inline_build_limit: int = 20_000,
        save_interval_s: float = 300.0,
        cohort_ttl_s: float = 60.0,
        backend: str = "auto",
    ) -> None:
        """``default_model()``: the model ref to use when a call names none (the production
        model's ref; None: the newest model that embedded the query instance). ``backend``:
        ``usearch`` (files under the data dir), ``pgvector`` (tables in the PostgreSQL
        database; refused when the server lacks the extension) or ``auto`` (pgvector when the
        database is PostgreSQL with the extension, else usearch)."""
        if backend not in BACKENDS:
            raise InvalidInput(f"similar images index {backend!r}: one of {', '.join(BACKENDS)}")
        self.engine, self.backend = engine, backend
        self._pgvector: bool | None = None
        self.embeddings = EmbeddingStore(engine)
        self.directory = (data_dir / "ml" / "similar").resolve()
        self.cohorts, self.default_model = cohorts, default_model
        self.inline_build_limit, self.save_interval_s = inline_build_limit, save_interval_s
        self.cohort_ttl_s = cohort_ttl_s
        self._state = _State()
        self._lock = threading.Lock()

    # -- the question ---------------------------------------------------------------------------
    def similar(
        self,
        *,
        instance: str,
        k: int = 10,
        model: str | None = None,
        cohort: int | str | None = None,
        same_study: bool = False,
        same_patient: bool = False,
    ) -> SimilarResult:
        """The ``k`` instances most similar to ``instance`` (see the module's docstring).
        ``NotFound``: unknown model or cohort; ``NotEmbedded``: no embedding of the instance
        by the model (yet); ``IndexBuilding``: the model's index is being built."""
        started = time.perf_counter()
        k = max(1, min(int(k), MAX_K))
        query = self._query(instance, model)
        ref = query.model_ref
        assert query.vector is not None
        scope, allowed = (None, None) if cohort is None else self._cohort(ref, cohort)
        index = self.index(ref)

        def where(sop: str, study: str, patient: str) -> bool:
            if study == query.study_uid:
                return same_study
            return same_patient or not (patient and patient == query.patient_id)

        hits = index.search(query.vector, k, allowed=allowed,
                            exclude_instances={query.sop_instance_uid}, where=where)  # fmt: skip
        rows = self.embeddings.by_keys([h.key for h in hits])
        results = [_neighbour(rows[h.key], h.score) for h in hits if h.key in rows]
        return SimilarResult(
            model=ref, query=_neighbour(query, None), results=results, k=k,
            same_study=same_study, same_patient=same_patient, cohort=scope, searched=len(index),
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )  # fmt: skip

    def _query(self, instance: str, model: str | None) -> StoredEmbedding:
        """The instance's embedding by the model the call means."""
        mine = self.embeddings.of_instance(sop_uid=instance)
        if model is not None and ":" in model:
            found = [e for e in mine if e.model_ref == model]
            if not found:
                self._no_embedding(instance, model)
            return found[0]
        if model is not None:
            named = [e for e in mine if e.model_ref.rpartition(":")[0] == model]
            if not named:
                self._no_embedding(instance, model)
            return max(named, key=lambda e: (_version(e.model_ref), -e.frame))
        default = self.default_model() if self.default_model is not None else None
        preferred = [e for e in mine if e.model_ref == default]
        if preferred or mine:
            return (preferred or mine)[0]
        raise NotEmbedded(
            f"instance {instance} has no embedding yet: it is not in the archive, the "
            "embedding worker has not reached it, or no model in use reads this kind of image"
        )

    def _no_embedding(self, instance: str, model: str) -> NoReturn:
        refs = [m.model_ref for m in self.embeddings.models()]
        if model not in refs and not any(r.rpartition(":")[0] == model for r in refs):
            raise NotFound(f"model {model!r} has no embeddings")
        failures = [f for f in self.embeddings.failures(sop_uid=instance)
                    if f.model_ref == model or f.model_ref.rpartition(":")[0] == model]  # fmt: skip
        if failures:
            raise NotEmbedded(f"instance {instance} could not be embedded by "
                              f"{failures[0].model_ref}: {failures[0].reason}")  # fmt: skip
        raise NotEmbedded(
            f"instance {instance} has no embedding by model {model!r} yet: it is not in the "
            "archive, the embedding worker has not reached it, or the model does not read "
            "this kind of image"
        )

    def _cohort(self, ref: str, cohort: int | str) -> tuple[CohortScope, frozenset[str]]:
        """The cohort's scope and the model's embedded instances of it (cached a while)."""
        if self.cohorts is None:
            raise Unsupported("cohorts are not available to the similar images service")
        info = self.cohorts.show(ref=cohort)
        key = (ref, info.id, info.version)
        cached = self._state.cohorts.get(key)
        if cached is not None and time.monotonic() - cached.at < self.cohort_ttl_s:
            return cached.scope, cached.allowed
        result = self.cohorts.evaluate(definition=self.cohorts.definition(ref=info.id))
        mrns = {p.mrn for p in result.patients if p.mrn}
        studies = {s for p in result.patients for s in p.studies}
        allowed = frozenset(self.embeddings.instances_of(model_ref=ref, patient_ids=mrns,
                                                         study_uids=studies))  # fmt: skip
        scope = CohortScope(info.id, info.name, info.version, len(result.patients), len(allowed))
        self._state.cohorts[key] = _CohortCache(time.monotonic(), scope, allowed)
        return scope, allowed

    # -- indexes --------------------------------------------------------------------------------
    def index_path(self, model_ref: str) -> Path:
        return self.directory / f"{file_stem(model_ref)}.usearch"

    def _ref_lock(self, model_ref: str) -> threading.Lock:
        with self._lock:
            return self._state.locks.setdefault(model_ref, threading.Lock())

    @property
    def uses_pgvector(self) -> bool:
        """Whether the indexes are pgvector tables (decided once, at first use)."""
        if self._pgvector is None:
            available = self.backend != "usearch" and pgvector_available(self.engine)
            if self.backend == "pgvector" and not available:
                raise Unsupported(
                    "the similar images index is set to pgvector, but the database is not "
                    "PostgreSQL with the pgvector extension"
                )
            self._pgvector = available
        return self._pgvector

    def index(self, model_ref: str) -> AnyIndex:
        """The model's index, up to date with the table (see the module's docstring)."""
        with self._lock:
            index = self._state.indexes.get(model_ref)
            building = model_ref in self._state.building
        if index is None:
            if building:
                raise IndexBuilding(f"the similarity index of {model_ref} is being built")
            index = self._open(model_ref)
        self._catch_up(index)
        return index

    def _open(self, model_ref: str) -> AnyIndex:
        with self._ref_lock(model_ref):
            with self._lock:
                if model_ref in self._state.indexes:
                    return self._state.indexes[model_ref]
            if self.uses_pgvector:  # the table persists: the catch-up that follows fills it
                table = PgVectorIndex(engine=self.engine, model_ref=model_ref)
                with self._lock:
                    self._state.indexes[model_ref] = table
                return table
            path = self.index_path(model_ref)
            generation = self.embeddings.generation(model_ref)  # read before the rows
            index = VectorIndex.load(path, model_ref=model_ref)
            if index is None:
                count = self.embeddings.signature(model_ref).count
                if count > self.inline_build_limit:
                    self._build_in_thread(model_ref)
                    raise IndexBuilding(f"the similarity index of {model_ref} ({count} "
                                        "vectors) is being built")  # fmt: skip
                index = VectorIndex.build(model_ref=model_ref, source=self.embeddings, path=path)
                index.generation = generation
            # a loaded index keeps generation -1: the catch-up that follows compares it with
            # the table (within its budget, the rest in a thread)
            with self._lock:
                self._state.indexes[model_ref] = index
            return index

    def _build_in_thread(self, model_ref: str) -> None:
        with self._lock:
            if model_ref in self._state.building:
                return
            self._state.building.add(model_ref)

        def build() -> None:
            try:
                generation = self.embeddings.generation(model_ref)
                index = VectorIndex.build(model_ref=model_ref, source=self.embeddings,
                                          path=self.index_path(model_ref))  # fmt: skip
                index.generation = generation
                with self._lock:
                    self._state.indexes[model_ref] = index
                log.info("similarity index of %s built: %d vectors", model_ref, len(index))
            except Exception:  # a background job: logged, the next call starts it again
                log.exception("building the similarity index of %s failed", model_ref)
            finally:
                with self._lock:
                    self._state.building.discard(model_ref)

        threading.Thread(target=build, name=f"medflow-similar-{model_ref}", daemon=True).start()

    def _catch_up(self, index: AnyIndex) -> None:
        """When the model's generation moved: add and remove what changed in the table; a
        large backlog goes on in a thread (searches meanwhile use the index as it is); saved
        now and then."""
        generation = self.embeddings.generation(index.model_ref)
        if generation == index.generation:
            return  # nothing was written since the index last looked
        lock = self._ref_lock(index.model_ref)
        if not lock.acquire(blocking=False):
            return  # another call or thread is catching up: use the index as it is
        budget = max(1000, self.inline_build_limit // 10)
        try:
            backlog = index.sync(self.embeddings, budget=budget) >= budget
            if not backlog:
                index.generation = generation
            if (
                not backlog
                and index.dirty
                and (time.monotonic() - index.saved_at > self.save_interval_s)
            ):
                index.save()
        finally:
            lock.release()
        if backlog:
            self._sync_in_thread(index)

    def _sync_in_thread(self, index: AnyIndex) -> None:
        ref = index.model_ref
        with self._lock:
            if ref in self._state.syncing:
                return
            self._state.syncing.add(ref)

        def sync() -> None:
            try:
                with self._ref_lock(ref):
                    generation = self.embeddings.generation(ref)
                    index.sync(self.embeddings)
                    index.generation = generation
                    index.save()
            except Exception:  # a background job: logged, the next call goes on
                log.exception("updating the similarity index of %s failed", ref)
            finally:
                with self._lock:
                    self._state.syncing.discard(ref)

        threading.Thread(target=sync, name="medflow-similar-sync", daemon=True).start()

    def warm(self) -> None:
        """Open every model's index (at start, in a thread: ``warm_in_thread``)."""
        for summary in self.embeddings.models():
            try:
                self.index(summary.model_ref)
            except IndexBuilding:
                continue

    def warm_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.warm, name="medflow-similar-warm", daemon=True)
        thread.start()
        return thread

    def save(self) -> None:
        """Write every index that changed since it was saved."""
        with self._lock:
            indexes = list(self._state.indexes.values())
        for index in indexes:
            if index.dirty:
                with self._ref_lock(index.model_ref):
                    index.save()

    close = save

    # -- what there is ----------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Per model with embeddings: how many, their width, failures, the index's state."""
        with self._lock:
            indexes = dict(self._state.indexes)
            building = set(self._state.building)
        models = []
        for m in self.embeddings.models():
            index = indexes.get(m.model_ref)
            models.append({
                "model": m.model_ref, "embeddings": m.embeddings, "dim": m.dim,
                "latest": m.latest.isoformat() if m.latest else None,
                "failures": self.embeddings.failure_count(model_ref=m.model_ref),
                "index": "building" if m.model_ref in building
                else "not loaded" if index is None else "loaded",
                "indexed": len(index) if index is not None else None,
            })  # fmt: skip
        backend = "not chosen yet" if self._pgvector is None else (
            "pgvector" if self._pgvector else "usearch")  # fmt: skip
        return {"models": models, "backend": backend}


def _version(ref: str) -> int:
    version = ref.rpartition(":")[2]
    return int(version) if version.isdigit() else -1


def _neighbour(e: StoredEmbedding, score: float | None) -> Neighbour:
    return Neighbour(e.study_uid, e.series_uid, e.sop_instance_uid, e.frame, e.patient_id, score)


__all__ = ["BACKENDS", "MAX_K", "AnyIndex", "CohortScope", "IndexBuilding", "Neighbour",
           "NotEmbedded", "SimilarResult", "SimilarService"]  # fmt: skip
