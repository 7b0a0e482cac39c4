"""The one place that wires medflow together from a ``Settings`` object."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from medflow.core.events import EventBus
from medflow.core.settings import Settings
from medflow.db.engine import create_engine, upgrade
from medflow.store.blobs import BlobStore, blob_store_from_settings
from medflow.store.service import StoreService


@dataclass
class Container:
    settings: Settings
    engine: Engine
    blobs: BlobStore
    events: EventBus
    store: StoreService

    def close(self) -> None:
        self.engine.dispose()


def build(settings: Settings, *, migrate: bool = True) -> Container:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url())
    if migrate:
        upgrade(engine)
    blobs = blob_store_from_settings(settings.blobs, settings.resolved_blob_path())
    events = EventBus()
    store = StoreService(
        engine=engine,
        blobs=blobs,
        spool_dir=settings.spool_dir(),
        settings=settings.store,
        events=events,
    )
    return Container(settings=settings, engine=engine, blobs=blobs, events=events, store=store)
