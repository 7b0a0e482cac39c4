"""``medflow ingest``: files, folders and zip archives into the archive.

Locally (``--data-dir``) through ``StoreService.store``, remotely (``--url``) through STOW-RS:
the same rules as every other way in. One bad file never aborts the run; failures are listed
at the end with their reason.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pydicom
from rich.progress import Progress

from medflow.dicom.multipart import iter_multipart, new_boundary
from medflow.store.records import StoreOutcome
from medflow.store.service import StoreService
from medflow.store.spool import spool_stream

BATCH = 50


@dataclass(frozen=True)
class Source:
    """One file to ingest: a path, or a member of a zip archive."""

    label: str
    path: Path
    member: str | None = None

    def open(self) -> BinaryIO:
        if self.member is None:
            return self.path.open("rb")
        archive = zipfile.ZipFile(self.path)
        return archive.open(self.member)  # type: ignore[return-value]


def discover(paths: list[Path]) -> Iterator[Source]:
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                yield from discover([child])
        elif zipfile.is_zipfile(path) and path.suffix.lower() == ".zip":
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    if not info.is_dir():
                        yield Source(f"{path}!{info.filename}", path, info.filename)
        else:
            yield Source(str(path), path)


def _batches(sources: list[Source]) -> Iterator[list[Source]]:
    for i in range(0, len(sources), BATCH):
        yield sources[i : i + BATCH]


def ingest_local(
    store: StoreService, sources: list[Source], progress: Progress
) -> list[tuple[str, str]]:
    failures: list[tuple[str, str]] = []
    task = progress.add_task("storing", total=len(sources))
    for batch in _batches(sources):
        objects, labels = [], []
        for source in batch:
            try:
                with source.open() as fp:
                    objects.append(spool_stream(fp, store.spool_dir))
                labels.append(source.label)
            except OSError as exc:
                failures.append((source.label, f"cannot read: {exc.strerror or exc}"))
        outcomes = store.store(objects=objects)
        failures += [
            (label, _reason(o)) for label, o in zip(labels, outcomes, strict=True) if not o.ok
        ]
        progress.advance(task, len(batch))
    return failures


def _reason(outcome: StoreOutcome) -> str:
    return f"0x{outcome.failure_reason or 0:04X} {outcome.message or ''}".strip()


def _sop_uid(source: Source) -> str | None:
    try:
        with source.open() as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return str(ds.SOPInstanceUID)
    except Exception:  # noqa: BLE001 — unreadable locally: the server gives the reason
        return None


def ingest_remote(url: str, sources: list[Source], progress: Progress) -> list[tuple[str, str]]:
    """STOW-RS in batches of 50. A failure is named by its SOP Instance UID; when a server
    reports failures without one (an unparseable part), the files of that batch it did not
    account for are sent again one per request (storing an identical instance again is
    idempotent), so that every failure names its file."""
    failures: list[tuple[str, str]] = []
    task = progress.add_task("sending", total=len(sources))
    endpoint = url.rstrip("/") + ("" if url.rstrip("/").endswith("/dicomweb") else "/dicomweb")
    with httpx.Client(timeout=300) as client:
        for batch in _batches(sources):
            uids = {source.label: _sop_uid(source) for source in batch}
            outcome = _outcome(_post(client, endpoint, batch))
            if isinstance(outcome, str):
                failures += [(source.label, outcome) for source in batch]
            else:
                stored, failed, anonymous = outcome
                for source in batch:
                    uid = uids[source.label]
                    if uid in failed:
                        failures.append((source.label, failed[uid]))
                    elif anonymous and uid not in stored:
                        failures += _send_alone(client, endpoint, source)
            progress.advance(task, len(batch))
    return failures


def _send_alone(client: httpx.Client, endpoint: str, source: Source) -> list[tuple[str, str]]:
    outcome = _outcome(_post(client, endpoint, [source]))
    if isinstance(outcome, str):
        return [(source.label, outcome)]
    _stored, failed, anonymous = outcome
    reasons = [*failed.values(), *anonymous]
    return [(source.label, reasons[0])] if reasons else []


def _post(client: httpx.Client, endpoint: str, batch: list[Source]) -> httpx.Response:
    boundary = new_boundary()
    parts = []
    for source in batch:
        with source.open() as fp:
            parts.append(({"Content-Type": "application/dicom"}, [fp.read()]))
    return client.post(
        endpoint + "/studies",
        content=b"".join(iter_multipart(parts, boundary)),
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )


def _outcome(response: httpx.Response) -> str | tuple[set[str], dict[str, str], list[str]]:
    """(stored UIDs, failed UID → reason, reasons of failures without a UID) of a STOW-RS
    response (PS3.18 Table 10.5.3-1), or the error text of a request that failed whole."""
    if response.status_code not in (200, 202, 409):
        return f"HTTP {response.status_code}: {response.text[:200]}"
    body = json.loads(response.text or "{}")

    def uid(item: dict[str, Any]) -> str | None:
        value = (item.get("00081155", {}).get("Value") or [None])[0]
        return str(value) if value else None

    stored = {u for i in body.get("00081199", {}).get("Value", []) if (u := uid(i))}
    failed: dict[str, str] = {}
    anonymous: list[str] = []
    for item in body.get("00081198", {}).get("Value", []):
        reason = f"0x{(item.get('00081197', {}).get('Value') or [0])[0]:04X}"
        comment = (item.get("00000902", {}).get("Value") or [""])[0]
        reason = f"{reason} {comment}".strip()
        if (u := uid(item)) is not None:
            failed[u] = reason
        else:
            anonymous.append(reason)
    return stored, failed, anonymous
