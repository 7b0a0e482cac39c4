"""The one place that wires medflow together from a ``Settings`` object."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any

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
from medflow.ml.feedback.api import build_feedback_router
from medflow.ml.registry.service import ModelRegistry
from medflow.ml.serving.api import build_models_router
from medflow.ml.serving.service import Predictors
from medflow.ml.similar.api import build_similar_router
from medflow.ml.similar.service import SimilarService
from medflow.ml.similar.store import EmbeddingStore
from medflow.ml.similar.worker import EmbeddingWorker
from medflow.ml.similar.worker import start_in_thread as start_embedding_thread
from medflow.ml.triage.api import build_triage_router
from medflow.ml.triage.reading import Reading
from medflow.ml.triage.worker import TriageWorker
from medflow.ml.triage.worker import start_in_thread as start_triage_thread
from medflow.pathology.api import build_pathology_router
from medflow.pathology.service import PathologyService
from medflow.patients.api import build_patients_router
from medflow.patients.service import PatientRecords, records_from
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
    registry: ModelRegistry
    """Trained models (``models/`` blobs); torch is loaded only to read or write weights."""
    models: Predictors
    """Loaded models for ``/api/models`` (and the workers), by name and version."""
    reading: Reading
    """The reading worklist and what reading a study records (``/api/worklist``)."""
    similar: SimilarService
    """Similar images: the production models' embeddings in vector indexes (``/api/similar``)."""
    patients: PatientRecords
    """The longitudinal patient record (``/api/patients``, ``/patients``)."""
    sync: SyncWorker | None = None
    _sync_stop: threading.Event | None = None
    triage: TriageWorker | None = None
    _triage_stop: threading.Event | None = None
    embedding: EmbeddingWorker | None = None
    _embedding_stop: threading.Event | None = None

    def close(self) -> None:
        if self._embedding_stop is not None:
            self._embedding_stop.set()
            if self.embedding is not None:
                self.embedding.wake()
        self.similar.close()
        if self._triage_stop is not None:
            self._triage_stop.set()
            if self.triage is not None:
                self.triage.wake()
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
    registry = ModelRegistry(engine=engine, blobs=blobs, spool_dir=settings.spool_dir())
    labels = LabelService(engine=engine, store=store)
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
        labels=labels,
        registry=registry,
        models=Predictors(registry=registry, fhir=fhir),
        similar=SimilarService(
            engine=engine,
            data_dir=settings.data_dir,
            cohorts=tracker,
            default_model=lambda: _production_ref(registry),
            backend=settings.similar.index,
        ),
        patients=records_from(settings, fhir=fhir, store=store),
        reading=Reading(
            engine=engine,
            fhir=fhir,
            labels=labels,
            registry=registry,
            store=store,
            sync=settings.sync,
        ),
    )


def create_app(container: Container) -> FastAPI:
    """The HTTP application: DICOMweb under ``/dicomweb``, FHIR R4 under ``/fhir``, tracked
    cohorts under ``/api/cohorts``, whole-slide import at ``/api/wsi``, labels at
    ``/api/labels``, models and predictions at ``/api/models`` and ``GET /healthz``."""
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
    app.include_router(build_models_router())
    app.include_router(build_feedback_router())
    app.include_router(build_triage_router())
    app.state.similar = container.similar
    app.include_router(build_similar_router())
    app.include_router(build_patients_router())
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


def triage_worker(container: Container) -> TriageWorker:
    """The triage worker over this container's archive, FHIR store and production models."""
    settings = container.settings
    return TriageWorker(
        engine=container.engine,
        store=container.store,
        fhir=container.fhir,
        registry=container.registry,
        predictors=container.models,
        labels=container.labels,
        worklist=container.reading.worklist,
        settings=settings.triage,
        patient_id_system=settings.sync.patient_system,
        use_issuer=settings.sync.use_issuer,
    )


def start_triage(container: Container) -> TriageWorker | None:
    """Run the triage worker in a thread of this process (None when
    ``MEDFLOW_TRIAGE__ENABLED=false``); archive writes wake it."""
    if not container.settings.triage.enabled:
        return None
    worker = triage_worker(container)
    container.events.subscribe(InstancesChanged, worker.wake)
    _, stop = start_triage_thread(worker)
    container.triage, container._triage_stop = worker, stop
    return worker


def _production_ref(registry: ModelRegistry) -> str | None:
    """``name:version`` of the (first, by name) model in production, or None."""
    found = sorted((m.name, m.version) for m in registry.list() if m.stage == "production")
    return f"{found[0][0]}:{found[0][1]}" if found else None


def start_embedding(container: Container) -> EmbeddingWorker | None:
    """Run the similar-images embedding worker in a thread of this process (with triage:
    ``MEDFLOW_TRIAGE__ENABLED=false`` stops both): every production model embeds the
    archive's new images; the vector indexes are loaded (or rebuilt) in the background."""
    if not container.settings.triage.enabled:
        return None
    registry, models = container.registry, container.models

    def embedders() -> list[Any]:
        return [models.get(m.name, m.version) for m in registry.list()
                if m.stage == "production"]  # fmt: skip

    worker = EmbeddingWorker(store=container.store, embeddings=EmbeddingStore(container.engine),
                             embedders=embedders)  # fmt: skip
    container.events.subscribe(InstancesChanged, worker.wake)
    _, stop = start_embedding_thread(worker)
    container.embedding, container._embedding_stop = worker, stop
    container.similar.warm_in_thread()
    return worker
