"""The Alembic history builds exactly the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import medflow.store.models  # noqa: F401  (registers the tables)
from medflow.db.base import Base
from medflow.db.engine import create_engine, upgrade

pytestmark = pytest.mark.integration
PG_ONLY_INDEX = "ix_study_date_desc_pk"


def test_migrations_match_models(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        upgrade(engine)
        upgrade(engine)  # idempotent: every start runs it
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        if engine.dialect.name != "postgresql":  # a PostgreSQL-only index (ddl_if)
            diff = [d for d in diff if not (d[0] == "add_index" and d[1].name == PG_ONLY_INDEX)]
        assert diff == []
    finally:
        engine.dispose()
