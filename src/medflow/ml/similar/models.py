"""Tables of similar images (issue 11): one embedding per model and image (frame), the
embedding worker's cursors over the archive's change feed and the images it could not embed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from medflow.db.base import Base, BigPK


class Embedding(Base):
    """The embedding of frame ``frame`` (1-based) of an instance by the model ``model_ref``
    ("name:version"): ``dim`` float32 values, little-endian, in ``vector``. The study, series
    and patient are copied from the instance so that a search never joins the archive's index.
    ``pk`` is the key of the vector in the model's index; a new embedding of an instance gets a
    new row (delete, then insert) with a key never used before (SQLite ``AUTOINCREMENT``, a
    PostgreSQL sequence), so the index sees every change in (count, max, sum) of the keys.
    """

    __tablename__ = "ml_embedding"
    __table_args__ = (
        UniqueConstraint("model_ref", "sop_instance_uid", "frame"),
        Index(None, "model_ref", "study_uid"),
        Index(None, "model_ref", "patient_id"),
        {"sqlite_autoincrement": True},  # keys never reused: a new vector, a new key
    )

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    model_ref: Mapped[str] = mapped_column(String(120))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str] = mapped_column(String(64))
    """DICOM PatientID (0010,0020), "" when absent."""
    frame: Mapped[int] = mapped_column(Integer)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EmbeddingModel(Base):
    """A model with embeddings: ``generation`` grows with every write of its rows (and with
    every deletion of instances), in the writing transaction, so that a process holding an
    index learns from one primary key read whether the table changed."""

    __tablename__ = "ml_embedding_model"

    model_ref: Mapped[str] = mapped_column(String(120), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EmbeddingCursor(Base):
    """Everything in the archive's change feed up to ``seq`` has been looked at by the worker
    of the model named in ``name`` (``embed:<model ref>``)."""

    __tablename__ = "ml_embedding_cursor"

    name: Mapped[str] = mapped_column(String(160), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class EmbeddingFailure(Base):
    """An image the model's worker could not embed (unreadable, the model threw): recorded
    and skipped; removed once the instance is embedded (a later version) or deleted."""

    __tablename__ = "ml_embedding_failure"
    __table_args__ = (UniqueConstraint("model_ref", "sop_instance_uid"),)

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    model_ref: Mapped[str] = mapped_column(String(120))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    """The change feed entry it failed at."""
    reason: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


__all__ = ["Embedding", "EmbeddingCursor", "EmbeddingFailure", "EmbeddingModel"]
