"""STOW-RS: ``POST /studies[/{study}]`` (PS3.18 §10.5).

The body is streamed part by part into spool files (never held in memory); only a complete
multipart body is stored, each instance through ``StoreService.store`` (the same path as
``medflow ingest`` and DIMSE C-STORE). The response is the Store Instances Response Module
(PS3.18 Table 10.5.3-1) in DICOM JSON: ReferencedSOPSequence for stored instances and
FailedSOPSequence with FailureReason (0008,1197) for the others, each with the reason in words in
ErrorComment (0000,0902) (as the DIMSE status would carry it). Status: 200 all stored,
202 some failed, 409 none stored, 400 malformed request, 415 unsupported media type.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastapi import APIRouter, Request, Response
from pydicom.dataset import Dataset
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import InvalidInput
from medflow.dicom.attributes import is_valid_uid
from medflow.dicom.multipart import MultipartReader, parse_accept, parse_media_type
from medflow.dicomweb.deps import BaseUrlDep, SettingsDep, StoreDep
from medflow.dicomweb.errors import DicomwebRoute, NotAcceptable, UnsupportedMediaType
from medflow.store.records import StoreOutcome
from medflow.store.spool import SpooledObject, SpoolWriter, finish_all

router = APIRouter(route_class=DicomwebRoute, tags=["STOW-RS"])

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
CANNOT_UNDERSTAND = 0xC000


def _check_request(request: Request, study: str | None) -> str:
    """Validate Content-Type and Accept; return the multipart boundary."""
    raw = request.headers.get("content-type")
    if not raw:
        raise UnsupportedMediaType("Content-Type is missing; expected multipart/related")
    ctype = parse_media_type(raw)
    if ctype.type != "multipart/related":
        raise UnsupportedMediaType(
            f'Content-Type {ctype.type} is not supported; use multipart/related; type="{DICOM}"'
        )
    part_type = (ctype.param("type") or DICOM).lower()
    if part_type != DICOM:
        raise UnsupportedMediaType(
            f"multipart/related type {part_type} is not supported; only {DICOM} parts are"
        )
    accepted = parse_accept(request.headers.get("accept"))
    if not any(
        m.type in (DICOM_JSON, "application/json", "*/*", "application/*") for m in accepted
    ):
        raise NotAcceptable(f"STOW-RS responses are available as {DICOM_JSON} only")
    boundary = ctype.param("boundary")
    if not boundary:
        raise InvalidInput("multipart/related Content-Type has no boundary parameter")
    if study is not None and not is_valid_uid(study):
        raise InvalidInput("the Study Instance UID in the URL is not a valid UID")
    return boundary


async def _spool_parts(
    request: Request, boundary: str, spool_dir: Path
) -> list[tuple[SpoolWriter, dict[str, str]]]:
    writers: list[tuple[SpoolWriter, dict[str, str]]] = []

    def new_sink(headers: dict[str, str]) -> SpoolWriter:
        writer = SpoolWriter(spool_dir)
        writers.append((writer, headers))
        return writer

    reader = MultipartReader(boundary, new_sink)
    try:
        async for chunk in request.stream():
            reader.feed(chunk)
        reader.close()
    except BaseException:
        for writer, _ in writers:
            writer.abort()
        raise
    return writers


def _finish(
    writers: list[tuple[SpoolWriter, dict[str, str]]],
) -> tuple[list[SpooledObject], list[int]]:
    """fsync the DICOM parts; parts of another type are failed without being stored."""
    dicom, foreign = [], []
    for i, (writer, headers) in enumerate(writers):
        part_type = parse_media_type(headers.get("content-type", DICOM)).type
        if part_type != DICOM:
            writer.abort()
            foreign.append(i)
            continue
        dicom.append(writer)
    return finish_all(dicom), foreign


def _response_dataset(outcomes: list[StoreOutcome], base: str, study: str | None) -> Dataset:
    ds = Dataset()
    stored = [o for o in outcomes if o.ok]
    studies = {o.study_uid for o in stored}
    if study or len(studies) == 1:
        ds.RetrieveURL = f"{base}/studies/{study or next(iter(studies))}"
    failed = []
    for o in outcomes:
        item = Dataset()
        if o.sop_class_uid:
            item.ReferencedSOPClassUID = o.sop_class_uid
        if o.sop_instance_uid:
            item.ReferencedSOPInstanceUID = o.sop_instance_uid
        if o.ok:
            item.RetrieveURL = (
                f"{base}/studies/{o.study_uid}/series/{o.series_uid}/instances/{o.sop_instance_uid}"
            )
        else:
            item.FailureReason = o.failure_reason or 0x0110
            if o.message:  # the reason in words: ErrorComment (0000,0902), LO of 64 characters
                item.ErrorComment = o.message[:64]
            failed.append(item)
            continue
        ds.ReferencedSOPSequence = [*ds.get("ReferencedSOPSequence", []), item]
    if failed:
        ds.FailedSOPSequence = failed
    return ds


@router.post("/studies", summary="Store instances (STOW-RS)")
@router.post("/studies/{study}", summary="Store instances into a study (STOW-RS)")
async def store_instances(
    request: Request,
    store: StoreDep,
    settings: SettingsDep,
    base: BaseUrlDep,
    study: str | None = None,
) -> Response:
    boundary = _check_request(request, study)
    writers = await _spool_parts(request, boundary, settings.spool_dir())
    if not writers:
        raise InvalidInput("the multipart body contains no parts")
    objects, foreign = await run_in_threadpool(_finish, writers)
    outcomes = await run_in_threadpool(store.store, objects=objects, expected_study_uid=study)
    for i in foreign:  # keep the response in request order
        outcomes.insert(
            i,
            StoreOutcome(
                ok=False, failure_reason=CANNOT_UNDERSTAND, message="part is not application/dicom"
            ),
        )
    ds = _response_dataset(outcomes, base, study)
    n_ok = sum(o.ok for o in outcomes)
    status = 200 if n_ok == len(outcomes) else 202 if n_ok else 409
    return Response(json.dumps(ds.to_json_dict()), status_code=status, media_type=DICOM_JSON)
