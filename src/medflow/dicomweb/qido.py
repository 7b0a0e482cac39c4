"""QIDO-RS: the Search transaction of the Studies Service (PS3.18 10.6).

Resources (PS3.18 Table 10.6.1-1): ``/studies``, ``/series``, ``/instances``,
``/studies/{study}/series``, ``/studies/{study}/instances`` and
``/studies/{study}/series/{series}/instances``. Query parameters (PS3.18 8.3.4): attribute
matches (keywords or tags, dotted through sequences), ``fuzzymatching``, ``includefield``,
``limit``, ``offset``, plus ``emptyvaluematching``/``multiplevaluematching`` (accepted, not
supported: a Warning says so) and the common ``accept``/``charset`` (PS3.18 8.3.3).

The response is ``application/dicom+json`` (PS3.18 F.2). An empty result is 200 with ``[]``:
PS3.18 8.3.4.4.1 names 204, but a JSON array is what DICOM JSON clients parse without a special
case. Warnings use the HTTP Warning header, code 299 (PS3.18 8.3.4.2, 8.3.4.4.1): attributes
that cannot be matched and were ignored, a clamped ``limit``, and more results to request.
Bad requests (unknown parameters, malformed values) are 400 with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import InvalidInput
from medflow.dicom.attributes import is_valid_uid
from medflow.dicom.matching import (
    AttributePath,
    Match,
    parse_attribute,
    parse_include_fields,
    parse_match,
)
from medflow.dicom.multipart import parse_accept
from medflow.dicomweb.deps import BaseUrlDep, StoreDep
from medflow.dicomweb.errors import DicomwebRoute, NotAcceptable
from medflow.store.query import Level, Query, QueryResult

log = logging.getLogger(__name__)
router = APIRouter(route_class=DicomwebRoute, tags=["QIDO-RS"])

DICOM_JSON = "application/dicom+json"
ACCEPTABLE = {
    DICOM_JSON: DICOM_JSON,
    "application/json": "application/json",
    "application/*": DICOM_JSON,
    "*/*": DICOM_JSON,
}
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_OFFSET = 2**31 - 1
CONTROL = frozenset(
    {
        "limit",
        "offset",
        "fuzzymatching",
        "includefield",
        "emptyvaluematching",
        "multiplevaluematching",
        "accept",
        "charset",
    }
)
UNSUPPORTED_FLAGS = {
    "emptyvaluematching": "The emptyvaluematching parameter is not supported. "
    "Empty Value Matching has not been performed.",
    "multiplevaluematching": "The multiplevaluematching parameter is not supported. "
    "Multiple Value Matching has not been performed.",
}
STUDY = Annotated[str, Path(description="Study Instance UID")]
SERIES = Annotated[str, Path(description="Series Instance UID")]


# FastAPI runs a plain ``def`` dependency in the thread pool: ``deps.StoreDep`` and
# ``deps.BaseUrlDep`` cost two thread hops per request for two attribute reads. These do the same
# on the event loop; the search itself is the one hop (``run_in_threadpool``) a search makes.


@dataclass
class SearchRequest:
    """The query parameters of one search, parsed (PS3.18 8.3.4)."""

    matches: list[Match] = field(default_factory=list)
    include_all: bool = False
    include: tuple[AttributePath, ...] = ()
    fuzzy: bool = False
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    clamped: bool = False
    warnings: list[str] = field(default_factory=list)
    accept: str | None = None


def _uint(name: str, value: str) -> int:
    """``uint`` of PS3.18 8.3.4.4."""
    if not value.isascii() or not value.isdigit():
        raise InvalidInput(f"{name} must be a non-negative integer")
    return int(value)


def _flag(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered not in ("true", "false"):
        raise InvalidInput(f"{name} must be true or false")
    return lowered == "true"


def _control(req: SearchRequest, name: str, value: str, includes: list[str]) -> None:
    if name == "includefield":
        includes.append(value)
    elif name == "limit":
        limit = _uint(name, value)
        req.limit, req.clamped = min(limit, MAX_LIMIT), limit > MAX_LIMIT
    elif name == "offset":
        req.offset = min(_uint(name, value), MAX_OFFSET)
    elif name == "fuzzymatching":
        req.fuzzy = _flag(name, value)
    elif name in UNSUPPORTED_FLAGS:
        if _flag(name, value):
            req.warnings.append(UNSUPPORTED_FLAGS[name])
    elif name == "accept":
        req.accept = value


def parse_search(items: list[tuple[str, str]]) -> SearchRequest:
    """Parse (already URL-decoded) query parameters; raises ``InvalidInput`` (400)."""
    req = SearchRequest()
    seen: set[str] = set()
    includes: list[str] = []
    for name, value in items:
        if name != "includefield":
            if name in seen:
                raise InvalidInput(f"query parameter {name!r} is repeated")
            seen.add(name)
        if name in CONTROL:
            _control(req, name, value, includes)
            continue
        try:
            attribute = parse_attribute(name)
        except InvalidInput:
            raise InvalidInput(
                f"unknown query parameter {name!r}: not a DICOM attribute keyword or tag, nor "
                "one of limit, offset, fuzzymatching, includefield"
            ) from None
        req.matches.append(parse_match(attribute, value))
    req.include_all, req.include = parse_include_fields(includes)
    return req


def _media_type(request: Request, override: str | None) -> str:
    """The response media type from the Accept header or ``accept`` parameter (PS3.18 8.3.3)."""
    for media in parse_accept(override or request.headers.get("accept")):
        chosen = ACCEPTABLE.get(media.type)
        if chosen is not None:
            return chosen
    raise NotAcceptable(f"search results are available as {DICOM_JSON} only")


def _warning(base: str, text: str) -> str:
    return f'299 {base}: "{text}"'


def _respond(result: QueryResult, req: SearchRequest, media: str, base: str) -> Response:
    response = Response(result.json_bytes(), media_type=media)
    texts = list(req.warnings)
    if result.ignored:
        texts.append(
            "The following attributes are not supported as matching keys and were "
            "ignored: " + ", ".join(dict.fromkeys(result.ignored))
        )
    if result.more and req.clamped:
        texts.append(
            "The number of results exceeded the maximum supported by the server. "
            "Additional results can be requested."
        )
    elif result.more:
        texts.append("There are additional results that can be requested.")
    for text in texts:
        response.headers.append("Warning", _warning(base, text))
    return response


async def _search(
    request: Request,
    store: StoreDep,
    base: str,
    level: Level,
    study: str | None = None,
    series: str | None = None,
) -> Response:
    for uid in (study, series):
        if uid is not None and not is_valid_uid(uid):
            raise InvalidInput("the UID in the request URL is not a valid UID")
    req = parse_search(request.query_params.multi_items())
    media = _media_type(request, req.accept)
    query = Query(
        level=level,
        matches=tuple(req.matches),
        study_uid=study,
        series_uid=series,
        fuzzy=req.fuzzy,
        include_all=req.include_all,
        include=req.include,
        limit=req.limit,
        offset=req.offset,
        base_url=base,
    )
    result = await run_in_threadpool(store.search, query)
    log.debug("QIDO %s search: %d result(s)", level, len(result.texts))
    return _respond(result, req, media, base)


@router.get("/studies", summary="Search for studies (QIDO-RS)")
async def search_studies(request: Request, store: StoreDep, base: BaseUrlDep) -> Response:
    return await _search(request, store, base, "study")


@router.get("/series", summary="Search for series in all studies (QIDO-RS)")
async def search_series(request: Request, store: StoreDep, base: BaseUrlDep) -> Response:
    return await _search(request, store, base, "series")


@router.get("/instances", summary="Search for instances in all studies (QIDO-RS)")
async def search_instances(request: Request, store: StoreDep, base: BaseUrlDep) -> Response:
    return await _search(request, store, base, "instance")


@router.get("/studies/{study}/series", summary="Search for series of a study (QIDO-RS)")
async def search_study_series(
    request: Request, store: StoreDep, base: BaseUrlDep, study: STUDY
) -> Response:
    return await _search(request, store, base, "series", study)


@router.get("/studies/{study}/instances", summary="Search for instances of a study (QIDO-RS)")
async def search_study_instances(
    request: Request, store: StoreDep, base: BaseUrlDep, study: STUDY
) -> Response:
    return await _search(request, store, base, "instance", study)


@router.get(
    "/studies/{study}/series/{series}/instances",
    summary="Search for instances of a series (QIDO-RS)",
)
async def search_series_instances(
    request: Request, store: StoreDep, base: BaseUrlDep, study: STUDY, series: SERIES
) -> Response:
    return await _search(request, store, base, "instance", study, series)


__all__ = ["parse_search", "router"]
