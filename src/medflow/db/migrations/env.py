"""Alembic environment: the engine is passed in by ``medflow.db.engine.upgrade``."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Engine

import medflow.cohort.models
import medflow.fhir.models
import medflow.labels.models
import medflow.ml.registry.models
import medflow.ml.similar.models
import medflow.ml.triage.models
import medflow.store.models
import medflow.sync.models  # noqa: F401  (registers every context's tables)
from medflow.db.base import Base, include_object_for

engine: Engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=include_object_for(connection.dialect.name),
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
