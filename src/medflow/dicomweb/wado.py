"""WADO-RS: the Retrieve transaction of the Studies Service (PS3.18 §10.4).

Resources (PS3.18 Table 10.4.1-1), each at study, series and instance level where defined:

- instances ``/studies/{s}[/series/{se}[/instances/{i}]]``: ``multipart/related;
  type="application/dicom"``, one part per instance, each ``Content-Type: application/dicom;
  transfer-syntax=...``, streamed from the stored files. Transfer syntax negotiation
  (PS3.18 §8.7.3.5): ``transfer-syntax=*`` returns each instance byte for byte as stored; no
  parameter or Explicit VR Little Endian returns ELE (stored ELE passes through, other syntaxes
  are re-encoded or decoded); another UID is served when it is the stored one. A single
  instance that cannot be transcoded is 406 with the reason. For a study or series, the decision
  is made per instance up front from its transfer syntax and the installed decoders: instances
  that cannot be served are omitted and named in a ``Warning: 299`` header; an instance whose
  decoding fails while the body is already streaming is omitted (logged). At instance level a
  bare ``Accept: application/dicom`` returns the single object without multipart packaging.
- ``/metadata``: ``application/dicom+json`` joined from the stored DICOM JSON texts, absolute
  BulkDataURIs; ``ETag`` + ``If-None-Match`` (304) and ``Cache-Control: private, no-cache``
  (revalidate every time: an instance can be added or replaced; PHI is never shared-cached).
- ``/bulkdata/{path}`` and ``/frames/{list}``: ``multipart/related;
  type="application/octet-stream"``, native little-endian frames (decoded when stored
  compressed); with ``transfer-syntax=*`` or a matching image media type (PS3.18 Table
  8.7.3-5) the stored compressed frames, unchanged, with their media type and transfer syntax.
  Frame lists (PS3.18 §8.2): malformed, zero or negative numbers are 400, numbers beyond
  NumberOfFrames 404.
- ``/rendered`` and ``/thumbnail`` (PS3.18 §10.4.1.1.3, §8.3.5): ``image/jpeg`` (default),
  ``image/png``, ``image/gif``; ``window``, ``viewport``, ``quality``; also the ``accept`` query
  parameter (§8.3.3.1). An instance renders its first frame; a rendered study or series is a
  ``multipart/related`` of its rendered image instances (first frame each); a frame list of more
  than one frame is multipart too. A thumbnail is one image: for a study or series the middle
  image instance of its first series with images, at most 128 pixels a side unless a viewport
  is given. Objects without pixel data (SR, KOS, ...) are 406.

This module has instance retrieval and metadata; ``wado_stream`` builds the instance bodies
(few large writes, reads batched per worker-thread hop), ``wado_frames`` serves frames and bulk
data, ``wado_rendered`` rendered images and thumbnails; ``wado_common`` has what they share.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import Unsupported
from medflow.dicom import pixels
from medflow.dicom.attributes import absolutize_bulkdata
from medflow.dicom.multipart import CRLF, multipart_content_type, new_boundary, parse_accept
from medflow.dicomweb import wado_frames, wado_rendered, wado_stream
from medflow.dicomweb.deps import BaseUrlDep, StoreDep
from medflow.dicomweb.errors import DicomwebRoute, NotAcceptable
from medflow.dicomweb.wado_common import (
    ANY_TYPES,
    DICOM,
    DICOM_JSON,
    ELE,
    INSTANCE,
    MULTIPART,
    SERIES,
    STUDY,
    closing,
    dash_of,
    one_record,
    part_head,
)
from medflow.dicomweb.wado_stream import (
    Piece,
    framed_stream,
    instances_body,
    is_stored,
    part_type,
    read_framed,
    transcode,
)
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService

router = APIRouter(route_class=DicomwebRoute, tags=["WADO-RS"])
CACHE_CONTROL = "private, no-cache"


def _warning(text: str) -> str:
    """An RFC 7234 §5.5 Warning value (code 299, PS3.18 §8.4.2)."""
    return '299 medflow "' + text.replace('"', "'") + '"'


# ------------------------------------------------------------------------------------------
# Instances: negotiation (PS3.18 §8.7.3.5) and streaming
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DicomOption:
    transfer_syntax: str
    """``*`` (as stored) or a Transfer Syntax UID."""
    single: bool
    """A bare ``application/dicom`` (no multipart packaging)."""


def _dicom_options(accept: str | None) -> list[DicomOption]:
    """Acceptable representations of instances, in preference order."""
    options = []
    for media in parse_accept(accept):
        part = (media.param("type") or DICOM).lower()
        multipart = media.type in ANY_TYPES or (media.type == MULTIPART and part in (DICOM, "*/*"))
        if multipart or media.type == DICOM:
            options.append(
                DicomOption(media.param("transfer-syntax") or ELE, single=media.type == DICOM)
            )
    return options


def _serve_mode(option: DicomOption, record: InstanceRecord) -> str | None:
    """``stored`` (byte for byte), ``ele`` (transcode) or None when not possible."""
    stored = record.transfer_syntax_uid
    if option.transfer_syntax in ("*", stored):
        return "stored"
    if option.transfer_syntax == ELE and pixels.can_transcode_to_explicit_le(
        stored, has_pixels=record.pixel_data_offset is not None
    ):
        return "ele"
    return None


def _plan(record: InstanceRecord, options: list[DicomOption]) -> tuple[str, bool] | None:
    for option in options:
        mode = _serve_mode(option, record)
        if mode is not None:
            return mode, option.single
    return None


async def _retrieve(
    request: Request, store: StoreService, study: str, series: str | None = None
) -> Response:
    options = [o for o in _dicom_options(request.headers.get("accept")) if not o.single]
    if not options:
        raise NotAcceptable(f'instances are available as {MULTIPART}; type="{DICOM}"')
    records = await run_in_threadpool(store.find_instances, study_uid=study, series_uid=series)
    plan, omitted = [], 0
    for record in records:
        chosen = _plan(record, options)
        if chosen is None:
            omitted += 1
        else:
            plan.append((record, chosen[0]))
    if not plan:
        raise NotAcceptable("no instance is available in an acceptable transfer syntax")
    headers = {}
    if omitted:
        headers["Warning"] = _warning(
            f"{omitted} instance(s) omitted: not available in an acceptable transfer syntax"
        )
    boundary = new_boundary()
    return StreamingResponse(
        instances_body(store, plan, boundary),
        media_type=multipart_content_type(DICOM, boundary),
        headers=headers,
    )


@dataclass
class _One:
    """One instance's response: the whole body, or (too large) what streams it."""

    media_type: str
    body: Piece | None
    record: InstanceRecord
    head: bytes
    tail: bytes


def _one_job(
    store: StoreService, study: str, series: str, instance: str, options: list[DicomOption]
) -> _One:
    """Lookup, negotiation and the body of one instance, in one worker-thread hop."""
    record = one_record(store, study, series, instance)
    chosen = _plan(record, options)
    if chosen is None:
        raise NotAcceptable(
            "the instance is not available in an acceptable transfer syntax "
            f"(stored as {record.transfer_syntax_uid})"
        )
    mode, single = chosen
    ts = record.transfer_syntax_uid if is_stored(record, mode) else ELE
    head = tail = b""
    media_type = part_type(ts)
    if not single:
        boundary = new_boundary()
        dash = dash_of(boundary)
        head, tail = part_head(dash, part_type(ts)), CRLF + closing(dash)
        media_type = multipart_content_type(DICOM, boundary)
    if not is_stored(record, mode):
        try:
            data = transcode(store, record)
        except Unsupported as exc:
            raise NotAcceptable(exc.message) from exc
        return _One(media_type, b"".join((head, data, tail)), record, head, tail)
    if record.size > wado_stream.READ_CAP:
        return _One(media_type, None, record, head, tail)
    return _One(media_type, read_framed(store, record, head, tail), record, head, tail)


async def _retrieve_one(
    request: Request, store: StoreService, study: str, series: str, instance: str
) -> Response:
    options = _dicom_options(request.headers.get("accept"))
    if not options:
        raise NotAcceptable(f'instances are available as {MULTIPART}; type="{DICOM}"')
    one = await run_in_threadpool(_one_job, store, study, series, instance, options)
    if one.body is None:
        return StreamingResponse(
            framed_stream(store, one.record, one.head, one.tail), media_type=one.media_type
        )
    return Response(one.body, media_type=one.media_type)


@router.get("/studies/{study}", summary="Retrieve a study's instances (WADO-RS)")
async def retrieve_study(request: Request, store: StoreDep, study: STUDY) -> Response:
    return await _retrieve(request, store, study)


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series' instances (WADO-RS)")
async def retrieve_series(
    request: Request, store: StoreDep, study: STUDY, series: SERIES
) -> Response:
    return await _retrieve(request, store, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}",
    summary="Retrieve an instance (WADO-RS)",
)
async def retrieve_instance(
    request: Request, store: StoreDep, study: STUDY, series: SERIES, instance: INSTANCE
) -> Response:
    return await _retrieve_one(request, store, study, series, instance)


# ------------------------------------------------------------------------------------------
# Metadata (PS3.18 §10.4.1.1.2, Annex F)
# ------------------------------------------------------------------------------------------
def _check_json_accept(request: Request) -> None:
    ok = (DICOM_JSON, "application/json", "application/*", "*/*")
    if not any(m.type in ok for m in parse_accept(request.headers.get("accept"))):
        raise NotAcceptable(f"metadata is available as {DICOM_JSON} only")


def _etag_matches(header: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2 weak comparison of If-None-Match against the current ETag."""
    if not header:
        return False
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


async def _metadata(
    request: Request,
    store: StoreService,
    base: str,
    study: str,
    series: str | None = None,
    instance: str | None = None,
) -> Response:
    _check_json_accept(request)
    texts, etag = await run_in_threadpool(
        store.metadata, study_uid=study, series_uid=series, sop_uid=instance
    )
    etag = f'"{etag}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_CONTROL}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    body = absolutize_bulkdata("[" + ",".join(texts) + "]", base)
    return Response(body, media_type=DICOM_JSON, headers=headers)


@router.get("/studies/{study}/metadata", summary="Retrieve a study's metadata (WADO-RS)")
async def study_metadata(
    request: Request, store: StoreDep, base: BaseUrlDep, study: STUDY
) -> Response:
    return await _metadata(request, store, base, study)


@router.get(
    "/studies/{study}/series/{series}/metadata", summary="Retrieve a series' metadata (WADO-RS)"
)
async def series_metadata(
    request: Request, store: StoreDep, base: BaseUrlDep, study: STUDY, series: SERIES
) -> Response:
    return await _metadata(request, store, base, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/metadata",
    summary="Retrieve an instance's metadata (WADO-RS)",
)
async def instance_metadata(
    request: Request,
    store: StoreDep,
    base: BaseUrlDep,
    study: STUDY,
    series: SERIES,
    instance: INSTANCE,
) -> Response:
    return await _metadata(request, store, base, study, series, instance)


router.include_router(wado_frames.router)
router.include_router(wado_rendered.router)
