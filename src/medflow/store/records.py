"""Plain records the store service returns (no ORM objects leave the store)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from medflow.store.models import Instance, Series, Study


@dataclass(frozen=True)
class InstanceRecord:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    sha256: str
    blob_key: str
    instance_number: int | None
    rows: int | None
    columns: int | None
    bits_allocated: int | None
    number_of_frames: int | None
    pixel_data_offset: int | None
    pixel_data_length: int | None
    origin: str | None = None
    """Who stored it when medflow wrote it itself (``Instance.origin``)."""

    @classmethod
    def index_columns(cls) -> list[Any]:
        """The index columns a record is made of (no ORM object, no ``metadata_json``)."""
        return [Study.study_uid, Series.series_uid] + [
            getattr(Instance, f.name) for f in fields(cls) if f.name not in _PARENT_UIDS
        ]

    @classmethod
    def from_row(cls, row: Any) -> InstanceRecord:
        """A record from a row of ``index_columns()``."""
        return cls(*row)


_PARENT_UIDS = frozenset({"study_uid", "series_uid"})


@dataclass(frozen=True)
class StoreOutcome:
    """Result for one object offered to the store (PS3.18 10.5.3 / PS3.4 B.2.3)."""

    ok: bool
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    failure_reason: int | None = None
    """FailureReason (0008,1197) when not ok."""
    message: str | None = None
    action: str | None = None
    """"create", "update", or "none" (identical instance stored again)."""


@dataclass(frozen=True)
class ChangeEvent:
    """One change feed entry (PS3.18-style; field names as in the DICOMweb change feed)."""

    sequence: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    action: str
    state: str
    timestamp: datetime
    metadata_json: str | None = None


@dataclass(frozen=True)
class ArchiveOverview:
    """What the archive holds, counted in SQL (the web UI's home page)."""

    patients: int
    """Distinct Patient IDs (0010,0020) over the studies."""
    studies: int
    series: int
    instances: int
    studies_by_modality: list[tuple[str, int]]
    """(Modality, number of studies with a series of it), most studies first."""
    studies_by_year: list[tuple[str, int]]
    """(year of Study Date, number of studies), oldest first; undated studies left out."""


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    """SOP Instance UIDs whose blob is gone."""
    corrupted: list[str] = field(default_factory=list)
    """SOP Instance UIDs whose blob's SHA-256 or size differs from the index."""
    orphaned: list[str] = field(default_factory=list)
    """Blob keys that no index row refers to."""

    @property
    def ok(self) -> bool:
        return not (self.missing or self.corrupted or self.orphaned)
