"""Where a patient's record comes from: medflow's own FHIR store and archive in process
(their public service functions), or an external FHIR R4 server and DICOMweb service over
REST. Both answer the same three questions:

- ``compartment(id)``: the Patient and every resource of its compartment
  (``Patient/$everything``, R4 patient-operation-everything; all pages followed);
- ``search_patients(params)``: FHIR search on Patient (``name``, ``identifier``,
  ``birthdate``; R4 search);
- ``studies(patient_ids, study_uids)``: the archive's studies of those DICOM Patient IDs or
  Study Instance UIDs (QIDO-RS series query, PS3.18 §10.6, with the study attributes).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import urljoin

import httpx

from medflow.core.errors import InvalidInput, NotFound, StorageFailure
from medflow.dicom.attributes import da_date
from medflow.dicom.matching import Match, MatchType, parse_attribute
from medflow.fhir.service import FhirService
from medflow.patients.timeline import StudyRef
from medflow.store.query import Query
from medflow.store.service import StoreService

EVERYTHING_PAGES = 50
"""The most ``$everything`` pages followed from an external server."""
SERIES_PAGE = 1000
INCLUDE = ("StudyDescription", "BodyPartExamined")
"""Beyond the default attributes of a search for all series (PS3.18 §10.6.3.3.2)."""
UIDS_PER_QUERY = 15
"""Study Instance UIDs in one QIDO-RS list key (15 x 64 characters fit in 1,024)."""


class RecordSource(Protocol):
    """What the patient view reads (see the module)."""

    dicomweb: str | None
    """Base URL of an external DICOMweb service (thumbnails, images); None: medflow's own."""

    def compartment(self, patient_id: str) -> list[dict[str, Any]]: ...

    def search_patients(self, params: Sequence[tuple[str, str]],
                        limit: int) -> list[dict[str, Any]]: ...  # fmt: skip

    def studies(self, *, patient_ids: Collection[str],
                study_uids: Collection[str]) -> list[StudyRef]: ...  # fmt: skip


def _iso(da: str | None) -> str | None:
    """A DICOM DA value as an ISO date; None when it is not a valid date."""
    day = da_date((da or "").strip())
    return day.isoformat() if day else None


def _no_query(url: str) -> str:
    """The URL without its query: a search's or a next link's parameters can name a patient
    (``name=``, ``identifier=``), and errors are logged."""
    return url.split("?", 1)[0]


class EmbeddedSource:
    """medflow's FHIR store and archive, in process."""

    dicomweb: str | None = None

    def __init__(self, *, fhir: FhirService, store: StoreService) -> None:
        self.fhir, self.store = fhir, store

    def compartment(self, patient_id: str) -> list[dict[str, Any]]:
        return self.fhir.everything(patient_id=patient_id)

    def search_patients(self, params: Sequence[tuple[str, str]],
                        limit: int) -> list[dict[str, Any]]:  # fmt: skip
        return self.fhir.search_resources(resource_type="Patient", params=params, limit=limit)

    def studies(self, *, patient_ids: Collection[str],
                study_uids: Collection[str]) -> list[StudyRef]:  # fmt: skip
        """Series-level queries (as QIDO-RS ``/series``), one per Patient ID and one per
        :data:`UIDS_PER_QUERY` study UIDs the first did not find, all pages read."""
        include = tuple(parse_attribute(k) for k in INCLUDE)
        rows: list[dict[str, Any]] = []
        for pid in sorted(patient_ids):
            match = Match(parse_attribute("PatientID"), MatchType.SINGLE, value=pid)
            rows += self._all(Query("series", (match,), include=include))
        missing = sorted(set(study_uids) - {_value(r, "0020000D") for r in rows})
        for i in range(0, len(missing), UIDS_PER_QUERY):
            chunk = tuple(missing[i : i + UIDS_PER_QUERY])
            match = Match(parse_attribute("StudyInstanceUID"), MatchType.LIST, values=chunk)
            rows += self._all(Query("series", (match,), include=include))
        return studies_of_series(rows)

    def _all(self, query: Query) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            page = self.store.search(replace(query, limit=SERIES_PAGE, offset=len(rows)))
            rows += page.rows
            if not page.more:
                return rows


class RestSource:
    """An external FHIR R4 server and DICOMweb service (``client`` may carry auth)."""

    def __init__(self, *, fhir_url: str, dicomweb_url: str | None,
                 client: httpx.Client | None = None) -> None:  # fmt: skip
        self.fhir_url = fhir_url.rstrip("/") + "/"
        self.dicomweb = dicomweb_url.rstrip("/") if dicomweb_url else None
        self.client = client or httpx.Client(timeout=30)

    def _get(self, url: str, params: Any = None, accept: str = "application/fhir+json") -> Any:
        try:
            response = self.client.get(url, params=params, headers={"Accept": accept})
        except httpx.HTTPError as exc:
            raise StorageFailure(f"{_no_query(url)}: {type(exc).__name__}") from exc
        if response.status_code == 404:
            raise NotFound("not found on the external server")
        if response.status_code == 400:
            raise InvalidInput(f"the external server refused the request: {response.text[:200]}")
        if response.status_code == 204:
            return []
        if response.status_code >= 300:
            raise StorageFailure(f"{_no_query(url)}: HTTP {response.status_code}")
        return response.json()

    def _bundle(self, url: str, params: Any, limit: int | None = None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        next_url: str | None = url
        for _ in range(EVERYTHING_PAGES):
            if next_url is None:
                break
            bundle = self._get(next_url, params)
            params = None  # the next link carries them
            out.extend(e["resource"] for e in bundle.get("entry") or []
                       if isinstance(e.get("resource"), Mapping)
                       and (e.get("search") or {}).get("mode", "match") != "outcome")  # fmt: skip
            if limit is not None and len(out) >= limit:
                return out[:limit]
            links = {link.get("relation"): link.get("url") for link in bundle.get("link") or []}
            next_url = urljoin(self.fhir_url, links["next"]) if links.get("next") else None
        return out

    def compartment(self, patient_id: str) -> list[dict[str, Any]]:
        resources = self._bundle(f"{self.fhir_url}Patient/{patient_id}/$everything", None)
        first = [r for r in resources if r.get("resourceType") == "Patient"
                 and r.get("id") == patient_id]  # fmt: skip
        if not first:
            raise NotFound("no such Patient")
        return [first[0], *(r for r in resources if r is not first[0])]

    def search_patients(self, params: Sequence[tuple[str, str]],
                        limit: int) -> list[dict[str, Any]]:  # fmt: skip
        return self._bundle(f"{self.fhir_url}Patient", [*params, ("_count", str(limit))], limit)

    def studies(self, *, patient_ids: Collection[str],
                study_uids: Collection[str]) -> list[StudyRef]:  # fmt: skip
        if self.dicomweb is None:
            return []
        rows: list[dict[str, Any]] = []
        include = [("includefield", k) for k in INCLUDE]
        for pid in sorted(patient_ids):
            rows += self._get(f"{self.dicomweb}/series", [("PatientID", pid), *include],
                              accept="application/dicom+json")  # fmt: skip
        seen = {_value(r, "0020000D") for r in rows}
        missing = sorted(set(study_uids) - seen)
        for i in range(0, len(missing), UIDS_PER_QUERY):
            key = ",".join(missing[i : i + UIDS_PER_QUERY])
            rows += self._get(f"{self.dicomweb}/series", [("StudyInstanceUID", key), *include],
                              accept="application/dicom+json")  # fmt: skip
        return studies_of_series(rows)


def _value(obj: Mapping[str, Any], tag: str) -> Any:
    values = (obj.get(tag) or {}).get("Value") or [None]
    return values[0]


def studies_of_series(rows: Sequence[Mapping[str, Any]]) -> list[StudyRef]:
    """Studies from QIDO-RS series results (DICOM JSON, PS3.18 F.2) that carry the study's
    attributes, as a search for all series answers (PS3.18 §10.6.3.3.2)."""
    studies: dict[str, dict[str, Any]] = {}
    for row in rows:
        uid = _value(row, "0020000D")
        if not uid:
            continue
        s = studies.setdefault(str(uid), {"date": _iso(_value(row, "00080020")),
                                          "description": str(_value(row, "00081030") or ""),
                                          "accession": str(_value(row, "00080050") or ""),
                                          "modalities": [], "body_parts": [], "series": set(),
                                          "instances": 0})  # fmt: skip
        for key, tag in (("modalities", "00080060"), ("body_parts", "00180015")):
            value = _value(row, tag)
            if value and value not in s[key]:
                s[key].append(str(value))
        s["series"].add(_value(row, "0020000E"))
        s["instances"] += int(_value(row, "00201209") or 0)
    return [StudyRef(uid=uid, date=s["date"], description=s["description"],
                     accession=s["accession"], modalities=tuple(sorted(s["modalities"])),
                     body_parts=tuple(sorted(s["body_parts"])), series=len(s["series"]),
                     instances=s["instances"]) for uid, s in studies.items()]  # fmt: skip


__all__ = ["EmbeddedSource", "RecordSource", "RestSource", "studies_of_series"]
