"""WADO-RS frames and bulk data (PS3.18 §10.4.1.1.4-5, §8.7.3.3): ``multipart/related;
type="application/octet-stream"`` of native little-endian frames (decoded when stored
compressed), or with ``transfer-syntax=*`` or a matching image media type (PS3.18 Table 8.7.3-5)
the stored compressed frames, unchanged, with their media type and transfer syntax. Frame lists
(PS3.18 §8.2): malformed, zero or negative numbers are 400, numbers beyond NumberOfFrames 404.

A request takes one worker-thread hop: the index lookup (one prepared statement), the frame
geometry and the frames' bytes. Native frames are one read at their offset; encapsulated frames
(whole slide images: tens of thousands of JPEG tiles) are found through the instance's cached
layout (``frame_cache``: the header elements and an index of every frame's fragments, built
once per blob from the Extended or Basic Offset Table or the fragments' item headers), so a
tile is one seek and one read, returned as stored (``image/jpeg`` with the JPEG baseline
transfer syntax when the client accepts it). Frames up to
``FRAME_BUDGET`` bytes are answered as one body; the rest of a larger request streams, read in
batches of about that size with the instance held open.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pydicom
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import InvalidInput, NotFound, Unsupported
from medflow.dicom import pixels
from medflow.dicom.attributes import find_element
from medflow.dicom.multipart import CRLF, multipart_content_type, new_boundary, parse_accept
from medflow.dicomweb import frame_cache
from medflow.dicomweb.deps import StoreDep
from medflow.dicomweb.errors import DicomwebRoute, NotAcceptable
from medflow.dicomweb.wado_common import (
    ANY_TYPES,
    BULK_PATH,
    FRAMES,
    INSTANCE,
    MULTIPART,
    OCTET,
    SERIES,
    STUDY,
    closing,
    dash_of,
    multipart_bytes,
    one_record,
    part_head,
)
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService

router = APIRouter(route_class=DicomwebRoute, tags=["WADO-RS"])
BULK_PATH_RE = re.compile(r"[0-9A-Fa-f]{8}(\.[0-9]{1,6}\.[0-9A-Fa-f]{8})*")
FRAME_BUDGET = 16 << 20
"""Frame bytes read in one hop: a request within it is answered from one buffer."""


def _choose_frame_mode(accept: str | None, info: pixels.FrameInfo) -> pixels.FrameMode:
    if info.transfer_syntax_uid in pixels.VIDEO_SYNTAXES:
        raise NotAcceptable("the pixel data is a video stream; frames are not available")
    for media in parse_accept(accept):
        mode = pixels.frame_mode(media, info)
        if mode is not None:
            return mode
    raise NotAcceptable(
        f'frames are available as {MULTIPART}; type="{OCTET}" (native) or, with '
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


@dataclass
class Frames:
    """Frames read so far, and what a streamed remainder needs."""

    info: pixels.FrameInfo
    mode: pixels.FrameMode
    read: list[bytes]
    rest: list[int]
    opened: OpenInstance | None
    """Still open when ``rest`` is not empty."""
    layout: frame_cache.Layout | None = None
    """The instance's cached layout (None for native pixel data settled by the index)."""


def _stored_or_decoded(opened: OpenInstance, frames: Frames, numbers: list[int]) -> Iterator[bytes]:
    index = frames.layout.index if frames.layout is not None else None
    if frames.mode.as_stored and index is not None:
        return (index.read(opened.fp, n) for n in numbers)
    return pixels.iter_frames(opened.fp, frames.info, numbers, as_stored=frames.mode.as_stored)


def _read_some(
    opened: OpenInstance, frames: Frames, numbers: list[int]
) -> tuple[list[bytes], list[int]]:
    """Frames from the start of ``numbers`` up to about ``FRAME_BUDGET`` bytes (at least
    one), and the numbers left."""
    out: list[bytes] = []
    total = 0
    for frame in _stored_or_decoded(opened, frames, numbers):
        out.append(frame)
        total += len(frame)
        if total >= FRAME_BUDGET:
            break
    return out, numbers[len(out) :]


def _frame_info(
    opened: OpenInstance, record: InstanceRecord, numbers: list[int] | None
) -> tuple[pixels.FrameInfo, frame_cache.Layout | None]:
    """Frame geometry: from the index when it settles it (native pixel data), else from the
    instance's cached layout (the few header elements that give it and, for encapsulated
    pixel data, the index of its frames' fragments)."""
    info = pixels.indexed_frame_info(
        transfer_syntax_uid=record.transfer_syntax_uid,
        rows=record.rows,
        columns=record.columns,
        bits_allocated=record.bits_allocated,
        number_of_frames=record.number_of_frames,
        pixel_data_offset=record.pixel_data_offset,
        pixel_data_length=record.pixel_data_length,
    )
    if info is not None:
        return info, None
    try:
        found = frame_cache.layout(opened.fp, record)
    except Unsupported as exc:
        raise (NotFound(exc.message) if numbers is None else InvalidInput(exc.message)) from exc
    return found.info, found


def _load_frames(
    store: StoreService, record: InstanceRecord, numbers: list[int] | None, accept: str | None
) -> Frames:
    """Validate the request against the object (404 frames, 406 media) and read the frames
    (or the first ``FRAME_BUDGET`` bytes of them), so that a decoding failure is an error
    status, not a broken stream."""
    opened = OpenInstance(store, record)
    try:
        info, found = _frame_info(opened, record, numbers)
        numbers = numbers or list(range(1, info.number_of_frames + 1))
        pixels.check_frame_numbers(numbers, info)
        frames = Frames(info, _choose_frame_mode(accept, info), [], [], None, found)
        try:
            frames.read, frames.rest = _read_some(opened, frames, numbers)
        except Unsupported as exc:
            raise NotAcceptable(exc.message) from exc
    except BaseException:
        opened.close()
        raise
    if frames.rest:
        frames.opened = opened
    else:
        opened.close()
    return frames


async def _frames_tail(frames: Frames, dash: bytes, first: bytes) -> AsyncIterator[bytes]:
    """The body of a request larger than ``FRAME_BUDGET``: what was read, then the rest in
    batches (a failure now can only end the stream: the status is already sent)."""
    opened = frames.opened
    assert opened is not None
    head = part_head(dash, frames.mode.content_type)
    try:
        yield first
        rest = frames.rest
        while rest:
            read, rest = await run_in_threadpool(_read_some, opened, frames, rest)
            yield b"".join(piece for frame in read for piece in (head, frame, CRLF))
        yield closing(dash)
    finally:
        opened.close()  # quick (a file close), and safe in a cancelled task


def _frames_response(frames: Frames) -> Response:
    boundary = new_boundary()
    dash = dash_of(boundary)
    media_type = multipart_content_type(frames.mode.part_media_type, boundary)
    if frames.opened is None:
        return Response(
            multipart_bytes(dash, frames.mode.content_type, frames.read), media_type=media_type
        )
    head = part_head(dash, frames.mode.content_type)
    first = b"".join(piece for frame in frames.read for piece in (head, frame, CRLF))
    return StreamingResponse(
        _frames_tail(frames, dash, first),
        media_type=media_type,
        background=BackgroundTask(frames.opened.close),
    )


def _frames_job(
    store: StoreService,
    study: str,
    series: str,
    instance: str,
    numbers: list[int],
    accept: str | None,
) -> Frames:
    record = one_record(store, study, series, instance)
    if record.pixel_data_offset is None:
        raise InvalidInput("the instance has no Pixel Data; it has no frames")
    remote = _remote_frames(store, record, numbers, accept)
    return remote if remote is not None else _load_frames(store, record, numbers, accept)


def _remote_frames(
    store: StoreService, record: InstanceRecord, numbers: list[int], accept: str | None
) -> Frames | None:
    """Stored frames of a blob that is not a local file (S3) whose layout is cached: read by
    range requests, not by downloading the object (a slide's level can be gigabytes); None
    when that does not apply (the object is then opened as a whole)."""
    found = frame_cache.cached(record.blob_key)
    if found is None or found.index is None or store.blobs.is_local:
        return None
    pixels.check_frame_numbers(numbers, found.info)
    mode = _choose_frame_mode(accept, found.info)
    index = found.index
    size = sum(length for n in numbers for _, length in index.spans(n))
    if not mode.as_stored or size > FRAME_BUDGET:
        return None

    def read(offset: int, length: int) -> bytes:
        return store.read_range(record, offset, length)

    try:
        read_frames = [index.read_with(read, n) for n in numbers]
    except Unsupported as exc:
        raise NotAcceptable(exc.message) from exc
    return Frames(found.info, mode, read_frames, [], None, found)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}",
    summary="Retrieve frames (WADO-RS)",
)
async def retrieve_frames(
    request: Request,
    store: StoreDep,
    study: STUDY,
    series: SERIES,
    instance: INSTANCE,
    frames: FRAMES,
) -> Response:
    numbers = pixels.parse_frame_list(frames)
    loaded = await run_in_threadpool(
        _frames_job, store, study, series, instance, numbers, request.headers.get("accept")
    )
    return _frames_response(loaded)


# ------------------------------------------------------------------------------------------
# Other bulk data
# ------------------------------------------------------------------------------------------
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


def _check_bulk_path(path: str) -> None:
    """400 for a malformed bulk data path: ``tag`` or ``tag.item.tag...`` with hex tags."""
    if not BULK_PATH_RE.fullmatch(path):
        raise InvalidInput(f"malformed bulk data path {path!r}")


def _bulkdata_job(
    store: StoreService, study: str, series: str, instance: str, path: str, accept: str | None
) -> Frames | bytes:
    record = one_record(store, study, series, instance)
    if path.upper() == "7FE00010" and record.pixel_data_offset is not None:
        return _load_frames(store, record, None, accept)
    _check_octet_accept(accept)
    return _element_value(store, record, path)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{path}",
    summary="Retrieve bulk data (WADO-RS)",
)
async def retrieve_bulkdata(
    request: Request,
    store: StoreDep,
    study: STUDY,
    series: SERIES,
    instance: INSTANCE,
    path: BULK_PATH,
) -> Response:
    _check_bulk_path(path)
    result = await run_in_threadpool(
        _bulkdata_job, store, study, series, instance, path, request.headers.get("accept")
    )
    if isinstance(result, Frames):
        return _frames_response(result)
    boundary = new_boundary()
    body = multipart_bytes(dash_of(boundary), OCTET, [result])
    return Response(body, media_type=multipart_content_type(OCTET, boundary))


__all__ = ["router"]
