"""Cohort evaluation (issue 7): a :class:`~medflow.cohort.schema.CohortDefinition` answered
through the FHIR store's search (``FhirService.search_index``: ids, patients and dates from the
search index, no resource loaded) and the archive's QIDO matching
(``StoreService.find_studies``). Patients are FHIR Patients; the archive's PatientID is their
MRN (identifier ``urn:medflow:mrn``); reports belong to a study by accession number
(DiagnosticReport identifier typed ACSN = DICOM AccessionNumber).

Criteria are applied in the definition's order, each to the patients the ones before it left
(the attrition). A criterion asks the database only about those patients while they are few
(:data:`RESTRICT_MAX`, in chunks of :data:`CHUNK`); otherwise it runs on its own, driven by
its most selective index (a code, a date range), and its matches are intersected here. What
``collect`` asks is read for the final patients only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection, Iterator, Sequence
from datetime import date, datetime

from medflow.cohort.queries import (
    FhirQuery,
    demographics_params,
    fhir_queries,
    imaging_keys,
    report_text,
)
from medflow.cohort.results import (
    STUDY,
    AttritionStep,
    CohortResult,
    Event,
    Hits,
    PatientResult,
    merge,
)
from medflow.cohort.schema import CodeSet, CohortDefinition, Criterion, ImagingCriterion, Temporal
from medflow.dicom.attributes import da_date
from medflow.fhir.identifiers import ACSN, search_token
from medflow.fhir.service import FhirService
from medflow.store.service import StoreService, StudyMatch

log = logging.getLogger(__name__)
MRN_SYSTEM = "urn:medflow:mrn"
RESTRICT_MAX = 2000
"""Up to this many candidate patients, a criterion's searches name them."""
CHUNK = 500
"""Patients (or accession numbers, ids) per search."""


def _chunks(values: Collection[str], size: int = CHUNK) -> Iterator[list[str]]:
    ordered = sorted(values)
    for i in range(0, len(ordered), size):
        yield ordered[i : i + size]


def _day(value: datetime | None) -> date | None:
    return None if value is None else value.date()


class CohortService:
    """Evaluates cohort definitions against the FHIR store and the archive."""

    def __init__(self, *, store: StoreService, fhir: FhirService) -> None:
        self.store = store
        self.fhir = fhir

    def evaluate(self, definition: CohortDefinition) -> CohortResult:
        """Patients meeting every criterion, their matching resources and studies (and what
        ``collect`` lists), and the patients left after each criterion."""
        started = time.perf_counter()
        run = _Run(self, definition.evaluation_date)
        total = self.fhir.type_counts(resource_types=["Patient"]).get("Patient", 0)
        attrition = [AttritionStep("all patients", total)]
        found: Hits = {}
        candidates: set[str] | None = None
        for criterion in definition.criteria:
            hits = run.criterion(criterion, candidates)
            candidates = set(hits)
            merge(found, hits)
            attrition.append(AttritionStep(criterion.describe(), len(candidates)))
        final = candidates or set()
        for criterion in definition.collect:
            merge(found, run.criterion(criterion, final))
        mrns = run.mrns(final)
        patients = [PatientResult.of(pid, mrns.get(pid), found.get(pid, ())) for pid in final]
        patients.sort(key=lambda p: (p.mrn or "", p.patient_id))
        elapsed = time.perf_counter() - started
        log.info("cohort %r: %d patients in %.3f s", definition.name, len(patients), elapsed)
        return CohortResult(definition.name, definition.evaluation_date, patients, attrition,
                            elapsed)  # fmt: skip


class _Run:
    """One evaluation: the evaluation date and the MRN <-> Patient id lookups made so far."""

    def __init__(self, service: CohortService, today: date) -> None:
        self.fhir = service.fhir
        self.store = service.store
        self.today = today
        self.mrn_of: dict[str, str] = {}
        self.patient_of: dict[str, str] = {}

    # -- criteria ----------------------------------------------------------------------------
    def criterion(self, crit: Criterion, candidates: set[str] | None) -> Hits:
        """The patients among ``candidates`` (None: all) that meet ``crit``, with events."""
        kind, body = crit.kind, crit.body
        if kind == "demographics":
            params = demographics_params(body, self.today)
            return {pid: [] for pid in self.patients(params, candidates)}
        if kind == "imaging":
            return self.imaging(body, candidates)
        if kind == "temporal":
            return self.temporal(body, candidates)
        if kind == "and":
            return self.all_of(body, candidates)
        if kind == "or":
            hits: Hits = {}
            for child in body:
                merge(hits, self.criterion(child, candidates))
            return hits
        if kind == "not":
            excluded = set(self.criterion(body, candidates))
            pool = candidates if candidates is not None else self.patients([], None)
            return {pid: [] for pid in pool - excluded}
        hits = {}
        for query in fhir_queries(body, self.today, self.resolve):
            merge(hits, self.search(query, candidates))
        if kind == "diagnostic_report" and body.text_contains:
            hits = self.with_text(hits, body.text_contains)
        return hits

    def all_of(self, children: Sequence[Criterion], candidates: set[str] | None) -> Hits:
        found: Hits = {}
        for child in children:
            hits = self.criterion(child, candidates)
            candidates = set(hits)
            merge(found, hits)
        return {pid: found[pid] for pid in candidates or ()}

    def temporal(self, body: Temporal, candidates: set[str] | None) -> Hits:
        """Patients with an ``event`` dated ``days_after`` days after one of their
        ``anchor``\\ s; the pairs' events."""
        anchors = self.criterion(body.anchor, candidates)
        events = self.criterion(body.event, set(anchors))
        low, high = body.days_after.min, body.days_after.max
        out: Hits = {}
        for pid, later in events.items():
            pairs = [(a, e) for a in anchors[pid] for e in later
                     if a.day is not None and e.day is not None
                     and (low is None or (e.day - a.day).days >= low)
                     and (high is None or (e.day - a.day).days <= high)]  # fmt: skip
            if pairs:
                out[pid] = list(dict.fromkeys(x for pair in pairs for x in pair))
        return out

    # -- FHIR --------------------------------------------------------------------------------
    def resolve(self, resource_type: str, param: str, code_set: CodeSet) -> list[str]:
        """A code set's ``system|code`` values: its codes and the indexed codes that start
        with one of its prefixes."""
        codes = list(code_set.codes)
        if code_set.prefixes:
            codes += self.fhir.codes_with_prefix(resource_type=resource_type, param=param,
                                                 system=code_set.system,
                                                 prefixes=code_set.prefixes)  # fmt: skip
        return [search_token(code_set.system, c) for c in dict.fromkeys(codes)]

    def search(self, query: FhirQuery, candidates: set[str] | None) -> Hits:
        """The query's matches among ``candidates``, as events of their subjects."""
        if query.empty or (candidates is not None and not candidates):
            return {}
        restrict = candidates is not None and len(candidates) <= RESTRICT_MAX
        hits: Hits = {}
        for match in self.fhir.search_index(
            resource_type=query.resource_type, params=query.params,
            subject_param=query.subject_param, date_param=query.date_param,
            subjects=candidates if restrict else None,
        ):  # fmt: skip
            day = _day(match.dates[0]) if match.dates else None
            for pid in match.subjects:
                if candidates is None or pid in candidates:
                    hits.setdefault(pid, []).append(Event(query.resource_type, match.res_id, day))
        return hits

    def patients(self, params: list[tuple[str, str]], candidates: set[str] | None) -> set[str]:
        """Ids of the Patients matching ``params`` among ``candidates`` (None: all); their
        MRNs are remembered on the way."""
        if candidates is not None and not candidates:
            return set()
        restrict = candidates is not None and len(candidates) <= RESTRICT_MAX
        found: set[str] = set()
        for match in self.fhir.search_index(
            resource_type="Patient", params=params, code_param="identifier",
            code_system=MRN_SYSTEM, ids=candidates if restrict else None,
        ):  # fmt: skip
            if candidates is None or match.res_id in candidates:
                found.add(match.res_id)
                self._remember(match.res_id, [code for _, code in match.codes if code])
        return found

    def _remember(self, pid: str, mrns: list[str]) -> None:
        for mrn in mrns:
            self.mrn_of.setdefault(pid, mrn)
            self.patient_of.setdefault(mrn, pid)

    def mrns(self, patient_ids: Collection[str]) -> dict[str, str]:
        """MRN of each patient that has one (looked up once)."""
        missing = {p for p in patient_ids if p not in self.mrn_of}
        if missing:
            self.patients([], missing)
        return {p: self.mrn_of[p] for p in patient_ids if p in self.mrn_of}

    def patients_of(self, mrns: Collection[str]) -> dict[str, str]:
        """FHIR Patient id of each MRN that has one."""
        missing = [m for m in mrns if m not in self.patient_of]
        for chunk in _chunks(missing):
            values = ",".join(search_token(MRN_SYSTEM, m) for m in chunk)
            self.patients([("identifier", values)], None)
        return {m: self.patient_of[m] for m in mrns if m in self.patient_of}

    def with_text(self, hits: Hits, text: str) -> Hits:
        """Only the DiagnosticReports whose words contain ``text`` (read for that)."""
        ids = {e.id for events in hits.values() for e in events}
        wanted, needle = set(), text.lower()
        for chunk in _chunks(ids, 1000):
            for report in self.fhir.search_resources(
                resource_type="DiagnosticReport", params=[("_id", ",".join(chunk))],
                limit=len(chunk),
            ):  # fmt: skip
                if needle in report_text(report):
                    wanted.add(str(report["id"]))
        kept = {pid: [e for e in events if e.id in wanted] for pid, events in hits.items()}
        return {pid: events for pid, events in kept.items() if events}

    # -- DICOM -------------------------------------------------------------------------------
    def imaging(self, body: ImagingCriterion, candidates: set[str] | None) -> Hits:
        """Studies matching in the archive, of the candidates (by MRN = PatientID)."""
        if candidates is not None and not candidates:
            return {}
        restrict = candidates is not None and len(candidates) <= RESTRICT_MAX
        ids = list(self.mrns(candidates or ()).values()) if restrict else None
        studies = [s for s in self.store.find_studies(patient_ids=ids,
                                                      **imaging_keys(body, self.today))
                   if s.patient_id and (body.min_instances is None
                                        or s.instances >= body.min_instances)]  # fmt: skip
        owners = self.patients_of({s.patient_id for s in studies if s.patient_id})
        reports = self.reports(studies) if body.with_reports else {}
        hits: Hits = {}
        for study in studies:
            pid = owners.get(study.patient_id or "")
            if pid is None or (candidates is not None and pid not in candidates):
                continue
            linked = tuple(Event("DiagnosticReport", r) for r in
                           reports.get(study.accession_number or "", ()))  # fmt: skip
            day = da_date(study.study_date)
            hits.setdefault(pid, []).append(Event(STUDY, study.study_uid, day, linked))
        return hits

    def reports(self, studies: Sequence[StudyMatch]) -> dict[str, list[str]]:
        """Accession number -> ids of the DiagnosticReports that carry it (ACSN)."""
        accessions = {s.accession_number for s in studies if s.accession_number}
        out: dict[str, list[str]] = {}
        for chunk in _chunks(accessions, 200):
            values = ",".join(search_token(*ACSN, a) for a in chunk)
            for match in self.fhir.search_index(
                resource_type="DiagnosticReport", params=[("identifier:of-type", values)],
                code_param="identifier",
            ):  # fmt: skip
                for _, code in match.codes:
                    if code in accessions:
                        out.setdefault(code, []).append(match.res_id)
        return out


__all__ = ["CHUNK", "RESTRICT_MAX", "CohortService"]
