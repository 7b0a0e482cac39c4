"""The feedback loop's REST edge (issue 11), a thin router over
:mod:`medflow.ml.feedback.service`:

- ``GET /api/models/{name}/performance?version=&window=month|quarter|year&before_days=7
  &after_days=90&followup_days=90&as_of=YYYY-MM-DD``: the model's predictions (FHIR
  RiskAssessments) joined to later outcomes (pathology reports, Conditions, readers'
  findings, follow-up): confusion matrix, sensitivity/specificity/PPV/NPV, AUC with a
  patient-bootstrap 95% CI, per version and per period of the study date, the false
  positives and false negatives with links to the images, and each reader against the
  outcomes; ``followup_days=0``: no negative by follow-up; a version's predictions on the
  studies it was trained or validated on are left out (``exclude_training=false`` keeps them);
- ``POST /api/models/{name}/outcome-labels`` ``{"sources": ["pathology", "condition"]}``
  (and the same rules as above): outcomes written as labels of the model's label set
  (provenance "outcome"), for ``medflow train --retrain``.

Errors are problem details: 404 unknown model, 400 bad parameters, 503 storage.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import InvalidInput, NotFound, StorageFailure
from medflow.ml.feedback.outcomes import Rules
from medflow.ml.feedback.service import Feedback
from medflow.ml.train.source import manifests_dir
from medflow.problems import StatusTable, Validation, problem_route

STATUS: StatusTable = [
    (NotFound, 404, "Not found"),
    (InvalidInput, 400, "Bad request"),
    (StorageFailure, 503, "Storage unavailable"),
]
FeedbackRoute = problem_route(STATUS, validation=Validation(400, "Bad request"))
Days = Annotated[int, Query(ge=0, le=3650)]


class OutcomeLabelsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sources: list[str] = Field(default_factory=lambda: ["pathology", "condition"],
                               min_length=1, max_length=3)  # fmt: skip
    before_days: int = Field(default=7, ge=0, le=3650)
    after_days: int = Field(default=90, ge=0, le=3650)
    followup_days: int = Field(default=90, ge=0, le=3650)
    as_of: date | None = None


def feedback_of(request: Request) -> Feedback:
    """The feedback service over the app's container (public services only)."""
    c = request.app.state.container
    return Feedback(fhir=c.fhir, store=c.store, registry=c.registry, labels=c.labels,
                    manifests=manifests_dir(c.settings.data_dir))  # fmt: skip


def rules(before: int, after: int, followup: int, as_of: date | None) -> Rules:
    return Rules(before_days=before, after_days=after, followup_days=followup or None,
                 as_of=as_of)  # fmt: skip


def build_feedback_router() -> APIRouter:
    router = APIRouter(prefix="/api/models", tags=["Models"], route_class=FeedbackRoute)

    @router.get("/{name}/performance", summary="The model and its readers against outcomes")
    async def performance(
        request: Request,
        name: str,
        version: Annotated[int | None, Query(ge=1)] = None,
        window: Annotated[str, Query(pattern="^(month|quarter|year)$")] = "month",
        before_days: Days = 7,
        after_days: Days = 90,
        followup_days: Days = 90,
        as_of: date | None = None,
        exclude_training: bool = True,
    ) -> dict[str, Any]:
        """Predictions joined to outcomes; see the module for the rules. A version's
        predictions on the studies it was trained or validated on are left out unless
        ``exclude_training=false``."""
        chosen = rules(before_days, after_days, followup_days, as_of)
        service = feedback_of(request)
        return await run_in_threadpool(
            lambda: service.performance(name=name, version=version, rules=chosen, window=window,
                                        exclude_training=exclude_training)
        )  # fmt: skip

    @router.post("/{name}/outcome-labels", summary="Write outcomes as training labels")
    async def outcome_labels(
        request: Request, name: str, body: OutcomeLabelsRequest
    ) -> dict[str, Any]:
        chosen = rules(body.before_days, body.after_days, body.followup_days, body.as_of)
        service = feedback_of(request)
        return await run_in_threadpool(
            lambda: service.outcome_labels(name=name, rules=chosen, sources=body.sources)
        )

    return router


__all__ = ["build_feedback_router", "feedback_of"]
