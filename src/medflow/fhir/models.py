"""Tables of the FHIR store: current resources, every version (the FHIR change feed), and one
search-index table per search parameter type (FHIR R4 search §3.1.1.4), as HAPI's SPIDX tables.

Index rows carry the resource's type (every lookup index starts with (resource_type, param))
and describe the current version of a resource only; they are rewritten in the same
transaction as the resource row. ``fhir_history.seq`` is monotonic: system ``_history`` and the
internal cursor API read it like the archive's change feed.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from medflow.db.base import Base, BigPK, CodeString


class FhirResource(Base):
    """The current version of each resource (``content`` is None once deleted)."""

    __tablename__ = "fhir_resource"
    __table_args__ = (
        UniqueConstraint("resource_type", "res_id"),
        Index(
            "ix_fhir_resource_type_updated",
            "resource_type",
            "last_updated",
        ),
        Index("ix_fhir_resource_type_pk", "resource_type", "pk"),  # a type in pk order
    )

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(CodeString(64))
    res_id: Mapped[str] = mapped_column(CodeString(64))
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    content: Mapped[str | None] = mapped_column(Text)


class FhirHistory(Base):
    """Every version ever written; ``seq`` orders all writes (system ``_history``, cursors)."""

    __tablename__ = "fhir_history"
    __table_args__ = (
        UniqueConstraint("resource_type", "res_id", "version_id"),
        {"sqlite_autoincrement": True},
    )

    seq: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    resource_type: Mapped[str] = mapped_column(CodeString(64))
    res_id: Mapped[str] = mapped_column(CodeString(64))
    version_id: Mapped[int] = mapped_column(Integer)
    last_updated: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    method: Mapped[str] = mapped_column(String(8))
    """create, update, patch or delete (the HTTP verb that made the version)."""
    content: Mapped[str | None] = mapped_column(Text)


def _resource_fk() -> Mapped[int]:
    return mapped_column(ForeignKey("fhir_resource.pk", ondelete="CASCADE"), index=True)


def _ranges_index(table: str) -> Index:
    """``(resource_type, param, value_high)`` over the Range rows only (a partial index: a
    point's ``value_high`` is NULL), for the comparisons a Range answers by its high bound
    (``gt``, ``ge``, ``ap``); tiny, since most values are points."""
    where = text("value_high IS NOT NULL")
    return Index(
        f"ix_{table}_param_high",
        "resource_type",
        "param",
        "value_high",
        sqlite_where=where,
        postgresql_where=where,
    )


def _value_high() -> Mapped[float | None]:
    """A Range's high bound (``inf`` when it has none; its low bound is ``value``, ``-inf``
    when absent); NULL for a point value (FHIR R4 search §3.1.1.4.1, §3.1.1.4.6: a Range is
    one value, compared as the interval it covers)."""
    return mapped_column(Float)


def _resource_type() -> Mapped[str]:
    """The resource's type, repeated so that an index lookup (type, param, value) finds only
    that type's rows ("code" is a parameter of Observation, Condition and many more)."""
    return mapped_column(CodeString(64))


class FhirToken(Base):
    """token: Coding, CodeableConcept, Identifier, ContactPoint, code, boolean, id."""

    __tablename__ = "fhir_token"
    __table_args__ = (
        Index(
            "ix_fhir_token_param_code",
            "resource_type",
            "param",
            "code",
            "system",
        ),
    )

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = _resource_fk()
    resource_type: Mapped[str] = _resource_type()
    param: Mapped[str] = mapped_column(CodeString(64))
    system: Mapped[str | None] = mapped_column(CodeString(255))
    code: Mapped[str | None] = mapped_column(CodeString(255))
    text: Mapped[str | None] = mapped_column(String(400))
    """Normalized display/text for ``:text`` (lower case, accents removed)."""
    type_system: Mapped[str | None] = mapped_column(CodeString(255))
    type_code: Mapped[str | None] = mapped_column(CodeString(255))
    """Identifier.type coding, for ``:of-type``."""


class FhirString(Base):
    __tablename__ = "fhir_string"
    __table_args__ = (
        Index(
            "ix_fhir_string_param_norm",
            "resource_type",
            "param",
            "norm",
        ),
    )

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = _resource_fk()
    resource_type: Mapped[str] = _resource_type()
    param: Mapped[str] = mapped_column(CodeString(64))
    norm: Mapped[str] = mapped_column(CodeString(400))
    """Lower case, accents removed, whitespace collapsed: default and ``:contains`` matching."""
    value: Mapped[str] = mapped_column(String(400))
    """As written: ``:exact``."""


class FhirDate(Base):
    """date: each value as the range it covers (UTC), FHIR R4 search §3.1.1.4.2."""

    __tablename__ = "fhir_date"
    __table_args__ = (
        Index(
            "ix_fhir_date_param_low_high",
            "resource_type",
            "param",
            "low",
            "high",
        ),
        Index("ix_fhir_date_param_high", "resource_type", "param", "high"),
    )
    """``(type, param, low, high)`` serves the prefixes bounded by ``low`` (eq, lt, le, sa, eb);
    ``(type, param, high)`` those bounded by ``high`` (gt, ge)."""

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = _resource_fk()
    resource_type: Mapped[str] = _resource_type()
    param: Mapped[str] = mapped_column(CodeString(64))
    low: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    high: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class FhirReference(Base):
    __tablename__ = "fhir_reference"
    __table_args__ = (
        Index(
            "ix_fhir_reference_param_target", "resource_type", "param", "target_id", "target_type"
        ),
        Index("ix_fhir_reference_target", "target_type", "target_id"),
        Index(
            "ix_fhir_reference_param_url",
            "resource_type",
            "param",
            "url",
            sqlite_where=text("url IS NOT NULL"),
            postgresql_where=text("url IS NOT NULL"),
        ),  # absolute references only: relative ones (most) have no url and cost nothing
    )

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = _resource_fk()
    resource_type: Mapped[str] = _resource_type()
    param: Mapped[str] = mapped_column(CodeString(64))
    target_type: Mapped[str | None] = mapped_column(CodeString(64))
    target_id: Mapped[str | None] = mapped_column(CodeString(64))
    url: Mapped[str | None] = mapped_column(CodeString(500))
    """Absolute, canonical or ``urn:uuid:`` references as written."""


class FhirQuantity(Base):
    """quantity: Quantity (and Age, Duration...), Money, and Range as one row (``value`` its
    low bound, ``value_high`` its high one)."""

    __tablename__ = "fhir_quantity"
    __table_args__ = (
        Index(
            "ix_fhir_quantity_param_code_value",
            "resource_type",
            "param",
            "code",
            "value",
        ),
        Index("ix_fhir_quantity_param_value", "resource_type", "param", "value"),
        _ranges_index("fhir_quantity"),
    )

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = _resource_fk()
    resource_type: Mapped[str] = _resource_type()
    param: Mapped[str] = mapped_column(CodeString(64))
    value: Mapped[float] = mapped_column(Float)
    system: Mapped[str | None] = mapped_column(CodeString(255))
    code: Mapped[str | None] = mapped_column(CodeString(255))
    unit: Mapped[str | None] = mapped_column(String(255))
    value_high: Mapped[float | None] = _value_high()


class FhirNumber(Base):
    """number: decimal and integer, and Range as one row (``value`` its low bound,
    ``value_high`` its high one)."""

    __tablename__ = "fhir_number"
    __table_args__ = (
        Index(
            "ix_fhir_number_param_value",
            "resource_type",
            "param",
            "value",
        ),
        _ranges_index("fhir_number"),
    )

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = _resource_fk()
    resource_type: Mapped[str] = _resource_type()
    param: Mapped[str] = mapped_column(CodeString(64))
    value: Mapped[float] = mapped_column(Float)
    value_high: Mapped[float | None] = _value_high()


class FhirUri(Base):
    __tablename__ = "fhir_uri"
    __table_args__ = (
        Index(
            "ix_fhir_uri_param_value",
            "resource_type",
            "param",
            "value",
        ),
    )

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = _resource_fk()
    resource_type: Mapped[str] = _resource_type()
    param: Mapped[str] = mapped_column(CodeString(64))
    value: Mapped[str] = mapped_column(CodeString(500))


class FhirComposite(Base):
    """composite: one row per combination of component values of one element (R4 composites
    have 2 or 3 components). Slot N holds a token (system, code), a string (code = normalized
    text), a number or quantity (num; system/code = unit), or a date (low, high)."""

    __tablename__ = "fhir_composite"
    __table_args__ = (
        Index(
            "ix_fhir_composite_param_1_2",
            "resource_type",
            "param",
            "c1_code",
            "c1_system",
            "c2_num",
        ),  # code$value: an index range on the value once the code is fixed
    )

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    resource_pk: Mapped[int] = _resource_fk()
    resource_type: Mapped[str] = _resource_type()
    param: Mapped[str] = mapped_column(CodeString(64))
    c1_system: Mapped[str | None] = mapped_column(CodeString(255))
    c1_code: Mapped[str | None] = mapped_column(CodeString(400))
    c1_num: Mapped[float | None] = mapped_column(Float)
    c1_low: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    c1_high: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    c2_system: Mapped[str | None] = mapped_column(CodeString(255))
    c2_code: Mapped[str | None] = mapped_column(CodeString(400))
    c2_num: Mapped[float | None] = mapped_column(Float)
    c2_low: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    c2_high: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    c3_system: Mapped[str | None] = mapped_column(CodeString(255))
    c3_code: Mapped[str | None] = mapped_column(CodeString(400))
    c3_num: Mapped[float | None] = mapped_column(Float)
    c3_low: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    c3_high: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


INDEX_TABLES = (
    FhirToken,
    FhirString,
    FhirDate,
    FhirReference,
    FhirQuantity,
    FhirNumber,
    FhirUri,
    FhirComposite,
)


class FhirExportJob(Base):
    """A bulk data export (FHIR Bulk Data Access IG, $export): its request, state and output."""

    __tablename__ = "fhir_export_job"

    pk: Mapped[int] = mapped_column(BigPK, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    request_url: Mapped[str] = mapped_column(Text)
    level: Mapped[str] = mapped_column(String(16))
    """system, patient or group."""
    group_id: Mapped[str | None] = mapped_column(String(64))
    types: Mapped[str | None] = mapped_column(Text)
    """Comma-separated ``_type``; None for every type."""
    type_filter: Mapped[str | None] = mapped_column(Text)
    """JSON list of ``_typeFilter`` queries (``Type?search``); None when unfiltered."""
    since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(String(16))
    """queued, running, done, failed or cancelled."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    output: Mapped[str | None] = mapped_column(Text)
    """JSON list of {type, file, count} once done."""
    error: Mapped[str | None] = mapped_column(Text)
