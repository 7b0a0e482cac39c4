"""The similar images REST edge (issue 11), a thin router over
:class:`~medflow.ml.similar.service.SimilarService` (``request.app.state.similar``):

- ``GET /api/similar?instance=UID[&k=10][&cohort=ID|NAME][&model=NAME[:VERSION]]
  [&same_study=false][&same_patient=false]``: the ``k`` (1..100) archived instances most
  similar to the instance by cosine similarity of the model's embeddings, best first, each with
  its study, series and SOP Instance UIDs, frame, PatientID, ``score`` and a WADO-RS
  ``thumbnail`` URL. By default the query's own study and patient are left out (other
  patients' cases); ``same_study``/``same_patient`` let them in. ``cohort`` restricts the
  answers to a saved cohort's patients.
- ``GET /api/similar/status``: per model, the embeddings, failures and the index's state.

Errors are RFC 9457 problem details: 404 unknown model or cohort, or no embedding of the
instance yet (the detail says which); 400 invalid parameters; 503 with Retry-After while a
model's index is being built; 503 when the server runs no similar images service.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import InvalidInput, NotFound, Unsupported
from medflow.ml.similar.service import MAX_K, Neighbour, SimilarResult, SimilarService
from medflow.problems import StatusTable, Validation, problem_route


class NotEnabled(Unsupported):
    """This server runs no similar images service."""


STATUS: StatusTable = [
    (NotEnabled, 503, "Service unavailable"),
    (NotFound, 404, "Not found"),
    (InvalidInput, 400, "Bad request"),
    (Unsupported, 400, "Not supported"),
]
"""medflow errors -> HTTP status and problem title (the first that matches; storage failures,
an index being built among them, are 503 with Retry-After)."""
SimilarRoute = problem_route(STATUS, validation=Validation(400, "Bad request"))


def _service(request: Request) -> SimilarService:
    service: SimilarService | None = getattr(request.app.state, "similar", None)
    if service is None:
        raise NotEnabled("similar images are not enabled on this server")
    return service


def thumbnail_url(n: Neighbour) -> str:
    """The instance's WADO-RS thumbnail (PS3.18 §10.4.1.1.3), relative to the server."""
    return (f"/dicomweb/studies/{n.study_uid}/series/{n.series_uid}/instances/"
            f"{n.sop_instance_uid}/thumbnail")  # fmt: skip


def _neighbour(n: Neighbour) -> dict[str, Any]:
    out: dict[str, Any] = {
        "study_uid": n.study_uid, "series_uid": n.series_uid,
        "sop_instance_uid": n.sop_instance_uid, "frame": n.frame, "patient_id": n.patient_id,
    }  # fmt: skip
    if n.score is not None:
        out["score"] = round(n.score, 6)
    out["thumbnail"] = thumbnail_url(n)
    return out


def as_json(result: SimilarResult) -> dict[str, Any]:
    cohort = result.cohort
    return {
        "model": result.model,
        "query": _neighbour(result.query),
        "k": result.k,
        "same_study": result.same_study,
        "same_patient": result.same_patient,
        "cohort": None if cohort is None else {
            "id": cohort.id, "name": cohort.name, "version": cohort.version,
            "patients": cohort.patients, "instances": cohort.instances,
        },
        "searched": result.searched,
        "elapsed_ms": round(result.elapsed_ms, 2),
        "results": [_neighbour(n) for n in result.results],
    }  # fmt: skip


def build_similar_router() -> APIRouter:
    router = APIRouter(prefix="/api/similar", tags=["Similar images"], route_class=SimilarRoute)

    @router.get("")
    async def similar(
        request: Request,
        instance: Annotated[
            str,
            Query(min_length=1, max_length=64, description="SOP Instance UID of the query image"),
        ],
        k: Annotated[int, Query(ge=1, le=MAX_K, description="How many answers")] = 10,
        cohort: Annotated[str | None, Query(description="A saved cohort's id or name")] = None,
        model: Annotated[str | None, Query(description="NAME or NAME:VERSION")] = None,
        same_study: Annotated[bool, Query(description="Include the query's study")] = False,
        same_patient: Annotated[
            bool, Query(description="Include the patient's other studies")
        ] = False,
    ) -> dict[str, Any]:
        """The ``k`` instances most similar to ``instance`` (see the module's docstring)."""
        service = _service(request)
        result = await run_in_threadpool(lambda: service.similar(
            instance=instance, k=k, model=model, cohort=cohort, same_study=same_study,
            same_patient=same_patient))  # fmt: skip
        return as_json(result)

    @router.get("/status")
    async def status(request: Request) -> dict[str, Any]:
        """Per model: embeddings, failures, and whether its index is loaded."""
        service = _service(request)
        return await run_in_threadpool(service.status)

    return router


__all__ = ["build_similar_router", "thumbnail_url"]
