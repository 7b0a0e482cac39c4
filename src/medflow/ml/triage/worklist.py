"""The reading worklist (issue 11): one row per scored study, ranked by urgency (from the AI
result's probability and the thresholds) and probability; a reader marks a study read and may
record a finding, which goes into the record in standard form: a FHIR Observation (subject the
Patient, derivedFrom the ImagingStudy, performer the reader) and, when the model was trained
on a label set that has the class, a TID 1500 SR in the study written through the labels
service with the reader as observer (so it is also a training label of that set)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from medflow.core.errors import InvalidInput, NotFound
from medflow.db.engine import write_session
from medflow.ml.triage.models import WorklistItem

PRIORITY_NAMES = {1: "urgent", 2: "elevated", 3: "routine"}
STATUSES = ("unread", "read")
NORMAL = "normal"
"""The finding a reader gives for "nothing found" when the model's classes have no such name."""


def priority_of(probability: float, threshold: float | None, urgent: float) -> int:
    """1 (urgent) at or above ``urgent``, 2 (elevated) at or above the model's operating
    point, else 3 (routine)."""
    if probability >= urgent:
        return 1
    if threshold is not None and probability >= threshold:
        return 2
    return 3


@dataclass(frozen=True)
class WorklistEntry:
    study_uid: str
    patient_id: str
    patient_name: str
    accession: str
    study_date: str
    modality: str
    body_part: str
    description: str
    model: str
    finding: str
    probability: float
    threshold: float | None
    priority: int
    urgency: str
    sr_uid: str
    risk_assessment_id: str
    scored_at: str
    status: str
    reader: str
    reader_finding: str
    reader_observation_id: str
    read_at: str | None

    @classmethod
    def from_row(cls, r: WorklistItem) -> WorklistEntry:
        return cls(
            r.study_uid, r.patient_id, r.patient_name, r.accession, r.study_date, r.modality,
            r.body_part, r.description, r.model_ref, r.finding, r.probability, r.threshold,
            r.priority, PRIORITY_NAMES.get(r.priority, "routine"), r.sr_uid,
            r.risk_assessment_id, r.scored_at.isoformat(), r.status, r.reader, r.reader_finding,
            r.reader_observation_id, r.read_at.isoformat() if r.read_at else None,
        )  # fmt: skip

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class WorklistPage:
    entries: list[WorklistEntry]
    total: int
    offset: int
    limit: int

    def as_json(self) -> dict[str, Any]:
        return {"total": self.total, "offset": self.offset, "limit": self.limit,
                "entries": [e.as_json() for e in self.entries]}  # fmt: skip


class Worklist:
    """The worklist rows (keyword-only arguments)."""

    def __init__(self, *, engine: Engine) -> None:
        self._engine = engine

    def upsert(self, *, study_uid: str, values: dict[str, Any]) -> None:
        """The study's row with the new AI result (a new result makes it unread again only
        when its priority rose: a reader who read it is told of a more urgent result)."""
        with write_session(self._engine) as s:
            row = s.scalar(select(WorklistItem).where(WorklistItem.study_uid == study_uid))
            if row is None:
                s.add(WorklistItem(study_uid=study_uid, status="unread", **values))
            else:
                rose = values["priority"] < row.priority
                for key, value in values.items():
                    setattr(row, key, value)
                if rose and row.status == "read":
                    row.status = "unread"
            s.commit()

    def get(self, *, study_uid: str) -> WorklistEntry:
        with Session(self._engine) as s:
            row = s.scalar(select(WorklistItem).where(WorklistItem.study_uid == study_uid))
            if row is None:
                raise NotFound("the study is not on the worklist")
            return WorklistEntry.from_row(row)

    def page(
        self,
        *,
        status: str | None = "unread",
        modalities: Sequence[str] = (),
        priorities: Sequence[int] = (),
        limit: int = 50,
        offset: int = 0,
    ) -> WorklistPage:
        """Rows by urgency, then probability (highest first), then study date (oldest first,
        it has waited longest); ``status`` None: every row."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"status: one of {', '.join(STATUSES)} or all")
        q = select(WorklistItem)
        if status is not None:
            q = q.where(WorklistItem.status == status)
        if modalities:
            q = q.where(WorklistItem.modality.in_([m.upper() for m in modalities]))
        if priorities:
            q = q.where(WorklistItem.priority.in_(list(priorities)))
        with Session(self._engine) as s:
            total = int(s.scalar(select(func.count()).select_from(q.subquery())) or 0)
            rows = s.scalars(
                q.order_by(WorklistItem.priority, WorklistItem.probability.desc(),
                           WorklistItem.study_date, WorklistItem.study_uid)
                .limit(limit).offset(offset)
            ).all()  # fmt: skip
            return WorklistPage([WorklistEntry.from_row(r) for r in rows], total, offset, limit)

    def mark_read(
        self, *, study_uid: str, reader: str, finding: str, observation_id: str
    ) -> WorklistEntry:
        with write_session(self._engine) as s:
            row = s.scalar(select(WorklistItem).where(WorklistItem.study_uid == study_uid))
            if row is None:
                raise NotFound("the study is not on the worklist")
            row.status, row.reader, row.reader_finding = "read", reader, finding
            row.reader_observation_id, row.read_at = observation_id, datetime.now(UTC)
            s.commit()
            return WorklistEntry.from_row(row)


def reader_observation(
    *, study_uid: str, patient_id: str, imaging_study_id: str | None, reader: str,
    finding: str, code: dict[str, str] | None, positive: bool,
) -> dict[str, Any]:  # fmt: skip
    """The reader's finding as a FHIR R4 Observation (final, imaging category), identified
    by study and reader so a second read by the same reader updates it."""
    concept: dict[str, Any] = {"text": f"Reader finding: {finding}"}
    if code:
        concept["coding"] = [code]
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": "urn:medflow:reader-finding", "value": f"{study_uid}/{reader}"}],
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "imaging", "display": "Imaging"}]}],
        "code": concept,
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": datetime.now(UTC).isoformat(),
        "performer": [{"display": reader}],
        "valueBoolean": positive,
        "note": [{"text": f"Read on the medflow worklist; finding {finding}."}],
    }  # fmt: skip
    if imaging_study_id:
        resource["derivedFrom"] = [{"reference": f"ImagingStudy/{imaging_study_id}"}]
    return resource


__all__ = [
    "NORMAL",
    "PRIORITY_NAMES",
    "Worklist",
    "WorklistEntry",
    "WorklistPage",
    "priority_of",
    "reader_observation",
]
