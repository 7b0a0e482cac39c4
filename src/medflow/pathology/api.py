"""The whole-slide import's REST edge, ``POST /api/wsi/import`` (issue 9), a thin router over
:class:`~medflow.pathology.service.PathologyService`.

The body is the slide file: raw (any content type but ``multipart/form-data``) or a
``multipart/form-data`` upload whose ``file`` part is the slide. Query parameters give what the
file does not say (``patient_id``, ``patient_name``, ``patient_birth_date``, ``patient_sex``,
``accession``, ``study_uid``, ``study_description``, ``specimen``, ``container``, ``stain``,
``label_text``) and ``filename`` (reports and error messages name the upload with it). The body
is streamed into a file under the spool directory, converted to DICOM VL Whole Slide Microscopy
Image instances (PS3.3 A.32.8) and stored (PS3.4 B); the answer (201) names the study, series
and instances stored, with ``Location`` the study's DICOMweb URL. Errors are RFC 9457 problem
details (``application/problem+json``): 415 for a file that is not a slide, 400 for
metadata that contradicts the archive, 409 for a duplicate, 501 when the server lacks
libjpeg-turbo or wsidicomizer.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any, BinaryIO

from fastapi import APIRouter, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import (
    AlreadyExists,
    InvalidInput,
    NotFound,
    Unsupported,
)
from medflow.pathology.errors import ConverterUnavailable, NotASlide
from medflow.pathology.metadata import SlideMetadata
from medflow.pathology.service import PathologyService
from medflow.problems import StatusTable, problem_route

STATUS: StatusTable = [
    (NotASlide, 415, "Not a whole-slide image"),
    (ConverterUnavailable, 501, "Conversion unavailable"),
    (NotFound, 404, "Not found"),
    (AlreadyExists, 409, "Conflict"),
    (InvalidInput, 400, "Bad request"),
    (Unsupported, 400, "Not supported"),
]
"""medflow errors -> HTTP status and problem title (the first that matches)."""
PathologyRoute = problem_route(STATUS)
"""Maps errors to problem details for every whole-slide endpoint."""


def _service(request: Request) -> PathologyService:
    service: PathologyService = request.app.state.container.pathology
    return service


Text = Annotated[str | None, Query()]


SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")
"""Content types a browser sends cross-site without a CORS preflight (Fetch standard)."""


def _same_origin(request: Request) -> bool:
    """No Origin header (not a browser's cross-site form), or this server's own origin."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin.rstrip("/") == f"{request.url.scheme}://{request.url.netloc}"


def _check_request(request: Request) -> None:
    """Refuse what a page on another site could make a browser send (cross-site request
    forgery): a CORS-"simple" content type from a foreign Origin, and a raw body labelled as
    text or a form. Clients send the slide as ``application/octet-stream`` (or the file's
    type), or ``multipart/form-data`` from medflow's own pages or non-browser clients."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in SIMPLE_TYPES and not _same_origin(request):
        raise InvalidInput("a cross-site form cannot import slides: send the file as "
                           "application/octet-stream")  # fmt: skip
    if kind in ("text/plain", "application/x-www-form-urlencoded"):
        raise InvalidInput("send the slide as application/octet-stream (or multipart/form-data "
                           "with a 'file' part), not as text or a url-encoded form")  # fmt: skip


async def _receive(request: Request, target: Path) -> str | None:
    """Write the request's slide into ``target``; the upload's file name if it says one."""
    _check_request(request)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InvalidInput("the multipart/form-data body has no 'file' part")
        source: BinaryIO = upload.file

        def copy() -> None:
            with target.open("wb") as out:
                shutil.copyfileobj(source, out, 1 << 22)

        await run_in_threadpool(copy)
        return upload.filename
    with target.open("wb") as out:
        async for chunk in request.stream():
            await run_in_threadpool(out.write, chunk)  # a disk write off the event loop
    return None


def build_pathology_router() -> APIRouter:
    router = APIRouter(prefix="/api/wsi", tags=["Pathology"], route_class=PathologyRoute)

    @router.post("/import", status_code=201)
    async def import_slide(
        request: Request,
        response: Response,
        patient_id: Text = None,
        patient_name: Text = None,
        patient_birth_date: Text = None,
        patient_sex: Text = None,
        accession: Text = None,
        study_uid: Text = None,
        study_description: Text = None,
        specimen: Text = None,
        container: Text = None,
        stain: Text = None,
        label_text: Text = None,
        filename: Text = None,
    ) -> dict[str, Any]:
        """Convert the slide in the body to DICOM whole-slide instances and store them."""
        service = _service(request)
        options = SlideMetadata(
            patient_id=patient_id, patient_name=patient_name,
            patient_birth_date=patient_birth_date.replace("-", "") if patient_birth_date
            else None, patient_sex=patient_sex, accession_number=accession,
            study_uid=study_uid, study_description=study_description, specimen_id=specimen,
            container_id=container, stain=stain, label_text=label_text,
        )  # fmt: skip
        suffix = Path(filename).suffix if filename else ""
        target = service.upload_file(suffix=suffix)
        try:
            uploaded = await _receive(request, target)
            if target.stat().st_size == 0:
                raise InvalidInput("the request has no slide file in its body")
            name = filename or uploaded or "upload"
            result = await run_in_threadpool(
                lambda: service.import_slide(
                    path=target, options=options, use_sidecar=False, name=name
                )
            )
        finally:
            target.unlink(missing_ok=True)
        response.headers["Location"] = f"/dicomweb/studies/{result.study_uid}"
        return result.as_json()

    return router
