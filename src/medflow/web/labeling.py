"""The labeling pages (issue 10): ``/labeling`` picks a label set and where the images come
from (a saved cohort, or a query: modality, body part, study dates, description), and
``/labeling/{set}?...`` is the reader's workspace over that queue (``labeling.js``): one image
at a time from WADO-RS rendered frames with window/level and zoom, keyboard next/previous,
a button per class, box and polygon drawing. Each save is ``POST /api/labels``, which writes
the KOS (a class) or the TID 1500 SR (a class with a region) into the study; taking a label
back is ``DELETE /api/labels/documents/{uid}``.

A cohort gives its patients (MRN = PatientID in the archive) and, when it has imaging
criteria, exactly the studies they matched.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

from medflow.cohort.tracking import CohortTracker
from medflow.core.errors import InvalidInput, MedflowError
from medflow.labels.queue import LabelQueue, build_queue, queue_filter
from medflow.labels.service import LabelService
from medflow.labels.sets import LabelSetInfo
from medflow.store.service import StoreService

PAGE = 500
"""Items per workspace page (the page links the next ones)."""


@dataclass
class Workspace:
    info: LabelSetInfo
    queue: LabelQueue
    source: str
    """What the queue is made from, in words."""
    query: list[tuple[str, str]]
    """The page's filter parameters, repeated ones too (for links to other pages)."""

    def link(self, start: int) -> str:
        """The query string of this queue's page from position ``start``."""
        return urlencode([*self.query, ("start", str(start))])

    cohort_patients: int | None = None
    notes: list[str] = field(default_factory=list)

    def data(self, root: str) -> dict[str, Any]:
        """What ``labeling.js`` needs, embedded in the page as JSON."""
        return {
            "root": root,
            "dicomweb": f"{root}/dicomweb",
            "api": f"{root}/api/labels",
            **self.queue.as_json(),
        }


def _one(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    return str(value).strip() or None if value is not None else None


def _list(params: Any, name: str) -> list[str]:
    values = params.getlist(name) if hasattr(params, "getlist") else [params.get(name)]
    out: list[str] = []
    for v in values:
        out += [p.strip() for p in str(v or "").split(",") if p.strip()]
    return out


def workspace(
    *,
    store: StoreService,
    labels: LabelService,
    cohorts: CohortTracker,
    label_set: str,
    params: Any,
) -> Workspace:
    """The workspace of ``label_set`` over the queue ``params`` describe (``cohort``,
    ``modality``, ``body_part``, ``date``, ``description``, ``unlabeled``, ``start``).
    ``NotFound`` for an unknown set or cohort, ``InvalidInput`` for a bad parameter."""
    info = labels.sets.get(name=label_set)
    date = _one(params, "date")
    try:
        start = max(0, int(_one(params, "start") or 0))
    except ValueError:
        raise InvalidInput("start: a number expected") from None
    where = queue_filter(
        None,
        _list(params, "modality"),
        _list(params, "body_part"),
        date,
        _one(params, "description"),
        _one(params, "unlabeled") in ("1", "true", "on", "yes"),
    )
    parts: list[str] = []
    cohort_patients = None
    cohort = _one(params, "cohort")
    if cohort:
        result = cohorts.evaluate(definition=cohorts.definition(ref=cohort))
        mrns = {p.mrn for p in result.patients if p.mrn}
        studies = {s for p in result.patients for s in p.studies}
        cohort_patients = len(result.patients)
        where = replace(where, patient_ids=mrns, study_uids=studies or None)
        parts.append(f"cohort {result.name} ({len(mrns)} patients"
                     + (f", {len(studies)} matched studies)" if studies else ")"))  # fmt: skip
    for label, values in (("modality", where.modalities), ("body part", where.body_parts)):
        if values:
            parts.append(f"{label} {', '.join(values)}")
    if date:
        parts.append(f"study date {date}")
    if where.description:
        parts.append(f"description contains {where.description!r}")
    if where.unlabeled_only:
        parts.append("unlabeled only")
    queue = build_queue(store=store, labels=labels, label_set=info.name, where=where,
                        start=start, limit=PAGE)  # fmt: skip
    keys = ("cohort", "modality", "body_part", "date", "description", "unlabeled")
    query = [(k, str(v)) for k, v in params.multi_items() if k in keys and v]
    notes = []
    if queue.truncated:
        notes.append("The query selects more images than one queue holds: narrow it.")
    return Workspace(info, queue, "; ".join(parts) or "every study", query, cohort_patients, notes)


@dataclass(frozen=True)
class Chooser:
    sets: list[LabelSetInfo]
    cohorts: list[Any]
    error: str | None = None


def chooser(*, labels: LabelService, cohorts: CohortTracker, error: str | None = None) -> Chooser:
    """The label sets and saved cohorts to choose from."""
    try:
        listed = cohorts.list_cohorts()
    except MedflowError:
        listed = []
    return Chooser(labels.sets.list(), listed, error)


__all__ = ["PAGE", "Chooser", "Workspace", "chooser", "workspace"]
