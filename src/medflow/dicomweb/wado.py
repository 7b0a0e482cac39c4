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
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Annotated, BinaryIO

import pydicom
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import InvalidInput, MedflowError, NotFound, Unsupported
from medflow.dicom import pixels, rendering
from medflow.dicom.attributes import absolutize_bulkdata, find_element
from medflow.dicom.multipart import (
    iter_multipart,
    multipart_content_type,
    new_boundary,
    parse_accept,
)
from medflow.dicomweb.deps import BaseUrlDep, StoreDep
from medflow.dicomweb.errors import DicomwebRoute, NotAcceptable
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService

log = logging.getLogger(__name__)
router = APIRouter(route_class=DicomwebRoute, tags=["WADO-RS"])

DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
MULTIPART = "multipart/related"
OCTET = pixels.OCTET_STREAM
ELE = pixels.EXPLICIT_LE
ANY_TYPES = frozenset({"*/*", "multipart/*"})
STUDY = Annotated[str, Path(description="Study Instance UID")]
SERIES = Annotated[str, Path(description="Series Instance UID")]
INSTANCE = Annotated[str, Path(description="SOP Instance UID")]
FRAMES = Annotated[str, Path(description="Comma-separated 1-based frame numbers")]
BULK_PATH = Annotated[str, Path(description="Bulk data path: tag[.item.tag]...")]
CACHE_CONTROL = "private, no-cache"
BULK_PATH_RE = re.compile(r"[0-9A-Fa-f]{8}(\.[0-9]{1,6}\.[0-9A-Fa-f]{8})*")


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
            options.append(DicomOption(media.param("transfer-syntax") or ELE,
                                       single=media.type == DICOM))
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


def _part_type(ts: str) -> str:
    return f"{DICOM}; transfer-syntax={ts}"


def _instance_parts(
    store: StoreService, plan: list[tuple[InstanceRecord, str]]
) -> Iterator[tuple[dict[str, str], Iterable[bytes]]]:
    """Parts, produced lazily: stored files stream in chunks, transcoded ones are built when
    their turn comes (a failure then omits the instance: the headers are already sent)."""
    for record, mode in plan:
        if mode == "stored" or record.transfer_syntax_uid == ELE:
            yield ({"Content-Type": _part_type(record.transfer_syntax_uid)},
                   store.iter_bytes(record))
            continue
        try:
            data = _transcode(store, record)
        except MedflowError as exc:
            log.warning("instance omitted from the retrieve response: %s", exc.message)
            continue
        yield {"Content-Type": _part_type(ELE)}, [data]


def _transcode(store: StoreService, record: InstanceRecord) -> bytes:
    with store.open_instance(record) as fp:
        return pixels.transcode_to_explicit_le(fp)


async def _retrieve(request: Request, store: StoreService, study: str,
                    series: str | None = None, instance: str | None = None) -> Response:
    options = _dicom_options(request.headers.get("accept"))
    if instance is None:
        options = [o for o in options if not o.single]
    if not options:
        raise NotAcceptable(f'instances are available as {MULTIPART}; type="{DICOM}"')
    records = await run_in_threadpool(
        store.find_instances, study_uid=study, series_uid=series, sop_uid=instance
    )
    if instance is not None:
        return await _retrieve_one(store, records[0], options)
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
            f"{omitted} instance(s) omitted: not available in an acceptable transfer syntax")
    boundary = new_boundary()
    return StreamingResponse(
        iter_multipart(_instance_parts(store, plan), boundary),
        media_type=multipart_content_type(DICOM, boundary), headers=headers,
    )


async def _retrieve_one(store: StoreService, record: InstanceRecord,
                        options: list[DicomOption]) -> Response:
    chosen = _plan(record, options)
    if chosen is None:
        raise NotAcceptable("the instance is not available in an acceptable transfer syntax "
                            f"(stored as {record.transfer_syntax_uid})")
    mode, single = chosen
    ts = record.transfer_syntax_uid
    body: Iterable[bytes]
    if mode == "stored" or ts == ELE:
        body = store.iter_bytes(record)
    else:
        try:
            body = [await run_in_threadpool(_transcode, store, record)]
        except Unsupported as exc:
            raise NotAcceptable(exc.message) from exc
        ts = ELE
    if single:
        return StreamingResponse(iter(body), media_type=_part_type(ts))
    boundary = new_boundary()
    return StreamingResponse(
        iter_multipart([({"Content-Type": _part_type(ts)}, body)], boundary),
        media_type=multipart_content_type(DICOM, boundary),
    )


@router.get("/studies/{study}", summary="Retrieve a study's instances (WADO-RS)")
async def retrieve_study(request: Request, store: StoreDep, study: STUDY) -> Response:
    return await _retrieve(request, store, study)


@router.get("/studies/{study}/series/{series}", summary="Retrieve a series' instances (WADO-RS)")
async def retrieve_series(request: Request, store: StoreDep, study: STUDY,
                          series: SERIES) -> Response:
    return await _retrieve(request, store, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}",
            summary="Retrieve an instance (WADO-RS)")
async def retrieve_instance(request: Request, store: StoreDep, study: STUDY, series: SERIES,
                            instance: INSTANCE) -> Response:
    return await _retrieve(request, store, study, series, instance)


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


async def _metadata(request: Request, store: StoreService, base: str, study: str,
                    series: str | None = None, instance: str | None = None) -> Response:
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
async def study_metadata(request: Request, store: StoreDep, base: BaseUrlDep,
                         study: STUDY) -> Response:
    return await _metadata(request, store, base, study)


@router.get("/studies/{study}/series/{series}/metadata",
            summary="Retrieve a series' metadata (WADO-RS)")
async def series_metadata(request: Request, store: StoreDep, base: BaseUrlDep, study: STUDY,
                          series: SERIES) -> Response:
    return await _metadata(request, store, base, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata",
            summary="Retrieve an instance's metadata (WADO-RS)")
async def instance_metadata(request: Request, store: StoreDep, base: BaseUrlDep, study: STUDY,
                            series: SERIES, instance: INSTANCE) -> Response:
    return await _metadata(request, store, base, study, series, instance)


# ------------------------------------------------------------------------------------------
# Frames and bulk data (PS3.18 §10.4.1.1.4-5, §8.7.3.3)
# ------------------------------------------------------------------------------------------
def _choose_frame_mode(accept: str | None, info: pixels.FrameInfo) -> pixels.FrameMode:
    if info.transfer_syntax_uid in pixels.VIDEO_SYNTAXES:
        raise NotAcceptable("the pixel data is a video stream; frames are not available")
    for media in parse_accept(accept):
        mode = pixels.frame_mode(media, info)
        if mode is not None:
            return mode
    raise NotAcceptable(
        f"frames are available as {MULTIPART}; type=\"{OCTET}\" (native) or, with "
        f"transfer-syntax=*, as stored ({info.transfer_syntax_uid})"
    )


class OpenInstance:
    """A stored instance held open across a streamed response (closed by the stream's end or
    by the response's background task, whichever comes first)."""

    def __init__(self, store: StoreService, record: InstanceRecord) -> None:
        self._stack = contextlib.ExitStack()
        self.fp: BinaryIO = self._stack.enter_context(store.open_instance(record))

    def close(self) -> None:
        self._stack.close()


async def _open(store: StoreService, record: InstanceRecord) -> OpenInstance:
    return await run_in_threadpool(OpenInstance, store, record)


async def _one_record(store: StoreService, study: str, series: str,
                      instance: str) -> InstanceRecord:
    records = await run_in_threadpool(
        store.find_instances, study_uid=study, series_uid=series, sop_uid=instance
    )
    return records[0]


Prepared = tuple[pixels.FrameInfo, pixels.FrameMode, list[int], bytes]


def _prepare_frames(opened: OpenInstance, record: InstanceRecord, numbers: list[int] | None,
                    accept: str | None) -> Prepared:
    """Validate the request against the object (404 frames, 406 media) and produce the first
    frame now, so that a decoding failure is an error status, not a broken stream."""
    header = pixels.read_header(opened.fp)
    try:
        info = pixels.frame_info(header, pixel_data_offset=record.pixel_data_offset,
                                 pixel_data_length=record.pixel_data_length)
    except Unsupported as exc:
        raise (NotFound(exc.message) if numbers is None else InvalidInput(exc.message)) from exc
    numbers = numbers or list(range(1, info.number_of_frames + 1))
    pixels.check_frame_numbers(numbers, info)
    mode = _choose_frame_mode(accept, info)
    try:
        first = next(pixels.iter_frames(opened.fp, info, numbers[:1], as_stored=mode.as_stored))
    except Unsupported as exc:
        raise NotAcceptable(exc.message) from exc
    return info, mode, numbers, first


def _frame_stream(opened: OpenInstance, info: pixels.FrameInfo, mode: pixels.FrameMode,
                  numbers: list[int], first: bytes, boundary: str) -> Iterator[bytes]:
    """The multipart body, one part per frame; closes the instance when done."""

    def parts() -> Iterator[tuple[dict[str, str], Iterable[bytes]]]:
        headers = {"Content-Type": mode.content_type}
        yield headers, [first]
        for frame in pixels.iter_frames(opened.fp, info, numbers[1:], as_stored=mode.as_stored):
            yield headers, [frame]

    try:
        yield from iter_multipart(parts(), boundary)
    finally:
        opened.close()


async def _frames_response(store: StoreService, record: InstanceRecord,
                           numbers: list[int] | None, accept: str | None) -> Response:
    opened = await _open(store, record)
    try:
        info, mode, frame_numbers, first = await run_in_threadpool(
            _prepare_frames, opened, record, numbers, accept)
    except BaseException:
        opened.close()
        raise
    boundary = new_boundary()
    return StreamingResponse(
        _frame_stream(opened, info, mode, frame_numbers, first, boundary),
        media_type=multipart_content_type(mode.part_media_type, boundary),
        background=BackgroundTask(opened.close),
    )


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
            summary="Retrieve frames (WADO-RS)")
async def retrieve_frames(request: Request, store: StoreDep, study: STUDY, series: SERIES,
                          instance: INSTANCE, frames: FRAMES) -> Response:
    numbers = pixels.parse_frame_list(frames)
    record = await _one_record(store, study, series, instance)
    if record.pixel_data_offset is None:
        raise InvalidInput("the instance has no Pixel Data; it has no frames")
    return await _frames_response(store, record, numbers, request.headers.get("accept"))


def _element_value(store: StoreService, record: InstanceRecord, path: str) -> bytes:
    with store.open_instance(record) as fp:
        header = pixels.read_header(fp)
        try:
            elem = find_element(header, path)
        except (KeyError, IndexError, ValueError):
            elem = None
        if elem is None and path.split(".")[-1].upper().startswith("7FE0"):
            fp.seek(0)  # values stored after Pixel Data need a full read
            try:
                elem = find_element(pydicom.dcmread(fp), path)
            except (KeyError, IndexError, ValueError):
                elem = None
        if elem is None:
            raise NotFound("no bulk data at this path")
        big = str(header.file_meta.TransferSyntaxUID) == pixels.EXPLICIT_BE
        try:
            return pixels.element_bytes(elem, big_endian=big)
        except Unsupported as exc:
            raise NotFound(exc.message) from exc


def _check_octet_accept(accept: str | None) -> None:
    for media in parse_accept(accept):
        part = (media.param("type") or OCTET).lower() if media.type == MULTIPART else media.type
        if media.type in ANY_TYPES or part in (OCTET, "*/*"):
            return
    raise NotAcceptable(f'bulk data is available as {MULTIPART}; type="{OCTET}"')


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path}",
            summary="Retrieve bulk data (WADO-RS)")
async def retrieve_bulkdata(request: Request, store: StoreDep, study: STUDY, series: SERIES,
                            instance: INSTANCE, path: BULK_PATH) -> Response:
    _check_bulk_path(path)
    record = await _one_record(store, study, series, instance)
    accept = request.headers.get("accept")
    if path.upper() == "7FE00010" and record.pixel_data_offset is not None:
        return await _frames_response(store, record, None, accept)
    _check_octet_accept(accept)
    data = await run_in_threadpool(_element_value, store, record, path)
    boundary = new_boundary()
    body = b"".join(iter_multipart([({"Content-Type": OCTET}, [data])], boundary))
    return Response(body, media_type=multipart_content_type(OCTET, boundary))


def _check_bulk_path(path: str) -> None:
    """400 for a malformed bulk data path: ``tag`` or ``tag.item.tag...`` with hex tags."""
    if not BULK_PATH_RE.fullmatch(path):
        raise InvalidInput(f"malformed bulk data path {path!r}")


# ------------------------------------------------------------------------------------------
# Rendered and thumbnail resources (PS3.18 §10.4.1.1.3, §8.3.5, §8.7.4)
# ------------------------------------------------------------------------------------------
def _rendered_type(request: Request) -> str:
    """The rendered media type: the ``accept`` query parameter (PS3.18 §8.3.3.1), else the
    Accept header; JPEG for ``*/*`` and ``image/*``."""
    query = request.query_params.get("accept")
    accept = query if query is not None else request.headers.get("accept")
    for media in parse_accept(accept):
        kind = (media.param("type") or "image/jpeg").lower() if media.type == MULTIPART \
            else media.type
        if kind in rendering.RENDERED_MEDIA_TYPES:
            return kind
        if kind in ("*/*", "image/*", "multipart/*"):
            return "image/jpeg"
    raise NotAcceptable("rendered images are available as " +
                        ", ".join(rendering.RENDERED_MEDIA_TYPES))


def _render_options(request: Request, *, thumbnail: bool) -> rendering.RenderOptions:
    q = request.query_params
    return rendering.RenderOptions(
        media_type=_rendered_type(request),
        window=rendering.parse_window(q.get("window")),
        viewport=rendering.parse_viewport(q.get("viewport")),
        quality=rendering.parse_quality(q.get("quality")),
        max_side=rendering.THUMBNAIL_SIDE if thumbnail else None,
    )


def _is_image(record: InstanceRecord) -> bool:
    return record.rows is not None and record.pixel_data_offset is not None


def _render(store: StoreService, record: InstanceRecord, number: int,
            opts: rendering.RenderOptions) -> bytes:
    """One frame of one instance rendered; 404 for a missing frame, 406 when it cannot be."""
    if not _is_image(record):
        raise NotAcceptable("the instance has no pixel data and cannot be rendered as an image")
    with store.open_instance(record) as fp:
        header = pixels.read_header(fp)
        try:
            info = pixels.frame_info(header, pixel_data_offset=record.pixel_data_offset,
                                     pixel_data_length=record.pixel_data_length)
        except Unsupported as exc:
            raise NotAcceptable(exc.message) from exc
        pixels.check_frame_numbers([number], info)
        if info.transfer_syntax_uid in pixels.VIDEO_SYNTAXES:
            raise NotAcceptable("video cannot be rendered as a still image")
        try:
            return rendering.render_frame(fp, header, number, opts)
        except Unsupported as exc:
            raise NotAcceptable(exc.message) from exc


def _rendered_parts(store: StoreService, jobs: list[tuple[InstanceRecord, int]],
                    opts: rendering.RenderOptions) -> Iterator[tuple[dict[str, str],
                                                                     Iterable[bytes]]]:
    for record, number in jobs:
        try:
            data = _render(store, record, number, opts)
        except MedflowError as exc:
            log.warning("image omitted from the rendered response: %s", exc.message)
            continue
        yield {"Content-Type": opts.media_type}, [data]


def _multipart_rendered(store: StoreService, jobs: list[tuple[InstanceRecord, int]],
                        opts: rendering.RenderOptions) -> Response:
    boundary = new_boundary()
    return StreamingResponse(
        iter_multipart(_rendered_parts(store, jobs, opts), boundary),
        media_type=multipart_content_type(opts.media_type, boundary),
    )


async def _rendered_many(request: Request, store: StoreService, study: str,
                         series: str | None) -> Response:
    opts = _render_options(request, thumbnail=False)
    records = await run_in_threadpool(store.find_instances, study_uid=study, series_uid=series)
    images = [r for r in records if _is_image(r)]
    if not images:
        raise NotAcceptable("no instance has pixel data to render")
    return _multipart_rendered(store, [(r, 1) for r in images], opts)


async def _rendered_one(request: Request, store: StoreService, record: InstanceRecord,
                        number: int, *, thumbnail: bool) -> Response:
    opts = _render_options(request, thumbnail=thumbnail)
    data = await run_in_threadpool(_render, store, record, number, opts)
    return Response(data, media_type=opts.media_type)


@router.get("/studies/{study}/rendered", summary="Retrieve a rendered study (WADO-RS)")
async def rendered_study(request: Request, store: StoreDep, study: STUDY) -> Response:
    return await _rendered_many(request, store, study, None)


@router.get("/studies/{study}/series/{series}/rendered",
            summary="Retrieve a rendered series (WADO-RS)")
async def rendered_series(request: Request, store: StoreDep, study: STUDY,
                          series: SERIES) -> Response:
    return await _rendered_many(request, store, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered",
            summary="Retrieve a rendered instance (first frame) (WADO-RS)")
async def rendered_instance(request: Request, store: StoreDep, study: STUDY, series: SERIES,
                            instance: INSTANCE) -> Response:
    record = await _one_record(store, study, series, instance)
    return await _rendered_one(request, store, record, 1, thumbnail=False)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
            summary="Retrieve rendered frames (WADO-RS)")
async def rendered_frames(request: Request, store: StoreDep, study: STUDY, series: SERIES,
                          instance: INSTANCE, frames: FRAMES) -> Response:
    numbers = pixels.parse_frame_list(frames)
    record = await _one_record(store, study, series, instance)
    if len(numbers) == 1:
        return await _rendered_one(request, store, record, numbers[0], thumbnail=False)
    opts = _render_options(request, thumbnail=False)
    first = await run_in_threadpool(_render, store, record, max(numbers), opts)
    del first  # validates the frame numbers and the decoding before streaming
    return _multipart_rendered(store, [(record, n) for n in numbers], opts)


def _representative(records: list[InstanceRecord]) -> InstanceRecord:
    """The middle image instance of the first series that has images."""
    images = [r for r in records if _is_image(r)]
    if not images:
        raise NotAcceptable("no instance has pixel data for a thumbnail")
    first_series = [r for r in images if r.series_uid == images[0].series_uid]
    return first_series[(len(first_series) - 1) // 2]


@router.get("/studies/{study}/thumbnail", summary="Retrieve a study thumbnail (WADO-RS)")
async def thumbnail_study(request: Request, store: StoreDep, study: STUDY) -> Response:
    records = await run_in_threadpool(store.find_instances, study_uid=study)
    return await _rendered_one(request, store, _representative(records), 1, thumbnail=True)


@router.get("/studies/{study}/series/{series}/thumbnail",
            summary="Retrieve a series thumbnail (WADO-RS)")
async def thumbnail_series(request: Request, store: StoreDep, study: STUDY,
                           series: SERIES) -> Response:
    records = await run_in_threadpool(store.find_instances, study_uid=study, series_uid=series)
    return await _rendered_one(request, store, _representative(records), 1, thumbnail=True)


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail",
            summary="Retrieve an instance thumbnail (WADO-RS)")
async def thumbnail_instance(request: Request, store: StoreDep, study: STUDY, series: SERIES,
                             instance: INSTANCE) -> Response:
    record = await _one_record(store, study, series, instance)
    return await _rendered_one(request, store, record, 1, thumbnail=True)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail",
            summary="Retrieve a frame thumbnail (WADO-RS)")
async def thumbnail_frames(request: Request, store: StoreDep, study: STUDY, series: SERIES,
                           instance: INSTANCE, frames: FRAMES) -> Response:
    numbers = pixels.parse_frame_list(frames)
    record = await _one_record(store, study, series, instance)
    return await _rendered_one(request, store, record, numbers[0], thumbnail=True)
