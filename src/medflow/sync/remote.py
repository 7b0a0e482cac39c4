"""The standalone sync's peers over HTTP: any DICOMweb server with medflow's (Azure-style)
change feed, and any FHIR R4 server.

Requests that fail for a reason that may pass (network errors, 429, 5xx) are retried with
exponential backoff (honouring ``Retry-After``) up to ``retries`` times and then raised as
``StorageFailure`` (retryable: the worker keeps its cursor and tries again later). FHIR errors
that will not pass become the medflow errors the worker sorts on: 412 ``PreconditionFailed``
(a version race: it reads again), 400/422 ``InvalidInput`` and 404/410 ``NotFound`` (dead
letters).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from medflow.core.errors import (
    InvalidInput,
    MedflowError,
    NotFound,
    PreconditionFailed,
    StorageFailure,
    Unsupported,
)
from medflow.store.records import ChangeEvent
from medflow.sync.worker import LINKED_TYPES

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"


class Http:
    """One keep-alive client with retries and backoff."""

    def __init__(
        self,
        client: httpx.Client | None = None,
        *,
        retries: int = 5,
        backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client or httpx.Client(timeout=30)
        self.retries, self.backoff, self.sleep = retries, backoff, sleep

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                response = self.client.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code != 429 and response.status_code < 500:
                    return response
                problem = f"HTTP {response.status_code}"
                after = response.headers.get("Retry-After", "")
                if after.isdigit():
                    delay = min(30.0, max(delay, float(after)))
            where = url.split("?", 1)[0]  # the query may name a patient: never logged
            if attempt == self.retries:
                raise StorageFailure(f"{method} {where}: {problem} (after {attempt + 1} tries)")
            log.info("%s %s: %s; retrying in %.1f s", method, where, problem, delay)
            self.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")  # pragma: no cover


class HttpArchive:
    """A DICOMweb server's change feed (``/changefeed``) and study metadata (WADO-RS)."""

    def __init__(self, dicomweb_url: str, http: Http) -> None:
        self.base, self.http = dicomweb_url.rstrip("/"), http

    def change_feed(self, *, offset: int = 0, limit: int = 100) -> list[ChangeEvent]:
        r = self.http.request(
            "GET", f"{self.base}/changefeed", params={"offset": offset, "limit": limit}
        )
        _check(r, "the change feed")
        return [_event(e) for e in r.json()]

    def latest_change(self) -> ChangeEvent | None:
        r = self.http.request("GET", f"{self.base}/changefeed/latest")
        _check(r, "the latest change")
        doc = r.json()
        return _event(doc) if doc.get("StudyInstanceUID") else None

    def metadata(self, *, study_uid: str) -> tuple[list[str], str]:
        r = self.http.request(
            "GET",
            f"{self.base}/studies/{quote(study_uid)}/metadata",
            headers={"Accept": "application/dicom+json"},
        )
        if r.status_code in (404, 410):
            raise NotFound(f"study {study_uid} has no instances")
        _check(r, "study metadata")
        return [json.dumps(item) for item in r.json()], r.headers.get("ETag", "")


@dataclass(frozen=True)
class FhirChange:
    """A write read from a FHIR server's history, as the worker's FHIR feed expects."""

    seq: int
    resource_type: str
    resource: dict[str, Any] | None


class HttpFhir:
    """Any FHIR R4 server as the sync's target."""

    def __init__(self, fhir_url: str, http: Http) -> None:
        self.base, self.http = fhir_url.rstrip("/"), http

    def check_capabilities(self) -> dict[str, Any]:
        """The server's CapabilityStatement must be R4 and take transactions and the types
        the sync writes (``Unsupported`` otherwise)."""
        r = self.http.request("GET", f"{self.base}/metadata", headers={"Accept": FHIR_JSON})
        _check(r, "the CapabilityStatement")
        cap = r.json()
        version = str(cap.get("fhirVersion", ""))
        if not version.startswith("4.0"):
            raise Unsupported(f"the FHIR server speaks {version or 'an unknown version'}, not R4")
        rest = (cap.get("rest") or [{}])[0]
        if not any(i.get("code") == "transaction" for i in rest.get("interaction", [])):
            raise Unsupported("the FHIR server does not accept transaction Bundles")
        types = {r.get("type") for r in rest.get("resource", [])}
        missing = {"Patient", "ImagingStudy", "Endpoint"} - types
        if missing:
            raise Unsupported(f"the FHIR server does not serve {', '.join(sorted(missing))}")
        return dict(cap)

    def search(self, resource_type: str, query: str) -> list[dict[str, Any]]:
        r = self.http.request(
            "GET",
            f"{self.base}/{resource_type}?{query}&_count=20",
            headers={"Accept": FHIR_JSON, "Prefer": "handling=strict", "Cache-Control": "no-cache"},
        )  # strict: a server that ignores a parameter must not answer with everything
        _fhir_check(r)
        entries = r.json().get("entry", [])
        return [
            e["resource"]
            for e in entries
            if (e.get("search") or {}).get("mode", "match") == "match" and "resource" in e
        ]

    def changes(self, after: int, limit: int) -> list[FhirChange]:
        """Writes since ``after`` (epoch milliseconds of ``meta.lastUpdated``) from the type
        histories of DiagnosticReport and ServiceRequest (R4 http §3.1.0.8, ``_since``), every
        page (``next`` links) so that a burst larger than a page is not cut, oldest first, as
        records with ``seq`` = their milliseconds. ``_since`` is inclusive; writes in the very
        millisecond of the cursor are dropped, which linking tolerates (it links again at the
        study's next change)."""
        since = datetime.fromtimestamp(after / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
        out: list[FhirChange] = []
        for rtype in LINKED_TYPES:
            url: str | None = f"{self.base}/{rtype}/_history"
            params: dict[str, str] | None = {"_since": since, "_count": str(limit)}
            for _page in range(MAX_PAGES):
                if url is None:
                    break
                r = self.http.request("GET", url, params=params, headers={"Accept": FHIR_JSON})
                _fhir_check(r)
                doc = r.json()
                for entry in doc.get("entry", []):
                    change = _change(rtype, entry.get("resource"))
                    if change is not None and change.seq > after:
                        out.append(change)
                url = next((lk.get("url") for lk in doc.get("link", [])
                            if lk.get("relation") == "next"), None)  # fmt: skip
                params = None  # the next link carries its own query
        out.sort(key=lambda c: c.seq)
        return out

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        r = self.http.request(
            "POST",
            self.base,
            content=json.dumps(bundle),
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
        )
        _fhir_check(r)
        return dict(r.json())


def _event(e: dict[str, Any]) -> ChangeEvent:
    return ChangeEvent(
        sequence=int(e["Sequence"]),
        study_uid=str(e["StudyInstanceUID"]),
        series_uid=str(e.get("SeriesInstanceUID", "")),
        sop_instance_uid=str(e.get("SOPInstanceUID", "")),
        action=str(e.get("Action", "")),
        state=str(e.get("State", "")),
        timestamp=_utc(datetime.fromisoformat(str(e["Timestamp"]))),
    )


MAX_PAGES = 100


def _change(rtype: str, resource: dict[str, Any] | None) -> FhirChange | None:
    stamp = ((resource or {}).get("meta") or {}).get("lastUpdated")
    if not resource or not stamp:
        return None
    when = _utc(datetime.fromisoformat(str(stamp).replace("Z", "+00:00")))
    return FhirChange(int(when.timestamp() * 1000), rtype, resource)


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _check(r: httpx.Response, what: str) -> None:
    if r.status_code >= 400:
        raise StorageFailure(f"{what}: HTTP {r.status_code}")


def _fhir_check(r: httpx.Response) -> None:
    if r.status_code < 400:
        return
    try:
        issues = r.json().get("issue", [])
        detail = "; ".join(str(i.get("diagnostics", "")) for i in issues) or r.text[:200]
    except ValueError:
        detail = r.text[:200]
    kind: type[MedflowError] = StorageFailure
    if r.status_code in (409, 412):  # a version conflict: read again
        kind = PreconditionFailed
    elif r.status_code in (400, 422):
        kind = InvalidInput
    elif r.status_code in (404, 410):
        kind = NotFound
    raise kind(f"FHIR server answered {r.status_code}: {detail}")
