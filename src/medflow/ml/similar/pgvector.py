"""The vector index in PostgreSQL itself, when the server has the pgvector extension: one
table per model, ``ml_pgvector_<model>`` (key, SOP Instance UID, Study Instance UID,
PatientID, ``embedding vector(dim)``) with an HNSW index (``vector_cosine_ops``), a derived
copy of the model's ``ml_embedding`` rows kept up to date the same way as the embedded usearch
index (:meth:`PgVectorIndex.sync`, by signatures: count, largest key, sum of keys).

Every medflow process then searches the same index, nothing is loaded into memory at start,
and it is as durable as the database (no files under ``<data_dir>/ml/similar/``). The tables
are created at run time, not by a migration: the extension may be absent, and the server may
gain it later (``CREATE EXTENSION vector`` needs a user allowed to create it).

Search answers exactly what :meth:`medflow.ml.similar.index.VectorIndex.search` answers:
``k`` instances best first by cosine similarity (``1 - (a <=> b)``), one per instance, with
the same filters. The graph is searched with ``hnsw.ef_search`` set to the number of
candidates asked (which grows 4x a round until ``k`` pass the filters, as with usearch);
above pgvector's limit of 1,000, and for ``allowed`` lists of at most ``EXACT_LIMIT``
instances, the ranking is exact (no index scan).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from medflow.ml.similar.index import (
    EXACT_LIMIT,
    Hit,
    IndexSource,
    acceptor,
    check_query,
    file_stem,
    sync_from,
)
from medflow.ml.similar.store import IndexRow, Signature

log = logging.getLogger(__name__)
EF_SEARCH_LIMIT = 1000
"""pgvector's largest ``hnsw.ef_search``; more candidates are ranked exactly."""
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64


def pgvector_available(engine: Engine) -> bool:
    """Whether ``engine`` is PostgreSQL with the pgvector extension installed in its database
    (it is created when the server offers it and the user may create it)."""
    if engine.dialect.name != "postgresql":
        return False
    try:
        with engine.begin() as c:
            offered = c.execute(text(
                "SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first()  # fmt: skip
            if offered is None:
                return False
            c.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
        return True
    except DBAPIError as exc:
        log.warning("pgvector is offered but could not be enabled (%s); using usearch",
                    type(exc.orig).__name__)  # fmt: skip
        return False


def table_name(model_ref: str) -> str:
    """``ml_pgvector_<model>`` (the files' stem, lowercased, other characters as ``_``; at
    most 63 bytes, PostgreSQL's limit, with a hash when longer)."""
    stem = re.sub(r"[^a-z0-9_]+", "_", file_stem(model_ref).lower())
    name = f"ml_pgvector_{stem}"
    if len(name) > 63:
        import hashlib

        name = f"{name[:50]}_{hashlib.sha256(model_ref.encode()).hexdigest()[:12]}"
    return name


def literal(vector: NDArray[Any]) -> str:
    """pgvector's text form, ``[1,2.5,...]``."""
    return "[" + ",".join(repr(float(x)) for x in np.asarray(vector, dtype=np.float32)) + "]"


def parse(value: str) -> NDArray[np.float32]:
    return np.array([float(x) for x in value.strip("[]").split(",") if x], dtype=np.float32)


class PgVectorIndex:
    """The vectors of one model in a PostgreSQL table with pgvector's HNSW index."""

    def __init__(self, *, engine: Engine, model_ref: str, dim: int | None = None) -> None:
        self.engine, self.model_ref, self.dim = engine, model_ref, dim
        self.table = table_name(model_ref)
        self.generation = -1
        self.dirty = False
        """Always False: every change is committed to the database."""
        self.saved_at = time.monotonic()
        self._count = 0
        self._lock = threading.Lock()
        if dim is None:
            self.dim = self._existing_dim()
        if self.dim is not None:
            self._count = self.signature().count

    # -- state -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count

    def _existing_dim(self) -> int | None:
        """The width of the model's table when it exists (``format_type`` of its column)."""
        with self.engine.connect() as c:
            kind = c.execute(text(
                "SELECT format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                "WHERE a.attrelid = to_regclass(:t) AND a.attname = 'embedding'"),
                {"t": self.table}).scalar()  # fmt: skip
        found = re.fullmatch(r"vector\((\d+)\)", str(kind or ""))
        return int(found.group(1)) if found else None

    def _create(self, c: Connection, dim: int) -> None:
        c.execute(text(
            f"CREATE TABLE IF NOT EXISTS {self.table} (key BIGINT PRIMARY KEY, "
            "sop_instance_uid TEXT NOT NULL, study_uid TEXT NOT NULL, patient_id TEXT NOT NULL, "
            f"embedding vector({dim}) NOT NULL)"))  # fmt: skip
        c.execute(text(
            f"CREATE INDEX IF NOT EXISTS {self.table}_hnsw ON {self.table} USING hnsw "
            f"(embedding vector_cosine_ops) WITH (m = {HNSW_M}, "
            f"ef_construction = {HNSW_EF_CONSTRUCTION})"))  # fmt: skip
        c.execute(text(f"CREATE INDEX IF NOT EXISTS {self.table}_sop ON {self.table} "
                       "(sop_instance_uid)"))  # fmt: skip

    def signature(self) -> Signature:
        if self.dim is None:
            return Signature(0, 0, 0)
        with self.engine.connect() as c:
            row = c.execute(text(f"SELECT count(*), coalesce(max(key), 0), coalesce(sum(key), 0)"
                                 f" FROM {self.table}")).one()  # fmt: skip
        return Signature(int(row[0]), int(row[1]), int(row[2]))

    def keys(self) -> NDArray[np.int64]:
        if self.dim is None:
            return np.array([], dtype=np.int64)
        with self.engine.connect() as c:
            keys = c.execute(text(f"SELECT key FROM {self.table} ORDER BY key")).scalars().all()
        return np.array(keys, dtype=np.int64)

    # -- changes -----------------------------------------------------------------------------
    def add(self, rows: Sequence[IndexRow]) -> int:
        """Insert rows whose key is not in the table yet; returns how many were added. A
        vector of another width is left out (logged), as in the usearch index."""
        if not rows:
            return 0
        dim = self.dim or int(rows[0].vector.size)
        fresh = [r for r in rows if r.vector.size == dim]
        if len(fresh) < len(rows):
            log.warning("%d vectors of %s are not %d wide; left out of the index",
                        len(rows) - len(fresh), self.model_ref, dim)  # fmt: skip
        if not fresh:
            return 0
        with self._lock, self.engine.begin() as c:
            if self.dim is None:
                self._create(c, dim)
                self.dim = dim
            result = c.execute(
                text(f"INSERT INTO {self.table} (key, sop_instance_uid, study_uid, patient_id, "
                     "embedding) VALUES (:key, :sop, :study, :patient, CAST(:v AS vector)) "
                     "ON CONFLICT (key) DO NOTHING"),
                [{"key": r.key, "sop": r.sop_instance_uid, "study": r.study_uid,
                  "patient": r.patient_id, "v": literal(r.vector)} for r in fresh],
            )  # fmt: skip
            added = max(0, result.rowcount)
            self._count += added
        return added

    def remove(self, keys: Collection[int]) -> int:
        if not keys or self.dim is None:
            return 0
        with self._lock, self.engine.begin() as c:
            gone = c.execute(text(f"DELETE FROM {self.table} WHERE key = ANY(:keys)"),
                             {"keys": [int(k) for k in keys]}).rowcount  # fmt: skip
            self._count -= max(0, gone)
        return max(0, gone)

    def sync(self, source: IndexSource, *, budget: int | None = None) -> int:
        """Bring the table up to the model's ``ml_embedding`` rows (as ``VectorIndex.sync``)."""
        changed = sync_from(self, source, budget=budget)
        self._count = self.signature().count
        return changed

    @classmethod
    def build(cls, *, engine: Engine, model_ref: str, source: IndexSource) -> PgVectorIndex:
        """The model's table brought up to date (created on its first row)."""
        index = cls(engine=engine, model_ref=model_ref)
        index.sync(source)
        return index

    def save(self) -> None:
        """Nothing to write: the table is the index."""

    def drop(self) -> None:
        with self._lock, self.engine.begin() as c:
            c.execute(text(f"DROP TABLE IF EXISTS {self.table}"))
            self.dim, self._count = None, 0

    # -- search ------------------------------------------------------------------------------
    def vector(self, key: int) -> NDArray[np.float32] | None:
        if self.dim is None:
            return None
        with self.engine.connect() as c:
            value = c.execute(text(f"SELECT embedding::text FROM {self.table} WHERE key = :k"),
                              {"k": int(key)}).scalar()  # fmt: skip
        return parse(value) if value is not None else None

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
        """As :meth:`medflow.ml.similar.index.VectorIndex.search`."""
        query = check_query(vector, self.dim)
        accept = acceptor(allowed, exclude_instances, exclude_studies, exclude_patients, where)

        n = self._count
        if k <= 0 or n == 0 or self.dim is None:
            return []
        q = literal(query)
        if allowed is not None and len(allowed) <= EXACT_LIMIT:
            rows = self._rank(q, len(allowed) * 4 + k, exact=True, sops=list(allowed))
            return _collect(rows, k, accept)
        fraction = 1.0 if allowed is None else min(1.0, len(allowed) / max(1, n))
        wanted = k + 16 + len(exclude_instances)
        count = min(n, max(4 * k, math.ceil(wanted / fraction * 2)))
        while True:
            rows = self._rank(q, count, exact=count > EF_SEARCH_LIMIT)
            hits = _collect(rows, k, accept)
            if len(hits) >= k or count >= n:
                return hits
            count = min(n, count * 4)

    def _rank(self, q: str, count: int, *, exact: bool,
              sops: list[str] | None = None) -> list[tuple[int, str, str, str, float]]:  # fmt: skip
        """The ``count`` nearest rows (of ``sops`` when given): (key, sop, study, patient,
        cosine similarity), best first."""
        where = "WHERE sop_instance_uid = ANY(:sops)" if sops is not None else ""
        with self.engine.begin() as c:
            if exact:
                c.execute(text("SET LOCAL enable_indexscan = off"))
            else:
                c.execute(text(f"SET LOCAL hnsw.ef_search = {max(40, min(count, 1000))}"))
            rows = c.execute(text(
                f"SELECT key, sop_instance_uid, study_uid, patient_id, "
                f"1 - (embedding <=> CAST(:q AS vector)) FROM {self.table} {where} "
                f"ORDER BY embedding <=> CAST(:q AS vector) LIMIT :n"),
                {"q": q, "n": int(count), **({"sops": sops} if sops is not None else {})},
            ).all()  # fmt: skip
        return [(int(r[0]), str(r[1]), str(r[2]), str(r[3]), float(r[4])) for r in rows]


def _collect(rows: list[tuple[int, str, str, str, float]], k: int,
             accept: Callable[[str, str, str], bool]) -> list[Hit]:  # fmt: skip
    hits: list[Hit] = []
    seen: set[str] = set()
    for key, sop, study, patient, score in rows:
        if sop in seen or not accept(sop, study, patient) or math.isnan(score):
            continue
        seen.add(sop)
        hits.append(Hit(key, sop, study, patient, score))
        if len(hits) >= k:
            break
    return hits


__all__ = ["PgVectorIndex", "literal", "parse", "pgvector_available", "table_name"]
