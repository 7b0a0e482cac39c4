"""The models' REST edge (issue 11, Serving), a thin router over
:mod:`medflow.ml.serving.service`:

- ``GET /api/models``: every model name with its versions (stage, architecture, input spec,
  test metrics summary) and which is in production;
- ``GET /api/models/{name}``: one name's versions;
- ``POST /api/models/{name}/predict`` (the production version) and
  ``POST /api/models/{name}/versions/{version}/predict``: the body is one DICOM Part 10 file
  (``Content-Type: application/dicom``, at most :data:`MAX_DICOM_BYTES`) or JSON references to
  the archive, ``{"study": uid, "series": uid?, "instances": [uid, ...]?}`` or a list of them
  (a batch of at most ``schemas.MAX_REFS``); the answer is
  ``{"model", "version", "predictions": [...], "elapsed_ms"}`` with a prediction per frame.

Loading a model and predicting run in the threadpool (``run_in_threadpool``), never on the
event loop. Errors are RFC 9457 problem details (``application/problem+json``): 404 unknown
model, version, study, series or instance; 422 an image the model does not read (another
modality or body part, no pixel data, pixel data that cannot be decoded) with the reason;
400 a malformed body; 413 a body or a set of references over the limits; 415 another content
type; 503/500 storage failures."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import InvalidInput, NotFound, Unsupported
from medflow.ml.serving.errors import TooLarge, UnsupportedMediaType
from medflow.ml.serving.schemas import MAX_REFS, ModelOut, PredictResponse, StudyRef
from medflow.ml.serving.service import (
    InstanceRefs,
    Predictors,
    catalogue,
    parse_dicom,
    predict_records,
    resolve_refs,
)
from medflow.problems import PROBLEM_JSON, StatusTable, Validation, problem_route
from medflow.store.service import StoreService

STATUS: StatusTable = [
    (TooLarge, 413, "Content too large"),
    (UnsupportedMediaType, 415, "Unsupported media type"),
    (NotFound, 404, "Not found"),
    (InvalidInput, 400, "Bad request"),
    (Unsupported, 422, "Unprocessable content"),
]
"""medflow errors -> HTTP status and problem title (the first that matches)."""
ModelsRoute = problem_route(STATUS, validation=Validation(400, "Bad request"))
MAX_DICOM_BYTES = 64 * 2**20
"""The largest ``application/dicom`` body (bigger: 413)."""
MAX_JSON_BYTES = 2**20
DICOM = "application/dicom"
JSON = "application/json"

_PROBLEM = {"content": {PROBLEM_JSON: {"schema": {"type": "object"}}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown model, version, study, series or instance", **_PROBLEM},
}
PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"description": "Malformed body (not Part 10, bad JSON or references)", **_PROBLEM},
    413: {"description": "Body over 64 MiB, or references over 512 frames", **_PROBLEM},
    415: {"description": "Content type other than application/dicom or JSON", **_PROBLEM},
    422: {"description": "An image the model does not read, with the reason", **_PROBLEM},
}
_REF_SCHEMA = StudyRef.model_json_schema()
_BATCH_SCHEMA = {"type": "array", "items": _REF_SCHEMA, "minItems": 1, "maxItems": MAX_REFS}
PREDICT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One DICOM Part 10 instance, or JSON references to archived images "
        f"(one object, or a list of up to {MAX_REFS} for a batch).",
        "content": {
            DICOM: {"schema": {"type": "string", "format": "binary"}},
            JSON: {"schema": {"oneOf": [_REF_SCHEMA, _BATCH_SCHEMA]}},
        },
    }
}
PREDICT_DESCRIPTION = """The body is one DICOM instance (`application/dicom`, Part 10) or JSON
references to the archive: `{"study": uid}` (every image of the study that fits the model),
`{"study": uid, "series": uid}`, `{"study": uid, "instances": [uid, ...]}` (each must fit), or a
list of those (a batch). Each frame is preprocessed as in training (modality LUT, VOI, resize,
per-image standardisation) and scored; probabilities carry the log training priors (calibrated to
the training prevalence). A model that does not fit the input (another modality or body part, no
pixel data) answers 422 with the reason."""


def _models(request: Request) -> Predictors:
    models: Predictors = request.app.state.container.models
    return models


def _store(request: Request) -> StoreService:
    store: StoreService = request.app.state.container.store
    return store


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (``TooLarge``) past ``limit`` bytes before it is all read."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {int(declared)} bytes; at most {limit}")
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise TooLarge(f"the body is over {limit} bytes")
    return bytes(data)


def parse_refs(data: bytes) -> list[InstanceRefs]:
    """A JSON body: one :class:`StudyRef` or a list of them (``InvalidInput`` otherwise)."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the body is not JSON: {exc}") from None
    items = body if isinstance(body, list) else [body]
    if not items or len(items) > MAX_REFS:
        raise InvalidInput(f"a batch holds 1 to {MAX_REFS} references")
    refs = []
    for n, item in enumerate(items, start=1):
        try:
            ref = StudyRef.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidInput(f"reference {n}: {problems}") from None
        refs.append(InstanceRefs(ref.study, ref.series, tuple(ref.instances or ())))
    return refs


async def predict_request(request: Request, name: str, version: int | None) -> dict[str, Any]:
    """Score the request's body with ``name`` (production) or ``name:version``."""
    started = time.perf_counter()
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    models, store = _models(request), _store(request)
    if kind == DICOM:
        data = await _body(request, MAX_DICOM_BYTES)
        dataset = await run_in_threadpool(parse_dicom, data)
        predictor = await run_in_threadpool(models.get, name, version)
        predictions = await run_in_threadpool(predictor.predict, [dataset])
    elif kind == JSON:
        refs = parse_refs(await _body(request, MAX_JSON_BYTES))
        predictor = await run_in_threadpool(models.get, name, version)

        def work() -> list[Any]:
            records = resolve_refs(store, refs, spec=predictor.spec)
            return predict_records(predictor, store, records)

        predictions = await run_in_threadpool(work)
    else:
        raise UnsupportedMediaType(f"send {DICOM} (one Part 10 instance) or {JSON} (archive "
                                   f"references), not {kind or 'no content type'}")  # fmt: skip
    return {
        "model": predictor.info.name,
        "version": predictor.info.version,
        "predictions": [p.as_json() for p in predictions],
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    }


Name = Annotated[str, Path(description="Model name (as registered by `medflow train`)")]


def build_models_router() -> APIRouter:
    router = APIRouter(prefix="/api/models", tags=["Models"], route_class=ModelsRoute)

    @router.get("", response_model=list[ModelOut], summary="List the registered models")
    async def list_models(request: Request) -> list[dict[str, Any]]:
        """Every model name with its versions: stage, architecture, input spec, test metrics
        summary; `production` is the version `POST /api/models/{name}/predict` uses."""
        return await run_in_threadpool(lambda: catalogue(_models(request).registry))

    @router.get("/{name}", response_model=ModelOut, summary="One model's versions",
                responses=ERRORS)  # fmt: skip
    async def show_model(request: Request, name: Name) -> dict[str, Any]:
        """The versions of one model name (404 when none is registered)."""
        found = await run_in_threadpool(lambda: catalogue(_models(request).registry, name=name))
        return found[0]

    @router.post("/{name}/predict", response_model=PredictResponse, responses=PREDICT_ERRORS,
                 summary="Predict with the production version", openapi_extra=PREDICT_BODY,
                 description=PREDICT_DESCRIPTION)  # fmt: skip
    async def predict_production(request: Request, name: Name) -> dict[str, Any]:
        return await predict_request(request, name, None)

    @router.post("/{name}/versions/{version}/predict", response_model=PredictResponse,
                 responses=PREDICT_ERRORS, summary="Predict with one version",
                 openapi_extra=PREDICT_BODY, description=PREDICT_DESCRIPTION)  # fmt: skip
    async def predict_version(
        request: Request,
        name: Name,
        version: Annotated[int, Path(description="Model version (1, 2, ...)")],
    ) -> dict[str, Any]:
        return await predict_request(request, name, version)

    return router
