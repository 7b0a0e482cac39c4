"""The reading worklist page (issue 11): ``/worklist?status=unread|read|all&modality=CR``, the
scored studies by urgency then probability, the urgent ones highlighted, each with its score,
a thumbnail (WADO-RS) and a link to the images; ``worklist.js`` marks a study read through
``POST /api/worklist/{study}/read`` with the reader's finding (a class of the model or
"normal")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medflow.ml.triage.reading import Reading
from medflow.ml.triage.worklist import NORMAL, PRIORITY_NAMES, WorklistPage

PAGE = 100


@dataclass
class WorklistView:
    page: WorklistPage
    status: str
    modality: str
    findings: dict[str, list[str]] = field(default_factory=dict)
    """The findings a reader can give, per model (its classes, then "normal")."""
    priorities: dict[int, str] = field(default_factory=lambda: dict(PRIORITY_NAMES))


def worklist_view(reading: Reading, params: Any) -> WorklistView:
    status = str(params.get("status") or "unread")
    if status not in ("unread", "read", "all"):
        status = "unread"
    modality = str(params.get("modality") or "").strip().upper()
    try:
        offset = max(0, int(params.get("offset") or 0))
    except ValueError:
        offset = 0
    page = reading.worklist.page(status=None if status == "all" else status,
                                 modalities=[modality] if modality else (), limit=PAGE,
                                 offset=offset)  # fmt: skip
    findings: dict[str, list[str]] = {}
    for entry in page.entries:
        if entry.model not in findings:
            classes = reading.classes_of(entry.model)
            findings[entry.model] = [*classes, *([NORMAL] if NORMAL not in classes else [])]
    return WorklistView(page, status, modality, findings)


__all__ = ["WorklistView", "worklist_view"]
