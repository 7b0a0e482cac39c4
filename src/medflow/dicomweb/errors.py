"""One table from medflow errors to DICOMweb HTTP statuses (PS3.18 §8.5 status codes).

Every DICOMweb route uses ``DicomwebRoute``: a handler may raise a ``MedflowError`` (from a
service) or one of the HTTP-level errors below, and the client gets the standard status with a
short JSON body ``{"detail": reason}``. Unexpected exceptions become 500 without crashing the
server and without PHI in the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from medflow.core.errors import (
    AlreadyExists,
    InvalidInput,
    MedflowError,
    NotFound,
    StorageFailure,
    Unsupported,
)

log = logging.getLogger(__name__)


class NotAcceptable(MedflowError):
    """No representation matches the Accept header (406)."""


class UnsupportedMediaType(MedflowError):
    """The request's Content-Type is not one the resource accepts (415)."""


STATUS: list[tuple[type[MedflowError], int]] = [
    (NotAcceptable, 406),
    (UnsupportedMediaType, 415),
    (NotFound, 404),
    (AlreadyExists, 409),
    (InvalidInput, 400),
    (Unsupported, 400),
]


def status_of(exc: MedflowError) -> int:
    if isinstance(exc, StorageFailure):
        return 503 if exc.retryable else 500
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_response(exc: MedflowError) -> Response:
    status = status_of(exc)
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"detail": exc.message}, status_code=status, headers=headers)


class DicomwebRoute(APIRoute):
    """Route class mapping errors to DICOMweb responses for every DICOMweb endpoint."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except MedflowError as exc:
                return error_response(exc)
            except RequestValidationError as exc:
                reasons = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}"
                    for e in exc.errors()
                )
                return JSONResponse({"detail": reasons}, status_code=400)
            except Exception:  # the edge wrapper: never let one request take the server down
                log.exception("unhandled error in %s %s", request.method, self.path)
                return JSONResponse({"detail": "internal error"}, status_code=500)

        return handle
