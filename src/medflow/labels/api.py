"""The labels' REST edge (issue 10), a thin router over
:class:`~medflow.labels.service.LabelService`:

- ``POST /api/labels/sets`` (a label set definition, JSON) -> 201 with its version
  (a new version when the definition changed, else the latest, 200);
- ``GET /api/labels/sets``, ``GET /api/labels/sets/{name}[?version=N]``;
- ``POST /api/labels`` (a :class:`~medflow.labels.schemas.LabelRequest`) -> 201, the KOS/SR/SEG
  stored into the study, ``Location`` its DICOMweb URL;
- ``GET /api/labels?set=NAME[&study=UID]`` the indexed labels;
- ``DELETE /api/labels/documents/{uid}?set=NAME`` removes a label document of the set from the
  archive and the index (a reader taking a label back);
- ``GET /api/labels/queue?set=NAME[&patient=ID...][&modality=CR...][&body_part=...]
  [&date=YYYYMMDD-YYYYMMDD][&description=TEXT][&unlabeled=true][&start=&limit=]`` the labeling
  queue (:mod:`medflow.labels.queue`; the web page also takes a cohort).

Errors are RFC 9457 problem details (``application/problem+json``): 404 unknown set or target,
400 invalid input (pydantic's request errors too), 409 conflict, 503/500 storage failures.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    NotFound,
    Unsupported,
)
from medflow.labels.queue import build_queue, queue_filter
from medflow.labels.schemas import LabelRequest, LabelSetDefinition
from medflow.labels.service import LabelService
from medflow.problems import StatusTable, Validation, problem_route

STATUS: StatusTable = [
    (NotFound, 404, "Not found"),
    (AlreadyExists, 409, "Conflict"),
    (Conflict, 409, "Conflict"),
    (InvalidInput, 400, "Bad request"),
    (Unsupported, 400, "Not supported"),
]
"""medflow errors -> HTTP status and problem title (the first that matches)."""
LabelsRoute = problem_route(STATUS, validation=Validation(400, "Bad request"))
"""Maps errors (medflow's and request validation) to problem details."""


def _service(request: Request) -> LabelService:
    service: LabelService = request.app.state.container.labels
    return service


def build_labels_router() -> APIRouter:
    router = APIRouter(prefix="/api/labels", tags=["Labels"], route_class=LabelsRoute)

    @router.post("/sets", status_code=201)
    async def save_set(
        request: Request, response: Response, definition: LabelSetDefinition
    ) -> dict[str, object]:
        """Create a label set, or a new version of it when the definition changed."""
        info = await run_in_threadpool(lambda: _service(request).sets.save(definition=definition))
        if not info.created:
            response.status_code = 200
        response.headers["Location"] = f"/api/labels/sets/{info.name}"
        return info.as_json()

    @router.get("/sets")
    async def list_sets(request: Request) -> list[dict[str, object]]:
        infos = await run_in_threadpool(_service(request).sets.list)
        return [i.as_json() for i in infos]

    @router.get("/sets/{name}")
    async def show_set(
        request: Request, name: str, version: Annotated[int | None, Query()] = None
    ) -> dict[str, object]:
        info = await run_in_threadpool(
            lambda: _service(request).sets.get(name=name, version=version)
        )
        return info.as_json()

    @router.post("", status_code=201)
    async def write_label(
        request: Request, response: Response, label: LabelRequest
    ) -> dict[str, Any]:
        """Write one label as a KOS, SR or SEG into its study."""
        written = await run_in_threadpool(lambda: _service(request).write(request=label))
        response.headers["Location"] = (
            f"/dicomweb/studies/{written.study_uid}/series/{written.series_uid}"
            f"/instances/{written.sop_instance_uid}"
        )
        return written.as_json()

    @router.get("")
    async def list_labels(
        request: Request,
        label_set: Annotated[str, Query(alias="set")],
        study: Annotated[str | None, Query()] = None,
    ) -> list[dict[str, Any]]:
        rows = await run_in_threadpool(
            lambda: _service(request).labels(label_set=label_set, study_uid=study)
        )
        return [r.as_json() for r in rows]

    @router.delete("/documents/{sop_uid}")
    async def remove_document(
        request: Request, sop_uid: str, label_set: Annotated[str, Query(alias="set")]
    ) -> dict[str, Any]:
        """Take a label back: its document leaves the archive, its rows the index."""
        removed = await run_in_threadpool(
            lambda: _service(request).remove(label_set=label_set, sop_instance_uid=sop_uid)
        )
        return {"sop_instance_uid": sop_uid, "label_set": label_set, "labels_removed": removed}

    @router.get("/queue")
    async def queue(
        request: Request,
        label_set: Annotated[str, Query(alias="set")],
        patient: Annotated[list[str] | None, Query()] = None,
        modality: Annotated[list[str] | None, Query()] = None,
        body_part: Annotated[list[str] | None, Query()] = None,
        date: Annotated[str | None, Query(max_length=17)] = None,
        description: Annotated[str | None, Query(max_length=64)] = None,
        unlabeled: bool = False,
        start: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    ) -> dict[str, Any]:
        """The labeling queue of a set over the studies the filters select."""
        where = queue_filter(patient, modality, body_part, date, description, unlabeled)
        container = request.app.state.container
        result = await run_in_threadpool(
            lambda: build_queue(store=container.store, labels=container.labels,
                                label_set=label_set, where=where, start=start, limit=limit)
        )  # fmt: skip
        return result.as_json()

    return router
