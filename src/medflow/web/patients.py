"""The patient pages (issue 12): ``/patients`` (search by name, identifier, birth date; one
match with ``study`` or ``go`` goes straight to the patient) and ``/patients/{id}`` (the
longitudinal record: header, trends, the timeline newest first with kind and date filters,
imaging studies with lazily loaded WADO-RS thumbnails, and with ``study`` that study's priors
with their reports). The data is :class:`medflow.patients.service.PatientRecords`'s, the
same as ``/api/patients``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any

from medflow.core.errors import InvalidInput
from medflow.patients.service import PatientHit, PatientRecords, parse_kinds
from medflow.patients.timeline import KIND_LABELS, KINDS, Timeline

SEARCH_FIELDS = ("name", "identifier", "birthdate")


@dataclass
class SearchView:
    filters: dict[str, str]
    study: str
    hits: list[PatientHit] = field(default_factory=list)
    searched: bool = False
    error: str | None = None


@dataclass
class PatientView:
    timeline: Timeline
    kinds: list[str]
    """The kinds shown (all when no filter)."""
    date_from: str
    date_to: str
    study: str
    dicomweb: str | None
    """External DICOMweb base URL for thumbnails; None: medflow's own."""
    error: str | None = None
    labels: dict[str, str] = field(default_factory=lambda: dict(KIND_LABELS))
    all_kinds: tuple[str, ...] = KINDS


def _day(value: str | None, name: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidInput(f"{name}: not an ISO date (YYYY-MM-DD)") from exc


def search_view(records: PatientRecords, params: Any) -> SearchView:
    filters = {k: str(params.get(k) or "").strip()[:200] for k in SEARCH_FIELDS}
    view = SearchView(filters, study=str(params.get("study") or "")[:64])
    if any(filters.values()):
        view.searched = True
        try:
            view.hits = records.search(name=filters["name"], identifier=filters["identifier"],
                                       birthdate=filters["birthdate"])  # fmt: skip
        except InvalidInput as exc:
            view.error = exc.message
    return view


def patient_view(records: PatientRecords, patient_id: str, params: Any) -> PatientView:
    """The page's content; a bad filter is shown as an error over the unfiltered record."""
    kinds = [k for k in parse_kinds(params.getlist("kind")) if k in KINDS]
    raw_from, raw_to = str(params.get("from") or ""), str(params.get("to") or "")
    study = str(params.get("study") or "")[:64] or None
    error = None
    try:
        date_from, date_to = _day(raw_from, "from"), _day(raw_to, "to")
        timeline = records.timeline(patient_id, kinds=kinds, date_from=date_from,
                                    date_to=date_to, study=study)  # fmt: skip
    except InvalidInput as exc:
        error, raw_from, raw_to = exc.message, "", ""
        timeline = records.timeline(patient_id, kinds=kinds, study=study)
    return PatientView(timeline=timeline, kinds=kinds or list(KINDS), date_from=raw_from,
                       date_to=raw_to, study=study or "", dicomweb=records.source.dicomweb,
                       error=error)  # fmt: skip


__all__ = ["PatientView", "SearchView", "patient_view", "search_view"]
