"""``PatientRecords``: a patient's timeline and patient search over a :class:`RecordSource`
(medflow's own services in process, or external FHIR and DICOMweb servers).

A timeline is two reads: the patient's compartment (``Patient/$everything``) and one study
query for the patient's DICOM Patient IDs (the Patient.identifier values of the sync's
identifier system, or of an IssuerOfPatientID system), plus one for the studies their
ImagingStudy resources name that the first did not find.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from medflow.core.errors import InvalidInput
from medflow.core.settings import Settings
from medflow.fhir.identifiers import ISSUER_SYSTEM_PREFIX
from medflow.fhir.service import FhirService
from medflow.patients.sources import EmbeddedSource, RecordSource, RestSource
from medflow.patients.timeline import Timeline, age_on, build, human_name, study_uid_of
from medflow.store.service import StoreService

SEARCH_LIMIT = 50


@dataclass(frozen=True)
class PatientHit:
    id: str
    name: str
    gender: str
    birth_date: str
    age: int | None
    identifiers: list[tuple[str, str]]


class PatientRecords:
    def __init__(self, source: RecordSource, *, patient_system: str,
                 today: Callable[[], date] = date.today) -> None:  # fmt: skip
        self.source, self.patient_system, self.today = source, patient_system, today

    def dicom_patient_ids(self, patient: dict[str, Any]) -> list[str]:
        """The DICOM Patient IDs of a FHIR Patient: its identifiers in the sync's system or an
        IssuerOfPatientID system (``medflow.fhir.identifiers.patient_system``)."""
        return sorted({str(i["value"]) for i in patient.get("identifier") or []
                       if i.get("value") and (i.get("system") == self.patient_system or str(
                           i.get("system", "")).startswith(ISSUER_SYSTEM_PREFIX))})  # fmt: skip

    def timeline(self, patient_id: str, *, kinds: Iterable[str] | None = None,
                 date_from: date | None = None, date_to: date | None = None,
                 study: str | None = None) -> Timeline:  # fmt: skip
        """The timeline of the FHIR Patient ``patient_id`` (``NotFound`` when there is none);
        see :func:`medflow.patients.timeline.build` for the filters and ``study``."""
        if date_from and date_to and date_from > date_to:
            raise InvalidInput("from is after to")
        resources = self.source.compartment(patient_id)
        patient = resources[0]
        uids = {u for r in resources if r.get("resourceType") == "ImagingStudy"
                and (u := study_uid_of(r))}  # fmt: skip
        studies = self.source.studies(patient_ids=self.dicom_patient_ids(patient),
                                      study_uids=uids)  # fmt: skip
        return build(patient=patient, resources=resources[1:], studies=studies,
                     today=self.today(), kinds=kinds, date_from=date_from, date_to=date_to,
                     study_uid=study)  # fmt: skip

    def search(self, *, name: str = "", identifier: str = "", birthdate: str = "",
               limit: int = SEARCH_LIMIT) -> list[PatientHit]:  # fmt: skip
        """Patients matching every given field (R4 Patient search: ``name`` matches the start
        of any name part, case-insensitive; ``identifier`` a token, ``[system|]value``;
        ``birthdate`` a date, ``YYYY``, ``YYYY-MM`` or ``YYYY-MM-DD``); sorted by name."""
        params: list[tuple[str, str]] = []
        for key, value in (("name", name), ("identifier", identifier),
                           ("birthdate", birthdate)):  # fmt: skip
            if value.strip():
                params.append((key, value.strip()))
        if not params:
            return []
        today = self.today()
        hits = []
        for p in self.source.search_patients(params, limit):
            birth = str(p.get("birthDate") or "")
            idents = [(str(i.get("system") or ""), str(i["value"]))
                      for i in p.get("identifier") or [] if i.get("value")]  # fmt: skip
            hits.append(PatientHit(id=str(p.get("id")), name=human_name(p),
                                   gender=str(p.get("gender") or ""), birth_date=birth,
                                   age=age_on(birth, today) if birth else None,
                                   identifiers=idents))  # fmt: skip
        return sorted(hits, key=lambda h: (h.name.lower(), h.id))


def records_from(settings: Settings, *, fhir: FhirService, store: StoreService) -> PatientRecords:
    """The patient records the settings say: an external FHIR server (and DICOMweb service)
    when ``records.fhir_url`` is set, else medflow's own services in process."""
    system = settings.sync.patient_system
    if settings.records.fhir_url:
        source: RecordSource = RestSource(fhir_url=settings.records.fhir_url,
                                          dicomweb_url=settings.records.dicomweb_url)  # fmt: skip
    else:
        source = EmbeddedSource(fhir=fhir, store=store)
    return PatientRecords(source, patient_system=system)


def parse_kinds(values: Sequence[str]) -> list[str]:
    """``kind`` parameters, repeated or comma-separated."""
    return [k.strip() for v in values for k in v.split(",") if k.strip()]


__all__ = ["PatientHit", "PatientRecords", "parse_kinds", "records_from"]
