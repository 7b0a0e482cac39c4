"""The change feed: every create/update/delete of an instance, in Sequence order.

``GET /changefeed?offset=&limit=&includemetadata=`` returns entries after Sequence ``offset``
(exclusive); with ``startTime``/``endTime`` (ISO 8601) it returns the entries of that window and
``offset`` counts entries to skip. ``GET /changefeed/latest`` returns the newest entry. Durable
consumers (sync, triage, similarity) read only this feed from a saved cursor. The entry format
follows the Azure DICOM service's change feed, which DICOMcast clients expect.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import InvalidInput
from medflow.dicom.attributes import absolutize_bulkdata
from medflow.dicomweb.deps import BaseUrlDep, StoreDep
from medflow.dicomweb.errors import DicomwebRoute
from medflow.store.records import ChangeEvent

router = APIRouter(route_class=DicomwebRoute, tags=["Change feed"])
MAX_LIMIT = 10_000
MAX_OFFSET = 2**62  # within a 64-bit Sequence on SQLite and PostgreSQL


def _entry(e: ChangeEvent, base: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Sequence": e.sequence,
        "StudyInstanceUID": e.study_uid,
        "SeriesInstanceUID": e.series_uid,
        "SOPInstanceUID": e.sop_instance_uid,
        "Action": e.action,
        "Timestamp": e.timestamp.astimezone(UTC).isoformat(),
        "State": e.state,
    }
    if e.metadata_json is not None:
        out["Metadata"] = json.loads(absolutize_bulkdata(e.metadata_json, base))
    return out


def _time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "+"))
    except ValueError:
        raise InvalidInput(f"{name} is not an ISO 8601 date-time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/changefeed", summary="Changes after a Sequence number or within a time window")
async def changefeed(
    store: StoreDep,
    base: BaseUrlDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    includemetadata: bool = False,
    start_time: Annotated[str | None, Query(alias="startTime")] = None,
    end_time: Annotated[str | None, Query(alias="endTime")] = None,
) -> Response:
    events = await run_in_threadpool(
        store.change_feed,
        offset=offset,
        limit=limit,
        start_time=_time(start_time, "startTime"),
        end_time=_time(end_time, "endTime"),
        include_metadata=includemetadata,
    )
    body = json.dumps([_entry(e, base) for e in events])
    return Response(body, media_type="application/json")


@router.get("/changefeed/latest", summary="The newest change feed entry")
async def changefeed_latest(store: StoreDep, base: BaseUrlDep) -> Response:
    latest = await run_in_threadpool(store.latest_change)
    body: dict[str, Any] = _entry(latest, base) if latest else {"Sequence": 0}
    return Response(json.dumps(body), media_type="application/json")
