"""The similar images REST edge (issue 11), a thin router over
:class:`~medflow.ml.similar.service.SimilarService` (``request.app.state.similar``):

- ``GET /api/similar?instance=UID[&k=10][&cohort=ID|NAME][&model=NAME[:VERSION]]
  [&same_study=false][&same_patient=false]``: the ``k`` (1..100) archived instances most
  similar to the instance by cosine similarity of the model's embeddings, best first, each with
  its study, series and SOP Instance UIDs, frame, PatientID, ``score`` and a WADO-RS
  ``thumbnail`` URL. By default the query's own study and patient are left out (other
  patients' cases); ``same_study``/``same_patient`` let them in. ``cohort`` restricts the
  answers to a saved cohort's patients.
- ``GET /api/similar/status``: per model, the embeddings, failures and the index's state; the
  default (production) model; whether this server computes embeddings and, per model, how many
  change feed entries its embedding worker has still to read (``backlog``: from the saved
  cursors, so right whichever process runs the worker). The UI's panel tells from it why an
  image has no embedding: no model in production, not computed yet, or not read by the model.

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
from medflow.ml.similar.store import cursor_name
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


def _progress(request: Request, service: SimilarService, refs: list[str]) -> dict[str, Any]:
    """The default model, whether this server computes embeddings (the worker runs with
    triage) and each model's backlog: change feed entries after its worker's saved cursor."""
    default = service.default_model() if service.default_model is not None else None
    store = getattr(request.app.state, "store", None)
    latest_event = store.latest_change() if store is not None else None
    latest = int(latest_event.sequence) if latest_event is not None else 0
    settings = getattr(request.app.state, "settings", None)
    backlog = {ref: max(0, latest - service.embeddings.cursor(cursor_name(ref)))
               for ref in sorted({*refs, *([default] if default else [])})}  # fmt: skip
    return {
        "default_model": default,
        "embedding": {
            "enabled": bool(settings.triage.enabled) if settings is not None else None,
            "latest": latest,
            "backlog": backlog,
        },
    }


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
        """Per model: embeddings, failures, whether its index is loaded, and the backlog of
        its embedding worker; the default model and whether embeddings are computed here."""
        service = _service(request)

        def answer() -> dict[str, Any]:
            found = service.status()
            refs = [str(m["model"]) for m in found["models"]]
            return {**found, **_progress(request, service, refs)}

        return await run_in_threadpool(answer)

    return router


__all__ = ["build_similar_router", "thumbnail_url"]
