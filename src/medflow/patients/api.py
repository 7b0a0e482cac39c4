"""The patient record's REST edge (issue 12), a thin router over
:class:`medflow.patients.service.PatientRecords`:

- ``GET /api/patients?name=&identifier=&birthdate=&limit=``: patients matching every given
  field (R4 Patient search semantics);
- ``GET /api/patients/{id}/timeline?kind=&from=YYYY-MM-DD&to=YYYY-MM-DD&study=UID``: the
  header (demographics, identifiers, active problems, allergies, current medications), the
  events newest first (``kind`` repeated or comma-separated, see
  :data:`medflow.patients.timeline.KINDS`; ``from``/``to`` inclusive), numeric trends per
  code, and with ``study`` that study's priors with their reports. ``Server-Timing`` says
  how long it took.

``id`` is the FHIR Patient logical id. Errors are problem details: 404 unknown patient, 400
bad parameters, 503 when the record cannot be read.
"""

from __future__ import annotations

import time
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import InvalidInput, NotFound
from medflow.patients.service import PatientRecords, parse_kinds
from medflow.patients.timeline import KINDS
from medflow.problems import StatusTable, Validation, problem_route

STATUS: StatusTable = [(NotFound, 404, "Not found"), (InvalidInput, 400, "Bad request")]
PatientsRoute = problem_route(STATUS, validation=Validation(400, "Bad request"))
ID_PATTERN = r"^[A-Za-z0-9\-.]{1,64}$"
"""An R4 logical id (``id`` datatype)."""


def records_of(request: Request) -> PatientRecords:
    records: PatientRecords = request.app.state.container.patients
    return records


def check_kinds(values: list[str]) -> list[str]:
    kinds = parse_kinds(values)
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise InvalidInput(f"unknown kind {', '.join(unknown)}; known: {', '.join(KINDS)}")
    return kinds


def build_patients_router() -> APIRouter:
    router = APIRouter(prefix="/api/patients", tags=["Patients"], route_class=PatientsRoute)

    @router.get("", summary="Find patients by name, identifier or birth date")
    async def search(
        request: Request,
        name: Annotated[str, Query(max_length=200)] = "",
        identifier: Annotated[str, Query(max_length=200)] = "",
        birthdate: Annotated[str, Query(max_length=32)] = "",
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
    ) -> dict[str, Any]:
        """Patients matching every given field: ``name`` the start of a name part,
        ``identifier`` ``[system|]value``, ``birthdate`` ``YYYY[-MM[-DD]]`` (with R4 date
        prefixes); none given: no patients."""
        records = records_of(request)
        hits = await run_in_threadpool(lambda: records.search(
            name=name, identifier=identifier, birthdate=birthdate, limit=limit))  # fmt: skip
        return {"patients": [{"id": h.id, "name": h.name, "gender": h.gender,
                              "birth_date": h.birth_date, "age": h.age,
                              "identifiers": [{"system": s, "value": v}
                                              for s, v in h.identifiers]}
                             for h in hits]}  # fmt: skip

    @router.get("/{patient_id}/timeline", summary="A patient's history, newest first")
    async def timeline(
        request: Request,
        patient_id: Annotated[str, Path(pattern=ID_PATTERN)],
        kind: Annotated[list[str], Query()] = [],  # noqa: B006 - FastAPI copies it
        date_from: Annotated[date | None, Query(alias="from")] = None,
        date_to: Annotated[date | None, Query(alias="to")] = None,
        study: Annotated[str | None, Query(max_length=64)] = None,
    ) -> JSONResponse:
        """The patient's timeline (see the module)."""
        kinds = check_kinds(kind)
        records = records_of(request)
        started = time.perf_counter()
        result = await run_in_threadpool(
            lambda: records.timeline(
                patient_id, kinds=kinds, date_from=date_from, date_to=date_to, study=study
            )
        )
        body = JSONResponse(result.as_json())  # plain data: no response-model encoding pass
        elapsed = (time.perf_counter() - started) * 1000
        body.headers["Server-Timing"] = f"timeline;dur={elapsed:.1f}"
        return body

    return router


__all__ = ["build_patients_router", "check_kinds"]
