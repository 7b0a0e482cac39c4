"""The Alembic history builds exactly the schema the models declare, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import medflow.fhir.models
import medflow.store.models  # noqa: F401  (registers the tables)
from medflow.db.base import Base, include_object_for
from medflow.db.engine import create_engine, upgrade

pytestmark = pytest.mark.integration


def test_migrations_match_models(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        upgrade(engine)
        upgrade(engine)  # idempotent: every start runs it
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"include_object": include_object_for(engine.dialect.name)}
            )
            diff = compare_metadata(context, Base.metadata)
        assert diff == []
    finally:
        engine.dispose()
