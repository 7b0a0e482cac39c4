"""Similar patients and their outcomes (issue 7: treatment choice). For the patients of a
cohort — given, or built from an index patient's diagnosis, age and gender by
:func:`similar_definition` — which treatments they received (Procedures: surgery,
chemotherapy, radiotherapy...; MedicationRequests: drug ingredients, grouped per patient
into a regimen such as "cisplatin + doxorubicin + methotrexate"), how their disease went
(the latest "Cancer disease status" Observation, LOINC 97509-4, mCODE's
CancerDiseaseStatus) and whether they died (``Patient.deceased[x]``), with Kaplan-Meier
overall survival per treatment group from the diagnosis (the onset of the cohort's
Conditions), censored at the last known contact or the evaluation date.

Everything is read through :class:`~medflow.fhir.service.FhirService` (the search index for
who and when, then the few resources whose contents matter) and the cohort engine, as of
the evaluation date: nothing dated after it counts. See ``docs/cohorts.md``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from medflow.cohort.results import PatientResult
from medflow.cohort.schema import CohortDefinition, parse_definition
from medflow.cohort.service import CohortService
from medflow.cohort.survival import KMCurve, kaplan_meier
from medflow.core.errors import InvalidInput, NotFound
from medflow.fhir.identifiers import search_token
from medflow.fhir.service import FhirService
from medflow.store.service import StoreService

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
STATUS_CODE = (LOINC, "97509-4")
"""Cancer disease status (mCODE CancerDiseaseStatus)."""
STATUS_VALUES = {
    "260415000": "remission",  # Not detected
    "268910001": "response",  # Patient's condition improved
    "359746009": "stable",  # Patient's condition stable
    "271299001": "progression",  # Patient's condition worsened
    "709137006": "undetermined",  # Patient condition undetermined
}
"""mCODE ConditionStatusTrendVS (SNOMED CT) -> outcome category."""
STATUSES = ("remission", "response", "stable", "progression", "undetermined", "unknown")
"""Outcome categories, best first; ``unknown``: no (understood) disease status recorded."""
PROCEDURE_KINDS = {
    "367336001": "chemotherapy",
    "108290001": "radiotherapy",
    "33195004": "radiotherapy",  # Teleradiotherapy procedure
    "387713003": "surgery",
    "173171007": "surgery",  # Lobectomy of lung
    "392021009": "surgery",  # Lumpectomy of breast
    "69031006": "surgery",  # Excision of breast tissue (mastectomy)
    "86273004": None,  # Biopsy: diagnostic
}
"""SNOMED CT procedure -> treatment kind (None: diagnostic, not a treatment)."""
KEYWORDS = (
    ("biopsy", None), ("chemotherapy", "chemotherapy"), ("radiotherapy", "radiotherapy"),
    ("radiation", "radiotherapy"), ("ectomy", "surgery"), ("surgical", "surgery"),
    ("resection", "surgery"), ("excision", "surgery"), ("amputation", "surgery"),
)  # fmt: skip
"""Words of a procedure's display or text -> kind, for codes not in :data:`PROCEDURE_KINDS`."""
KIND_ORDER = ("surgery", "chemotherapy", "radiotherapy")
DROPPED = {"entered-in-error", "not-done", "cancelled", "draft", "revoked"}
"""Statuses of resources that do not count (a treatment not given, a record in error)."""
HORIZONS = (1, 2, 5)
YEAR = 365.25
CHUNK = 500


# -- FHIR values ---------------------------------------------------------------------------------
def fhir_day(value: Any) -> date | None:
    """The day of a FHIR date/dateTime (``2024``, ``2024-03``: its first day); None if not one."""
    if not isinstance(value, str) or len(value) < 4 or not value[:4].isdigit():
        return None
    parts = [*value[:10].split("-"), "1", "1"][:3]
    try:
        return date(int(parts[0]), int(parts[1]), int(parts[2]))
    except ValueError:
        return None


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, dict)]


def _status(concept: Any) -> str | None:
    codes = [c.get("code") for c in _codings(concept)]
    return next((str(c) for c in codes if c), None)


def _when(resource: dict[str, Any]) -> date | None:
    """The day a resource happened (performed, authored, effective, onset)."""
    for key in ("performedDateTime", "authoredOn", "effectiveDateTime", "onsetDateTime",
                "occurrenceDateTime", "recordedDate", "issued"):  # fmt: skip
        if key in resource:
            return fhir_day(resource[key])
    for key in ("performedPeriod", "effectivePeriod", "period", "onsetPeriod"):
        if isinstance(resource.get(key), dict):
            return fhir_day(resource[key].get("start"))
    return None


def procedure_kind(procedure: dict[str, Any]) -> str | None:
    """The treatment a Procedure is (``surgery``, ``chemotherapy``, ``radiotherapy``, or its
    display in lower case), or None for a diagnostic one (biopsy)."""
    code = procedure.get("code") or {}
    for coding in _codings(code):
        if coding.get("system") == SNOMED and coding.get("code") in PROCEDURE_KINDS:
            return PROCEDURE_KINDS[str(coding["code"])]
    words = " ".join([str(code.get("text") or "")]
                     + [str(c.get("display") or "") for c in _codings(code)]).lower()  # fmt: skip
    for word, kind in KEYWORDS:
        if word in words:
            return kind
    text = code.get("text") or next((c.get("display") or c.get("code") for c in _codings(code)
                                     if c.get("display") or c.get("code")), None)  # fmt: skip
    return str(text).strip().lower() if text else "other procedure"


def ingredient(concept: Any) -> str | None:
    """A medication's name in lower case: the RxNorm display, else its text or any display."""
    codings = _codings(concept)
    ordered = [c for c in codings if c.get("system") == RXNORM] + codings
    name = next((c.get("display") for c in ordered if c.get("display")), None)
    name = name or (concept.get("text") if isinstance(concept, dict) else None)
    name = name or next((c.get("code") for c in codings if c.get("code")), None)
    return str(name).strip().lower() if name else None


def disease_status(observation: dict[str, Any]) -> str:
    """The outcome category of a Cancer disease status Observation's value."""
    for coding in _codings(observation.get("valueCodeableConcept")):
        if coding.get("system") == SNOMED and coding.get("code") in STATUS_VALUES:
            return STATUS_VALUES[str(coding["code"])]
    return "unknown"


# -- the definition built from an index patient --------------------------------------------------
def _neoplasm(condition: dict[str, Any]) -> bool:
    """An ICD-10 code in C00-D49 (neoplasms) or a SNOMED disorder worded as a tumour."""
    for coding in _codings(condition.get("code")):
        code = str(coding.get("code") or "")
        if coding.get("system") == ICD10 and code[:1] in ("C", "D") and code[:3] <= "D49":
            return True
    text = str((condition.get("code") or {}).get("text") or "").lower()
    return any(w in text for w in ("cancer", "malignan", "sarcoma", "carcinoma", "tumor", "tumour"))


def main_condition(conditions: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The diagnosis that defines a patient for comparison: not refuted or in error, coded;
    a neoplasm before anything else, then an unresolved one, then the latest onset."""

    def rank(c: dict[str, Any]) -> tuple[bool, bool, bool, date]:
        clinical = _status(c.get("clinicalStatus"))
        confirmed = _status(c.get("verificationStatus")) in (None, "confirmed")
        onset = _when(c) or date.min
        return _neoplasm(c), clinical not in ("resolved", "inactive"), confirmed, onset

    usable = [c for c in conditions
              if _status(c.get("verificationStatus")) not in ("refuted", "entered-in-error")
              and any(x.get("code") for x in _codings(c.get("code")))]  # fmt: skip
    return max(usable, key=rank, default=None)


def _code_sets(condition: dict[str, Any]) -> list[dict[str, Any]]:
    """SNOMED CT codes as they are; ICD-10-CM by category (``C34.90`` -> prefix ``C34``)."""
    sets: dict[str, dict[str, list[str]]] = {}
    for coding in _codings(condition.get("code")):
        system, code = coding.get("system"), str(coding.get("code") or "").strip()
        if not system or not code or "," in code or "|" in code:
            continue
        entry = sets.setdefault(str(system), {"codes": [], "prefixes": []})
        key, value = ("prefixes", code[:3]) if system == ICD10 else ("codes", code)
        if value not in entry[key]:
            entry[key].append(value)
    return [{"system": s, **{k: v for k, v in e.items() if v}} for s, e in sets.items()]


def _age(birth: date, today: date) -> int:
    return today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))


def _modalities(fhir: FhirService, patient_id: str) -> list[str]:
    """Modalities of the patient's ImagingStudies (made by the DICOM sync)."""
    studies = fhir.search_resources(resource_type="ImagingStudy",
                                    params=[("subject", f"Patient/{patient_id}")],
                                    limit=1000)  # fmt: skip
    found = {str(c["code"]) for s in studies for c in s.get("modality") or [] if c.get("code")}
    return sorted(found)


def similar_definition(
    fhir: FhirService,
    patient_id: str,
    *,
    age_band: int | None = 10,
    same_gender: bool = False,
    same_modality: bool = False,
    as_of: date,
) -> CohortDefinition:
    """A cohort of the patients like ``patient_id`` as of ``as_of``: the same main diagnosis
    (:func:`main_condition`: its SNOMED CT codes, its ICD-10-CM category), an age within
    ``age_band`` years of the patient's (None: any age), the same gender, and imaging of the
    same modality (ImagingStudy.modality). The patient is in it too: :func:`outcomes` leaves
    them out. ``NotFound`` without the patient, ``InvalidInput`` without a coded diagnosis."""
    patient = fhir.read(resource_type="Patient", res_id=patient_id)
    conditions = fhir.search_resources(resource_type="Condition",
                                       params=[("subject", f"Patient/{patient_id}")],
                                       limit=1000)  # fmt: skip
    condition = main_condition(c for c in conditions if (_when(c) or date.min) <= as_of)
    if condition is None:
        raise InvalidInput(f"Patient/{patient_id} has no coded diagnosis to compare on")
    text = (condition.get("code") or {}).get("text") or ingredient(condition.get("code"))
    criteria: list[dict[str, Any]] = [
        {"label": f"diagnosis: {text}", "condition": {"codes": _code_sets(condition)}}
    ]
    birth = fhir_day(patient.get("birthDate"))
    if age_band is not None and birth is not None:
        age = _age(birth, as_of)
        band = {"min": max(0, age - age_band), "max": age + age_band}
        criteria.append({"label": f"age {band['min']}-{band['max']}",
                         "demographics": {"age": band}})  # fmt: skip
    if same_gender and patient.get("gender"):
        criteria.append({"label": f"gender {patient['gender']}",
                         "demographics": {"gender": [patient["gender"]]}})  # fmt: skip
    modalities = _modalities(fhir, patient_id) if same_modality else []
    if modalities:
        criteria.append({"label": "imaged by " + ", ".join(modalities),
                         "imaging": {"modality": modalities}})  # fmt: skip
    return parse_definition({
        "name": f"similar to Patient/{patient_id}", "evaluation_date": as_of.isoformat(),
        "description": "Patients with the same diagnosis (issue 7: outcomes by treatment)",
        "criteria": criteria,
    })  # fmt: skip


# -- results -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PatientOutcome:
    """One comparison patient: treatments, outcome and follow-up as of the evaluation date."""

    patient_id: str
    mrn: str | None
    diagnosis: date | None
    """The time origin: the earliest onset of the cohort's Conditions (else the first
    treatment)."""
    procedures: tuple[str, ...]
    regimen: tuple[str, ...]
    status: str
    """The latest disease status (:data:`STATUSES`)."""
    status_day: date | None
    died: date | None
    """Day of death (the last contact when only ``deceasedBoolean`` says so)."""
    deceased: bool
    last_contact: date | None
    years: float | None
    """Years from the diagnosis to death or censoring (None without a diagnosis date)."""

    @property
    def group(self) -> str:
        return group_label(self.procedures, self.regimen)

    def to_dict(self) -> dict[str, Any]:
        def day(d: date | None) -> str | None:
            return None if d is None else d.isoformat()

        return {"id": self.patient_id, "mrn": self.mrn, "group": self.group,
                "diagnosis": day(self.diagnosis), "procedures": list(self.procedures),
                "regimen": list(self.regimen), "status": self.status,
                "status_day": day(self.status_day), "deceased": self.deceased,
                "died": day(self.died), "last_contact": day(self.last_contact),
                "years": None if self.years is None else round(self.years, 4)}  # fmt: skip


def group_label(procedures: Sequence[str], regimen: Sequence[str]) -> str:
    """``surgery + chemotherapy with cisplatin + doxorubicin + methotrexate``."""
    label = " + ".join(procedures)
    if regimen:
        label = f"{label} with {' + '.join(regimen)}" if label else " + ".join(regimen)
    return label or "no recorded treatment"


@dataclass(frozen=True)
class SurvivalAt:
    """Kaplan-Meier survival ``years`` after diagnosis (None: follow-up too short), its
    confidence interval, and the counts it rests on."""

    years: float
    survival: float | None
    lower: float | None
    upper: float | None
    at_risk: int
    events: int
    censored: int

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 4)

        return {"years": self.years, "survival": r(self.survival), "lower": r(self.lower),
                "upper": r(self.upper), "at_risk": self.at_risk, "events": self.events,
                "censored": self.censored}  # fmt: skip


@dataclass(frozen=True)
class OutcomeRow:
    """A treatment group (or every comparison patient): outcome counts and survival."""

    group: str
    procedures: tuple[str, ...]
    regimen: tuple[str, ...]
    n: int
    statuses: dict[str, int]
    """Patients by their latest disease status (every key of :data:`STATUSES`)."""
    deaths: int
    survival: tuple[SurvivalAt, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "procedures": list(self.procedures),
                "regimen": list(self.regimen), "n": self.n, "statuses": dict(self.statuses),
                "deaths": self.deaths,
                "survival": [s.to_dict() for s in self.survival]}  # fmt: skip


def _curve_dict(curve: KMCurve) -> dict[str, Any]:
    return {"n": curve.n, "time": [round(t, 4) for t in curve.time.tolist()],
            "at_risk": curve.at_risk.tolist(), "events": curve.events.tolist(),
            "censored": curve.censored.tolist(),
            **{k: [round(v, 4) for v in getattr(curve, k).tolist()]
               for k in ("survival", "lower", "upper")}}  # fmt: skip


@dataclass(frozen=True)
class OutcomeTable:
    """Treatments x outcomes of a cohort's patients (the index patient left out)."""

    name: str
    evaluation_date: date
    index_patient: str | None
    definition: CohortDefinition
    overall: OutcomeRow
    rows: tuple[OutcomeRow, ...]
    """One per treatment group, largest first."""
    curves: dict[str, KMCurve]
    """Kaplan-Meier overall survival per treatment group (those with a diagnosis date)."""
    patients: tuple[PatientOutcome, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (the API's answer)."""
        return {
            "name": self.name,
            "evaluation_date": self.evaluation_date.isoformat(),
            "index_patient": self.index_patient,
            "definition": self.definition.model_dump(mode="json", by_alias=True, exclude_none=True),
            "statuses": list(STATUSES),
            "overall": self.overall.to_dict(),
            "rows": [row.to_dict() for row in self.rows],
            "curves": {label: _curve_dict(c) for label, c in self.curves.items()},
            "patients": [p.to_dict() for p in self.patients],
        }


# -- reading the record --------------------------------------------------------------------------
def _chunks(values: Collection[str], size: int = CHUNK) -> Iterator[list[str]]:
    ordered = sorted(values)
    for i in range(0, len(ordered), size):
        yield ordered[i : i + size]


class _Reader:
    """The comparison patients' resources through the FHIR service, as of ``today``."""

    def __init__(self, fhir: FhirService, today: date) -> None:
        self.fhir = fhir
        self.today = today

    def load(self, resource_type: str, ids: Collection[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for chunk in _chunks(ids):
            out += self.fhir.search_resources(resource_type=resource_type,
                                              params=[("_id", ",".join(chunk))],
                                              limit=len(chunk))  # fmt: skip
        return out

    def of_patients(
        self, resource_type: str, patients: Collection[str], params: Sequence[tuple[str, str]]
    ) -> dict[str, list[dict[str, Any]]]:
        """Patient id -> their current ``resource_type`` resources matching ``params``, dated
        no later than today and not in a dropped status."""
        owners: dict[str, tuple[str, ...]] = {
            m.res_id: m.subjects
            for m in self.fhir.search_index(resource_type=resource_type, params=params,
                                            subject_param="subject", subjects=patients)
        }  # fmt: skip
        out: dict[str, list[dict[str, Any]]] = {}
        for resource in self.load(resource_type, owners):
            day = _when(resource)
            if str(resource.get("status")) in DROPPED or (day is not None and day > self.today):
                continue
            for pid in owners.get(str(resource.get("id")), ()):
                out.setdefault(pid, []).append(resource)
        return out

    def first_days(
        self, resource_type: str, param: str, patients: Collection[str] | None, **kw: Any
    ) -> dict[str, list[date]]:
        """Patient id -> the days (low bounds of ``param``, up to today) of their matches."""
        out: dict[str, list[date]] = {}
        for m in self.fhir.search_index(resource_type=resource_type, params=[],
                                        subject_param="subject", date_param=param,
                                        subjects=patients, **kw):  # fmt: skip
            days = [d.date() for d in m.dates if d.date() <= self.today]
            for pid in m.subjects:
                out.setdefault(pid, []).extend(days)
        return out

    def medication(self, request: dict[str, Any]) -> str | None:
        """The ingredient of a MedicationRequest (its concept, or the Medication it refers to,
        contained or stored)."""
        if "medicationCodeableConcept" in request:
            return ingredient(request["medicationCodeableConcept"])
        ref = str((request.get("medicationReference") or {}).get("reference") or "")
        if ref.startswith("#"):
            contained = [c for c in request.get("contained") or [] if c.get("id") == ref[1:]]
            return ingredient(contained[0].get("code")) if contained else None
        if ref.startswith("Medication/"):
            try:
                medication = self.fhir.read(resource_type="Medication", res_id=ref.split("/")[1])
                return ingredient(medication.get("code"))
            except NotFound:
                return None
        return None


def _for_condition(resource: dict[str, Any], conditions: Collection[str]) -> bool:
    """False when the resource names its reasons and none is one of ``conditions`` (a
    treatment of something else); True otherwise."""
    reasons = [str(r.get("reference") or "") for r in resource.get("reasonReference") or []]
    named = [r.split("/")[-1] for r in reasons if r.startswith("Condition/")]
    return not conditions or not named or any(c in conditions for c in named)


@dataclass(frozen=True)
class _Facts:
    """What was read for all the comparison patients at once."""

    onsets: dict[str, list[date]]
    patients: dict[str, dict[str, Any]]
    procedures: dict[str, list[dict[str, Any]]]
    medications: dict[str, list[dict[str, Any]]]
    statuses: dict[str, list[dict[str, Any]]]
    encounters: dict[str, list[date]]


def _read_facts(reader: _Reader, members: Sequence[PatientResult]) -> _Facts:
    pids = [m.patient_id for m in members]
    conditions = {c for m in members for c in m.resources.get("Condition", [])}
    onsets = reader.first_days("Condition", "onset-date", None, ids=conditions) if conditions \
        else {}  # fmt: skip
    status = [("code", search_token(*STATUS_CODE))]
    return _Facts(
        onsets=onsets,
        patients={str(p["id"]): p for p in reader.load("Patient", pids)},
        procedures=reader.of_patients("Procedure", pids, []),
        medications=reader.of_patients("MedicationRequest", pids, []),
        statuses=reader.of_patients("Observation", pids, status),
        encounters=reader.first_days("Encounter", "date", pids),
    )


def _patient_outcome(reader: _Reader, member: PatientResult, facts: _Facts) -> PatientOutcome:
    pid = member.patient_id
    conditions = set(member.resources.get("Condition", []))
    procs = [p for p in facts.procedures.get(pid, []) if _for_condition(p, conditions)]
    meds = [m for m in facts.medications.get(pid, []) if _for_condition(m, conditions)]
    kinds = {k for k in (procedure_kind(p) for p in procs) if k}
    ordered = [k for k in KIND_ORDER if k in kinds] + sorted(kinds - set(KIND_ORDER))
    regimen = sorted({d for d in (reader.medication(m) for m in meds) if d})
    statuses = sorted(facts.statuses.get(pid, []), key=lambda o: _when(o) or date.min)
    treated = [d for d in (_when(r) for r in [*procs, *meds]) if d is not None]
    onsets = facts.onsets.get(pid) or treated
    origin = min(onsets) if onsets else None
    seen = [*facts.encounters.get(pid, []), *treated, *onsets,
            *(d for d in (_when(o) for o in statuses) if d is not None)]  # fmt: skip
    last = min(max(seen), reader.today) if seen else None
    patient = facts.patients.get(pid, {})
    died = fhir_day(patient.get("deceasedDateTime"))
    deceased = (died is not None and died <= reader.today) or (
        died is None and patient.get("deceasedBoolean") is True)  # fmt: skip
    death_day = (died or last) if deceased else None
    end = death_day if deceased else (last or origin)
    years = None
    if origin is not None and end is not None and origin <= reader.today:
        years = max(0, (end - origin).days) / YEAR
    return PatientOutcome(
        patient_id=pid, mrn=member.mrn, diagnosis=origin, procedures=tuple(ordered),
        regimen=tuple(regimen), status=disease_status(statuses[-1]) if statuses else "unknown",
        status_day=_when(statuses[-1]) if statuses else None, died=death_day,
        deceased=deceased, last_contact=last, years=years,
    )  # fmt: skip


# -- the table -----------------------------------------------------------------------------------
def _row(
    group: str, members: Sequence[PatientOutcome], horizons: Sequence[float], alpha: float
) -> tuple[OutcomeRow, KMCurve | None]:
    statuses = dict.fromkeys(STATUSES, 0)
    for p in members:
        statuses[p.status] = statuses.get(p.status, 0) + 1
    timed = [p for p in members if p.years is not None]
    curve = None
    if timed:
        curve = kaplan_meier([p.years or 0.0 for p in timed], [p.deceased for p in timed],
                             alpha=alpha)  # fmt: skip
    points = []
    for h in horizons:
        if curve is None:
            points.append(SurvivalAt(h, None, None, None, 0, 0, 0))
            continue
        low, high = curve.interval_at(h) or (None, None)
        at_risk, events, censored = curve.counts_at(h)
        points.append(SurvivalAt(h, curve.at(h), low, high, at_risk, events, censored))
    first = members[0] if members else None
    row = OutcomeRow(group, first.procedures if first else (), first.regimen if first else (),
                     len(members), statuses, sum(p.deceased for p in members),
                     tuple(points))  # fmt: skip
    return row, curve


def outcome_table(
    definition: CohortDefinition,
    index_patient: str | None,
    patients: Sequence[PatientOutcome],
    *,
    horizons: Sequence[float] = HORIZONS,
    alpha: float = 0.05,
) -> OutcomeTable:
    """Group ``patients`` by treatment and count their outcomes (pure)."""
    groups: dict[str, list[PatientOutcome]] = {}
    for p in patients:
        groups.setdefault(p.group, []).append(p)
    order = sorted(groups, key=lambda g: (-len(groups[g]), g))
    rows, curves = [], {}
    for g in order:
        row, curve = _row(g, groups[g], horizons, alpha)
        rows.append(row)
        if curve is not None:
            curves[g] = curve
    overall, _ = _row("all similar patients", patients, horizons, alpha)
    overall = OutcomeRow(overall.group, (), (), overall.n, overall.statuses, overall.deaths,
                         overall.survival)  # fmt: skip
    return OutcomeTable(definition.name, definition.evaluation_date, index_patient, definition,
                        overall, tuple(rows), curves, tuple(patients))  # fmt: skip


def outcomes(
    *,
    store: StoreService,
    fhir: FhirService,
    definition: CohortDefinition | None = None,
    patient_id: str | None = None,
    as_of: date | None = None,
    age_band: int | None = 10,
    same_gender: bool = False,
    horizons: Sequence[float] = HORIZONS,
    alpha: float = 0.05,
) -> OutcomeTable:
    """Treatments x outcomes of a cohort's patients, and their survival per treatment group.

    The cohort is ``definition`` (evaluated as of ``as_of`` when given, else its evaluation
    date), or without one the patients similar to ``patient_id`` (:func:`similar_definition`
    with ``age_band``, ``same_gender``, as of ``as_of`` or today). ``patient_id``, the index
    patient, is never among the compared patients."""
    if definition is None:
        if patient_id is None:
            raise InvalidInput("give a cohort definition or an index patient")
        definition = similar_definition(fhir, patient_id, age_band=age_band,
                                        same_gender=same_gender,
                                        as_of=as_of or date.today())  # fmt: skip
    elif as_of is not None and as_of != definition.evaluation_date:
        definition = definition.model_copy(update={"evaluation_date": as_of})
    result = CohortService(store=store, fhir=fhir).evaluate(definition)
    members = [p for p in result.patients if p.patient_id != patient_id]
    reader = _Reader(fhir, definition.evaluation_date)
    facts = _read_facts(reader, members) if members else None
    patients = [_patient_outcome(reader, m, facts) for m in members] if facts else []
    return outcome_table(definition, patient_id, patients, horizons=horizons, alpha=alpha)


__all__ = [
    "STATUSES",
    "OutcomeRow",
    "OutcomeTable",
    "PatientOutcome",
    "SurvivalAt",
    "disease_status",
    "group_label",
    "ingredient",
    "main_condition",
    "outcome_table",
    "outcomes",
    "procedure_kind",
    "similar_definition",
]
