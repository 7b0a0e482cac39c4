"""The one place that wires medflow together from a ``Settings`` object."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.engine import Engine

from medflow import __version__
from medflow.cohort.api import build_cohort_router
from medflow.cohort.export_jobs import CohortExports
from medflow.cohort.service import CohortService
from medflow.cohort.tracking import CohortTracker
from medflow.core.events import EventBus, FhirChanged, InstancesChanged
from medflow.core.settings import Settings
from medflow.db.engine import create_engine, upgrade
from medflow.dicomweb.router import build_router
from medflow.dimse.server import DimseServer
from medflow.fhir.api import build_fhir_router
from medflow.fhir.export import ExportService
from medflow.fhir.service import FhirService
from medflow.labels.api import build_labels_router
from medflow.labels.service import LabelService
from medflow.pathology.api import build_pathology_router
from medflow.pathology.service import PathologyService
from medflow.store.aes import AeDirectory
from medflow.store.blobs import BlobStore, blob_store_from_settings
from medflow.store.service import StoreService
from medflow.sync.worker import LINKED_TYPES, EmbeddedFhir, SyncWorker, start_in_thread
from medflow.web.router import build_web_router


@dataclass
class Container:
    settings: Settings
    engine: Engine
    blobs: BlobStore
    events: EventBus
    store: StoreService
    aes: AeDirectory
    fhir: FhirService
    export: ExportService
    cohorts: CohortTracker
    cohort_exports: CohortExports
    pathology: PathologyService
    labels: LabelService
    sync: SyncWorker | None = None
    _sync_stop: threading.Event | None = None

    def close(self) -> None:
        if self._sync_stop is not None:
            self._sync_stop.set()
            if self.sync is not None:
                self.sync.wake()  # out of its poll wait now
        self.engine.dispose()


def build(settings: Settings, *, migrate: bool = True) -> Container:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.resolved_database_url())
    aes = AeDirectory(engine)
    if migrate:  # the process that migrates also seeds the remote AEs from settings
        upgrade(engine)
        aes.seed(settings.dimse.remote_aes)
    blobs = blob_store_from_settings(settings.blobs, settings.resolved_blob_path())
    events = EventBus()
    store = StoreService(
        engine=engine,
        blobs=blobs,
        spool_dir=settings.spool_dir(),
        settings=settings.store,
        events=events,
    )
    fhir = FhirService(engine, events)
    fhir.activate_search_parameters()  # custom SearchParameter resources stored earlier
    export = ExportService(engine, fhir, (settings.data_dir / "exports").resolve())
    tracker = CohortTracker(engine=engine, cohorts=CohortService(store=store, fhir=fhir), fhir=fhir)
    return Container(
        settings=settings,
        engine=engine,
        blobs=blobs,
        events=events,
        store=store,
        aes=aes,
        fhir=fhir,
        export=export,
        cohorts=tracker,
        cohort_exports=CohortExports(
            tracker=tracker,
            store=store,
            fhir=fhir,
            settings=settings,
            root=(settings.data_dir / "exports" / "cohorts").resolve(),
        ),
        pathology=PathologyService(store=store),
        labels=LabelService(engine=engine, store=store),
    )


def create_app(container: Container) -> FastAPI:
    """The HTTP application: DICOMweb under ``/dicomweb``, FHIR R4 under ``/fhir``, tracked
    cohorts under ``/api/cohorts``, whole-slide import at ``/api/wsi``, labels at
    ``/api/labels`` and ``GET /healthz``."""
    app = FastAPI(
        title="medflow",
        version=__version__,
        description="Medical imaging archive (DICOMweb) joined with clinical records and AI.",
    )
    app.state.container = container
    app.state.settings = container.settings
    app.state.store = container.store
    app.state.fhir = container.fhir
    app.state.export = container.export
    app.state.cohorts = container.cohorts
    origins = container.settings.http.cors_origins
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Content-Type", "Content-Location", "Location", "Warning", "ETag"],
        )
    app.include_router(build_router())
    app.include_router(build_fhir_router())
    app.include_router(build_cohort_router())
    app.include_router(build_pathology_router())
    app.include_router(build_labels_router())
    app.include_router(build_web_router())

    @app.get("/sync/status", tags=["Operations"])
    def sync_status() -> dict[str, object]:
        """The DICOM -> FHIR sync: cursor, backlog, dead letters, lag (seconds)."""
        if container.sync is None:
            return {"running": False}
        return {"running": True, **dataclasses.asdict(container.sync.status())}

    @app.get("/healthz", tags=["Operations"])
    def healthz() -> dict[str, str]:
        with container.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return {"status": "ok"}

    return app


def app_from_environment() -> FastAPI:
    """uvicorn factory for ``medflow serve --workers N``: each worker process builds its own
    container from the ``MEDFLOW_*`` environment the parent exported (the parent has already
    migrated the schema)."""
    return create_app(build(Settings(), migrate=False))


def start_dimse(container: Container, *, host: str) -> DimseServer | None:
    """Start the DIMSE SCP on ``settings.dimse.port`` (None when the port is 0: disabled)."""
    if not container.settings.dimse.port:
        return None
    server = DimseServer(container.store, container.settings.dimse, host, container.aes)
    server.start()
    return server


def sync_worker(container: Container, *, dicomweb_url: str | None = None) -> SyncWorker:
    """The DICOM -> FHIR sync worker over this container's archive and embedded FHIR store;
    ``dicomweb_url`` defaults to the public URL (or the HTTP address) + ``/dicomweb``."""
    settings = container.settings
    if dicomweb_url is None:
        base = settings.public_url or f"http://{settings.http.host}:{settings.http.port}"
        dicomweb_url = f"{base.rstrip('/')}/dicomweb"
    return SyncWorker(
        engine=container.engine,
        store=container.store,
        target=EmbeddedFhir(container.fhir),
        settings=settings.sync,
        dicomweb_url=dicomweb_url,
        fhir_changes=lambda after, limit: container.fhir.changes(
            after=after, limit=limit, types=LINKED_TYPES
        ),
    )


def start_sync(container: Container, *, dicomweb_url: str | None = None) -> SyncWorker | None:
    """Run the sync worker in a thread of this process (None when
    ``MEDFLOW_SYNC__ENABLED=false``); archive and FHIR writes wake it at once."""
    if not container.settings.sync.enabled:
        return None
    worker = sync_worker(container, dicomweb_url=dicomweb_url)
    container.events.subscribe(InstancesChanged, worker.wake)
    container.events.subscribe(FhirChanged, worker.wake)
    _, stop = start_in_thread(worker)
    container.sync, container._sync_stop = worker, stop
    return worker
