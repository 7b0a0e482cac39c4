"""What the labels service returns (plain dataclasses, JSON through ``as_json``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class LabelRow:
    """One indexed label (an instance frame, its class, where it comes from)."""

    label_set: str
    set_version: int
    label: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    frame: int
    patient_id: str
    roi: dict[str, Any] | None
    source_uid: str
    source_kind: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Written:
    kind: str
    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    label_set: str
    label_set_version: int
    label: str
    instances: int
    not_removed: list[dict[str, str]] = field(default_factory=list)
    """Documents ``replaces`` named that stay (``{"sop_instance_uid", "reason"}``)."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ImportReport:
    label_set: str
    label_set_version: int
    documents: int = 0
    labels: int = 0
    negatives: int = 0
    imported: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    """``{"sop_instance_uid", "kind", "reason"}`` for each document (or finding) left out."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ExportResult:
    path: str
    label_set: str
    label_set_version: int
    rows: int
    patients: int
    splits: dict[str, int]
    rows_sha256: str
    dropped: int
    """Indexed labels whose class the exported version lacks."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)
