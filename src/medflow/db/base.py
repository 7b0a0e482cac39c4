"""Declarative base shared by every context's tables (one metadata, one Alembic history)."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import BigInteger, Integer, MetaData, String
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# 64-bit keys on PostgreSQL; SQLite needs INTEGER PRIMARY KEY for its rowid alias.
BigPK = BigInteger().with_variant(Integer(), "sqlite")


def CodeString(length: int) -> String:  # noqa: N802  (a column type, named like one)
    """Text compared by code point: ``COLLATE "C"`` on PostgreSQL, so that the prefix ranges
    of wild card matching (``>= 'DOE' AND < 'DOF'``) agree with SQLite and use the index
    (a linguistic collation ignores punctuation such as ``^``)."""
    return String(length).with_variant(String(length, collation="C"), "postgresql")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def include_object_for(dialect_name: str) -> Callable[..., bool]:
    """Alembic ``include_object`` hook: leave out schema items made for another dialect only
    (``Index(...).ddl_if(dialect="postgresql")``), so that autogenerate on SQLite does not
    propose them and the drift check compares like with like."""

    def include_object(obj: object, name: str | None, type_: str, *_: object) -> bool:
        ddl_if = getattr(obj, "_ddl_if", None)
        dialect = getattr(ddl_if, "dialect", None)
        return dialect is None or dialect == dialect_name

    return include_object
