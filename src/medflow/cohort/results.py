"""What a cohort evaluation returns: the patients (FHIR Patient id and MRN), per patient the
matching resources (ids by type) and studies (StudyInstanceUIDs), and the attrition (patients
left after each criterion, in the definition's order)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

STUDY = "study"
"""The ``resource_type`` of an :class:`Event` that is a DICOM study (its id the UID)."""


@dataclass(frozen=True)
class Event:
    """One thing that made a criterion match: a FHIR resource or a DICOM study, with the day
    a temporal relation compares (None: undated), and what it brings along (a study's
    reports)."""

    resource_type: str
    id: str
    day: date | None = None
    linked: tuple[Event, ...] = ()


Hits = dict[str, list[Event]]
"""FHIR Patient id -> the events that matched for that patient."""


def merge(into: Hits, other: Hits) -> None:
    for patient, events in other.items():
        into.setdefault(patient, []).extend(events)


@dataclass(frozen=True)
class AttritionStep:
    criterion: str
    """The criterion's label or a short description of it."""
    patients: int
    """Patients left after it (and every criterion before it)."""


@dataclass(frozen=True)
class PatientResult:
    patient_id: str
    mrn: str | None
    resources: dict[str, list[str]] = field(default_factory=dict)
    """Resource type -> ids of the matching (and collected) resources, sorted."""
    studies: list[str] = field(default_factory=list)
    """StudyInstanceUIDs of the matching (and collected) studies, sorted."""

    @classmethod
    def of(cls, patient_id: str, mrn: str | None, events: Iterable[Event]) -> PatientResult:
        resources: dict[str, set[str]] = {}
        studies: set[str] = set()
        pending = list(events)
        while pending:
            event = pending.pop()
            pending.extend(event.linked)
            if event.resource_type == STUDY:
                studies.add(event.id)
            else:
                resources.setdefault(event.resource_type, set()).add(event.id)
        by_type = {t: sorted(ids) for t, ids in sorted(resources.items())}
        return cls(patient_id, mrn, by_type, sorted(studies))


@dataclass(frozen=True)
class CohortResult:
    name: str
    evaluation_date: date
    patients: list[PatientResult]
    attrition: list[AttritionStep]
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the CLI's ``--json``)."""
        return {
            "name": self.name,
            "evaluation_date": self.evaluation_date.isoformat(),
            "elapsed_s": round(self.elapsed_s, 4),
            "attrition": [
                {"criterion": a.criterion, "patients": a.patients} for a in self.attrition
            ],
            "patients": [
                {"id": p.patient_id, "mrn": p.mrn, "resources": p.resources, "studies": p.studies}
                for p in self.patients
            ],
        }


__all__ = ["STUDY", "AttritionStep", "CohortResult", "Event", "Hits", "PatientResult", "merge"]
