"""Tables of the labels context: label sets with their versions, and the label index (one row
per labelled instance frame, pointing at the KOS/SR/SEG that says it, or "" for a negative a
mapping implies). The DICOM objects in the archive are the record; the index is rebuilt from
them by ``medflow labels import --from-archive``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from medflow.db.base import Base, BigPK


class LabelSet(Base):
    __tablename__ = "label_set"

    id: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class LabelSetVersion(Base):
    """One version of a set's definition (canonical JSON and its SHA-256)."""

    __tablename__ = "label_set_version"
    __table_args__ = (UniqueConstraint("set_id", "version"),)

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    set_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("label_set.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    definition: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Label(Base):
    """One label of one frame of one instance. ``source_uid`` is the SOP Instance UID of the
    KOS/SR/SEG/GSPS saying it ("" for a mapping-implied negative), ``source_kind`` its kind
    ("KOS", "SR", "SEG", "GSPS", "NEGATIVE"); ``roi`` JSON text or null."""

    __tablename__ = "label"
    __table_args__ = (
        Index("ix_label_set_source", "set_id", "source_uid"),
        Index("ix_label_set_study", "set_id", "study_uid"),
    )

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    set_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("label_set.id", ondelete="CASCADE"))
    set_version: Mapped[int] = mapped_column(Integer)
    class_name: Mapped[str] = mapped_column(String(100))
    study_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    frame: Mapped[int] = mapped_column(Integer)
    patient_id: Mapped[str] = mapped_column(String(64))
    roi: Mapped[str | None] = mapped_column(Text, nullable=True)
    source_uid: Mapped[str] = mapped_column(String(64))
    source_kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
