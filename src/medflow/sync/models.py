"""Tables of the sync worker: its cursors over the change feeds and its dead letters."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, DateTime, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from medflow.db.base import Base, BigPK


class SyncCursor(Base):
    """Where a durable consumer is in a change feed (``name``: ``dicom`` for the archive's,
    ``fhir`` for the FHIR store's): everything up to ``seq`` has been handled."""

    __tablename__ = "sync_cursor"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SyncFailure(Base):
    """A study that could not be synced (a dead letter): why, and how often it was tried.
    ``medflow sync replay`` tries the unresolved ones again."""

    __tablename__ = "sync_failure"

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    """The change feed entry that last asked for this study."""
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    resolved: Mapped[bool] = mapped_column(Boolean, default=False)
