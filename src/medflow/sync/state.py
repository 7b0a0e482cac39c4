"""Where the sync worker keeps its cursors and dead letters: the database (``medflow serve``,
``medflow sync once``) or a JSON state file (the standalone ``medflow sync run`` against any
DICOMweb and FHIR server)."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from sqlalchemy import Select, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from medflow.db.engine import write_session
from medflow.sync.models import SyncCursor, SyncFailure


@dataclass
class DeadLetter:
    """A study that could not be synced: why, and how often it was tried."""

    study_uid: str
    seq: int
    reason: str
    attempts: int
    created_at: datetime
    last_attempt_at: datetime
    resolved: bool = False


class SyncState(Protocol):
    def cursor(self, name: str) -> int: ...
    def set_cursor(self, name: str, seq: int, now: datetime) -> None: ...
    def dead_letter(self, study_uid: str, seq: int, reason: str, now: datetime) -> None: ...
    def resolve(self, study_uid: str) -> None: ...
    def failures(self, *, include_resolved: bool = False) -> list[DeadLetter]: ...
    def failure_count(self) -> int: ...


class DbState:
    """Cursors in ``sync_cursor``, dead letters in ``sync_failure``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def cursor(self, name: str) -> int:
        with Session(self.engine) as s:
            row = s.get(SyncCursor, name)
            return int(row.seq) if row is not None else 0

    def set_cursor(self, name: str, seq: int, now: datetime) -> None:
        with write_session(self.engine) as s, s.begin():
            row = s.get(SyncCursor, name)
            if row is None:
                s.add(SyncCursor(name=name, seq=seq, updated_at=now))
            else:
                row.seq, row.updated_at = seq, now

    def dead_letter(self, study_uid: str, seq: int, reason: str, now: datetime) -> None:
        with write_session(self.engine) as s, s.begin():
            row = s.scalars(self._open(study_uid)).first()
            if row is None:
                s.add(SyncFailure(study_uid=study_uid, seq=seq, reason=reason, attempts=1,
                                  created_at=now, last_attempt_at=now, resolved=False))  # fmt: skip
            else:
                row.seq, row.reason, row.last_attempt_at = seq, reason, now
                row.attempts += 1

    def resolve(self, study_uid: str) -> None:
        with write_session(self.engine) as s, s.begin():
            for row in s.scalars(self._open(study_uid)):
                row.resolved = True

    def failures(self, *, include_resolved: bool = False) -> list[DeadLetter]:
        q = select(SyncFailure).order_by(SyncFailure.pk)
        if not include_resolved:
            q = q.where(SyncFailure.resolved.is_(False))
        with Session(self.engine) as s:
            return [DeadLetter(r.study_uid, r.seq, r.reason, r.attempts, r.created_at,
                               r.last_attempt_at, r.resolved) for r in s.scalars(q)]  # fmt: skip

    def failure_count(self) -> int:
        with Session(self.engine) as s:
            return int(
                s.scalar(
                    select(func.count())
                    .select_from(SyncFailure)
                    .where(SyncFailure.resolved.is_(False))
                )
                or 0
            )

    @staticmethod
    def _open(study_uid: str) -> Select[SyncFailure]:
        return select(SyncFailure).where(
            SyncFailure.study_uid == study_uid, SyncFailure.resolved.is_(False)
        )


class FileState:
    """Cursors and dead letters in one JSON file, replaced atomically (write, fsync, rename)
    at each change, so a killed worker resumes from its last completed batch."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._cursors: dict[str, int] = {}
        self._failures: list[DeadLetter] = []
        if path.exists():
            doc = json.loads(path.read_text(encoding="utf-8"))
            self._cursors = {k: int(v) for k, v in doc.get("cursors", {}).items()}
            self._failures = [
                DeadLetter(**{**f, "created_at": datetime.fromisoformat(f["created_at"]),
                              "last_attempt_at": datetime.fromisoformat(f["last_attempt_at"])})
                for f in doc.get("failures", [])
            ]  # fmt: skip

    def _save(self) -> None:
        failures = [
            {**asdict(f), "created_at": f.created_at.isoformat(),
             "last_attempt_at": f.last_attempt_at.isoformat()}
            for f in self._failures
        ]  # fmt: skip
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with tmp.open("w", encoding="utf-8") as fp:
            json.dump({"cursors": self._cursors, "failures": failures}, fp, indent=1)
            fp.flush()
            os.fsync(fp.fileno())
        tmp.replace(self.path)

    def cursor(self, name: str) -> int:
        return self._cursors.get(name, 0)

    def set_cursor(self, name: str, seq: int, now: datetime) -> None:
        with self._lock:
            self._cursors[name] = seq
            self._save()

    def dead_letter(self, study_uid: str, seq: int, reason: str, now: datetime) -> None:
        with self._lock:
            for f in self._failures:
                if f.study_uid == study_uid and not f.resolved:
                    f.seq, f.reason, f.last_attempt_at = seq, reason, now
                    f.attempts += 1
                    break
            else:
                self._failures.append(DeadLetter(study_uid, seq, reason, 1, now, now))
            self._save()

    def resolve(self, study_uid: str) -> None:
        with self._lock:
            changed = False
            for f in self._failures:
                if f.study_uid == study_uid and not f.resolved:
                    f.resolved, changed = True, True
            if changed:
                self._save()

    def failures(self, *, include_resolved: bool = False) -> list[DeadLetter]:
        return [f for f in self._failures if include_resolved or not f.resolved]

    def failure_count(self) -> int:
        return len(self.failures())
