"""The cohort pages (issue 7): ``/cohorts`` the saved cohorts with their last run's count,
``/cohorts/new`` the form-based builder (``cohorts.js`` evaluates the definition as it is
edited, through ``POST /api/cohorts/$evaluate``, and saves it), ``/cohorts/{id}`` a saved
cohort: its definition, the attrition and patients of its last run (evaluated afresh when it
has not run yet) with links to their studies, and its outcomes (treatments x outcomes and the
Kaplan-Meier plot, drawn from the same table, inline), and ``/cohorts/new?from=ID`` the builder
showing a saved cohort to edit into a new version (:mod:`medflow.web.cohort_form`)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import date
from typing import Any

from medflow.cohort.outcomes import STATUSES, OutcomeTable, outcomes
from medflow.cohort.survival import km_svg
from medflow.cohort.tracking import CohortInfo, CohortTracker
from medflow.core.errors import MedflowError
from medflow.fhir.service import FhirService
from medflow.store.service import StoreService
from medflow.web.cohort_form import FIELDS, form_fields

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
    km_plot: str | None = None
    """The Kaplan-Meier plot of ``outcomes`` as a ``data:`` URI (SVG)."""
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
    table, error, plot = None, None, None
    try:
        table = outcomes(store=store, fhir=fhir, definition=definition, as_of=day)
    except MedflowError as exc:  # the page still shows the cohort without its outcomes
        error = exc.message
    else:  # the table's curves, so the outcomes are computed once for the page
        svg = km_svg(table.curves, title=f"Overall survival: {table.name}")
        plot = "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode("ascii")
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
        km_plot=plot,
    )


def builder_context() -> dict[str, Any]:
    """What the builder form offers."""
    return {"systems": SYSTEM_CHOICES, "genders": GENDERS, "modalities": MODALITIES,
            "today": date.today().isoformat(), "editing": None, "fields": None,
            "edit_refused": None, "blank": dict.fromkeys(FIELDS, "")}  # fmt: skip


def edit_context(tracker: CohortTracker, ref: str) -> dict[str, Any]:
    """The builder's context for editing a saved cohort's latest version (``NotFound``):
    ``fields`` to show, or ``edit_refused`` saying why the form cannot show it."""
    info = tracker.show(ref=ref)
    fields, why = form_fields(tracker.definition(ref=info.id))
    return {"editing": info, "fields": fields, "edit_refused": why}


__all__ = ["CohortPage", "PatientRow", "builder_context", "cohort_page", "edit_context"]
