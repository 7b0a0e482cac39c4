"""FastAPI dependencies of the DICOMweb edge (``Annotated`` style, DESIGN.md).

They are ``async``: FastAPI runs a plain ``def`` dependency in the thread pool, a hop that costs
more than these lookups themselves."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from medflow.core.settings import Settings
from medflow.store.service import StoreService

PREFIX = "/dicomweb"


async def get_store(request: Request) -> StoreService:
    store: StoreService = request.app.state.store
    return store


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def dicomweb_base_url(request: Request) -> str:
    """Absolute DICOMweb root (no trailing slash): ``MEDFLOW_PUBLIC_URL`` if set, else the
    request's own base URL, so Location headers and BulkDataURIs are absolute (PS3.18 §8.6)."""
    settings: Settings = request.app.state.settings
    base = settings.public_url or str(request.base_url)
    return base.rstrip("/") + PREFIX


StoreDep = Annotated[StoreService, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
BaseUrlDep = Annotated[str, Depends(dicomweb_base_url)]
