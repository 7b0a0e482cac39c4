"""Where embeddings are kept: ``ml_embedding`` rows next to the archive's index (SQLite or
PostgreSQL), with the worker's cursors and failures. The vector index (``index.py``) is a
derived copy of these rows, rebuilt from them when it is missing or stale."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from medflow.db.engine import write_session
from medflow.ml.similar.models import (
    Embedding,
    EmbeddingCursor,
    EmbeddingFailure,
    EmbeddingModel,
)

FloatArray = NDArray[np.float32]
IN_CHUNK = 500
"""Values bound per ``IN (...)`` (SQLite's and drivers' parameter limits)."""


def to_bytes(vector: NDArray[Any]) -> bytes:
    """A vector as the stored float32 little-endian bytes."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_bytes(data: bytes) -> FloatArray:
    """Stored bytes back as a float32 vector (a copy, writable)."""
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _chunks(values: Collection[str]) -> Iterable[list[str]]:
    items = sorted(set(values))
    for i in range(0, len(items), IN_CHUNK):
        yield items[i : i + IN_CHUNK]


@dataclass(frozen=True)
class NewEmbedding:
    """One embedding the worker writes."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    frame: int
    vector: FloatArray


@dataclass(frozen=True)
class StoredEmbedding:
    """An ``ml_embedding`` row (``key`` is its primary key, the vector's index key)."""

    key: int
    model_ref: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    patient_id: str
    frame: int
    created_at: datetime
    vector: FloatArray | None = None


@dataclass(frozen=True)
class Signature:
    """What the rows of a model look like to an index: how many, the largest key, and the sum
    of the keys (a deletion and an insertion between two looks change the sum)."""

    count: int
    max_key: int
    key_sum: int


@dataclass(frozen=True)
class IndexRow:
    """What an index needs of a row."""

    key: int
    sop_instance_uid: str
    study_uid: str
    patient_id: str
    vector: FloatArray


@dataclass(frozen=True)
class ModelSummary:
    model_ref: str
    embeddings: int
    dim: int
    latest: datetime | None


@dataclass(frozen=True)
class Failure:
    model_ref: str
    sop_instance_uid: str
    study_uid: str
    seq: int
    reason: str
    attempts: int
    created_at: datetime
    last_attempt_at: datetime


class EmbeddingStore:
    """Reads and writes ``ml_embedding``, ``ml_embedding_cursor`` and
    ``ml_embedding_failure``; every write is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- embeddings ----------------------------------------------------------------------------
    def replace(self, *, model_ref: str, rows: Sequence[NewEmbedding], now: datetime) -> int:
        """Store ``rows`` as the model's embeddings of their instances: any earlier embedding
        of those instances (every frame) is deleted first, so a row is new whenever its vector
        is (idempotent: the same rows again leave one row per instance and frame)."""
        if not rows:
            return 0
        sops = {r.sop_instance_uid for r in rows}
        with write_session(self.engine) as s, s.begin():
            for chunk in _chunks(sops):
                s.execute(
                    delete(Embedding).where(
                        Embedding.model_ref == model_ref, Embedding.sop_instance_uid.in_(chunk)
                    )
                )
            s.add_all(
                Embedding(model_ref=model_ref, sop_instance_uid=r.sop_instance_uid,
                          study_uid=r.study_uid, series_uid=r.series_uid,
                          patient_id=r.patient_id[:64], frame=r.frame, dim=int(r.vector.size),
                          vector=to_bytes(r.vector), created_at=now)
                for r in rows
            )  # fmt: skip
            for chunk in _chunks(sops):
                s.execute(delete(EmbeddingFailure).where(
                    EmbeddingFailure.model_ref == model_ref,
                    EmbeddingFailure.sop_instance_uid.in_(chunk)))  # fmt: skip
            _bump(s, model_ref, now)
        return len(rows)

    def delete_instances(self, *, sop_uids: Collection[str], now: datetime) -> int:
        """Remove every model's embeddings (and failures) of these instances."""
        removed = 0
        with write_session(self.engine) as s, s.begin():
            for chunk in _chunks(sop_uids):
                result = s.execute(delete(Embedding).where(Embedding.sop_instance_uid.in_(chunk)))
                removed += int(getattr(result, "rowcount", 0) or 0)
                s.execute(delete(EmbeddingFailure)
                          .where(EmbeddingFailure.sop_instance_uid.in_(chunk)))  # fmt: skip
            if removed:
                s.execute(update(EmbeddingModel).values(
                    generation=EmbeddingModel.generation + 1, updated_at=now))  # fmt: skip
        return removed

    def delete_model(self, *, model_ref: str) -> int:
        """Remove a model's embeddings, failures and cursor (a retired model version)."""
        with write_session(self.engine) as s, s.begin():
            result = s.execute(delete(Embedding).where(Embedding.model_ref == model_ref))
            s.execute(delete(EmbeddingFailure).where(EmbeddingFailure.model_ref == model_ref))
            s.execute(delete(EmbeddingCursor).where(EmbeddingCursor.name == cursor_name(model_ref)))
            s.execute(delete(EmbeddingModel).where(EmbeddingModel.model_ref == model_ref))
            return int(getattr(result, "rowcount", 0) or 0)

    def existing(self, *, model_ref: str, sop_uids: Collection[str]) -> set[str]:
        """The instances of ``sop_uids`` the model has an embedding of."""
        found: set[str] = set()
        with Session(self.engine) as s:
            for chunk in _chunks(sop_uids):
                found.update(s.scalars(select(Embedding.sop_instance_uid).where(
                    Embedding.model_ref == model_ref,
                    Embedding.sop_instance_uid.in_(chunk))))  # fmt: skip
        return found

    def of_instance(
        self, *, sop_uid: str, model_ref: str | None = None, vectors: bool = True
    ) -> list[StoredEmbedding]:
        """The embeddings of an instance (every model unless ``model_ref``), newest first."""
        q = select(Embedding).where(Embedding.sop_instance_uid == sop_uid)
        if model_ref is not None:
            q = q.where(Embedding.model_ref == model_ref)
        with Session(self.engine) as s:
            rows = s.scalars(q.order_by(Embedding.created_at.desc(), Embedding.frame)).all()
            return [_stored(r, vectors) for r in rows]

    def by_keys(self, keys: Collection[int]) -> dict[int, StoredEmbedding]:
        """Rows (without vectors) by key."""
        out: dict[int, StoredEmbedding] = {}
        columns = [c for c in Embedding.__table__.columns if c.name != "vector"]
        items = sorted(set(keys))
        with self.engine.connect() as conn:
            for i in range(0, len(items), IN_CHUNK):
                rows = conn.execute(select(*columns).where(
                    Embedding.pk.in_(items[i : i + IN_CHUNK])))  # fmt: skip
                for r in rows:
                    out[int(r.pk)] = StoredEmbedding(
                        int(r.pk), r.model_ref, r.sop_instance_uid, r.study_uid, r.series_uid,
                        r.patient_id, int(r.frame), r.created_at)  # fmt: skip
        return out

    def models(self) -> list[ModelSummary]:
        """Every model with embeddings: how many, their width, the newest one's time."""
        q = (
            select(Embedding.model_ref, func.count(), func.max(Embedding.dim),
                   func.max(Embedding.created_at))
            .group_by(Embedding.model_ref)
            .order_by(Embedding.model_ref)
        )  # fmt: skip
        with self.engine.connect() as conn:
            return [ModelSummary(r[0], int(r[1]), int(r[2] or 0), r[3]) for r in conn.execute(q)]

    def instances_of(
        self, *, model_ref: str, patient_ids: Collection[str] = (), study_uids: Collection[str] = ()
    ) -> set[str]:
        """The model's embedded instances of these patients (DICOM PatientIDs) or studies."""
        found: set[str] = set()
        with self.engine.connect() as conn:
            for column, values in ((Embedding.patient_id, patient_ids),
                                   (Embedding.study_uid, study_uids)):  # fmt: skip
                for chunk in _chunks(values):
                    q = select(Embedding.sop_instance_uid).where(
                        Embedding.model_ref == model_ref, column.in_(chunk)
                    )
                    found.update(r[0] for r in conn.execute(q))  # fmt: skip
        return found

    # -- what an index reads ------------------------------------------------------------------
    def generation(self, model_ref: str) -> int:
        """How often the model's rows were written (0: never): one primary key read, the
        cheap test of whether an index must look at the table again."""
        with self.engine.connect() as conn:
            value = conn.execute(select(EmbeddingModel.generation).where(
                EmbeddingModel.model_ref == model_ref)).scalar()  # fmt: skip
        return int(value or 0)

    def signature(self, model_ref: str) -> Signature:
        q = select(func.count(), func.max(Embedding.pk), func.sum(Embedding.pk)).where(
            Embedding.model_ref == model_ref
        )
        with self.engine.connect() as conn:
            count, max_key, key_sum = conn.execute(q).one()
        return Signature(int(count or 0), int(max_key or 0), int(key_sum or 0))

    def keys(self, model_ref: str) -> NDArray[np.int64]:
        q = select(Embedding.pk).where(Embedding.model_ref == model_ref)
        with self.engine.connect() as conn:
            return np.fromiter((r[0] for r in conn.execute(q)), dtype=np.int64)

    def rows(
        self,
        model_ref: str,
        *,
        after: int = 0,
        keys: Sequence[int] | None = None,
        limit: int = 5000,
    ) -> list[IndexRow]:
        """Up to ``limit`` rows of the model in key order: those with a key above ``after``,
        or (with ``keys``) those keys."""
        q = select(Embedding.pk, Embedding.sop_instance_uid, Embedding.study_uid,
                   Embedding.patient_id, Embedding.vector).where(
            Embedding.model_ref == model_ref)  # fmt: skip
        if keys is not None:
            q = q.where(Embedding.pk.in_(list(keys)))
        else:
            q = q.where(Embedding.pk > after)
        with self.engine.connect() as conn:
            result = conn.execute(q.order_by(Embedding.pk).limit(limit))
            return [IndexRow(int(r[0]), r[1], r[2], r[3], from_bytes(r[4])) for r in result]

    # -- the worker's cursor and failures ---------------------------------------------------
    def cursor(self, name: str) -> int:
        with Session(self.engine) as s:
            row = s.get(EmbeddingCursor, name)
            return int(row.seq) if row is not None else 0

    def set_cursor(self, name: str, seq: int, now: datetime) -> None:
        with write_session(self.engine) as s, s.begin():
            row = s.get(EmbeddingCursor, name)
            if row is None:
                s.add(EmbeddingCursor(name=name, seq=seq, updated_at=now))
            else:
                row.seq, row.updated_at = seq, now

    def record_failure(
        self, *, model_ref: str, sop_uid: str, study_uid: str, seq: int, reason: str,
        now: datetime,
    ) -> None:  # fmt: skip
        """Record (or count again) that the model could not embed the instance."""
        with write_session(self.engine) as s, s.begin():
            row = s.scalar(select(EmbeddingFailure).where(
                EmbeddingFailure.model_ref == model_ref,
                EmbeddingFailure.sop_instance_uid == sop_uid))  # fmt: skip
            if row is None:
                s.add(
                    EmbeddingFailure(
                        model_ref=model_ref,
                        sop_instance_uid=sop_uid,
                        study_uid=study_uid,
                        seq=seq,
                        reason=reason[:2000],
                        attempts=1,
                        created_at=now,
                        last_attempt_at=now,
                    )
                )
            else:
                row.seq, row.reason, row.last_attempt_at = seq, reason[:2000], now
                row.attempts += 1

    def failures(self, *, model_ref: str | None = None, sop_uid: str | None = None
                 ) -> list[Failure]:  # fmt: skip
        q = select(EmbeddingFailure).order_by(EmbeddingFailure.pk)
        if model_ref is not None:
            q = q.where(EmbeddingFailure.model_ref == model_ref)
        if sop_uid is not None:
            q = q.where(EmbeddingFailure.sop_instance_uid == sop_uid)
        with Session(self.engine) as s:
            return [Failure(r.model_ref, r.sop_instance_uid, r.study_uid, int(r.seq), r.reason,
                            r.attempts, r.created_at, r.last_attempt_at)
                    for r in s.scalars(q)]  # fmt: skip

    def failure_count(self, *, model_ref: str) -> int:
        q = (
            select(func.count())
            .select_from(EmbeddingFailure)
            .where(EmbeddingFailure.model_ref == model_ref)
        )
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())


def _bump(s: Session, model_ref: str, now: datetime) -> None:
    """The model's generation + 1 (its row made at the first write)."""
    row = s.get(EmbeddingModel, model_ref)
    if row is None:
        s.add(EmbeddingModel(model_ref=model_ref, generation=1, updated_at=now))
    else:
        row.generation, row.updated_at = row.generation + 1, now


def cursor_name(model_ref: str) -> str:
    """The cursor of a model's embedding worker."""
    return f"embed:{model_ref}"


def _stored(r: Embedding, vectors: bool) -> StoredEmbedding:
    return StoredEmbedding(r.pk, r.model_ref, r.sop_instance_uid, r.study_uid, r.series_uid,
                           r.patient_id, r.frame, r.created_at,
                           from_bytes(r.vector) if vectors else None)  # fmt: skip


__all__ = ["EmbeddingStore", "Failure", "IndexRow", "ModelSummary", "NewEmbedding", "Signature",
           "StoredEmbedding", "cursor_name", "from_bytes", "to_bytes"]  # fmt: skip
