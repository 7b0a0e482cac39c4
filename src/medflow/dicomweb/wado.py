"""Placeholder; being written."""

from fastapi import APIRouter

from medflow.dicomweb.errors import DicomwebRoute

router = APIRouter(route_class=DicomwebRoute)
