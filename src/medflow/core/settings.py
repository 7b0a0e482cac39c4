"""medflow's one settings object (pydantic-settings, env prefix ``MEDFLOW_``, nested with ``__``).

Built once by the CLI and passed down; nothing reads the environment at import time.
Example: ``MEDFLOW_HTTP__PORT=8080``, ``MEDFLOW_BLOBS__BACKEND=s3``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class HttpSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    cors_origins: list[str] = Field(default_factory=list)
    """Origins allowed by CORS (e.g. an OHIF viewer's); ``["*"]`` allows any."""


class DimseSettings(BaseModel):
    port: int = 11112
    """0 disables the DIMSE listener."""
    ae_title: str = "MEDFLOW"
    remote_aes: dict[str, str] = Field(default_factory=dict)
    """Known remote AEs seeded into the database at start, ``{"ORTHANC": "10.0.0.5:4242"}``
    (``MEDFLOW_DIMSE__REMOTE_AES`` as JSON); ``medflow aet`` manages them afterwards."""
    allowed_calling_aes: list[str] = Field(default_factory=list)
    """Calling AE titles allowed to associate; empty allows any (PS3.8 7.1.1.3)."""
    max_associations: int = 32
    """Simultaneous associations; more are rejected (transient, local limit exceeded)."""
    acse_timeout: float = 30
    """Seconds to wait for association negotiation and release messages."""
    dimse_timeout: float = 60
    """Seconds to wait for a DIMSE message (e.g. a C-STORE response of a move destination)."""
    network_timeout: float = 60
    """Seconds of silence after which an association is aborted."""


class BlobSettings(BaseModel):
    backend: Literal["filesystem", "s3"] = "filesystem"
    path: Path | None = None
    """Filesystem root; default ``<data_dir>/blobs``."""
    s3_bucket: str = "medflow"
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None


class StoreSettings(BaseModel):
    overwrite: bool = False
    """Replace an instance stored again with different content (else it is rejected, 0x0111)."""
    bulkdata_threshold: int = 1024
    """Binary values larger than this (bytes) are returned as BulkDataURI in metadata."""


class SyncSettings(BaseModel):
    """DICOM -> FHIR sync ("DICOMcast", ``medflow.sync``)."""

    enabled: bool = True
    """Run the sync worker inside ``medflow serve`` (against the embedded FHIR store)."""
    patient_system: str = "urn:medflow:mrn"
    """Patient.identifier system whose value is the DICOM PatientID."""
    use_issuer: bool = False
    """Use IssuerOfPatientID (0010,0021), when present, as the identifier system instead."""
    batch: int = 500
    """Change feed entries read at a time (the studies among them are synced once each)."""
    poll_seconds: float = 1.0
    """How often the worker looks at the change feed when no event wakes it."""


class TriageSettings(BaseModel):
    """Triage (``medflow.ml.triage``, issue 11): new studies scored by the production models."""

    enabled: bool = True
    """Run the triage worker inside ``medflow serve`` (it scores only when a model is in
    production)."""
    settle_seconds: float = Field(default=10.0, ge=0)
    """A study is scored once no new instance has arrived for this long."""
    urgent_probability: float = Field(default=0.8, ge=0, le=1)
    """At or above: priority 1 (urgent); at or above the model's operating point: 2."""
    poll_seconds: float = Field(default=1.0, gt=0)
    batch: int = Field(default=500, ge=1)
    max_attempts: int = Field(default=5, ge=1)
    """Failed scorings of a study tried at most this often (each recorded)."""


class DeidSettings(BaseModel):
    """De-identification (``medflow.deid``, PS3.15 Annex E and FHIR): the secret key from
    which pseudonyms, UIDs and date shifts are derived (HMAC-SHA-256). Without a key nothing
    is de-identified. The key is never written to any output or log."""

    key: SecretStr | None = None
    """``MEDFLOW_DEID__KEY``: at least 16 characters."""
    max_shift_days: int = Field(default=365, ge=1, le=36500)
    """Dates move back by 1..max_shift_days days, the same number for all of a patient's data."""


class SimilarSettings(BaseModel):
    """Similar images (``medflow.ml.similar``, issue 11)."""

    index: Literal["auto", "usearch", "pgvector"] = "auto"
    """``auto``: a pgvector table per model when the database is PostgreSQL with the pgvector
    extension, else an embedded usearch index per model under ``<data_dir>/ml/similar/``."""


class RecordsSettings(BaseModel):
    """Where the patient view (``/patients``, issue 12) reads the clinical record and imaging:
    medflow's own FHIR store and archive (the default), or an external FHIR R4 server (and
    DICOMweb service) over REST."""

    fhir_url: str | None = None
    """Base URL of an external FHIR R4 server (``https://fhir.example.org/R4``)."""
    dicomweb_url: str | None = None
    """Base URL of the external DICOMweb service with the patients' studies (QIDO-RS,
    thumbnails); only with ``fhir_url``."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MEDFLOW_", env_nested_delimiter="__", extra="ignore"
    )

    data_dir: Path = Path("./medflow-data")
    database_url: str | None = None
    """SQLAlchemy URL of the index; default SQLite at ``<data_dir>/index.sqlite3``."""
    public_url: str | None = None
    """Absolute base URL (``https://pacs.example.org``) for Location headers and BulkDataURIs."""
    http: HttpSettings = Field(default_factory=HttpSettings)
    dimse: DimseSettings = Field(default_factory=DimseSettings)
    blobs: BlobSettings = Field(default_factory=BlobSettings)
    store: StoreSettings = Field(default_factory=StoreSettings)
    sync: SyncSettings = Field(default_factory=SyncSettings)
    deid: DeidSettings = Field(default_factory=DeidSettings)
    triage: TriageSettings = Field(default_factory=TriageSettings)
    records: RecordsSettings = Field(default_factory=RecordsSettings)
    similar: SimilarSettings = Field(default_factory=SimilarSettings)

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'index.sqlite3').resolve()}"

    def resolved_blob_path(self) -> Path:
        return (self.blobs.path or self.data_dir / "blobs").resolve()

    def spool_dir(self) -> Path:
        """Where incoming objects are written before they are stored (same filesystem as blobs)."""
        return (self.data_dir / "tmp").resolve()
