"""What happened later (issue 11, feedback loop): the outcomes medflow joins to a model's
predictions and to the readers' findings, read from FHIR R4 through the FHIR service's
public search.

Facts about a patient and a finding (a coded concept such as SNOMED CT 36118008
Pneumothorax, the ``prediction.outcome`` of the AI result's RiskAssessment):

- ``pathology``: a final/amended/corrected DiagnosticReport of a pathology category (HL7
  v2-0074 SP, PAT, CP, CY, LP; or any report whose ``conclusionCode`` names the finding):
  positive when its ``conclusionCode`` has the finding, negative when it has other codes only;
- ``condition``: a Condition with the finding's code; ``verificationStatus`` confirmed is
  positive (from ``onset[x]``/``recordedDate`` until ``abatement[x]``), refuted negative;
- ``reader``: a reader's finding on the study (the Observation that reading a study on the
  worklist records, identified ``urn:medflow:reader-finding|<study>/<reader>``);
- ``follow-up``: no positive fact within the follow-up interval after the study, once that
  interval has passed (the definition of a negative in screening audits, e.g. BI-RADS).

:func:`decide` applies them to one study, strongest first (documented in docs/feedback.md):
pathology, then condition, then the readers' majority (model evaluation only), then
follow-up; none of them: the outcome is pending.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from medflow.fhir.service import FhirService

PAGE = 1000
"""FHIR search page size (the server's ``_count`` maximum)."""
SUBJECT_CHUNK = 100
PATHOLOGY_CATEGORIES = ("SP", "PAT", "CP", "CY", "LP")
"""HL7 v2-0074 diagnostic service sections of pathology (surgical, pathology, cytopathology,
cytology, laboratory pathology)."""
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
READER_FINDING_SYSTEM = "urn:medflow:reader-finding"
REPORT_STATUSES = "final,amended,corrected,appended"
SOURCES = ("pathology", "condition", "reader", "follow-up")


@dataclass(frozen=True)
class Rules:
    """How outcomes are joined to a study of date ``d``: FHIR facts dated within
    ``[d - before_days, d + after_days]``; a negative by follow-up when ``followup_days``
    (None: never) have passed by ``as_of`` (default today) without a positive fact."""

    before_days: int = 7
    after_days: int = 90
    followup_days: int | None = 90
    as_of: date | None = None

    def today(self) -> date:
        return self.as_of or date.today()

    def as_json(self) -> dict[str, Any]:
        return {"before_days": self.before_days, "after_days": self.after_days,
                "followup_days": self.followup_days, "as_of": self.today().isoformat()}  # fmt: skip


@dataclass(frozen=True)
class Fact:
    """A positive or negative fact about a patient and the finding, from FHIR."""

    patient: str
    """The FHIR Patient's logical id."""
    source: str
    positive: bool
    day: date
    until: date | None
    """Positive until (a Condition's abatement); None: open."""
    reference: str
    """``Condition/12``, ``DiagnosticReport/7``."""


@dataclass(frozen=True)
class Read:
    """A reader's finding on a study (positive: the model's positive class)."""

    study_uid: str
    patient: str
    reader: str
    positive: bool
    day: date | None
    reference: str


@dataclass(frozen=True)
class Outcome:
    positive: bool
    source: str
    reference: str | None
    day: date | None

    def as_json(self) -> dict[str, Any]:
        return {"positive": self.positive, "source": self.source, "reference": self.reference,
                "date": self.day.isoformat() if self.day else None}  # fmt: skip


def decide(
    *, study_day: date, facts: Sequence[Fact], reads: Sequence[Read], rules: Rules,
    use_reads: bool = True,
) -> Outcome | None:  # fmt: skip
    """The outcome of one study from its patient's ``facts`` and its ``reads`` (or None)."""
    low = study_day - timedelta(days=rules.before_days)
    high = study_day + timedelta(days=rules.after_days)

    def within(f: Fact) -> bool:
        return low <= f.day <= high

    pathology = sorted((f for f in facts if f.source == "pathology" and within(f)),
                       key=lambda f: (f.day, f.reference))  # fmt: skip
    if pathology:
        found = next((f for f in pathology if f.positive), pathology[0])
        return Outcome(found.positive, "pathology", found.reference, found.day)
    conditions = sorted((f for f in facts if f.source == "condition"),
                        key=lambda f: (f.day, f.reference))  # fmt: skip
    for f in conditions:  # confirmed: dated in the window and not abated before the study
        if f.positive and within(f) and (f.until is None or f.until >= study_day):
            return Outcome(True, "condition", f.reference, f.day)
    refuted = [f for f in conditions if not f.positive and within(f)]
    if refuted:
        return Outcome(False, "condition", refuted[0].reference, refuted[0].day)
    if use_reads and reads:
        votes = Counter(r.positive for r in reads)
        latest = max(reads, key=lambda r: (r.day or date.min, r.reference))
        positive = latest.positive if votes[True] == votes[False] else votes[True] > votes[False]
        return Outcome(positive, "reader", latest.reference, latest.day)
    if rules.followup_days is not None:
        end = study_day + timedelta(days=rules.followup_days)
        if end <= rules.today() and not any(
            f.positive and low <= f.day <= end and (f.until is None or f.until >= study_day)
            for f in facts
        ):
            return Outcome(False, "follow-up", None, end)
    return None


# -- reading FHIR ---------------------------------------------------------------------------
def search_all(
    fhir: FhirService, resource_type: str, params: Sequence[tuple[str, str]]
) -> Iterator[dict[str, Any]]:
    """Every current match of an R4 search, page by page."""
    offset = 0
    while True:
        paged = [*params, ("_offset", str(offset))]
        page = fhir.search_resources(resource_type=resource_type, params=paged, limit=PAGE)
        yield from page
        if len(page) < PAGE:
            return
        offset += PAGE


def patient_id(reference: Any) -> str | None:
    """The logical id of a ``Patient/<id>`` reference (relative or absolute)."""
    text = str((reference or {}).get("reference") or "") if isinstance(reference, dict) else ""
    parts = text.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
        return parts[-1]
    return None


def fhir_day(value: Any) -> date | None:
    """The date of a FHIR date/dateTime/instant (``2026-11-23``, ``2026-11-23T10:00:00Z``)."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _codes(concepts: Iterable[Any]) -> set[tuple[str, str]]:
    out = set()
    for concept in concepts:
        for coding in (concept or {}).get("coding") or []:
            if coding.get("code"):
                out.add((str(coding.get("system") or ""), str(coding["code"])))
    return out


def _chunks(values: Sequence[str], size: int = SUBJECT_CHUNK) -> Iterator[list[str]]:
    for i in range(0, len(values), size):
        yield list(values[i : i + size])


def facts_for(
    fhir: FhirService, *, system: str, code: str, patients: Collection[str]
) -> list[Fact]:
    """The pathology reports and Conditions of ``patients`` about the finding
    ``system|code``: positive and negative facts (see the module)."""
    wanted = sorted(set(patients))
    finding = (system, code)
    out: list[Fact] = []
    pathology = ",".join(f"{V2_0074}|{c}" for c in PATHOLOGY_CATEGORIES)
    for chunk in _chunks(wanted):
        subjects = ",".join(f"Patient/{p}" for p in chunk)
        for c in search_all(fhir, "Condition",
                            [("code", f"{system}|{code}"), ("subject", subjects)]):  # fmt: skip
            fact = _condition_fact(c)
            if fact is not None:
                out.append(fact)
        seen: set[str] = set()
        for query in ([("category", pathology)], [("conclusion", f"{system}|{code}")]):
            params = [*query, ("status", REPORT_STATUSES), ("subject", subjects)]
            for r in search_all(fhir, "DiagnosticReport", params):
                key = f"DiagnosticReport/{r.get('id')}"
                if key in seen:
                    continue
                seen.add(key)
                fact = _report_fact(r, finding)
                if fact is not None:
                    out.append(fact)
    return sorted(out, key=lambda f: (f.patient, f.day, f.reference))


def _condition_fact(c: dict[str, Any]) -> Fact | None:
    patient = patient_id(c.get("subject"))
    verification = {v for _s, v in _codes([c.get("verificationStatus")])}
    day = (fhir_day(c.get("onsetDateTime")) or fhir_day((c.get("onsetPeriod") or {}).get("start"))
           or fhir_day(c.get("recordedDate")))  # fmt: skip
    if patient is None or day is None:
        return None
    until = fhir_day(c.get("abatementDateTime")) or fhir_day(
        (c.get("abatementPeriod") or {}).get("end"))  # fmt: skip
    reference = f"Condition/{c.get('id')}"
    if "confirmed" in verification:
        return Fact(patient, "condition", True, day, until, reference)
    if "refuted" in verification:
        return Fact(patient, "condition", False, day, None, reference)
    return None


def _report_fact(r: dict[str, Any], finding: tuple[str, str]) -> Fact | None:
    patient = patient_id(r.get("subject"))
    period = r.get("effectivePeriod") or {}
    day = (fhir_day(r.get("effectiveDateTime")) or fhir_day(period.get("start"))
           or fhir_day(r.get("issued")))  # fmt: skip
    codes = _codes(r.get("conclusionCode") or [])
    if patient is None or day is None or not codes:
        return None  # a report without coded conclusions says nothing we can match
    return Fact(patient, "pathology", finding in codes, day, None,
                f"DiagnosticReport/{r.get('id')}")  # fmt: skip


def reads_of(fhir: FhirService, *, studies: Collection[str]) -> list[Read]:
    """The readers' findings (worklist Observations) on ``studies``."""
    wanted = set(studies)
    out = []
    for o in search_all(fhir, "Observation", [("identifier", f"{READER_FINDING_SYSTEM}|")]):
        value = next((i.get("value") for i in o.get("identifier") or []
                      if i.get("system") == READER_FINDING_SYSTEM), None)  # fmt: skip
        if not isinstance(value, str) or "/" not in value:
            continue
        study, _, reader = value.partition("/")
        patient = patient_id(o.get("subject"))
        if study not in wanted or patient is None or not isinstance(o.get("valueBoolean"), bool):
            continue
        if o.get("status") not in ("final", "amended", "corrected"):
            continue
        day = fhir_day(o.get("effectiveDateTime"))
        out.append(Read(study, patient, reader, bool(o["valueBoolean"]), day,
                        f"Observation/{o.get('id')}"))  # fmt: skip
    return sorted(out, key=lambda r: (r.study_uid, r.reader))


def group_by(items: Iterable[Any], key: Callable[[Any], str]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return out


__all__ = [
    "SOURCES",
    "Fact",
    "Outcome",
    "Read",
    "Rules",
    "decide",
    "facts_for",
    "fhir_day",
    "group_by",
    "patient_id",
    "reads_of",
    "search_all",
]
