"""Autogenerate an Alembic revision from the models: ``python scripts/new_migration.py MSG``."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command

from medflow.db.engine import alembic_config, create_engine, upgrade

with tempfile.TemporaryDirectory() as tmp:
    engine = create_engine(f"sqlite:///{Path(tmp) / 'gen.sqlite3'}")
    upgrade(engine)
    command.revision(alembic_config(engine), message=sys.argv[1], autogenerate=True)
