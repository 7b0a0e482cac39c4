"""The worklist and triage REST edge (issue 11):

- ``GET /api/worklist?status=unread|read|all&modality=CR&priority=1&limit=&offset=`` the
  scored studies by urgency, then probability;
- ``GET /api/worklist/{study}`` one row;
- ``POST /api/worklist/{study}/read`` ``{"reader": "Family^Given", "finding": "pneumothorax"}``
  marks it read; the finding (a class of the model, or "normal") is recorded in FHIR as an
  Observation and, when the model's label set has the class, in DICOM as a TID 1500 SR;
- ``GET /api/triage/status`` (cursor, backlog, pending, failures) and
  ``GET /api/triage/failures``.

Errors are problem details (404 unknown study, 400 bad input, 503 storage).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import InvalidInput, NotFound, StorageFailure
from medflow.ml.triage.reading import Reading
from medflow.ml.triage.worker import list_failures
from medflow.problems import StatusTable, Validation, problem_route

STATUS: StatusTable = [
    (NotFound, 404, "Not found"),
    (InvalidInput, 400, "Bad request"),
    (StorageFailure, 503, "Storage unavailable"),
]
TriageRoute = problem_route(STATUS, validation=Validation(400, "Bad request"))


class ReadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reader: str = Field(min_length=1, max_length=64)
    finding: str | None = Field(default=None, max_length=100)
    """A class of the model (e.g. "pneumothorax") or "normal"; none: read without a finding."""


def _reading(request: Request) -> Reading:
    reading: Reading = request.app.state.container.reading
    return reading


def build_triage_router() -> APIRouter:
    router = APIRouter(tags=["Worklist"], route_class=TriageRoute)

    @router.get("/api/worklist")
    async def worklist(
        request: Request,
        status: Annotated[str, Query(pattern="^(unread|read|all)$")] = "unread",
        modality: Annotated[list[str] | None, Query()] = None,
        priority: Annotated[list[int] | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict[str, Any]:
        """Scored studies: urgent first, then by probability (highest first)."""
        page = await run_in_threadpool(
            lambda: _reading(request).worklist.page(
                status=None if status == "all" else status, modalities=modality or (),
                priorities=priority or (), limit=limit, offset=offset)
        )  # fmt: skip
        return page.as_json()

    @router.get("/api/worklist/{study_uid}")
    async def worklist_item(request: Request, study_uid: str) -> dict[str, Any]:
        entry = await run_in_threadpool(lambda: _reading(request).worklist.get(study_uid=study_uid))
        return entry.as_json()

    @router.post("/api/worklist/{study_uid}/read")
    async def read(request: Request, study_uid: str, body: ReadRequest) -> dict[str, Any]:
        """Mark the study read; record the reader's finding in FHIR (and DICOM)."""
        entry = await run_in_threadpool(
            lambda: _reading(request).read(study_uid=study_uid, reader=body.reader,
                                           finding=body.finding)
        )  # fmt: skip
        return entry.as_json()

    @router.get("/api/triage/status")
    async def status_of(request: Request) -> dict[str, Any]:
        worker = request.app.state.container.triage
        if worker is None:
            return {"running": False}
        found = await run_in_threadpool(worker.status)
        return {"running": True, **found.__dict__}

    @router.get("/api/triage/failures")
    async def failures(request: Request) -> list[dict[str, Any]]:
        """Scorings that failed (the model threw, the study could not be read...)."""
        engine = request.app.state.container.engine
        return await run_in_threadpool(lambda: list_failures(engine))

    return router


__all__ = ["build_triage_router"]
