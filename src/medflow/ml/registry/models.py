"""Tables of the model registry (issue 10): one row per version of a named model."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from medflow.db.base import Base, BigPK


class ModelVersion(Base):
    """Version ``version`` (1, 2, ... per ``name``) of a trained model. JSON text columns:
    ``input_spec`` (modality, body part, size, channels, normalization, classes, features and
    their vocabulary), ``metrics`` (test metrics, operating point, training summary),
    ``lineage`` (split counts and anything else the training recorded) and ``blobs`` (names
    to blob keys: ``weights``, ``roc``, ``calibration``). ``stage`` is ``none``, ``staging``
    or ``production`` (at most one production version per name)."""

    __tablename__ = "ml_model_version"
    __table_args__ = (UniqueConstraint("name", "version"),)

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[int] = mapped_column(Integer)
    architecture: Mapped[str] = mapped_column(String(64))
    input_spec: Mapped[str] = mapped_column(Text)
    metrics: Mapped[str] = mapped_column(Text)
    label_set: Mapped[str | None] = mapped_column(String(200), nullable=True)
    label_set_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    cohort_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    lineage: Mapped[str] = mapped_column(Text)
    code_version: Mapped[str] = mapped_column(String(100))
    stage: Mapped[str] = mapped_column(String(16))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    blobs: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


__all__ = ["ModelVersion"]
