"""``DELETE`` of a study, series or instance: 204 on success, 404 if absent.

A hard delete (the index rows first, then the blobs); each deleted instance is recorded in the
change feed with Action "delete". Not part of PS3.18's RESTful services, but the common
archive extension (as in dcm4chee, Orthanc and the Azure DICOM service).
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from medflow.dicomweb.deps import StoreDep
from medflow.dicomweb.errors import DicomwebRoute

router = APIRouter(route_class=DicomwebRoute, tags=["Delete"])


@router.delete("/studies/{study}", status_code=204)
@router.delete("/studies/{study}/series/{series}", status_code=204)
@router.delete("/studies/{study}/series/{series}/instances/{instance}", status_code=204)
async def delete(
    store: StoreDep, study: str, series: str | None = None, instance: str | None = None
) -> Response:
    await run_in_threadpool(store.delete, study_uid=study, series_uid=series, sop_uid=instance)
    return Response(status_code=204)
