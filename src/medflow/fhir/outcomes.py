"""OperationOutcome (R4 operationoutcome.html) for medflow errors: one table of HTTP status
and issue type per error kind, used by the REST edge and by batch responses."""

from __future__ import annotations

from typing import Any

from medflow.core.errors import (
    AlreadyExists,
    Gone,
    InvalidInput,
    MedflowError,
    NotFound,
    PreconditionFailed,
    Unsupported,
)

STATUS: list[tuple[type[MedflowError], int, str]] = [  # first match wins
    (Gone, 410, "deleted"),
    (NotFound, 404, "not-found"),
    (PreconditionFailed, 412, "conflict"),
    (AlreadyExists, 409, "duplicate"),
    (Unsupported, 501, "not-supported"),
    (InvalidInput, 400, "invalid"),
]


def status_of(exc: MedflowError) -> tuple[int, str]:
    """HTTP status and issue type code of an error (500/exception for anything else)."""
    return next(
        ((status, code) for kind, status, code in STATUS if isinstance(exc, kind)),
        (500, "exception"),
    )


def outcome_of(exc: MedflowError) -> dict[str, Any]:
    """The OperationOutcome of an error; validation issues keep their element paths."""
    issues = getattr(exc, "issues", None)
    if issues:
        items = [
            {
                "severity": i.severity,
                "code": i.code,
                "diagnostics": i.diagnostics,
                "expression": [i.expression],
            }
            for i in issues
        ]
    else:
        items = [{"severity": "error", "code": status_of(exc)[1], "diagnostics": exc.message}]
    return {"resourceType": "OperationOutcome", "issue": items}


def outcome_entry(exc: MedflowError) -> dict[str, Any]:
    """A batch-response entry for a failed entry (R4 §3.1.0.11.1)."""
    return {"response": {"status": str(status_of(exc)[0]), "outcome": outcome_of(exc)}}
