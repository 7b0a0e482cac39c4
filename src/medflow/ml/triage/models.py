"""Tables of triage (issue 11): the worker's cursor over the archive's change feed, the
studies waiting to settle, what could not be scored, and the reading worklist (one row per
study, with the AI result that ranks it and what the reader said)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from medflow.db.base import Base, BigPK


class TriageCursor(Base):
    """Everything in the archive's change feed up to ``seq`` has been looked at."""

    __tablename__ = "triage_cursor"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TriagePending(Base):
    """A study that received instances and is scored once ``settle`` seconds pass without
    another (``attempts``: scorings that failed and will be tried again)."""

    __tablename__ = "triage_pending"

    study_uid: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_change_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    seq: Mapped[int] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class TriageFailure(Base):
    """A scoring that failed (the model threw, the study could not be read...): recorded,
    never stopping the worker."""

    __tablename__ = "triage_failure"

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    model_ref: Mapped[str] = mapped_column(String(120))
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class WorklistItem(Base):
    """A study to read, ranked by the AI result (``priority`` 1 urgent, 2 elevated, 3
    routine; then ``probability``). ``status`` "unread" or "read"; the reader's finding (a
    class name) and where it was recorded (FHIR Observation id, DICOM SR UID)."""

    __tablename__ = "worklist_item"
    __table_args__ = (Index("ix_worklist_rank", "status", "priority", "probability"),)

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(200), default="")
    accession: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    modality: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(200), default="")
    model_ref: Mapped[str] = mapped_column(String(120))
    finding: Mapped[str] = mapped_column(String(100))
    """The class the model scores (its meaning)."""
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    priority: Mapped[int] = mapped_column(Integer)
    sr_uid: Mapped[str] = mapped_column(String(64), default="")
    risk_assessment_id: Mapped[str] = mapped_column(String(64), default="")
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16), default="unread")
    reader: Mapped[str] = mapped_column(String(64), default="")
    reader_finding: Mapped[str] = mapped_column(String(100), default="")
    reader_observation_id: Mapped[str] = mapped_column(String(64), default="")
    read_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


__all__ = ["TriageCursor", "TriageFailure", "TriagePending", "WorklistItem"]
