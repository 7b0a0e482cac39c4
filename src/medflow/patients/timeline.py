"""A patient's timeline, built from their FHIR R4 record (the Patient compartment, as
``Patient/$everything`` returns it) and their imaging studies (archive study queries): pure
functions over plain data, no I/O.

What becomes an event (R4 resource → ``kind``):

====================================  ======================================================
Encounter                             ``encounter`` (period, class, type)
Condition                             ``condition`` (onset, clinical/verification status);
                                      its abatement an ``outcome``
Procedure                             ``procedure`` (performed; biopsy, surgery, radiotherapy)
MedicationRequest/Statement/Admin.    ``medication`` (authoredOn or effective, start → stop)
Observation                           ``observation``; vital signs and laboratory results
                                      of one day are one event each; LOINC 97509-4 (cancer
                                      disease status) an ``outcome``; a reader's finding
                                      (``urn:medflow:reader-finding``) a ``finding``
DiagnosticReport                      ``report`` (radiology and others), ``pathology``
                                      (v2-0074 SP/PAT/CP/SUR, LOINC 60568-3 or 11526-1)
RiskAssessment                        ``ai-result`` (probability, model)
Patient.deceased[x]                   ``outcome``
archive studies                       ``imaging``; whole slide images (SM) ``slide``; each
                                      with its report's conclusion and AI result
====================================  ======================================================

Events are newest first; observations with numbers give a trend per code (LOINC) when they
have two or more values. The header has the demographics, identifiers, active problems,
allergies and current medications. For a study being read, its priors are the patient's
earlier studies, same modality and body part first, each with its report.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from medflow.fhir.identifiers import ACSN, DICOM_UID_SYSTEM
from medflow.fhir.indexing import date_range, parse_reference

KINDS = ("encounter", "condition", "procedure", "medication", "observation", "report",
         "pathology", "imaging", "slide", "ai-result", "finding", "outcome")  # fmt: skip
"""The event kinds, in the order the filters list them."""
KIND_LABELS = {"encounter": "Encounters", "condition": "Conditions", "procedure": "Procedures",
               "medication": "Medications", "observation": "Observations",
               "report": "Reports", "pathology": "Pathology", "imaging": "Imaging studies",
               "slide": "Slides", "ai-result": "AI results", "finding": "Reader findings",
               "outcome": "Outcomes"}  # fmt: skip
LOINC = "http://loinc.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
PATHOLOGY_SECTIONS = {"SP", "PAT", "CP", "SUR", "CG", "OSP"}
"""HL7 v2 table 0074 diagnostic service sections of pathology reports."""
PATHOLOGY_CODES = {"60568-3", "11526-1", "22637-3", "22034-3"}
"""LOINC codes of pathology reports (synoptic, study report, path report diagnosis)."""
DISEASE_STATUS = "97509-4"
"""LOINC "Cancer disease status" (mCODE CancerDiseaseStatus): an outcome."""
READER_FINDING_SYSTEM = "urn:medflow:reader-finding"
AI_RESULT_SYSTEM = "urn:medflow:ai-result"
ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
CURRENT_MEDICATION = {"active", "on-hold", "intended"}
INACTIVE_ALLERGY = {"inactive", "resolved"}
TREND_POINTS = 50
"""The most recent values a trend plots."""


@dataclass(frozen=True)
class StudyRef:
    """An imaging study of the patient, as the archive answers a study query."""

    uid: str
    date: str | None
    """ISO date (``YYYY-MM-DD``)."""
    description: str
    accession: str
    modalities: tuple[str, ...]
    body_parts: tuple[str, ...]
    series: int
    instances: int | None = None


@dataclass
class Event:
    kind: str
    when: str
    """ISO date or dateTime, as recorded; "" when unknown (listed last)."""
    title: str
    detail: str = ""
    status: str = ""
    end: str | None = None
    """When it ended (medication stopped, encounter left), if recorded."""
    ref: str | None = None
    """The FHIR resource (``Type/id``); the first of a grouped event."""
    study_uid: str | None = None
    notes: list[str] = field(default_factory=list)
    """More lines: a study's report conclusion and AI result, grouped values."""
    thumbnail: bool = False
    """An imaging study with images: the page shows its WADO-RS thumbnail."""

    @property
    def day(self) -> str:
        return self.when[:10]


@dataclass
class Trend:
    code: str
    label: str
    unit: str
    points: list[tuple[str, float]]
    """(day, value), oldest first."""

    @property
    def latest(self) -> float:
        return self.points[-1][1]

    def polyline(self, width: float = 120, height: float = 28, pad: float = 3) -> str:
        """The points attribute of an SVG ``polyline`` over a ``width`` x ``height`` box."""
        values = [v for _, v in self.points]
        lo, hi = min(values), max(values)
        span, n = (hi - lo) or 1.0, len(values)
        xs = [pad + (width - 2 * pad) * (i / (n - 1) if n > 1 else 0.5) for i in range(n)]
        ys = [height - pad - (height - 2 * pad) * ((v - lo) / span) for v in values]
        return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs, ys, strict=True))


@dataclass
class Header:
    id: str
    name: str
    gender: str
    birth_date: str
    age: int | None
    deceased: str | None
    identifiers: list[tuple[str, str]]
    """(system or type, value)."""
    problems: list[str]
    allergies: list[str]
    medications: list[str]


@dataclass
class Prior:
    study: StudyRef
    match: str
    """``modality+body part``, ``modality``, ``body part`` or ``other``."""
    report: str
    report_ref: str | None


@dataclass
class Timeline:
    header: Header
    events: list[Event]
    trends: list[Trend]
    counts: dict[str, int]
    """Events per kind before the filters."""
    kinds: list[str]
    date_from: str | None
    date_to: str | None
    study: StudyRef | None = None
    priors: list[Prior] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        for trend, raw in zip(self.trends, out["trends"], strict=True):
            raw["points"] = [{"date": d, "value": v} for d, v in trend.points]
        return out


# -- FHIR value helpers ---------------------------------------------------------------------


def concept(cc: Any) -> str:
    """The text of a CodeableConcept: ``text``, else the first coding's display or code."""
    if not isinstance(cc, Mapping):
        return ""
    if cc.get("text"):
        return str(cc["text"])
    for coding in cc.get("coding") or []:
        if coding.get("display") or coding.get("code"):
            return str(coding.get("display") or coding.get("code"))
    return ""


def codes(cc: Any) -> set[tuple[str, str]]:
    if not isinstance(cc, Mapping):
        return set()
    return {(str(c.get("system", "")), str(c.get("code", ""))) for c in cc.get("coding") or []}


def has_code(cc: Any, system: str, values: Iterable[str]) -> bool:
    wanted = set(values)
    return any(s == system and c in wanted for s, c in codes(cc))


def status_code(cc: Any) -> str:
    """The code of a status CodeableConcept (``clinicalStatus``)."""
    for coding in (cc or {}).get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return ""


def quantity(q: Any) -> str:
    if not isinstance(q, Mapping) or q.get("value") is None:
        return ""
    unit = q.get("unit") or q.get("code") or ""
    return f"{_number(q['value'])} {unit}".strip()


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def value_text(res: Mapping[str, Any]) -> str:
    """An Observation's (or component's) value[x] as text."""
    if "valueQuantity" in res:
        return quantity(res["valueQuantity"])
    if "valueCodeableConcept" in res:
        return concept(res["valueCodeableConcept"])
    for key in ("valueString", "valueBoolean", "valueInteger", "valueDateTime"):
        if key in res:
            value = res[key]
            return ("yes" if value else "no") if isinstance(value, bool) else str(value)
    parts = [f"{concept(c.get('code'))} {value_text(c)}".strip()
             for c in res.get("component") or []]  # fmt: skip
    return ", ".join(p for p in parts if p)


def _when(res: Mapping[str, Any], *keys: str) -> str:
    for key in keys:
        value = res.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, Mapping):
            start = value.get("start") or value.get("end")
            if start:
                return str(start)
    return ""


def _end(res: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = res.get(key)
        if isinstance(value, Mapping) and value.get("end"):
            return str(value["end"])
    return None


def _ref(res: Mapping[str, Any]) -> str:
    return f"{res.get('resourceType')}/{res.get('id')}"


def _identifier(res: Mapping[str, Any], system: str) -> str | None:
    for ident in res.get("identifier") or []:
        if ident.get("system") == system and ident.get("value"):
            return str(ident["value"])
    return None


def accession_of(res: Mapping[str, Any]) -> str | None:
    """The accession number among a resource's identifiers (type v2-0203 ACSN)."""
    for ident in res.get("identifier") or []:
        if has_code(ident.get("type"), ACSN[0], [ACSN[1]]) and ident.get("value"):
            return str(ident["value"])
    return None


def study_uid_of(res: Mapping[str, Any]) -> str | None:
    """The Study Instance UID of an ImagingStudy (identifier ``urn:dicom:uid``)."""
    value = _identifier(res, DICOM_UID_SYSTEM)
    return value.removeprefix("urn:oid:") if value else None


def human_name(patient: Mapping[str, Any]) -> str:
    names = patient.get("name") or []
    name = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    if name.get("text"):
        return str(name["text"])
    given = " ".join(name.get("given") or [])
    return " ".join(p for p in (given, name.get("family") or "") if p) or "(no name)"


def fhir_day(value: Any) -> date | None:
    """The (first) day of a FHIR date or dateTime as written (``2024``, ``2024-03``, the date
    part of a dateTime, no time-zone shift); None when it is not one."""
    covered = date_range(value[:10]) if isinstance(value, str) else None
    return covered[0].date() if covered else None


def age_on(birth: str, day: date) -> int | None:
    born = fhir_day(birth)
    if born is None:
        return None
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def study_id(ref: Any) -> str | None:
    """The logical id of the ImagingStudy a Reference points at (relative, absolute or
    versioned); None for another type or no reference."""
    parsed = parse_reference(ref.get("reference", "")) if isinstance(ref, Mapping) else None
    if parsed is None or parsed.target_type != "ImagingStudy":
        return None
    return parsed.target_id


def is_pathology(report: Mapping[str, Any]) -> bool:
    return any(has_code(c, V2_0074, PATHOLOGY_SECTIONS) for c in report.get("category") or []
               ) or has_code(report.get("code"), LOINC, PATHOLOGY_CODES)  # fmt: skip


def _bad(res: Mapping[str, Any]) -> bool:
    """Entered in error: not part of the history."""
    return res.get("status") == "entered-in-error" or status_code(
        res.get("verificationStatus")) == "entered-in-error"  # fmt: skip


# -- the builder ----------------------------------------------------------------------------


def header(patient: Mapping[str, Any], resources: Sequence[Mapping[str, Any]],
           today: date) -> Header:  # fmt: skip
    identifiers = []
    for ident in patient.get("identifier") or []:
        label = concept(ident.get("type")) or str(ident.get("system") or "")
        if ident.get("value"):
            identifiers.append((label, str(ident["value"])))
    problems, allergies, medications = [], [], []
    for res in resources:
        rtype = res.get("resourceType")
        if _bad(res):
            continue
        if rtype == "Condition" and status_code(res.get("clinicalStatus")) in ACTIVE_CONDITION \
                and status_code(res.get("verificationStatus")) != "refuted":  # fmt: skip
            onset = _when(res, "onsetDateTime", "onsetPeriod", "recordedDate")[:10]
            problems.append(concept(res.get("code")) + (f" (since {onset})" if onset else ""))
        elif rtype == "AllergyIntolerance" and status_code(
                res.get("clinicalStatus")) not in INACTIVE_ALLERGY:  # fmt: skip
            reactions = ", ".join(concept(m) for r in res.get("reaction") or []
                                  for m in r.get("manifestation") or [])  # fmt: skip
            allergies.append(concept(res.get("code")) + (f": {reactions}" if reactions else ""))
        elif rtype in ("MedicationRequest", "MedicationStatement") \
                and res.get("status") in CURRENT_MEDICATION:  # fmt: skip
            medications.append(_medication_name(res))
    birth = str(patient.get("birthDate") or "")
    deceased = patient.get("deceasedDateTime") or (
        "yes" if patient.get("deceasedBoolean") else None)  # fmt: skip
    end = fhir_day(deceased) or today
    return Header(id=str(patient.get("id")), name=human_name(patient),
                  gender=str(patient.get("gender") or ""), birth_date=birth,
                  age=age_on(birth, end) if birth else None,
                  deceased=str(deceased) if deceased else None, identifiers=identifiers,
                  problems=sorted(set(problems)), allergies=sorted(set(allergies)),
                  medications=sorted(set(medications)))  # fmt: skip


def _medication_name(res: Mapping[str, Any]) -> str:
    name = concept(res.get("medicationCodeableConcept"))
    if not name:
        ref = res.get("medicationReference") or {}
        name = str(ref.get("display") or ref.get("reference") or "medication")
    return name


def build(
    *,
    patient: Mapping[str, Any],
    resources: Sequence[Mapping[str, Any]],
    studies: Sequence[StudyRef],
    today: date,
    kinds: Iterable[str] | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
    study_uid: str | None = None,
) -> Timeline:
    """The timeline of ``patient`` from the other resources of their compartment and their
    archive ``studies``; ``kinds``/``date_from``/``date_to`` filter the events (``counts``
    are before the filters); ``study_uid``: a study being read, whose priors are listed."""
    others = [r for r in resources if not (r.get("resourceType") == "Patient"
                                           and r.get("id") == patient.get("id"))]  # fmt: skip
    events = _events(patient, others, studies)
    counts = {k: 0 for k in KINDS}
    for e in events:
        counts[e.kind] = counts.get(e.kind, 0) + 1
    chosen = [k for k in (kinds or ()) if k in KINDS] or list(KINDS)
    lo = date_from.isoformat() if date_from else None
    hi = date_to.isoformat() if date_to else None
    shown = [e for e in events if e.kind in chosen
             and (lo is None or (e.day and e.day >= lo))
             and (hi is None or (e.day and e.day <= hi))]  # fmt: skip
    timeline = Timeline(header=header(patient, others, today), events=shown,
                        trends=trends(others), counts=counts,
                        kinds=chosen if len(chosen) < len(KINDS) else [], date_from=lo,
                        date_to=hi)  # fmt: skip
    if study_uid:
        timeline.study, timeline.priors = priors(study_uid, studies, others)
    return timeline


def _events(patient: Mapping[str, Any], resources: Sequence[Mapping[str, Any]],
            studies: Sequence[StudyRef]) -> list[Event]:  # fmt: skip
    events: list[Event] = []
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    imaging_ids: dict[str, str] = {}
    for res in resources:
        if res.get("resourceType") == "ImagingStudy" and study_uid_of(res):
            imaging_ids[str(res.get("id"))] = str(study_uid_of(res))
    by_accession = {s.accession: s.uid for s in studies if s.accession}
    study_notes: dict[str, list[str]] = defaultdict(list)
    for res in resources:
        if _bad(res):
            continue
        rtype = res.get("resourceType")
        if rtype == "Encounter":
            events.append(_encounter(res))
        elif rtype == "Condition":
            events.extend(_condition(res))
        elif rtype == "Procedure":
            events.append(_procedure(res))
        elif rtype in ("MedicationRequest", "MedicationStatement", "MedicationAdministration"):
            events.append(_medication(res))
        elif rtype == "Observation":
            event = _observation(res)
            if event is None:
                category = _category(res)
                when = _when(res, "effectiveDateTime", "effectivePeriod", "effectiveInstant",
                             "issued")  # fmt: skip
                grouped[(category, when[:10])].append(res)
            else:
                events.append(event)
                if event.kind == "finding" and event.study_uid:
                    study_notes[event.study_uid].append(f"{event.title}: {event.detail}")
        elif rtype == "DiagnosticReport":
            event = _report(res, imaging_ids, by_accession)
            events.append(event)
            if event.study_uid and event.kind == "report" and event.detail:
                study_notes[event.study_uid].insert(0, f"Report: {event.detail}")
        elif rtype == "RiskAssessment":
            event = _risk(res, imaging_ids)
            events.append(event)
            if event.study_uid:
                study_notes[event.study_uid].append(f"{event.title}: {event.detail}")
    for (category, day), group in grouped.items():
        events.append(_observation_group(category, day, group))
    for study in studies:
        events.append(_study(study, study_notes.get(study.uid, [])))
    deceased = patient.get("deceasedDateTime")
    if deceased:
        events.append(Event("outcome", str(deceased), "Died", ref=_ref(patient)))
    events.sort(key=lambda e: (e.when != "", e.when, KINDS.index(e.kind)), reverse=True)
    return events


def _encounter(res: Mapping[str, Any]) -> Event:
    cls = res.get("class") or {}
    kind = str(cls.get("display") or cls.get("code") or "")
    types = ", ".join(concept(t) for t in res.get("type") or [] if concept(t))
    reason = ", ".join(concept(r) for r in res.get("reasonCode") or [] if concept(r))
    return Event("encounter", _when(res, "period"), types or kind or "Encounter",
                 detail=" · ".join(p for p in (kind, reason) if p),
                 status=str(res.get("status") or ""), end=_end(res, "period"),
                 ref=_ref(res))  # fmt: skip


def _condition(res: Mapping[str, Any]) -> list[Event]:
    name = concept(res.get("code")) or "Condition"
    clinical = status_code(res.get("clinicalStatus"))
    verification = status_code(res.get("verificationStatus"))
    stage = ", ".join(concept(s.get("summary")) for s in res.get("stage") or []
                      if concept(s.get("summary")))  # fmt: skip
    out = [Event("condition", _when(res, "onsetDateTime", "onsetPeriod", "recordedDate"), name,
                 detail=" · ".join(p for p in (verification, stage) if p), status=clinical,
                 end=_when(res, "abatementDateTime", "abatementPeriod") or None,
                 ref=_ref(res))]  # fmt: skip
    abated = _when(res, "abatementDateTime", "abatementPeriod")
    if abated:
        out.append(Event("outcome", abated, f"{name}: {clinical or 'abated'}",
                         status=clinical, ref=_ref(res)))  # fmt: skip
    return out


def _procedure(res: Mapping[str, Any]) -> Event:
    sites = ", ".join(concept(b) for b in res.get("bodySite") or [] if concept(b))
    outcome = concept(res.get("outcome"))
    return Event("procedure", _when(res, "performedDateTime", "performedPeriod"),
                 concept(res.get("code")) or "Procedure",
                 detail=" · ".join(p for p in (sites, outcome) if p),
                 status=str(res.get("status") or ""), end=_end(res, "performedPeriod"),
                 ref=_ref(res))  # fmt: skip


def _medication(res: Mapping[str, Any]) -> Event:
    dosage = "; ".join(str(d.get("text")) for d in res.get("dosageInstruction") or res.get(
        "dosage") or [] if d.get("text"))  # fmt: skip
    if res.get("resourceType") == "MedicationAdministration":
        dosage = str((res.get("dosage") or {}).get("text") or "")
    validity = (res.get("dispenseRequest") or {}).get("validityPeriod") or {}
    return Event("medication",
                 _when(res, "authoredOn", "effectiveDateTime", "effectivePeriod", "dateAsserted"),
                 _medication_name(res), detail=dosage, status=str(res.get("status") or ""),
                 end=_end(res, "effectivePeriod") or validity.get("end"),
                 ref=_ref(res))  # fmt: skip


def _category(res: Mapping[str, Any]) -> str:
    for cc in res.get("category") or []:
        code = status_code(cc)
        if code:
            return code
    return ""


def _observation(res: Mapping[str, Any]) -> Event | None:
    """One event, or None for a vital sign or laboratory result (grouped by day)."""
    when = _when(res, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")
    name, value = concept(res.get("code")) or "Observation", value_text(res)
    reader = _identifier(res, READER_FINDING_SYSTEM)
    if reader:
        who = ", ".join(str(p.get("display")) for p in res.get("performer") or []
                        if p.get("display"))  # fmt: skip
        return Event("finding", when, name, detail=f"{value} ({who})" if who else value,
                     status=str(res.get("status") or ""), ref=_ref(res),
                     study_uid=reader.split("/", 1)[0])  # fmt: skip
    if has_code(res.get("code"), LOINC, [DISEASE_STATUS]):
        return Event("outcome", when, name, detail=value, status=str(res.get("status") or ""),
                     ref=_ref(res))  # fmt: skip
    if _category(res) in ("vital-signs", "laboratory"):
        return None
    return Event("observation", when, name, detail=value,
                 status=str(res.get("status") or ""), ref=_ref(res))  # fmt: skip


def _observation_group(category: str, day: str, group: list[Mapping[str, Any]]) -> Event:
    names = {"vital-signs": "Vital signs", "laboratory": "Laboratory results"}
    title = names.get(category, category)
    group = sorted(group, key=lambda r: concept(r.get("code")))
    notes = []
    for res in group:
        flag = ", ".join(status_code(i) for i in res.get("interpretation") or []
                         if status_code(i) not in ("", "N"))  # fmt: skip
        notes.append(f"{concept(res.get('code'))}: {value_text(res)}" + (f" ({flag})" if flag
                                                                          else ""))  # fmt: skip
    when = min(_when(r, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued")
               for r in group)  # fmt: skip
    return Event("observation", when or day, title, detail=f"{len(group)} results",
                 ref=_ref(group[0]), notes=notes)  # fmt: skip


def _report(res: Mapping[str, Any], imaging_ids: Mapping[str, str],
            by_accession: Mapping[str, str]) -> Event:  # fmt: skip
    study = None
    for ref in res.get("imagingStudy") or []:
        study = imaging_ids.get(study_id(ref) or "")
        if study:
            break
    accession = accession_of(res)
    if study is None and accession:
        study = by_accession.get(accession)
    conclusion = str(res.get("conclusion") or "")
    coded = ", ".join(concept(c) for c in res.get("conclusionCode") or [] if concept(c))
    pathology = is_pathology(res)
    notes = [f"Coded: {coded}"] if coded and coded not in conclusion else []
    if pathology and accession:
        notes.append(f"Case {accession}")
    return Event("pathology" if pathology else "report",
                 _when(res, "effectiveDateTime", "effectivePeriod", "issued"),
                 concept(res.get("code")) or "Report", detail=conclusion,
                 status=str(res.get("status") or ""), ref=_ref(res), study_uid=study,
                 notes=notes)  # fmt: skip


def _risk(res: Mapping[str, Any], imaging_ids: Mapping[str, str]) -> Event:
    study = None
    key = _identifier(res, AI_RESULT_SYSTEM)
    if key:
        study = key.split("/", 1)[0]
    for basis in res.get("basis") or []:
        study = study or imaging_ids.get(study_id(basis) or "")
    method = concept(res.get("method")) or str((res.get("performer") or {}).get("display") or "")
    parts = []
    for p in res.get("prediction") or []:
        prob = p.get("probabilityDecimal")
        outcome = concept(p.get("outcome"))
        risk = status_code(p.get("qualitativeRisk"))
        text = f"{outcome} {prob:.2f}" if isinstance(prob, int | float) else outcome
        parts.append(text + (f" ({risk})" if risk else ""))
    return Event("ai-result", _when(res, "occurrenceDateTime", "occurrencePeriod"),
                 method or "AI result", detail="; ".join(parts),
                 status=str(res.get("status") or ""), ref=_ref(res), study_uid=study)  # fmt: skip


def _study(study: StudyRef, notes: list[str]) -> Event:
    slide = "SM" in study.modalities
    modalities = "/".join(study.modalities)
    description = study.description
    if description.split(" ", 1)[0].upper() in study.modalities:  # "MR KNEE W/WO"
        modalities = ""
    parts = [f"{study.series} series"]
    if study.body_parts:
        parts.append(", ".join(study.body_parts))
    if study.accession:
        parts.append(f"accession {study.accession}")
    return Event("slide" if slide else "imaging", study.date or "",
                 f"{modalities} {description}".strip() or "Imaging study",
                 detail=" · ".join(parts), study_uid=study.uid, notes=list(notes),
                 thumbnail=True)  # fmt: skip


def trends(resources: Sequence[Mapping[str, Any]]) -> list[Trend]:
    """Numeric Observations by code with two or more values, imaging measurements first,
    then laboratory results, then the rest (vital signs); each oldest first."""
    series: dict[str, Trend] = {}
    rank: dict[str, int] = {}
    order = {"imaging": 0, "laboratory": 1}
    for res in resources:
        if res.get("resourceType") != "Observation" or _bad(res):
            continue
        q = res.get("valueQuantity") or {}
        day = _when(res, "effectiveDateTime", "effectivePeriod", "effectiveInstant")[:10]
        if not isinstance(q.get("value"), int | float) or not day:
            continue
        codings = (res.get("code") or {}).get("coding") or [{}]
        key = f"{codings[0].get('system', '')}|{codings[0].get('code', '')}"
        if key not in series:
            unit = str(q.get("unit") or q.get("code") or "")
            series[key] = Trend(code=key, label=concept(res.get("code")), unit=unit, points=[])
            rank[key] = order.get(_category(res), 2)
        series[key].points.append((day, float(q["value"])))
    out = []
    for trend in series.values():
        if len(trend.points) >= 2:
            trend.points = sorted(trend.points)[-TREND_POINTS:]
            out.append(trend)
    return sorted(out, key=lambda t: (rank[t.code], t.label))


def priors(
    study_uid: str, studies: Sequence[StudyRef], resources: Sequence[Mapping[str, Any]]
) -> tuple[StudyRef | None, list[Prior]]:
    """The patient's studies before ``study_uid`` (same day included), the same modality and
    body part first, then the same modality, then the same body part, each group newest
    first; with each prior its radiology report's conclusion (by accession or ImagingStudy)."""
    current = next((s for s in studies if s.uid == study_uid), None)
    if current is None:
        return None, []
    imaging_ids = {str(r.get("id")): study_uid_of(r) for r in resources
                   if r.get("resourceType") == "ImagingStudy"}  # fmt: skip
    reports: dict[str, tuple[str, str]] = {}
    for res in resources:
        if res.get("resourceType") != "DiagnosticReport" or is_pathology(res) or _bad(res):
            continue
        uids = {imaging_ids.get(study_id(r) or "") for r in res.get("imagingStudy") or []}
        accession = accession_of(res)
        uids |= {s.uid for s in studies if accession and s.accession == accession}
        for uid in uids - {None}:
            reports[str(uid)] = (str(res.get("conclusion") or ""), _ref(res))
    modalities, parts = set(current.modalities), set(current.body_parts)
    out = []
    for s in studies:
        if s.uid == study_uid or (current.date and s.date and s.date > current.date):
            continue
        same_modality, same_part = bool(modalities & set(s.modalities)), bool(
            parts & set(s.body_parts))  # fmt: skip
        match = ("modality+body part" if same_modality and same_part else "modality"
                 if same_modality else "body part" if same_part else "other")  # fmt: skip
        text, ref = reports.get(s.uid, ("", None))
        out.append(Prior(study=s, match=match, report=text, report_ref=ref))
    groups = ["modality+body part", "modality", "body part", "other"]
    out.sort(key=lambda p: p.study.date or "", reverse=True)
    out.sort(key=lambda p: groups.index(p.match))
    return current, out


__all__ = ["KINDS", "KIND_LABELS", "Event", "Header", "Prior", "StudyRef", "Timeline", "Trend",
           "build", "header", "priors", "trends"]  # fmt: skip
