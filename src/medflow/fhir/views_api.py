"""The SQL-on-FHIR v2 ``$run`` operation on the FHIR REST edge
(https://sql-on-fhir.org/ig/latest/OperationDefinition-ViewDefinitionRun.html).

``POST /fhir/ViewDefinition/$run`` takes a ``Parameters`` resource: ``viewResource`` (an inline
ViewDefinition) or ``viewReference`` (a stored or shipped view), zero or more ``resource``
(inline resources; without them the view runs over the store's resources of its type, read
page by page), ``_format`` (json, ndjson, csv), ``header`` (csv), ``_limit`` and ``_since``.
``GET`` (and ``/ViewDefinition/{id}/$run``) take the same as query parameters, with the view
named by ``viewReference`` or the path. ``_format`` may also be a query parameter of a POST.
Rows stream out as they are computed; an invalid view is a 400 OperationOutcome before any.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import chain
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from medflow.fhir.service import FhirInvalid, FhirService
from medflow.fhir.validation import parse_json_text
from medflow.fhir.views import column_names
from medflow.fhir.views_output import encode_rows
from medflow.fhir.views_store import (
    RunRequest,
    parse_format,
    parse_limit,
    parse_run_parameters,
    parse_since,
    run_request,
)

MEDIA_TYPES = {"json": "application/json", "ndjson": "application/x-ndjson", "csv": "text/csv"}


def add_view_routes(router: APIRouter) -> None:
    """Add the ``$run`` routes to the FHIR router (before its generic ``/{type}`` routes)."""

    @router.post("/ViewDefinition/$run")
    async def run_post(request: Request) -> Response:
        body, issues = parse_json_text(await request.body())
        if issues:
            raise FhirInvalid(issues)
        return await _run(request, parse_run_parameters(body))

    @router.get("/ViewDefinition/$run")
    async def run_get(request: Request) -> Response:
        return await _run(request, RunRequest())

    @router.post("/ViewDefinition/{view_id}/$run")
    async def run_instance_post(view_id: str, request: Request) -> Response:
        body, issues = parse_json_text(await request.body() or b'{"resourceType":"Parameters"}')
        if issues:
            raise FhirInvalid(issues)
        run = parse_run_parameters(body)
        run.view, run.view_reference = None, f"ViewDefinition/{view_id}"
        return await _run(request, run)

    @router.get("/ViewDefinition/{view_id}/$run")
    async def run_instance_get(view_id: str, request: Request) -> Response:
        return await _run(request, RunRequest(view_reference=f"ViewDefinition/{view_id}"))


def _with_query(request: Request, run: RunRequest) -> RunRequest:
    """Query parameters fill in what the body did not give (``_format`` also from Accept)."""
    q = request.query_params
    if run.format is None and q.get("_format"):
        run.format = parse_format(q["_format"])
    if run.format is None:
        accept = request.headers.get("accept", "")
        run.format = next((f for t, f in (("text/csv", "csv"), ("ndjson", "ndjson"))
                           if t in accept), "json")  # fmt: skip
    if run.limit is None and q.get("_limit") is not None:
        run.limit = parse_limit(q["_limit"])
    if run.since is None and q.get("_since"):
        run.since = parse_since(q["_since"])
    if q.get("header") is not None:
        run.header = q["header"].lower() != "false"
    if run.view is None and run.view_reference is None and q.get("viewReference"):
        run.view_reference = q["viewReference"]
    return run


async def _run(request: Request, run: RunRequest) -> Response:
    fhir: FhirService = request.app.state.fhir
    run = _with_query(request, run)
    fmt = run.format or "json"

    def start() -> tuple[list[str], Iterator[list[dict[str, Any]]]]:
        view, batches = run_request(fhir.engine, run)
        names = column_names(view)
        first = next(batches, None)  # errors of the first page are still a 400
        return names, chain([first] if first else [], batches)

    names, batches = await run_in_threadpool(start)
    body = encode_rows(fmt, names, batches, header=run.header)
    return StreamingResponse(body, media_type=MEDIA_TYPES[fmt])
