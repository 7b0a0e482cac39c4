"""RFC 9457 problem details for medflow's JSON REST edges (``/api/cohorts``, ``/api/labels``,
``/api/wsi``): one route class maker instead of a copy per edge. Each edge gives its table of
medflow errors -> (HTTP status, title), and says how it answers a request that does not
validate. DICOMweb and FHIR answer in their own standards' forms (``dicomweb.errors``,
``fhir.api``), not here."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from medflow.core.errors import MedflowError, StorageFailure

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"
StatusTable = list[tuple[type[MedflowError], int, str]]
"""medflow errors -> HTTP status and problem title (the first that matches)."""
Details = Callable[[MedflowError], list[dict[str, str]] | None]
"""An edge's per-error ``errors`` member (e.g. a definition's paths), or None."""


@dataclass(frozen=True)
class Validation:
    """How an edge answers a request FastAPI cannot validate: ``status`` and ``title``, the
    detail ``path: message; ...``, and with ``errors`` an ``errors`` member of
    ``{path, message}``."""

    status: int
    title: str
    errors: bool = False


def problem(status: int, title: str, detail: str, errors: list[dict[str, str]] | None = None,
            headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    """A problem details response (``type`` about:blank)."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status,
                            "detail": detail}  # fmt: skip
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def error_response(exc: MedflowError, table: StatusTable, details: Details | None = None
                   ) -> JSONResponse:  # fmt: skip
    """A medflow error as problem details: a storage failure is 503 with ``Retry-After``
    when retryable, else 500; the rest by ``table`` (500 when no row matches)."""
    if isinstance(exc, StorageFailure):
        status = 503 if exc.retryable else 500
        return problem(status, "Storage failure", exc.message,
                       headers={"Retry-After": "5"} if status == 503 else None)  # fmt: skip
    status, title = next(((s, t) for kind, s, t in table if isinstance(exc, kind)),
                         (500, "Internal error"))  # fmt: skip
    return problem(status, title, exc.message, details(exc) if details else None)


def problem_route(
    table: StatusTable, *, validation: Validation | None = None, details: Details | None = None
) -> type[APIRoute]:
    """A route class whose endpoints answer medflow errors (and, with ``validation``, request
    validation errors) as problem details, and any other exception as a logged 500, so one
    request never takes the server down."""

    class ProblemRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def handle(request: Request) -> Response:
                try:
                    return await handler(request)
                except MedflowError as exc:
                    return error_response(exc, table, details)
                except RequestValidationError as exc:
                    if validation is None:
                        raise  # FastAPI's own 422
                    errors = [{"path": ".".join(str(p) for p in e.get("loc", ())),
                               "message": str(e.get("msg"))} for e in exc.errors()]  # fmt: skip
                    detail = "; ".join(f"{e['path']}: {e['message']}" for e in errors)
                    return problem(validation.status, validation.title, detail,
                                   errors if validation.errors else None)  # fmt: skip
                except Exception:  # the edge wrapper
                    log.exception("unhandled error in %s %s", request.method, self.path)
                    return problem(500, "Internal error", "internal error")

            return handle

    return ProblemRoute


__all__ = ["PROBLEM_JSON", "Details", "StatusTable", "Validation", "error_response",
           "problem", "problem_route"]  # fmt: skip
