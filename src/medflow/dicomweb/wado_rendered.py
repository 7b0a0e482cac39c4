"""WADO-RS rendered and thumbnail resources (PS3.18 §10.4.1.1.3, §8.3.5, §8.7.4):
``image/jpeg`` (default), ``image/png``, ``image/gif``; ``window``, ``viewport``, ``quality``;
also the ``accept`` query parameter (§8.3.3.1). An instance renders its first frame (only that
frame is decoded); a rendered study or series is a ``multipart/related`` of its rendered image
instances (first frame each); a frame list of more than one frame is multipart too. A thumbnail
is one image: for a study or series the middle image instance of its first series with images,
at most 128 pixels a side unless a viewport is given. Objects without pixel data are 406.

Whole slide images (PS3.3 C.8.12.4, TILED_FULL): an instance's rendered resource renders its
Total Pixel Matrix, the ``viewport`` source region (§8.3.5.1.3) composed from the tiles it
covers (only those decoded, through the cached frame index) and scaled to ``vw,vh``; a frame's
rendered resource renders that tile. The thumbnail of a study or series of slides is the
slide's overview: its THUMBNAIL image, else the smallest VOLUME level, else the OVERVIEW.

A single image takes one worker-thread hop (index lookup, decoding, rendering); a multipart
response renders one image per hop as it streams.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator
from functools import partial
from typing import Any, BinaryIO

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import MedflowError, Unsupported
from medflow.dicom import pixels, rendering, tiles
from medflow.dicom.multipart import CRLF, multipart_content_type, new_boundary, parse_accept
from medflow.dicomweb import frame_cache
from medflow.dicomweb.deps import StoreDep
from medflow.dicomweb.errors import DicomwebRoute, NotAcceptable
from medflow.dicomweb.wado_common import (
    FRAMES,
    INSTANCE,
    MULTIPART,
    SERIES,
    STUDY,
    closing,
    dash_of,
    one_record,
    part_head,
)
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService

log = logging.getLogger(__name__)
Array = np.ndarray[Any, Any]
router = APIRouter(route_class=DicomwebRoute, tags=["WADO-RS"])


def _rendered_type(request: Request) -> str:
    """The rendered media type: the ``accept`` query parameter (PS3.18 §8.3.3.1), else the
    Accept header; JPEG for ``*/*`` and ``image/*``."""
    query = request.query_params.get("accept")
    accept = query if query is not None else request.headers.get("accept")
    for media in parse_accept(accept):
        kind = (
            (media.param("type") or "image/jpeg").lower() if media.type == MULTIPART else media.type
        )
        if kind in rendering.RENDERED_MEDIA_TYPES:
            return kind
        if kind in ("*/*", "image/*", "multipart/*"):
            return "image/jpeg"
    raise NotAcceptable(
        "rendered images are available as " + ", ".join(rendering.RENDERED_MEDIA_TYPES)
    )


def _render_options(request: Request, *, thumbnail: bool) -> rendering.RenderOptions:
    q = request.query_params
    return rendering.RenderOptions(
        media_type=_rendered_type(request),
        window=rendering.parse_window(q.get("window")),
        viewport=rendering.parse_viewport(q.get("viewport")),
        quality=rendering.parse_quality(q.get("quality")),
        max_side=rendering.THUMBNAIL_SIDE if thumbnail else None,
    )


Options = rendering.RenderOptions | MedflowError
"""Render options, or the error they raised: it is raised after the index lookup, so that an
unknown instance is 404 whatever the parameters."""


def _options(request: Request, *, thumbnail: bool) -> Options:
    try:
        return _render_options(request, thumbnail=thumbnail)
    except MedflowError as exc:
        return exc


def _checked(opts: Options) -> rendering.RenderOptions:
    if isinstance(opts, MedflowError):
        raise opts
    return opts


def _is_image(record: InstanceRecord) -> bool:
    return record.rows is not None and record.pixel_data_offset is not None


def _tile_array(fp: BinaryIO, found: frame_cache.Layout, number: int) -> Array:
    """One frame decoded: from its stored bytes through the frame index (Pillow for JPEG and
    JPEG 2000), else by pydicom."""
    ts = found.info.transfer_syntax_uid
    if found.index is not None:
        arr = tiles.decode_tile(found.index.read(fp, number), ts)
        if arr is not None:
            return arr
    return pixels.decode_array(fp, number, ts)


_COMPOSING = threading.BoundedSemaphore(2)


def _render_tiled(fp: BinaryIO, found: frame_cache.Layout, opts: rendering.RenderOptions) -> bytes:
    """A TILED_FULL image rendered over its Total Pixel Matrix: the viewport's source region
    (PS3.18 §8.3.5.1.3; the whole matrix by default) composed from the tiles it covers, only
    those decoded, then scaled to the viewport."""
    grid = found.grid
    assert grid is not None
    vp = opts.viewport
    region, flip_x, flip_y = tiles.clip_region(
        grid,
        vp.sx if vp else 0,
        vp.sy if vp else 0,
        vp.sw if vp else None,
        vp.sh if vp else None,
    )
    with _COMPOSING:  # at most a few regions decoded at once (each up to MAX_REGION_PIXELS)
        arr = tiles.compose_region(grid, region, lambda n: _tile_array(fp, found, n))
    return rendering.render_array(arr, found.header, 0, opts, crop=False, flip=(flip_x, flip_y))


def _render(
    store: StoreService,
    record: InstanceRecord,
    number: int,
    opts: rendering.RenderOptions,
    *,
    whole: bool = False,
) -> bytes:
    """One frame of one instance rendered, or with ``whole`` a tiled image's Total Pixel
    Matrix (a frame otherwise); 404 for a missing frame, 406 when it cannot be rendered."""
    if not _is_image(record):
        raise NotAcceptable("the instance has no pixel data and cannot be rendered as an image")
    with store.open_instance(record) as fp:
        try:
            found = frame_cache.layout(fp, record)
        except Unsupported as exc:
            raise NotAcceptable(exc.message) from exc
        pixels.check_frame_numbers([number], found.info)
        if found.info.transfer_syntax_uid in pixels.VIDEO_SYNTAXES:
            raise NotAcceptable("video cannot be rendered as a still image")
        try:
            if found.grid is not None and whole:
                return _render_tiled(fp, found, opts)
            if found.grid is not None and found.info.samples_per_pixel == 3:
                arr = _tile_array(fp, found, number)
                return rendering.render_array(arr, found.header, number - 1, opts)
            return rendering.render_frame(fp, pixels.read_header(fp), number, opts)
        except Unsupported as exc:
            raise NotAcceptable(exc.message) from exc


def _render_logged(
    store: StoreService, record: InstanceRecord, number: int, opts: rendering.RenderOptions
) -> bytes | None:
    try:
        return _render(store, record, number, opts)
    except MedflowError as exc:
        log.warning("image omitted from the rendered response: %s", exc.message)
        return None


async def _rendered_body(
    store: StoreService,
    jobs: list[tuple[InstanceRecord, int]],
    opts: rendering.RenderOptions,
    dash: bytes,
) -> AsyncIterator[bytes]:
    head = part_head(dash, opts.media_type)
    for record, number in jobs:
        data = await run_in_threadpool(_render_logged, store, record, number, opts)
        if data is not None:
            yield b"".join((head, data, CRLF))
    yield closing(dash)


def _multipart_rendered(
    store: StoreService, jobs: list[tuple[InstanceRecord, int]], opts: rendering.RenderOptions
) -> Response:
    boundary = new_boundary()
    return StreamingResponse(
        _rendered_body(store, jobs, opts, dash_of(boundary)),
        media_type=multipart_content_type(opts.media_type, boundary),
    )


async def _rendered_many(
    request: Request, store: StoreService, study: str, series: str | None
) -> Response:
    opts = _render_options(request, thumbnail=False)
    records = await run_in_threadpool(store.find_instances, study_uid=study, series_uid=series)
    images = [r for r in records if _is_image(r)]
    if not images:
        raise NotAcceptable("no instance has pixel data to render")
    return _multipart_rendered(store, [(r, 1) for r in images], opts)


def _render_instance(
    store: StoreService,
    study: str,
    series: str,
    instance: str,
    number: int,
    opts: Options,
    *,
    whole: bool = False,
) -> bytes:
    record = one_record(store, study, series, instance)
    return _render(store, record, number, _checked(opts), whole=whole)


SLIDE_PREFERENCE = {"THUMBNAIL": 0, "VOLUME": 1}
"""Which image of a slide is its overview: a THUMBNAIL, else the smallest VOLUME level. Never
the LABEL nor the OVERVIEW (the macro photograph of the glass, label included): they carry
the patient's identifiers as pixels."""


def _json_first(obj: dict[str, Any], tag: str, index: int = 0) -> Any:
    values = obj.get(tag, {}).get("Value") or []
    return values[index] if len(values) > index else None


def _slide_overview(store: StoreService, slides: list[InstanceRecord]) -> InstanceRecord:
    """The image of a whole slide series to show as its thumbnail (``SLIDE_PREFERENCE``),
    chosen from the stored metadata (one query; no file is opened: a base level can be
    gigabytes on S3)."""
    first = slides[0]
    texts, _ = store.metadata(study_uid=first.study_uid, series_uid=first.series_uid)
    by_uid = {}
    for text in texts:
        obj = json.loads(text)
        by_uid[_json_first(obj, "00080018")] = obj
    ranked: list[tuple[int, int, int, InstanceRecord]] = []
    for i, record in enumerate(slides):
        obj = by_uid.get(record.sop_instance_uid, {})
        flavor = str(_json_first(obj, "00080008", 2) or "").upper()
        if flavor not in SLIDE_PREFERENCE:
            continue
        columns = _json_first(obj, "00480007") or record.columns or 0
        rows = _json_first(obj, "00480006") or record.rows or 0
        ranked.append((SLIDE_PREFERENCE[flavor], int(columns) * int(rows), i, record))
    if not ranked:
        raise NotAcceptable("the slide has no thumbnail or pyramid level to show (its label "
                            "and overview images carry identifiers: not used)")  # fmt: skip
    return min(ranked)[3]


def _representative(store: StoreService, records: list[InstanceRecord]) -> InstanceRecord:
    """The middle image instance of the first series that has images; for a whole slide image
    series (VL Whole Slide Microscopy), the slide's overview (``_slide_overview``)."""
    images = [r for r in records if _is_image(r)]
    if not images:
        raise NotAcceptable("no instance has pixel data for a thumbnail")
    first_series = [r for r in images if r.series_uid == images[0].series_uid]
    slides = [r for r in first_series if r.sop_class_uid == tiles.VL_WSI]
    if slides:
        return _slide_overview(store, slides)
    return first_series[(len(first_series) - 1) // 2]


def _render_representative(
    store: StoreService, study: str, series: str | None, opts: Options
) -> bytes:
    records = store.find_instances(study_uid=study, series_uid=series)
    return _render(store, _representative(store, records), 1, _checked(opts), whole=True)


@router.get("/studies/{study}/rendered", summary="Retrieve a rendered study (WADO-RS)")
async def rendered_study(request: Request, store: StoreDep, study: STUDY) -> Response:
    return await _rendered_many(request, store, study, None)


@router.get(
    "/studies/{study}/series/{series}/rendered", summary="Retrieve a rendered series (WADO-RS)"
)
async def rendered_series(
    request: Request, store: StoreDep, study: STUDY, series: SERIES
) -> Response:
    return await _rendered_many(request, store, study, series)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/rendered",
    summary="Retrieve a rendered instance (first frame) (WADO-RS)",
)
async def rendered_instance(
    request: Request, store: StoreDep, study: STUDY, series: SERIES, instance: INSTANCE
) -> Response:
    opts = _options(request, thumbnail=False)
    data = await run_in_threadpool(
        partial(_render_instance, whole=True), store, study, series, instance, 1, opts
    )
    return Response(data, media_type=_checked(opts).media_type)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
    summary="Retrieve rendered frames (WADO-RS)",
)
async def rendered_frames(
    request: Request,
    store: StoreDep,
    study: STUDY,
    series: SERIES,
    instance: INSTANCE,
    frames: FRAMES,
) -> Response:
    numbers = pixels.parse_frame_list(frames)
    if len(numbers) == 1:
        opts = _options(request, thumbnail=False)
        data = await run_in_threadpool(
            _render_instance, store, study, series, instance, numbers[0], opts
        )
        return Response(data, media_type=_checked(opts).media_type)
    record = await run_in_threadpool(one_record, store, study, series, instance)
    opts = _render_options(request, thumbnail=False)
    first = await run_in_threadpool(_render, store, record, max(numbers), opts)
    del first  # validates the frame numbers and the decoding before streaming
    return _multipart_rendered(store, [(record, n) for n in numbers], opts)


@router.get("/studies/{study}/thumbnail", summary="Retrieve a study thumbnail (WADO-RS)")
async def thumbnail_study(request: Request, store: StoreDep, study: STUDY) -> Response:
    opts = _options(request, thumbnail=True)
    data = await run_in_threadpool(_render_representative, store, study, None, opts)
    return Response(data, media_type=_checked(opts).media_type)


@router.get(
    "/studies/{study}/series/{series}/thumbnail", summary="Retrieve a series thumbnail (WADO-RS)"
)
async def thumbnail_series(
    request: Request, store: StoreDep, study: STUDY, series: SERIES
) -> Response:
    opts = _options(request, thumbnail=True)
    data = await run_in_threadpool(_render_representative, store, study, series, opts)
    return Response(data, media_type=_checked(opts).media_type)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/thumbnail",
    summary="Retrieve an instance thumbnail (WADO-RS)",
)
async def thumbnail_instance(
    request: Request, store: StoreDep, study: STUDY, series: SERIES, instance: INSTANCE
) -> Response:
    opts = _options(request, thumbnail=True)
    data = await run_in_threadpool(
        partial(_render_instance, whole=True), store, study, series, instance, 1, opts
    )
    return Response(data, media_type=_checked(opts).media_type)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/thumbnail",
    summary="Retrieve a frame thumbnail (WADO-RS)",
)
async def thumbnail_frames(
    request: Request,
    store: StoreDep,
    study: STUDY,
    series: SERIES,
    instance: INSTANCE,
    frames: FRAMES,
) -> Response:
    numbers = pixels.parse_frame_list(frames)
    opts = _options(request, thumbnail=True)
    data = await run_in_threadpool(
        _render_instance, store, study, series, instance, numbers[0], opts
    )
    return Response(data, media_type=_checked(opts).media_type)


__all__ = ["router"]
