"""The worklist as FHIR R4 ``Task`` resources (issue 11): one Task per study on the worklist,
so a RIS, an EHR or any FHIR client sees the reading work and its state without medflow's own
API (the FHIR Workflow pattern for "a study to read"; the DICOM alternative, UPS-RS
workitems, is not offered).

The Task (conditional update on ``identifier`` ``urn:medflow:worklist|<study>``, so it is
written once and updated in place; ``cancelled`` when the study is deleted):

- ``status`` ``requested`` while unread, ``completed`` once read; ``businessStatus`` the
  worklist's urgency, ``intent`` ``order``;
- ``priority`` from the worklist's: 1 urgent -> ``asap``, 2 elevated -> ``urgent``,
  3 routine -> ``routine`` (the R4 request-priority codes);
- ``code`` ``fulfill`` (task-code), ``description`` "Read <modality> study <accession>";
- ``focus`` the ImagingStudy, ``for`` the Patient (both taken from the AI result's
  RiskAssessment), ``reasonReference`` that RiskAssessment;
- once read: ``owner`` the reader, ``output`` the reader's finding (the Observation).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from medflow.core.errors import MedflowError
from medflow.fhir.service import FhirService
from medflow.ml.triage.results import token
from medflow.ml.triage.worklist import WorklistEntry

log = logging.getLogger(__name__)
TASK_SYSTEM = "urn:medflow:worklist"
TASK_PRIORITY = {1: "asap", 2: "urgent", 3: "routine"}


def worklist_task(
    entry: WorklistEntry, *, patient: str | None, imaging_study: str | None
) -> dict[str, Any]:
    """The Task of a worklist row; ``patient`` and ``imaging_study`` are references
    (``Patient/1``)."""
    read = entry.status == "read"
    task: dict[str, Any] = {
        "resourceType": "Task",
        "identifier": [{"system": TASK_SYSTEM, "value": entry.study_uid}],
        "status": "completed" if read else "requested",
        "businessStatus": {"text": f"{entry.urgency} ({entry.status})"},
        "intent": "order",
        "priority": TASK_PRIORITY.get(entry.priority, "routine"),
        "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code",
                             "code": "fulfill", "display": "Fulfill the focal request"}],
                 "text": "Read imaging study"},
        "description": _description(entry),
        "authoredOn": _instant(entry.scored_at),
        "lastModified": datetime.now(UTC).isoformat(),
        "reasonReference": {"reference": f"RiskAssessment/{entry.risk_assessment_id}"},
    }  # fmt: skip
    if imaging_study:
        task["focus"] = {"reference": imaging_study}
    else:
        task["focus"] = {"identifier": {"system": "urn:dicom:uid",
                                        "value": f"urn:oid:{entry.study_uid}"}}  # fmt: skip
    if patient:
        task["for"] = {"reference": patient}
    if read and entry.reader:
        task["owner"] = {"display": entry.reader}
        if entry.read_at:
            task["executionPeriod"] = {"end": _instant(entry.read_at)}
    if read and entry.reader_observation_id:
        task["output"] = [{"type": {"text": "Reader finding"}, "valueReference": {
            "reference": f"Observation/{entry.reader_observation_id}"}}]  # fmt: skip
    return task


def _instant(text: str) -> str:
    """An ISO timestamp as a FHIR instant: a naive one (SQLite keeps no zone) is UTC."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat(timespec="milliseconds")


def _description(entry: WorklistEntry) -> str:
    what = f"Read {entry.modality} study {entry.accession or entry.study_uid}"
    ai = f"AI {entry.finding} {entry.probability:.0%} ({entry.model})"
    return " ".join(f"{what}; {ai}".split())


def write_task(fhir: FhirService, entry: WorklistEntry) -> str | None:
    """Create or update the row's Task; its id, or None when it could not be written (a
    storage failure is logged: the worklist row, the SR and the RiskAssessment stand)."""
    try:
        patient = imaging_study = None
        if entry.risk_assessment_id:
            found = fhir.search_resources(
                resource_type="RiskAssessment", params=[("_id", entry.risk_assessment_id)],
                limit=1,
            )  # fmt: skip
            if found:
                patient = (found[0].get("subject") or {}).get("reference")
                imaging_study = next(
                    (b["reference"] for b in found[0].get("basis") or []
                     if str(b.get("reference", "")).startswith("ImagingStudy/")), None)  # fmt: skip
        written = fhir.conditional_update(
            resource_type="Task",
            query="identifier=" + quote(token(TASK_SYSTEM, entry.study_uid)),
            resource=worklist_task(entry, patient=patient, imaging_study=imaging_study),
        )
        return str(written.res_id)
    except MedflowError as exc:
        log.warning("worklist Task not written: %s", exc.message)
        return None


def cancel_task(fhir: FhirService, study_uid: str) -> None:
    """The study left the archive (and the worklist): its Task, if any, is ``cancelled``."""
    query = "identifier=" + quote(token(TASK_SYSTEM, study_uid))
    try:
        found = fhir.search_resources(resource_type="Task",
                                      params=[("identifier", token(TASK_SYSTEM, study_uid))],
                                      limit=1)  # fmt: skip
        if not found or found[0].get("status") in ("cancelled", "completed"):
            return
        task = {**found[0], "status": "cancelled", "lastModified": datetime.now(UTC).isoformat(),
                "businessStatus": {"text": "study deleted"}}  # fmt: skip
        task.pop("meta", None)
        fhir.conditional_update(resource_type="Task", query=query, resource=task)
    except MedflowError as exc:
        log.warning("worklist Task not cancelled: %s", exc.message)


__all__ = ["TASK_PRIORITY", "TASK_SYSTEM", "cancel_task", "worklist_task", "write_task"]
