"""What the WADO-RS modules share: media types, path parameters, small helpers."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path

from medflow.dicom import pixels
from medflow.dicom.multipart import CRLF
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService

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


def dash_of(boundary: str) -> bytes:
    return b"--" + boundary.encode("latin-1")


def part_head(dash: bytes, content_type: str) -> bytes:
    """The delimiter line and headers of one part, as ``iter_multipart`` writes them."""
    return dash + CRLF + f"Content-Type: {content_type}".encode("latin-1") + CRLF + CRLF


def closing(dash: bytes) -> bytes:
    return dash + b"--" + CRLF


def multipart_bytes(dash: bytes, content_type: str, bodies: list[bytes]) -> bytes:
    """A whole multipart/related body of parts of one content type (as ``iter_multipart``)."""
    head = part_head(dash, content_type)
    pieces: list[bytes] = []
    for body in bodies:
        pieces += (head, body, CRLF)
    pieces.append(closing(dash))
    return b"".join(pieces)


def one_record(store: StoreService, study: str, series: str, instance: str) -> InstanceRecord:
    """The index record of one instance (``NotFound`` when there is none)."""
    return store.find_instance(study_uid=study, series_uid=series, sop_uid=instance)


__all__ = [
    "ANY_TYPES",
    "BULK_PATH",
    "DICOM",
    "DICOM_JSON",
    "ELE",
    "FRAMES",
    "INSTANCE",
    "MULTIPART",
    "OCTET",
    "SERIES",
    "STUDY",
    "closing",
    "dash_of",
    "multipart_bytes",
    "one_record",
    "part_head",
]
