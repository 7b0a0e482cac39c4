"""Index tables of the archive: study / series / instance, person-name tokens, change feed.

Attribute columns hold the DICOM values as strings in their DICOM form (DA ``YYYYMMDD``, TM
``HHMMSS.FFFFFF``), so that range matching (PS3.4 C.2.2.2.5) is a lexical comparison on an index.
``*_search`` columns hold the upper-cased, accent-stripped form used for case-insensitive matching.
Patient and study attributes live on the study row and follow the latest stored instance.
"""

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
)
from sqlalchemy.orm import Mapped, mapped_column

from medflow.db.base import Base, BigPK, CodeString


class Study(Base):
    __tablename__ = "study"

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    study_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str | None] = mapped_column(CodeString(64), index=True)
    issuer_of_patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(400))
    patient_name_search: Mapped[str | None] = mapped_column(CodeString(400), index=True)
    patient_birth_date: Mapped[str | None] = mapped_column(String(32))
    patient_sex: Mapped[str | None] = mapped_column(String(64))
    study_date: Mapped[str | None] = mapped_column(CodeString(32), index=True)
    study_time: Mapped[str | None] = mapped_column(CodeString(32))
    accession_number: Mapped[str | None] = mapped_column(CodeString(64), index=True)
    referring_physician_name: Mapped[str | None] = mapped_column(String(400))
    referring_physician_name_search: Mapped[str | None] = mapped_column(CodeString(400))
    study_id: Mapped[str | None] = mapped_column(CodeString(64))
    study_description: Mapped[str | None] = mapped_column(String(400))
    specific_character_set: Mapped[str | None] = mapped_column(String(256))
    timezone_offset: Mapped[str | None] = mapped_column(String(32))
    num_series: Mapped[int] = mapped_column(Integer, server_default="0")
    """Number of Study Related Series (0020,1206), kept by the write transaction."""
    num_instances: Mapped[int] = mapped_column(Integer, server_default="0")
    """Number of Study Related Instances (0020,1208), kept by the write transaction."""
    modalities_in_study: Mapped[str | None] = mapped_column(String(256))
    """Modalities in Study (0008,0061), sorted, backslash-separated."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


# The default QIDO order (newest first, undated last, then pk) straight from an index on
# PostgreSQL; SQLite walks ix_study_study_date backwards (it has no NULLS LAST in indexes).
Index("ix_study_date_desc_pk", Study.study_date.desc().nulls_last(), Study.pk.desc()).ddl_if(
    dialect="postgresql"
)
# ModalitiesInStudy walks studies in QIDO order (date, pk) testing modalities_in_study: from
# this index alone, without fetching each study row.
Index("ix_study_date_pk_modalities", Study.study_date, Study.pk, Study.modalities_in_study)


class Series(Base):
    __tablename__ = "series"
    __table_args__ = (
        # ModalitiesInStudy matching walks studies and probes (modality, study_pk); the page's
        # series counts and modalities read (study_pk, modality) without touching the table.
        Index("ix_series_modality_study", "modality", "study_pk"),
        Index("ix_series_study_modality", "study_pk", "modality"),
    )

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.pk", ondelete="CASCADE"))
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(CodeString(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(400))
    body_part_examined: Mapped[str | None] = mapped_column(CodeString(64))
    performed_procedure_step_start_date: Mapped[str | None] = mapped_column(CodeString(32))
    performed_procedure_step_start_time: Mapped[str | None] = mapped_column(CodeString(32))
    scheduled_procedure_step_id: Mapped[str | None] = mapped_column(String(64))
    requested_procedure_id: Mapped[str | None] = mapped_column(String(64))
    specific_character_set: Mapped[str | None] = mapped_column(String(256))
    timezone_offset: Mapped[str | None] = mapped_column(String(32))
    num_instances: Mapped[int] = mapped_column(Integer, server_default="0")
    """Number of Series Related Instances (0020,1209), kept by the write transaction."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Instance(Base):
    __tablename__ = "instance"

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.pk", ondelete="CASCADE"), index=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.pk", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64), index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int | None] = mapped_column(Integer)
    columns: Mapped[int | None] = mapped_column(Integer)
    bits_allocated: Mapped[int | None] = mapped_column(Integer)
    number_of_frames: Mapped[int | None] = mapped_column(Integer)
    specific_character_set: Mapped[str | None] = mapped_column(String(256))
    timezone_offset: Mapped[str | None] = mapped_column(String(32))
    pixel_data_offset: Mapped[int | None] = mapped_column(BigInteger)
    """Offset of the Pixel Data value (after its header); None if there is none. For a deflated
    transfer syntax it is a position in the inflated data set, not in the file."""
    pixel_data_length: Mapped[int | None] = mapped_column(BigInteger)
    """Value length of Pixel Data; None for undefined length (encapsulated)."""
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(300))
    metadata_json: Mapped[str] = mapped_column(Text)
    origin: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """Who stored it when medflow wrote it itself ("medflow:labels", "medflow:triage"...);
    null for objects received over DICOMweb, DIMSE or ingest. Workers on the change feed use
    it never to act on their own output."""
    """DICOM JSON (PS3.18 F.2) of the data set, BulkDataURIs relative to the DICOMweb root."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PersonNameToken(Base):
    """One word of a person name (upper-cased, accents stripped) for ``fuzzymatching=true``."""

    __tablename__ = "person_name_token"
    __table_args__ = (Index("ix_person_name_token_attr_token", "attr", "token"),)

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.pk", ondelete="CASCADE"), index=True)
    attr: Mapped[str] = mapped_column(String(8))
    """Tag of the attribute as 8 hex digits, e.g. ``00100010`` for PatientName."""
    token: Mapped[str] = mapped_column(CodeString(128))


class ChangeFeedEntry(Base):
    """One create/update/delete of an instance; ``seq`` is the monotonic Sequence."""

    __tablename__ = "change_feed"
    __table_args__ = {"sqlite_autoincrement": True}

    seq: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    timestamp: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    action: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(8))
    study_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)


class RemoteAE(Base):
    """A known remote application entity (PS3.7 D.3.3.2 Move Destination; ``medflow send``):
    AE title → host:port. Seeded from ``MEDFLOW_DIMSE__REMOTE_AES``, managed by ``medflow aet``
    and read at each use, so a running server sees changes at once."""

    __tablename__ = "remote_ae"

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    ae_title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    description: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


__all__ = [
    "ChangeFeedEntry",
    "Instance",
    "PersonNameToken",
    "RemoteAE",
    "Series",
    "Study",
    "Text",
]
