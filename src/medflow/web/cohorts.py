"""The cohort pages (issue 7): ``/cohorts`` the saved cohorts with their last run's count,
``/cohorts/new`` the form-based builder (``cohorts.js`` evaluates the definition as it is
edited, through ``POST /api/cohorts/$evaluate``, and saves it), ``/cohorts/{id}`` a saved
cohort: its definition, the attrition and patients of its last run (evaluated afresh when it
has not run yet) with links to their studies, and its outcomes (treatments x outcomes and the
Kaplan-Meier plot, ``/api/cohorts/{id}/outcomes.svg``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import Any

from medflow.cohort.outcomes import STATUSES, OutcomeTable, outcomes
from medflow.cohort.tracking import CohortInfo, CohortTracker
from medflow.core.errors import MedflowError
from medflow.fhir.service import FhirService
from medflow.store.service import StoreService

PATIENT_ROWS = 500
"""At most this many patients are listed on a cohort page."""
SYSTEM_CHOICES = (("icd10", "ICD-10-CM"), ("snomed", "SNOMED CT"))
GENDERS = ("female", "male", "other", "unknown")
MODALITIES = ("CT", "MR", "CR", "DX", "MG", "US", "PT", "NM", "XA", "SM")


@dataclass(frozen=True)
class PatientRow:
    id: str
    mrn: str | None
    counts: list[tuple[str, int]]
    """Matching resources per type."""
    studies: list[str]


@dataclass(frozen=True)
class CohortPage:
    info: CohortInfo
    definition_json: str
    evaluation_date: str
    source: str
    """Where the attrition and patients come from: "run N (date)" or "evaluated now"."""
    attrition: list[dict[str, Any]]
    patients: list[PatientRow]
    total: int
    outcomes: OutcomeTable | None
    outcomes_error: str | None
    statuses: tuple[str, ...] = STATUSES


def _rows(patients: list[dict[str, Any]]) -> list[PatientRow]:
    rows = []
    for p in patients[:PATIENT_ROWS]:
        resources = p.get("resources") or {}
        counts = [(kind, len(ids)) for kind, ids in sorted(resources.items())]
        rows.append(PatientRow(str(p["id"]), p.get("mrn"), counts, list(p.get("studies") or [])))
    return rows


def cohort_page(
    tracker: CohortTracker, store: StoreService, fhir: FhirService, ref: str
) -> CohortPage:
    """A saved cohort's page (``NotFound`` for an unknown id or name)."""
    info = tracker.show(ref=ref)
    definition = tracker.definition(ref=info.id)
    if info.last_run is not None:
        run = tracker.get_run(ref=info.id, run_id=info.last_run.id)
        source = f"run {run.id} of version {run.version}, {run.run_at:%Y-%m-%d %H:%M} UTC"
        attrition, patients, day = run.attrition, run.patients or [], run.evaluation_date
    else:
        result = tracker.evaluate(definition=definition).to_dict()
        source = "evaluated now (the cohort has not run yet)"
        attrition, patients = result["attrition"], result["patients"]
        day = definition.evaluation_date
    table, error = None, None
    try:
        table = outcomes(store=store, fhir=fhir, definition=definition, as_of=day)
    except MedflowError as exc:  # the page still shows the cohort without its outcomes
        error = exc.message
    shown = definition.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return CohortPage(
        info=info,
        definition_json=json.dumps(shown, indent=2),
        evaluation_date=day.isoformat(),
        source=source,
        attrition=attrition,
        patients=_rows(patients),
        total=len(patients),
        outcomes=table,
        outcomes_error=error,
    )


def builder_context() -> dict[str, Any]:
    """What the builder form offers."""
    return {"systems": SYSTEM_CHOICES, "genders": GENDERS, "modalities": MODALITIES,
            "today": date.today().isoformat()}  # fmt: skip


__all__ = ["CohortPage", "PatientRow", "builder_context", "cohort_page"]
