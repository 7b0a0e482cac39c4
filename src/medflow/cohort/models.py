"""Tables of tracked cohorts (issue 7): a cohort (a name), its versions (each a definition,
canonical JSON and its digest) and its runs (what one evaluation found, kept to compare runs
and to reproduce them: evaluation date, patients with what matched, attrition)."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from medflow.db.base import Base, BigPK


class Cohort(Base):
    """A saved cohort, known by its ``name`` (unique); its FHIR Group is ``cohort-<id>``."""

    __tablename__ = "cohort"

    id: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CohortVersion(Base):
    """One version of a cohort's definition: ``definition`` is its canonical JSON (defaults
    left out, keys sorted), ``digest`` its SHA-256, which tells whether a save changes it."""

    __tablename__ = "cohort_version"
    __table_args__ = (UniqueConstraint("cohort_id", "version"),)

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    cohort_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("cohort.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    definition: Mapped[str] = mapped_column(Text)
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CohortRun(Base):
    """One evaluation of a cohort version, as of ``evaluation_date`` (the definition's, or
    ``as_of`` when the run overrode it). ``patients`` is compact JSON: a list of
    ``{"id", "mrn", "resources": {type: [ids]}, "studies": [uids]}``; ``attrition`` a list
    of ``{"criterion", "patients"}``."""

    __tablename__ = "cohort_run"

    id: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    cohort_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("cohort.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    evaluation_date: Mapped[date] = mapped_column(Date)
    as_of: Mapped[date | None] = mapped_column(Date, nullable=True)
    run_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    elapsed_s: Mapped[float] = mapped_column(Float)
    patient_count: Mapped[int] = mapped_column(Integer)
    patients: Mapped[str] = mapped_column(Text)
    attrition: Mapped[str] = mapped_column(Text)


__all__ = ["Cohort", "CohortRun", "CohortVersion"]
