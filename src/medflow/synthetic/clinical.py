"""The clinical (FHIR R4) record of a synthetic patient: one transaction Bundle rendered from a
:class:`~medflow.synthetic.plan.PatientPlan`, and the plan's ground truth as plain JSON.

Everything is derived from the plan (and a random stream seeded by the plan's seed and index),
so the same plan gives the same JSON text: ``json.dumps(patient_bundle(p), sort_keys=True)`` is
byte-identical on every run and machine.

What the Bundle holds (all R4, real codes):

=====================  ==========================================================================
resource               content
=====================  ==========================================================================
Patient                MRN identifier (``urn:medflow:mrn``, type v2-0203 MR), name, gender,
                       birthDate, home city; ``deceasedDateTime`` = outcome day when the outcome
                       is death
Encounter              one per visit day: the diagnosis visit, each imaging visit, biopsy,
                       treatment and the outcome follow-up (AMB / EMER / IMP, SNOMED type)
Condition              the plan's disease (none for screening patients): SNOMED CT + ICD-10-CM,
                       onsetDateTime, clinicalStatus active / remission / resolved (with
                       abatementDateTime), verificationStatus confirmed
Observation            vital signs at each visit, labs at the diagnosis visit (LOINC, UCUM,
                       referenceRange, interpretation), tumour size (LOINC 21889-1, mm) at each
                       study that shows a lesion, and the disease status (below)
Procedure              biopsy (SNOMED 86273004) when the plan has one; surgery, chemotherapy,
                       radiotherapy for malignant diseases; chest drain for some pneumothoraces
MedicationRequest      RxNorm: the chemotherapy/endocrine regimen of a malignant disease,
                       amoxicillin for pneumonia
ServiceRequest         one radiology order per study (accession number as identifier typed
                       v2-0203 ACSN)
DiagnosticReport       one radiology report per study (v2-0074 RAD, the accession, basedOn the
                       order, conclusion worded from the finding); a surgical pathology report
                       (v2-0074 SP) for the biopsy: the case's accession number (ACSN, the
                       slide's DICOM AccessionNumber), its specimen, conclusionCode SNOMED
Specimen               the biopsy's tissue (SNOMED 119376003): identifier ``<case>-A``
                       (``urn:medflow:specimen``), accessionIdentifier the case's accession,
                       collection day, method and body site, the H&E slide as its container
                       (``urn:medflow:slide``, the slide image's ContainerIdentifier)
=====================  ==========================================================================

No ImagingStudy: the DICOM → FHIR sync makes those from the archive, and links the reports by
accession number.

Disease status: malignant diseases get an Observation coded LOINC 97509-4 "Cancer disease
status" (the code of mCODE's CancerDiseaseStatus profile), category ``survey``, ``focus`` the
Condition, effective on the plan's outcome day, valued with mCODE's condition-status-trend
SNOMED CT concepts (remission: 260415000 Not detected; response: 268910001 improved; stable:
359746009 stable; progression and death: 271299001 worsened), the plan's wording in ``text``.
Non-malignant diseases resolve: their Condition is ``resolved`` with abatementDateTime.

Idempotent loading: every entry is ``POST`` with ``request.ifNoneExist`` on an identifier, the
Patient on its MRN and every other resource on one of its own (system ``urn:medflow:synthetic``,
value ``<mrn>-<kind>-<n>``); loading a Bundle twice adds nothing. ``fullUrl``\\ s are
``urn:uuid:`` UUIDv5 of that identifier.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from medflow.synthetic.plan import (
    BIOPSY_SITES,
    MRN_SYSTEM,
    NONE,
    SPECIMEN_TYPE,
    TODAY,
    PatientPlan,
    StudyPlan,
)

SYNTHETIC_SYSTEM = "urn:medflow:synthetic"
SPECIMEN_SYSTEM = "urn:medflow:specimen"
SLIDE_SYSTEM = "urn:medflow:slide"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
MED_CATEGORY = "http://terminology.hl7.org/CodeSystem/medicationrequest-category"


def _cc(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        concept["text"] = text
    return concept


MRN_TYPE = _cc(V2_0203, "MR", "Medical record number")
ACSN_TYPE = _cc(V2_0203, "ACSN", "Accession ID")
ICD10_DISPLAY = {
    "C40.20": "Malignant neoplasm of long bones of unspecified lower limb",
    "C34.90": "Malignant neoplasm of unspecified part of unspecified bronchus or lung",
    "C50.919": "Malignant neoplasm of unspecified site of unspecified female breast",
    "D14.30": "Benign neoplasm of unspecified bronchus and lung",
    "D24.9": "Benign neoplasm of unspecified breast",
    "J93.9": "Pneumothorax, unspecified",
    "J18.9": "Pneumonia, unspecified organism",
}
IMAGING_CODES = {  # modality -> LOINC radiology order/report code
    "CR": ("24648-8", "XR Chest PA upright"),
    "CT": ("24627-2", "CT Chest"),
    "MR": ("24802-1", "MR Knee"),
    "MG": ("24606-6", "MG Breast Screening"),
}
ENCOUNTER_TYPES = {  # visit kind -> (v3 ActCode class, class display, SNOMED type, display)
    "checkup": ("AMB", "ambulatory", "185349003", "Encounter for check up"),
    "follow-up": ("AMB", "ambulatory", "390906007", "Follow-up encounter"),
    "emergency": ("EMER", "emergency", "50849002", "Emergency room admission"),
    "admission": ("IMP", "inpatient encounter", "32485007", "Hospital admission"),
}
BIOPSY = ("86273004", "Biopsy")
BIOPSY_METHOD = ("129314006", "Biopsy - action")
CHEMO = ("367336001", "Chemotherapy")
RADIO = ("108290001", "Radiation oncology AND/OR radiotherapy")
SURGERY = {
    "osteosarcoma": ("387713003", "Surgical procedure"),
    "lung-cancer": ("173171007", "Lobectomy of lung"),
    "breast-cancer": ("392021009", "Lumpectomy of breast"),
}
CHEST_DRAIN = ("264957007", "Insertion of pleural tube drain")
DRUGS = {  # RxNorm ingredient codes
    "methotrexate": "6851",
    "cisplatin": "2555",
    "doxorubicin": "3639",
    "pemetrexed": "68446",
    "tamoxifen": "10324",
    "amoxicillin": "723",
}
DOSAGE = {
    "methotrexate": "12 g/m2 IV infusion per protocol, weeks 4, 5, 9 and 10",
    "cisplatin": "IV infusion per protocol, cycle day 1 every 21 days",
    "doxorubicin": "IV infusion per protocol, cycle day 1 every 21 days",
    "pemetrexed": "500 mg/m2 IV infusion on day 1 of each 21-day cycle",
    "tamoxifen": "20 mg by mouth once daily",
    "amoxicillin": "1 g by mouth three times daily for 7 days",
}
STATUS_LOINC = _cc(LOINC, "97509-4", "Cancer disease status")
DISEASE_STATUS = {  # plan outcome -> (SNOMED CT, display, text)
    "remission": ("260415000", "Not detected", "Complete remission, no evidence of disease"),
    "response": ("268910001", "Patient's condition improved", "Partial response to treatment"),
    "stable": ("359746009", "Patient's condition stable", "Stable disease"),
    "progression": ("271299001", "Patient's condition worsened", "Progressive disease"),
    "death": ("271299001", "Patient's condition worsened", "Progressive disease"),
}
SIZE_TREND = {"remission": 0.45, "response": 0.7, "stable": 1.0, "progression": 1.35,
              "death": 1.5}  # fmt: skip
"""Tumour size factor from one study to the next, by outcome."""
BASE_SIZE = {"osteosarcoma": (45, 110), "lung-cancer": (18, 55), "breast-cancer": (12, 40),
             "benign-lung-nodule": (4, 12), "fibroadenoma": (8, 25)}  # fmt: skip
"""Tumour size at diagnosis in mm (low, high)."""

# (LOINC, display, UCUM unit, low, high, decimals); low/high: the reference range
VITALS = {
    "hr": ("8867-4", "Heart rate", "/min", 60, 100, 0),
    "rr": ("9279-1", "Respiratory rate", "/min", 12, 20, 0),
    "temp": ("8310-5", "Body temperature", "Cel", 36.1, 37.2, 1),
    "spo2": ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 95, 100, 0),
    "sys": ("8480-6", "Systolic blood pressure", "mm[Hg]", 90, 130, 0),
    "dia": ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 85, 0),
}
LABS = {
    "hb": ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 12.0, 17.5, 1),
    "wbc": ("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 4.5,
            11.0, 1),
    "plt": ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 150, 400, 0),
    "crea": ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.2, 2),
    "crp": ("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L", 0, 10, 1),
    "alp": ("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L", 44, 147, 0),
    "ldh": ("2532-0", "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L", 140, 280, 0),
}  # fmt: skip
# disease -> measurement -> (low, high) at the diagnosis visit
ACUTE: dict[str, dict[str, tuple[float, float]]] = {
    "pneumonia": {"hr": (95, 118), "rr": (22, 28), "temp": (38.2, 39.6), "spo2": (89, 94),
                  "wbc": (12.5, 19.0), "crp": (45, 180)},
    "pneumothorax": {"hr": (100, 122), "rr": (22, 30), "spo2": (87, 94)},
    "osteosarcoma": {"alp": (180, 420), "ldh": (250, 480)},
}  # fmt: skip
BLOOD_PRESSURE = ("85354-9", "Blood pressure panel with all children optional")
TUMOR_SIZE = _cc(LOINC, "21889-1", "Size Tumor")
PATHOLOGY_CODE = _cc(LOINC, "11529-5", "Surgical pathology study")
PATHOLOGY = {
    "osteosarcoma": "Conventional osteosarcoma, osteoblastic type, high grade. Malignant.",
    "lung-cancer": "Invasive adenocarcinoma of the lung, acinar predominant. Malignant.",
    "breast-cancer": "Invasive ductal carcinoma, Nottingham grade 2. Malignant.",
    "benign-lung-nodule": "Pulmonary hamartoma. Benign; no evidence of malignancy.",
    "fibroadenoma": "Fibroadenoma of the breast. Benign; no atypia or malignancy.",
}


def _day(d: date) -> str:
    return d.isoformat()


def _instant(d: date) -> str:
    return f"{d.isoformat()}T12:00:00Z"


def _ref(url: str) -> dict[str, str]:
    return {"reference": url}


def _rng(plan: PatientPlan) -> random.Random:
    digest = hashlib.sha256(repr(("clinical", plan.seed, plan.index)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def _round(value: float, decimals: int) -> float | int:
    return round(value) if decimals == 0 else round(value, decimals)


class _Record:
    """The Bundle under construction: entries in order, per-kind counters, visits by day."""

    def __init__(self, plan: PatientPlan) -> None:
        self.plan = plan
        self.rng = _rng(plan)
        self.entries: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.visits: dict[date, str] = {}
        self.limit = plan.outcome_day if plan.outcome == "death" and plan.outcome_day else TODAY
        """The last day anything of ours may happen (death or the hospital's today)."""
        self.patient = self._add_patient()
        self.subject = _ref(self.patient)
        self.condition: str | None = None

    def _entry(self, resource: dict[str, Any], system: str, value: str) -> str:
        url = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{system}|{value}')}"
        rtype = resource["resourceType"]
        request = {"method": "POST", "url": rtype, "ifNoneExist": f"identifier={system}|{value}"}
        self.entries.append({"fullUrl": url, "resource": resource, "request": request})
        return url

    def add(self, kind: str, resource: dict[str, Any], *extra: dict[str, Any]) -> str:
        """Add ``resource`` with its own identifier ``<mrn>-<kind>-<n>`` (and ``extra`` ones)."""
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        value = f"{self.plan.mrn}-{kind}-{n}"
        identifiers = [{"system": SYNTHETIC_SYSTEM, "value": value}, *extra]
        resource = {"resourceType": resource["resourceType"], "identifier": identifiers,
                    **{k: v for k, v in resource.items() if k != "resourceType"}}  # fmt: skip
        return self._entry(resource, SYNTHETIC_SYSTEM, value)

    def _add_patient(self) -> str:
        p = self.plan
        patient: dict[str, Any] = {
            "resourceType": "Patient",
            "identifier": [{"use": "usual", "type": MRN_TYPE, "system": MRN_SYSTEM,
                            "value": p.mrn}],
            "active": True,
            "name": [{"use": "official", "family": p.family, "given": [p.given]}],
            "gender": "female" if p.sex == "F" else "male",
            "birthDate": _day(p.birth_date),
            "address": [{"use": "home", "city": p.city, "country": "US"}],
        }  # fmt: skip
        if p.outcome == "death" and p.outcome_day is not None:
            patient["deceasedDateTime"] = _day(p.outcome_day)
        return self._entry(patient, MRN_SYSTEM, p.mrn)

    def visit(self, day: date, kind: str) -> str:
        """The Encounter of ``day`` (the first visit of a day sets its kind)."""
        if day in self.visits:
            return self.visits[day]
        cls, cls_display, code, display = ENCOUNTER_TYPES[kind]
        url = self.add("encounter", {
            "resourceType": "Encounter", "status": "finished",
            "class": {"system": V3_ACT, "code": cls, "display": cls_display},
            "type": [_cc(SNOMED, code, display)], "subject": self.subject,
            "period": {"start": _day(day), "end": _day(day + timedelta(days=3 * (cls == "IMP")))},
        })  # fmt: skip
        self.visits[day] = url
        return url

    def observation(
        self, encounter: str, day: date, category: str, code: dict[str, Any], **value: Any
    ) -> str:
        return self.add("observation", {
            "resourceType": "Observation", "status": "final",
            "category": [_cc(OBS_CATEGORY, category, _CATEGORY_DISPLAY[category])],
            "code": code, "subject": self.subject, "encounter": _ref(encounter),
            "effectiveDateTime": _day(day), **value,
        })  # fmt: skip


_CATEGORY_DISPLAY = {"vital-signs": "Vital Signs", "laboratory": "Laboratory",
                     "imaging": "Imaging", "survey": "Survey"}  # fmt: skip


# -- the parts of the record ---------------------------------------------------------------------


def _measure(
    rec: _Record, key: str, spec: tuple[Any, ...], acute: dict[str, tuple[float, float]]
) -> float | int:
    """A value of measurement ``key``: inside its normal range, or the acute range given."""
    _code, _display, _unit, low, high, decimals = spec
    lo, hi = acute.get(key, (low + (high - low) * 0.1, high - (high - low) * 0.1))
    return _round(rec.rng.uniform(lo, hi), decimals)


def _vitals(rec: _Record, encounter: str, day: date, acute: dict[str, tuple[float, float]]) -> None:
    values = {k: _measure(rec, k, spec, acute) for k, spec in VITALS.items()}
    for key in ("hr", "rr", "temp", "spo2"):
        code, display, unit, *_ = VITALS[key]
        rec.observation(encounter, day, "vital-signs", _cc(LOINC, code, display),
                        valueQuantity=_quantity(values[key], unit))  # fmt: skip
    components = [
        {"code": _cc(LOINC, VITALS[k][0], VITALS[k][1]),
         "valueQuantity": _quantity(values[k], "mm[Hg]")}
        for k in ("sys", "dia")
    ]  # fmt: skip
    rec.observation(encounter, day, "vital-signs", _cc(LOINC, *BLOOD_PRESSURE),
                    component=components)  # fmt: skip


def _labs(rec: _Record, encounter: str, day: date, acute: dict[str, tuple[float, float]]) -> None:
    keys = ["hb", "wbc", "plt", "crea", *(k for k in ("crp", "alp", "ldh") if k in acute)]
    for key in keys:
        code, display, unit, low, high, _decimals = LABS[key]
        value = _measure(rec, key, LABS[key], acute)
        flag = ("H", "High") if value > high else ("L", "Low") if value < low else ("N", "Normal")
        rec.observation(
            encounter, day, "laboratory", _cc(LOINC, code, display),
            valueQuantity=_quantity(value, unit), interpretation=[_cc(INTERPRETATION, *flag)],
            referenceRange=[{"low": _quantity(low, unit), "high": _quantity(high, unit)}],
        )  # fmt: skip


def _condition(rec: _Record) -> None:
    p = rec.plan
    if p.disease is NONE or p.onset is None:
        return
    d = p.disease
    status = {"remission": "remission", "resolved": "resolved"}.get(p.outcome, "active")
    emergency = d.key in ("pneumonia", "pneumothorax")
    encounter = rec.visit(p.onset, "emergency" if emergency else "checkup")
    condition: dict[str, Any] = {
        "resourceType": "Condition",
        "clinicalStatus": _cc(COND_CLINICAL, status, status.capitalize()),
        "verificationStatus": _cc(COND_VERIFICATION, "confirmed", "Confirmed"),
        "category": [_cc(COND_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")],
        "code": {"coding": [
            {"system": SNOMED, "code": d.snomed, "display": d.display},
            {"system": ICD10CM, "code": d.icd10, "display": ICD10_DISPLAY.get(d.icd10, d.display)},
        ], "text": d.display},
        "subject": rec.subject, "encounter": _ref(encounter),
        "onsetDateTime": _day(p.onset), "recordedDate": _day(p.onset),
    }  # fmt: skip
    if status != "active" and p.outcome_day is not None:
        condition["abatementDateTime"] = _day(p.outcome_day)
    rec.condition = rec.add("condition", condition)
    acute = ACUTE.get(d.key, {})
    _vitals(rec, encounter, p.onset, acute)
    _labs(rec, encounter, p.onset, acute)


def _procedure(
    rec: _Record, code: tuple[str, str], day: date, kind: str, **more: Any
) -> str | None:
    if day > rec.limit:
        return None
    encounter = rec.visit(day, kind)
    resource: dict[str, Any] = {
        "resourceType": "Procedure", "status": "completed", "code": _cc(SNOMED, *code),
        "subject": rec.subject, "encounter": _ref(encounter), "performedDateTime": _day(day),
        **more,
    }  # fmt: skip
    if rec.condition is not None:
        resource["reasonReference"] = [_ref(rec.condition)]
    return rec.add("procedure", resource)


def _medication(rec: _Record, drug: str, day: date) -> None:
    if day > rec.limit:
        return
    p = rec.plan
    finished = p.outcome in ("remission", "resolved") or (day + timedelta(days=120)) < TODAY
    status = "stopped" if p.outcome == "death" else "completed" if finished else "active"
    inpatient = drug not in ("tamoxifen", "amoxicillin")
    rec.add("medication-request", {
        "resourceType": "MedicationRequest", "status": status, "intent": "order",
        "category": [_cc(MED_CATEGORY, "inpatient" if inpatient else "outpatient",
                         "Inpatient" if inpatient else "Outpatient")],
        "medicationCodeableConcept": _cc(RXNORM, DRUGS[drug], drug),
        "subject": rec.subject, "encounter": _ref(rec.visit(day, "follow-up")),
        "authoredOn": _day(day), "reasonReference": [_ref(rec.condition or rec.patient)],
        "dosageInstruction": [{"text": DOSAGE[drug]}],
    })  # fmt: skip


def _treatment(rec: _Record) -> None:
    """Chemotherapy, surgery and radiotherapy of a malignant disease; antibiotics, drains."""
    p, rng = rec.plan, rec.rng
    if p.onset is None:
        return
    key = p.disease.key
    if key == "pneumonia":
        _medication(rec, "amoxicillin", p.onset)
    elif key == "pneumothorax" and rng.random() < 0.6:
        _procedure(rec, CHEST_DRAIN, p.onset, "emergency")
    if not p.disease.malignant:
        return
    start = (p.biopsy or p.onset) + timedelta(days=rng.randint(10, 21))
    if key == "osteosarcoma":  # neoadjuvant MAP chemotherapy, then resection
        steps = [(CHEMO, 0), (SURGERY[key], 70)]
        drugs = ["methotrexate", "cisplatin", "doxorubicin"]
    elif key == "lung-cancer" and rng.random() < 0.5:  # resectable: lobectomy, adjuvant chemo
        steps, drugs = [(SURGERY[key], 0), (CHEMO, 35)], ["cisplatin", "pemetrexed"]
    elif key == "lung-cancer":  # chemoradiation
        steps, drugs = [(CHEMO, 0), (RADIO, 0)], ["cisplatin", "pemetrexed"]
    else:  # breast: lumpectomy, radiotherapy, sometimes chemotherapy, endocrine therapy
        chemo = rng.random() < 0.5
        steps = [(SURGERY[key], 0), (RADIO, 35), *([(CHEMO, 70)] if chemo else [])]
        drugs = ["doxorubicin", "tamoxifen"] if chemo else ["tamoxifen"]
    for code, offset in steps:
        surgery = code in SURGERY.values()
        _procedure(
            rec, code, start + timedelta(days=offset), "admission" if surgery else "follow-up"
        )
    chemo_day = start + timedelta(days=next((o for c, o in steps if c == CHEMO), 0))
    for drug in drugs:
        _medication(rec, drug, start + timedelta(days=120) if drug == "tamoxifen" else chemo_day)


def _biopsy(rec: _Record) -> None:
    p = rec.plan
    if p.biopsy is None or p.biopsy > rec.limit or p.pathology_accession is None:
        return
    encounter = rec.visit(p.biopsy, "follow-up")
    acsn = {"type": ACSN_TYPE, "value": p.pathology_accession}
    site = BIOPSY_SITES.get(p.disease.body_part, ("123037004", "Body structure"))
    specimen = rec.add("specimen", {
        "resourceType": "Specimen", "accessionIdentifier": acsn, "status": "available",
        "type": _cc(SNOMED, *SPECIMEN_TYPE), "subject": rec.subject,
        "collection": {"collectedDateTime": _day(p.biopsy), "method": _cc(SNOMED, *BIOPSY_METHOD),
                       "bodySite": _cc(SNOMED, *site)},
        "container": [{"identifier": [{"system": SLIDE_SYSTEM, "value": p.slide_id}],
                       "description": "Glass slide, H&E stain, block A1"}],
    }, {"system": SPECIMEN_SYSTEM, "value": p.specimen_id})  # fmt: skip
    text = PATHOLOGY.get(p.disease.key, "No evidence of malignancy.")
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "status": "final",
        "category": [_cc(V2_0074, "SP", "Surgical Pathology")], "code": PATHOLOGY_CODE,
        "subject": rec.subject, "encounter": _ref(encounter),
        "effectiveDateTime": _day(p.biopsy),
        "issued": _instant(min(p.biopsy + timedelta(days=3), rec.limit)),
        "specimen": [_ref(specimen)],
        "conclusion": text,
        "conclusionCode": [_cc(SNOMED, p.disease.snomed, p.disease.display)],
    }  # fmt: skip
    url = rec.add("diagnostic-report", report, acsn)
    _procedure(rec, BIOPSY, p.biopsy, "follow-up", report=[_ref(url)])


def _disease_status(rec: _Record) -> None:
    p = rec.plan
    if not p.disease.malignant or p.outcome_day is None or p.outcome not in DISEASE_STATUS:
        return
    code, display, text = DISEASE_STATUS[p.outcome]
    encounter = rec.visit(p.outcome_day, "follow-up")
    focus = [_ref(rec.condition)] if rec.condition else []
    rec.observation(encounter, p.outcome_day, "survey", STATUS_LOINC, focus=focus,
                    valueCodeableConcept=_cc(SNOMED, code, display, text))  # fmt: skip


# -- imaging orders and reports -------------------------------------------------------------------


def _where(rec: _Record) -> str:
    """Where the patient's finding is (drawn once a patient, used by every report)."""
    rng, key = rec.rng, rec.plan.disease.key
    side = rng.choice(("right", "left"))
    if key in ("osteosarcoma",):
        return f"{rng.choice(('distal', 'distal', 'proximal'))} {side} " + (
            "femur" if rng.random() < 0.7 else "tibia"
        )
    if key in ("breast-cancer", "fibroadenoma"):
        return f"{side} breast at {rng.randint(1, 12)} o'clock"
    if key == "pneumothorax":
        return side
    lobes = ("upper", "lower") if side == "left" else ("upper", "middle", "lower")
    return f"{side} {rng.choice(lobes)} lobe"


def _conclusion(plan: PatientPlan, study: StudyPlan, where: str, size: int | None,
                before: int | None) -> str:  # fmt: skip
    """The report's impression, worded from the finding (what a radiologist would write)."""
    key, f = plan.disease.key, study.finding
    if f == "":
        return ("No acute cardiopulmonary abnormality." if study.modality == "CR"
                else "No significant abnormality.")  # fmt: skip
    if f == "pneumothorax":
        return f"{where.capitalize()}-sided pneumothorax without mediastinal shift."
    if f == "consolidation":
        return f"Airspace consolidation in the {where}, consistent with pneumonia."
    if before is not None and size is not None:
        trend = ("decreased" if size < before * 0.9 else "increased" if size > before * 1.1
                 else "unchanged")  # fmt: skip
        return (f"Known lesion in the {where}, now measuring {size} mm "
                f"(previously {before} mm): {trend} in size.")  # fmt: skip
    if key == "osteosarcoma":
        return (
            f"Aggressive lesion of the {where} measuring {size} mm with periosteal "
            "reaction and soft-tissue extension, suspicious for primary bone malignancy."
        )
    if key == "breast-cancer":
        return (
            f"Irregular spiculated mass in the {where} measuring {size} mm, highly "
            "suggestive of malignancy (BI-RADS 5)."
        )
    if key == "fibroadenoma":
        return (
            f"Oval circumscribed mass in the {where} measuring {size} mm, "
            "probably benign (BI-RADS 3)."
        )
    if f == "lesion-malignant":
        return f"Spiculated mass in the {where} measuring {size} mm, suspicious for malignancy."
    return f"Well-circumscribed {size} mm nodule in the {where}, likely benign."


def _sizes(rec: _Record) -> list[int | None]:
    """The tumour size (mm) each study shows (None: no lesion)."""
    p = rec.plan
    lo, hi = BASE_SIZE.get(p.disease.key, (10, 30))
    base = rec.rng.uniform(lo, hi)
    factor = SIZE_TREND.get(p.outcome, 1.0)
    sizes: list[int | None] = []
    for k, study in enumerate(_own(p)):
        jitter = rec.rng.uniform(0.95, 1.05)
        lesion = study.finding.startswith("lesion")
        sizes.append(max(2, round(base * factor**k * jitter)) if lesion else None)
    return sizes


def _own(p: PatientPlan) -> list[StudyPlan]:
    """The studies of the disease's own site (not the staging ones), in order."""
    return [s for s in p.studies if not s.purpose]


def _studies(rec: _Record) -> None:
    p = rec.plan
    where = _where(rec)
    sizes = _sizes(rec)
    for k, study in enumerate(_own(p)):
        first = k == 0 and p.onset == study.day
        emergency = p.disease.key in ("pneumonia", "pneumothorax")
        kind = "emergency" if first and emergency else "checkup" if first else "follow-up"
        encounter = rec.visit(study.day, kind if p.onset else "checkup")
        if study.day != p.onset:  # the diagnosis visit has its vitals already
            _vitals(rec, encounter, study.day, {})
        conclusion = _conclusion(p, study, where, sizes[k], sizes[k - 1] if k else None)
        _order_and_report(rec, study, encounter, conclusion, sizes[k])


def _staging(rec: _Record) -> None:
    """The staging studies' orders and reports (after every other step, so that they add
    resources without changing what the others drew)."""
    for study in rec.plan.studies:
        if study.purpose == "staging":
            encounter = rec.visit(study.day, "follow-up")
            conclusion = "No pulmonary nodules or other evidence of metastatic disease."
            _order_and_report(rec, study, encounter, conclusion, None)


def _order_and_report(rec: _Record, study: StudyPlan, encounter: str, conclusion: str,
                      size_mm: int | None) -> None:  # fmt: skip
    """The imaging order (ServiceRequest), its radiology report (DiagnosticReport, with the
    accession number) and the tumour size it measured (Observation) when there is one."""
    code = _cc(LOINC, *IMAGING_CODES[study.modality], study.description)
    acsn = {"type": ACSN_TYPE, "value": study.accession}
    reason = {"reasonReference": [_ref(rec.condition)]} if rec.condition else {
        "reasonCode": [{"text": "Screening" if study.modality != "CR" else
                        "Routine chest radiograph"}]}  # fmt: skip
    order = rec.add("service-request", {
        "resourceType": "ServiceRequest", "status": "completed", "intent": "order",
        "category": [_cc(SNOMED, "363679005", "Imaging")], "code": code,
        "subject": rec.subject, "encounter": _ref(encounter),
        "occurrenceDateTime": _day(study.day), "authoredOn": _day(study.day), **reason,
    }, acsn)  # fmt: skip
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "basedOn": [_ref(order)], "status": "final",
        "category": [_cc(V2_0074, "RAD", "Radiology")], "code": code,
        "subject": rec.subject, "encounter": _ref(encounter),
        "effectiveDateTime": _day(study.day), "issued": _instant(study.day),
        "conclusion": conclusion,
    }  # fmt: skip
    if size_mm is not None:
        size = rec.observation(
            encounter, study.day, "imaging", TUMOR_SIZE, basedOn=[_ref(order)],
            valueQuantity=_quantity(size_mm, "mm"),
            **({"focus": [_ref(rec.condition)]} if rec.condition else {}),
        )  # fmt: skip
        report["result"] = [_ref(size)]
    rec.add("diagnostic-report", report, acsn)


# -- public API ------------------------------------------------------------------------------------


_STEPS: tuple[Callable[[_Record], None], ...] = (
    _condition, _studies, _biopsy, _treatment, _disease_status, _staging,
)  # fmt: skip


def patient_bundle(plan: PatientPlan) -> dict[str, Any]:
    """The FHIR R4 transaction Bundle of everything the hospital's record says of ``plan``'s
    patient (see the module's docstring); loading it twice adds nothing."""
    rec = _Record(plan)
    for step in _STEPS:
        step(rec)
    return {"resourceType": "Bundle", "type": "transaction", "entry": rec.entries}


def ground_truth(plan: PatientPlan) -> dict[str, Any]:
    """What the plan says really happened (JSON-able): the labels the record only implies."""

    def day(d: date | None) -> str | None:
        return None if d is None else d.isoformat()

    return {
        "mrn": plan.mrn,
        "disease": plan.disease.key,
        "snomed": plan.disease.snomed or None,
        "icd10": plan.disease.icd10 or None,
        "malignant": plan.disease.malignant,
        "onset": day(plan.onset),
        "biopsy": day(plan.biopsy),
        "outcome": plan.outcome or None,
        "outcome_day": day(plan.outcome_day),
        "deceased": plan.outcome == "death",
        "studies": {s.accession: s.finding for s in plan.studies},
    }
