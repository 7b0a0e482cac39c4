"""The tracked cohorts' REST edge at ``/api/cohorts`` (issue 7), a thin router over
:class:`~medflow.cohort.tracking.CohortTracker`.

``POST /api/cohorts`` saves a definition (JSON or YAML body, ``?name=`` to name it otherwise),
``GET /api/cohorts`` lists, ``GET /api/cohorts/{id}`` shows (definition, versions, last run),
``POST /api/cohorts/{id}/$run`` runs (``as_of``, ``version``), ``GET /api/cohorts/{id}/runs``
and ``/runs/{run}``, ``GET /api/cohorts/{id}/diff`` (``from``, ``to``), and
``POST /api/cohorts/$evaluate`` evaluates a definition without saving it;
``GET /api/cohorts/{id}/outcomes`` (``patient``: the index patient, ``as_of``), its
Kaplan-Meier plot ``GET /api/cohorts/{id}/outcomes.svg`` and ``POST /api/cohorts/$outcomes``
(an unsaved definition) give treatments x outcomes (:mod:`medflow.cohort.outcomes`);
``POST /api/cohorts/{id}/$export`` (``level``, ``deidentify``: a profile name, ``as_of``)
starts the export ``medflow cohort export`` makes (202, :mod:`medflow.cohort.export_jobs`),
``GET /api/cohorts/exports/{job}`` tells its progress and ``/exports/{job}/file`` serves the
zip. ``{id}`` is a
cohort's id or name. Errors are RFC 9457 problem details (``application/problem+json``), from
medflow errors in one table; a definition that does not validate is a 422 whose ``errors``
give each problem's path.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.concurrency import run_in_threadpool

from medflow.cohort.export_jobs import ExportRequest
from medflow.cohort.outcomes import OutcomeTable, outcomes
from medflow.cohort.schema import CohortDefinition, DefinitionError
from medflow.cohort.survival import km_svg
from medflow.cohort.tracking import CohortTracker, as_of_date, parse_text
from medflow.core.errors import (
    AlreadyExists,
    InvalidInput,
    MedflowError,
    NotFound,
    PreconditionFailed,
    Unsupported,
)
from medflow.problems import StatusTable, Validation, problem_route

STATUS: StatusTable = [
    (DefinitionError, 422, "Invalid cohort definition"),
    (NotFound, 404, "Not found"),
    (AlreadyExists, 409, "Conflict"),
    (PreconditionFailed, 412, "Precondition failed"),
    (InvalidInput, 400, "Bad request"),
    (Unsupported, 400, "Not supported"),
]
"""medflow errors -> HTTP status and problem title (the first that matches)."""


def _definition_errors(exc: MedflowError) -> list[dict[str, str]] | None:
    """A definition's problems, each with its path."""
    if not isinstance(exc, DefinitionError):
        return None
    return [{"path": path, "message": message} for path, message in exc.errors]


CohortRoute = problem_route(STATUS, validation=Validation(422, "Invalid request", errors=True),
                            details=_definition_errors)  # fmt: skip
"""Maps errors to problem details for every cohort endpoint."""


def tracker(request: Request) -> CohortTracker:
    cohorts: CohortTracker = request.app.state.cohorts
    return cohorts


Tracker = Annotated[CohortTracker, Depends(tracker)]
AsOf = Annotated[date | None, Query(description="Evaluate as of this day (ISO date)")]
IndexPatient = Annotated[
    str | None, Query(alias="patient", description="The index Patient id (left out)")
]
SVG = "image/svg+xml"


async def _outcomes(
    request: Request, definition: CohortDefinition, patient: str | None, as_of: date | None
) -> OutcomeTable:
    """Treatments x outcomes of the definition's patients (in a worker thread)."""
    container = request.app.state.container
    store, fhir = container.store, container.fhir

    def table() -> OutcomeTable:
        return outcomes(
            store=store, fhir=fhir, definition=definition, patient_id=patient, as_of=as_of
        )

    return await run_in_threadpool(table)


async def _as_of_from_body(request: Request, as_of: date | None) -> date | None:
    """``as_of`` from the query, or from a JSON body ``{"as_of": "YYYY-MM-DD"}``."""
    if as_of is not None:
        return as_of
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidInput('the body must be JSON: {"as_of": "YYYY-MM-DD"}') from None
    value = body.get("as_of") if isinstance(body, dict) else None
    return as_of_date(value if isinstance(value, str) else None)


def build_cohort_router() -> APIRouter:
    router = APIRouter(prefix="/api/cohorts", tags=["Cohorts"], route_class=CohortRoute)
    _export_routes(router)

    @router.post("", status_code=201)
    async def save(request: Request, cohorts: Tracker,
                   name: Annotated[str | None, Query()] = None) -> dict[str, Any]:  # fmt: skip
        """Save a definition (JSON or YAML): a new cohort, a new version, or the same."""
        definition = parse_text(await request.body())
        saved = await run_in_threadpool(lambda: cohorts.save(definition=definition, name=name))
        return saved.to_dict()

    @router.get("")
    def list_cohorts(cohorts: Tracker) -> list[dict[str, Any]]:
        """Every cohort: latest version, number of runs, last run."""
        return [c.to_dict() for c in cohorts.list_cohorts()]

    @router.post("/$evaluate")
    async def evaluate(request: Request, cohorts: Tracker, as_of: AsOf = None) -> dict[str, Any]:
        """Evaluate a definition without saving it: attrition and patients."""
        definition = parse_text(await request.body())
        result = await run_in_threadpool(
            lambda: cohorts.evaluate(definition=definition, as_of=as_of)
        )
        return result.to_dict()  # fmt: skip

    @router.post("/$outcomes")
    async def outcomes_of(
        request: Request, as_of: AsOf = None, patient: IndexPatient = None
    ) -> dict[str, Any]:
        """Treatments x outcomes of an unsaved definition's patients."""
        definition = parse_text(await request.body())
        return (await _outcomes(request, definition, patient, as_of)).to_dict()

    @router.get("/{ref}")
    def show(ref: str, cohorts: Tracker) -> dict[str, Any]:
        """A cohort: its definition, every version, its last run."""
        return cohorts.show(ref=ref).to_dict()

    @router.post("/{ref}/$run")
    async def run(
        request: Request,
        ref: str,
        cohorts: Tracker,
        as_of: AsOf = None,
        version: Annotated[int | None, Query(ge=1)] = None,
    ) -> dict[str, Any]:
        """Run the cohort (stored), update its FHIR Group; the result with the changes
        since the run before."""
        day = await _as_of_from_body(request, as_of)
        outcome = await run_in_threadpool(lambda: cohorts.run(ref=ref, as_of=day, version=version))
        return outcome.to_dict()  # fmt: skip

    @router.get("/{ref}/runs")
    def runs(ref: str, cohorts: Tracker) -> list[dict[str, Any]]:
        """The cohort's runs, newest first (without patients)."""
        return [r.to_dict() for r in cohorts.runs(ref=ref)]

    @router.get("/{ref}/runs/{run_id}")
    def get_run(ref: str, run_id: int, cohorts: Tracker) -> dict[str, Any]:
        """One run with its patients and what matched for each."""
        return cohorts.get_run(ref=ref, run_id=run_id).to_dict()

    @router.get("/{ref}/diff")
    def diff(
        ref: str,
        cohorts: Tracker,
        from_run: Annotated[int | None, Query(alias="from")] = None,
        to_run: Annotated[int | None, Query(alias="to")] = None,
    ) -> dict[str, Any]:
        """Who entered and who left between two runs (default: the last two)."""
        return cohorts.diff(ref=ref, from_run=from_run, to_run=to_run).to_dict()

    _outcome_routes(router)
    return router


def _export_routes(router: APIRouter) -> None:
    @router.post("/{ref}/$export", status_code=202)
    async def start_export(
        request: Request,
        response: Response,
        ref: str,
        level: Annotated[str, Query(pattern="^(study|series)$")] = "study",
        deidentify: Annotated[str | None, Query(description="basic or research")] = None,
        as_of: AsOf = None,
    ) -> dict[str, Any]:
        """Export the cohort (its latest version) as ``medflow cohort export`` does: a zip
        of FHIR ndjson, DICOM files and a manifest, de-identified with ``deidentify``; 202
        with the job's status (``Content-Location``); the same request finds the same job."""
        exports = request.app.state.container.cohort_exports
        wanted = ExportRequest(cohort=ref, level="series" if level == "series" else "study",
                               deidentify=deidentify, as_of=as_of)  # fmt: skip
        status: dict[str, Any] = await run_in_threadpool(lambda: exports.start(wanted))
        response.headers["Content-Location"] = f"/api/cohorts/exports/{status['job']}"
        return status

    @router.get("/exports/{job}")
    def export_status(request: Request, job: str) -> dict[str, Any]:
        """An export's status: running (with its progress), done (with its summary and the
        file's URL), failed (with the reason) or interrupted (ask again to resume)."""
        status: dict[str, Any] = request.app.state.container.cohort_exports.status(job)
        if status["status"] == "done":
            status = {**status, "url": f"/api/cohorts/exports/{job}/file"}
        return status

    @router.get("/exports/{job}/file", response_class=FileResponse)
    def export_file(request: Request, job: str) -> FileResponse:
        """The finished export's zip."""
        path = request.app.state.container.cohort_exports.file(job)
        return FileResponse(path, media_type="application/zip", filename=path.name)


def _outcome_routes(router: APIRouter) -> None:
    @router.get("/{ref}/outcomes")
    async def saved_outcomes(
        request: Request, ref: str, cohorts: Tracker, as_of: AsOf = None,
        patient: IndexPatient = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Treatments x outcomes of the cohort's patients (its latest version), with
        Kaplan-Meier overall survival per treatment group."""
        definition = cohorts.definition(ref=ref)
        return (await _outcomes(request, definition, patient, as_of)).to_dict()

    @router.get("/{ref}/outcomes.svg", response_class=Response,
                responses={200: {"content": {SVG: {}}}})  # fmt: skip
    async def saved_outcomes_svg(
        request: Request, ref: str, cohorts: Tracker, as_of: AsOf = None,
        patient: IndexPatient = None,
    ) -> Response:  # fmt: skip
        """The Kaplan-Meier overall survival curves per treatment group, as SVG."""
        definition = cohorts.definition(ref=ref)
        table = await _outcomes(request, definition, patient, as_of)
        svg = km_svg(table.curves, title=f"Overall survival: {table.name}")
        return Response(svg, media_type=SVG, headers={"Cache-Control": "no-store"})


__all__ = ["STATUS", "CohortRoute", "build_cohort_router"]
