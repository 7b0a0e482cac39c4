"""The DICOMweb edge: every PS3.18 service under one router, mounted at ``/dicomweb``."""

from __future__ import annotations

from fastapi import APIRouter

from medflow.dicomweb import changefeed, delete, qido, stow, wado
from medflow.dicomweb.deps import PREFIX


def build_router() -> APIRouter:
    router = APIRouter(prefix=PREFIX)
    # The change feed goes first: "/changefeed/latest" must not be read as anything else.
    for sub in (changefeed.router, stow.router, qido.router, wado.router, delete.router):
        router.include_router(sub)
    return router
