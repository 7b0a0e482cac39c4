"""A deterministic synthetic FHIR R4 population for the FHIR benchmark (``bench/fhir.py``).

Patient ``i`` of seed ``s`` is one transaction Bundle that depends on ``(s, i)`` alone, so a
population of N patients is the prefix of any larger one (a run can top up a kept data dir).
About 100 resources a patient on average (each count varies per patient):

======================  =====  =====================================================================
resource                 mean   content
======================  =====  =====================================================================
Patient                     1   MRN identifier (``urn:medflow:mrn|MRN-0000123``, type v2-0203 MR),
                                name, gender, birthDate 1930-2012, telecom, address
Encounter                   8   finished; AMB / IMP / EMER; SNOMED type; period in 2000-2025
Condition                   4   SNOMED CT + ICD-10-CM codings (osteosarcoma, lung, breast, colon,
                                prostate cancer, pneumonia, pneumothorax, hypertension, diabetes,
                                ...); onsetDateTime = the diagnosing encounter's start; clinical
                                and verification status; category; subject + encounter
Observation                70   vital signs and labs (LOINC, valueQuantity in UCUM
                                ``http://unitsofmeasure.org``, labs with a referenceRange) and one
                                imaging finding per radiology report (tumour size in cm, or a
                                narrative); effectiveDateTime, issued, subject + encounter
MedicationRequest           8   RxNorm (methotrexate 6851, cisplatin 2555, doxorubicin 3639, ...)
                                chosen by the patient's conditions; reasonReference the Condition
Procedure                   4   SNOMED CT, chosen by the conditions; reasonReference
ServiceRequest              3   radiology order (LOINC imaging code), accession number
                                (identifier type ``v2-0203|ACSN``)
DiagnosticReport            3   category ``v2-0074|RAD``, same accession, basedOn the order,
                                result the imaging Observation, conclusion
======================  =====  =====================================================================

Every reference inside a Bundle is a ``urn:uuid:`` fullUrl (deterministic UUIDs), every entry
is ``POST Type``; the server gives the ids. Date-times carry the patient's UTC offset.

The module also answers what the search phase needs without asking the server: an existing
MRN, a condition code and its onset window, an observation code with a value threshold near
its 95th percentile, a birth-date cut-off. Generation is plain dict literals over shared,
never-mutated codings (no deepcopy): ~1M resources in well under a minute of one core.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

VERSION = 1
"""Bump when the generated content changes (kept data dirs record it)."""

MRN_SYSTEM = "urn:medflow:mrn"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ACCESSION_SYSTEM = "urn:medflow:accession"

YEAR_LO, YEAR_HI = 2000, 2026
"""Encounters (and so onsets, observations, orders) fall in [YEAR_LO, YEAR_HI)."""
BIRTH_LO, BIRTH_HI = date(1930, 1, 1).toordinal(), date(2012, 12, 31).toordinal()
_EPOCH_ORD = date(1970, 1, 1).toordinal()
_T_LO = (date(YEAR_LO, 1, 1).toordinal() - _EPOCH_ORD) * 86400
_T_HI = (date(YEAR_HI, 1, 1).toordinal() - _EPOCH_ORD) * 86400


def _cc(system: str, code: str, display: str, text: str | None = None) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    if text:
        concept["text"] = text
    return concept


# -- catalogues (shared dicts: serialized, never mutated) ---------------------------------------


@dataclass(frozen=True)
class ObsKind:
    """A quantitative observation: LOINC code, UCUM unit, a normal distribution of values."""

    loinc: str
    display: str
    unit: str
    """UCUM code (``mm[Hg]``)."""
    unit_display: str
    mean: float
    sd: float
    decimals: int
    category: str  # vital-signs | laboratory | imaging
    weight: float
    low: float | None = None
    high: float | None = None
    concept: dict[str, Any] = field(init=False, repr=False, compare=False)
    categories: list[dict[str, Any]] = field(init=False, repr=False, compare=False)
    reference_range: list[dict[str, Any]] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "concept", _cc(LOINC, self.loinc, self.display))
        label = {"vital-signs": "Vital Signs", "laboratory": "Laboratory", "imaging": "Imaging"}
        set_(self, "categories", [_cc(OBS_CATEGORY, self.category, label[self.category])])
        rr = None
        if self.low is not None and self.high is not None:
            q = {"unit": self.unit_display, "system": UCUM, "code": self.unit}
            rr = [{"low": {"value": self.low, **q}, "high": {"value": self.high, **q}}]
        set_(self, "reference_range", rr)

    def threshold(self, z: float) -> float | int:
        """The value ``z`` standard deviations above the mean, rounded like the values."""
        v = self.mean + z * self.sd
        return round(v) if self.decimals == 0 else round(v, self.decimals)


VITALS: tuple[ObsKind, ...] = (
    ObsKind("8867-4", "Heart rate", "/min", "beats/minute", 76, 12, 0, "vital-signs", 9),
    ObsKind("9279-1", "Respiratory rate", "/min", "breaths/minute", 16, 3, 0, "vital-signs", 6),
    ObsKind("8310-5", "Body temperature", "Cel", "C", 36.9, 0.5, 1, "vital-signs", 6),
    ObsKind("8480-6", "Systolic blood pressure", "mm[Hg]", "mmHg", 128, 17, 0, "vital-signs", 9),
    ObsKind("8462-4", "Diastolic blood pressure", "mm[Hg]", "mmHg", 79, 10, 0, "vital-signs", 9),
    ObsKind("29463-7", "Body weight", "kg", "kg", 76, 16, 1, "vital-signs", 6),
    ObsKind("8302-2", "Body height", "cm", "cm", 169, 10, 1, "vital-signs", 3),
    ObsKind("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", "kg/m2", 26.5, 4.5, 1,
            "vital-signs", 5),
    ObsKind("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", "%", 96.5,
            1.8, 0, "vital-signs", 6),
)  # fmt: skip
LABS: tuple[ObsKind, ...] = (
    ObsKind("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", "mg/dL", 102, 24, 0,
            "laboratory", 5, 70, 99),
    ObsKind("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", "%", 5.9, 1.1, 1,
            "laboratory", 2, 4.0, 5.6),
    ObsKind("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 0.98,
            0.3, 2, "laboratory", 4, 0.6, 1.2),
    ObsKind("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 196,
            36, 0, "laboratory", 2, 125, 200),
    ObsKind("2571-8", "Triglyceride [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL", 148,
            55, 0, "laboratory", 2, 0, 150),
    ObsKind("2085-9", "Cholesterol in HDL [Mass/volume] in Serum or Plasma", "mg/dL", "mg/dL",
            51, 13, 0, "laboratory", 2, 40, 60),
    ObsKind("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", "g/dL", 13.8, 1.6, 1,
            "laboratory", 4, 12.0, 17.5),
    ObsKind("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL",
            "10*3/uL", 7.2, 2.1, 1, "laboratory", 4, 4.5, 11.0),
    ObsKind("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", "10*3/uL",
            255, 62, 0, "laboratory", 3, 150, 400),
    ObsKind("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L", 140, 3,
            0, "laboratory", 3, 136, 145),
    ObsKind("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", "mmol/L", 4.2,
            0.45, 1, "laboratory", 3, 3.5, 5.1),
    ObsKind("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L", "U/L", 26, 11, 0, "laboratory", 2, 7, 56),
    ObsKind("6768-6", "Alkaline phosphatase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L", "U/L", 84, 32, 0, "laboratory", 2, 44, 147),
    ObsKind("2532-0", "Lactate dehydrogenase [Enzymatic activity/volume] in Serum or Plasma",
            "U/L", "U/L", 185, 45, 0, "laboratory", 1, 140, 280),
)  # fmt: skip
TUMOR_SIZE = ObsKind("21889-1", "Size Tumor", "cm", "cm", 3.4, 1.9, 1, "imaging", 0)
IMAGING_NARRATIVE = _cc(LOINC, "18782-3", "Radiology Study observation (narrative)")
IMAGING_CATEGORY = [_cc(OBS_CATEGORY, "imaging", "Imaging")]
QUANTITATIVE: tuple[ObsKind, ...] = VITALS + LABS
_OBS_WEIGHTS = [k.weight for k in QUANTITATIVE]
_OBS_CUM = [sum(_OBS_WEIGHTS[: n + 1]) for n in range(len(_OBS_WEIGHTS))]


@dataclass(frozen=True)
class CondKind:
    """A condition: SNOMED CT and ICD-10-CM codes, how common, what follows it."""

    snomed: str
    display: str
    icd10: str
    icd10_display: str
    weight: float
    meds: tuple[tuple[str, str], ...]
    """RxNorm (code, display) ordered for it."""
    procedures: tuple[tuple[str, str], ...]
    """SNOMED CT (code, display) performed for it."""
    imaging: tuple[tuple[str, str], ...]
    """LOINC (code, display) radiology studies ordered for it."""
    cancer: bool = False
    sex: str | None = None  # "female" / "male": only for that sex
    concept: dict[str, Any] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self,
            "concept",
            {
                "coding": [
                    {"system": SNOMED, "code": self.snomed, "display": self.display},
                    {"system": ICD10CM, "code": self.icd10, "display": self.icd10_display},
                ],
                "text": self.display.removesuffix(" (disorder)"),
            },
        )


_CHEMO_BONE = (("6851", "methotrexate"), ("2555", "cisplatin"), ("3639", "doxorubicin"),
               ("5657", "ifosfamide"))  # fmt: skip
_CHEMO_LUNG = (("2555", "cisplatin"), ("40048", "carboplatin"), ("56946", "paclitaxel"))
_ONC_PROC = (("86273004", "Biopsy (procedure)"), ("367336001", "Chemotherapy (procedure)"),
             ("108290001", "Radiation oncology AND/OR radiotherapy (procedure)"))  # fmt: skip
_CT_CHEST = ("24627-2", "CT Chest")
_XR_CHEST = ("36643-5", "XR Chest 2 Views")
_MR_EXTREMITY = ("30786-8", "MR Lower extremity")
_XR_FEMUR = ("37637-7", "XR Femur Views")
_MG_BREAST = ("24606-6", "MG Breast Screening")
_CT_ABD = ("24558-9", "CT Abdomen and Pelvis")
_CT_HEAD = ("24725-4", "CT Head")
_NM_BONE = ("39659-8", "NM Bone Whole body")

CONDITIONS: tuple[CondKind, ...] = (
    CondKind("38341003", "Hypertensive disorder, systemic arterial (disorder)", "I10",
             "Essential (primary) hypertension", 24,
             (("29046", "lisinopril"), ("17767", "amlodipine"), ("5487", "hydrochlorothiazide")),
             (("29303009", "Electrocardiographic procedure (procedure)"),), (_XR_CHEST,)),
    CondKind("55822004", "Hyperlipidemia (disorder)", "E78.5", "Hyperlipidemia, unspecified",
             18, (("83367", "atorvastatin"), ("36567", "simvastatin")),
             (("29303009", "Electrocardiographic procedure (procedure)"),), (_XR_CHEST,)),
    CondKind("44054006", "Diabetes mellitus type 2 (disorder)", "E11.9",
             "Type 2 diabetes mellitus without complications", 14,
             (("6809", "metformin"), ("274783", "insulin glargine")),
             (("36228007", "Ophthalmic examination and evaluation (procedure)"),),
             (_XR_CHEST,)),
    CondKind("195967001", "Asthma (disorder)", "J45.909", "Unspecified asthma, uncomplicated", 8,
             (("435", "albuterol"), ("41126", "fluticasone")),
             (("23426006", "Measurement of respiratory function (procedure)"),), (_XR_CHEST,)),
    CondKind("13645005", "Chronic obstructive lung disease (disorder)", "J44.9",
             "Chronic obstructive pulmonary disease, unspecified", 6,
             (("435", "albuterol"), ("69120", "tiotropium")),
             (("23426006", "Measurement of respiratory function (procedure)"),),
             (_XR_CHEST, _CT_CHEST)),
    CondKind("49436004", "Atrial fibrillation (disorder)", "I48.91",
             "Unspecified atrial fibrillation", 5, (("1364430", "apixaban"), ("11289", "warfarin")),
             (("29303009", "Electrocardiographic procedure (procedure)"),), (_XR_CHEST, _CT_HEAD)),
    CondKind("709044004", "Chronic kidney disease (disorder)", "N18.9",
             "Chronic kidney disease, unspecified", 4, (("29046", "lisinopril"),),
             (("265764009", "Renal dialysis (procedure)"),), (_CT_ABD,)),
    CondKind("233604007", "Pneumonia (disorder)", "J18.9", "Pneumonia, unspecified organism", 10,
             (("723", "amoxicillin"), ("18631", "azithromycin"), ("2193", "ceftriaxone")),
             (("57485005", "Oxygen therapy (procedure)"),), (_XR_CHEST, _CT_CHEST)),
    CondKind("36118008", "Pneumothorax (disorder)", "J93.9", "Pneumothorax, unspecified", 2,
             (("7052", "morphine"),),
             (("264957007", "Insertion of pleural tube drain (procedure)"),),
             (_XR_CHEST, _CT_CHEST)),
    CondKind("59282003", "Pulmonary embolism (disorder)", "I26.99",
             "Other pulmonary embolism without acute cor pulmonale", 2,
             (("1364430", "apixaban"), ("5224", "heparin")), (), (_CT_CHEST,)),
    CondKind("307576001", "Osteosarcoma (disorder)", "C40.21",
             "Malignant neoplasm of long bones of right lower limb", 1, _CHEMO_BONE,
             (*_ONC_PROC, ("387713003", "Surgical procedure (procedure)")),
             (_MR_EXTREMITY, _XR_FEMUR, _CT_CHEST, _NM_BONE), cancer=True),
    CondKind("307576001", "Osteosarcoma (disorder)", "C41.9",
             "Malignant neoplasm of bone and articular cartilage, unspecified", 1, _CHEMO_BONE,
             _ONC_PROC, (_MR_EXTREMITY, _CT_CHEST, _NM_BONE), cancer=True),
    CondKind("254637007", "Non-small cell lung cancer (disorder)", "C34.90",
             "Malignant neoplasm of unspecified part of unspecified bronchus or lung", 3,
             _CHEMO_LUNG, (*_ONC_PROC, ("173171007", "Lobectomy of lung (procedure)")),
             (_CT_CHEST, _XR_CHEST), cancer=True),
    CondKind("254632001", "Small cell carcinoma of lung (disorder)", "C34.11",
             "Malignant neoplasm of upper lobe, right bronchus or lung", 1,
             (("2555", "cisplatin"), ("4179", "etoposide")), _ONC_PROC, (_CT_CHEST, _CT_HEAD),
             cancer=True),
    CondKind("254837009", "Malignant neoplasm of breast (disorder)", "C50.911",
             "Malignant neoplasm of unspecified site of right female breast", 4,
             (("10324", "tamoxifen"), ("3639", "doxorubicin"), ("56946", "paclitaxel")),
             (*_ONC_PROC, ("392021009", "Lumpectomy of breast (procedure)")),
             (_MG_BREAST, _CT_CHEST), cancer=True, sex="female"),
    CondKind("363406005", "Malignant neoplasm of colon (disorder)", "C18.9",
             "Malignant neoplasm of colon, unspecified", 2,
             (("32592", "oxaliplatin"), ("4492", "fluorouracil")),
             (*_ONC_PROC, ("73761001", "Colonoscopy (procedure)")), (_CT_ABD,), cancer=True),
    CondKind("399068003", "Malignant tumor of prostate (disorder)", "C61",
             "Malignant neoplasm of prostate", 3, (("83008", "bicalutamide"),), _ONC_PROC,
             (_CT_ABD, _NM_BONE), cancer=True, sex="male"),
)  # fmt: skip
_COND_WEIGHTS = [k.weight for k in CONDITIONS]

ENCOUNTER_KINDS = (  # (class code, class display, SNOMED type, display, hours, weight)
    ("AMB", "ambulatory", "185349003", "Encounter for check up (procedure)", 1, 70),
    ("AMB", "ambulatory", "390906007", "Follow-up encounter (procedure)", 1, 15),
    ("EMER", "emergency", "50849002", "Emergency room admission (procedure)", 6, 8),
    ("IMP", "inpatient encounter", "32485007", "Hospital admission (procedure)", 96, 7),
)
_ENC_CLASS = {k[0]: {"system": V3_ACT, "code": k[0], "display": k[1]} for k in ENCOUNTER_KINDS}
_ENC_TYPE = {k[2]: [_cc(SNOMED, k[2], k[3])] for k in ENCOUNTER_KINDS}
_ENC_WEIGHTS = [k[5] for k in ENCOUNTER_KINDS]

_MRN_TYPE = _cc(V2_0203, "MR", "Medical record number")
_ACSN_TYPE = _cc(V2_0203, "ACSN", "Accession ID")
_CLINICAL = {s: _cc(COND_CLINICAL, s, s.capitalize()) for s in ("active", "resolved")}
_CONFIRMED = _cc(COND_VERIFICATION, "confirmed", "Confirmed")
_COND_CAT = [_cc(COND_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")]
_PROBLEM_CAT = [_cc(COND_CATEGORY, "problem-list-item", "Problem List Item")]
_RAD_CAT = [_cc(V2_0074, "RAD", "Radiology")]
_IMAGING_SR_CAT = [_cc(SNOMED, "363679005", "Imaging (procedure)")]
_MED_CAT = [_cc("http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                "outpatient", "Outpatient")]  # fmt: skip
_PROC_CAT = _cc(SNOMED, "387713003", "Surgical procedure")
_MED_CONCEPTS: dict[str, dict[str, Any]] = {}
_PROC_CONCEPTS: dict[str, dict[str, Any]] = {}
_IMG_CONCEPTS: dict[str, dict[str, Any]] = {}
for _k in CONDITIONS:
    for _code, _name in _k.meds:
        _MED_CONCEPTS.setdefault(_code, _cc(RXNORM, _code, _name))
    for _code, _name in _k.procedures:
        _PROC_CONCEPTS.setdefault(_code, _cc(SNOMED, _code, _name))
    for _code, _name in _k.imaging:
        _IMG_CONCEPTS.setdefault(_code, _cc(LOINC, _code, _name))
DOSAGES = (
    "1 tablet by mouth once daily",
    "1 tablet by mouth twice daily",
    "2 puffs inhaled every 4 to 6 hours as needed",
    "10 units subcutaneously at bedtime",
    "IV infusion per protocol, cycle day 1",
    "500 mg by mouth three times daily",
)
NORMAL_FINDINGS = (
    "No acute cardiopulmonary abnormality.",
    "Stable appearance since prior study.",
    "No focal consolidation, effusion or pneumothorax.",
)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FAMILY = _words("""
    Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez Lopez
    Gonzalez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Perez Thompson White Harris
    Sanchez Clark Ramirez Lewis Robinson Walker Young Allen King Wright Scott Torres Nguyen Hill
    Flores Green Adams Nelson Baker Hall Rivera Campbell Mitchell Carter Roberts Muller Schmidt
    Schneider Fischer Weber Meyer Wagner Becker Schulz Hoffmann Rossi Russo Ferrari Esposito
    Bianchi Romano Colombo Dubois Moreau Laurent Simon Michel Lefebvre Kowalski Nowak Wisniewski
    Novak Svoboda Horvat Kovacs Nagy Tanaka Suzuki Sato Kim Park Chen Wang Li Zhang Liu Singh
    Kumar Sharma Patel Okafor Mensah Haddad Cohen Levi Silva Santos Oliveira Pereira Costa
    Andersen Nielsen Hansen Larsen Johansson Virtanen
""")
GIVEN = {
    "female": _words("""
        Mary Patricia Jennifer Linda Elizabeth Barbara Susan Jessica Sarah Karen Lisa Nancy Betty
        Margaret Sandra Ashley Emily Donna Michelle Carol Amanda Melissa Deborah Stephanie Rebecca
        Laura Sharon Cynthia Kathleen Amy Anna Maria Sofia Emma Olivia Mia Hannah Lea Chloe
        Camille Giulia Aiko Mei Priya Amara Fatima Ingrid Elena Ana Lucia Noor Yuki Zoe Clara Ines
    """),
    "male": _words("""
        James Robert John Michael David William Richard Joseph Thomas Charles Christopher Daniel
        Matthew Anthony Mark Donald Steven Paul Andrew Joshua Kenneth Kevin Brian George Timothy
        Ronald Edward Jason Jeffrey Ryan Lukas Felix Jonas Leon Luca Marco Pierre Louis Hugo Kenji
        Wei Arjun Ravi Kwame Omar Erik Lars Mateo Diego Pedro Ivan Tomas Noah Elias Samuel
    """),
}
STREETS = (
    "Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Pine St", "Elm St", "Lake Rd",
    "Washington Blvd", "Hill St", "Park Ave", "Church St", "Mill Rd", "River Rd",
)  # fmt: skip
CITIES = (("Boston", "MA", "021"), ("Springfield", "IL", "627"), ("Portland", "OR", "972"),
          ("Austin", "TX", "787"), ("Madison", "WI", "537"), ("Denver", "CO", "802"),
          ("Columbus", "OH", "432"), ("Raleigh", "NC", "276"), ("Tucson", "AZ", "857"),
          ("Albany", "NY", "122"), ("Richmond", "VA", "232"), ("Omaha", "NE", "681"))  # fmt: skip
TZ = ((-5, "-05:00"), (-6, "-06:00"), (-7, "-07:00"), (-8, "-08:00"), (-4, "-04:00"),
      (0, "Z"), (1, "+01:00"))  # fmt: skip


# -- small helpers ------------------------------------------------------------------------------


def mrn(i: int) -> str:
    """Patient ``i``'s medical record number."""
    return f"MRN-{i:07d}"


def _rng(seed: int, i: int) -> random.Random:
    # a str seed is hashed with SHA-512: stable across processes and Python versions
    return random.Random(f"medflow-fhir-v{VERSION}:{seed}:{i}")


_CIVIL_CACHE: dict[int, str] = {}


def _day(ordinal_day: int) -> str:
    """``YYYY-MM-DD`` of a day number since 1970-01-01 (cached: few distinct days)."""
    s = _CIVIL_CACHE.get(ordinal_day)
    if s is None:
        s = _CIVIL_CACHE[ordinal_day] = date.fromordinal(ordinal_day + _EPOCH_ORD).isoformat()
    return s


def _dt(t: int, tz: tuple[int, str]) -> str:
    """FHIR dateTime of UTC epoch second ``t`` written in the offset ``tz`` (hours, suffix)."""
    local = t + tz[0] * 3600
    d, s = divmod(local, 86400)
    return f"{_day(d)}T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}{tz[1]}"


def _ref(full_url: str) -> dict[str, str]:
    return {"reference": full_url}


def _pick_obs(rng: random.Random) -> ObsKind:
    x = rng.random() * _OBS_CUM[-1]
    for kind, cum in zip(QUANTITATIVE, _OBS_CUM, strict=True):
        if x < cum:
            return kind
    return QUANTITATIVE[-1]


def _value(rng: random.Random, k: ObsKind) -> float | int:
    v = rng.gauss(k.mean, k.sd)
    lo = k.mean / 10 if k.mean > 0 else 0.01
    v = max(v, lo)
    return round(v) if k.decimals == 0 else round(v, k.decimals)


# -- one patient --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientInfo:
    """What the search phase can know about patient ``i`` without the server."""

    mrn: str
    gender: str
    birth_date: str
    conditions: tuple[str, ...]
    """SNOMED codes."""


def patient_entries(seed: int, i: int) -> list[dict[str, Any]]:
    """The Bundle entries (fullUrl, resource, request) of patient ``i``: Patient first."""
    rng = _rng(seed, i)
    prefix = f"urn:uuid:{seed & 0xFFFFFFFF:08x}-{(i >> 12) & 0xFFFF:04x}-4{i & 0xFFF:03x}-a"
    counter = [0]

    def new_url() -> str:
        counter[0] += 1
        j = counter[0]
        return f"{prefix}{(j >> 48) & 0xFFF:03x}-{j & 0xFFFFFFFFFFFF:012x}"

    entries: list[dict[str, Any]] = []

    def add(rtype: str, resource: dict[str, Any], url: str | None = None) -> str:
        url = url or new_url()
        entries.append(
            {"fullUrl": url, "resource": resource, "request": {"method": "POST", "url": rtype}}
        )
        return url

    tz = rng.choice(TZ)
    gender = "female" if rng.random() < 0.51 else "male"
    birth_ord = rng.randint(BIRTH_LO, BIRTH_HI) - _EPOCH_ORD
    birth_t = birth_ord * 86400
    family = rng.choice(FAMILY)
    given = [rng.choice(GIVEN[gender])]
    if rng.random() < 0.4:
        given.append(rng.choice(GIVEN[gender]))
    city, state, zip3 = rng.choice(CITIES)
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {"use": "usual", "type": _MRN_TYPE, "system": MRN_SYSTEM, "value": mrn(i)}
        ],
        "active": True,
        "name": [{"use": "official", "family": family, "given": given}],
        "telecom": [{"system": "phone", "value": f"555-{rng.randrange(10000):04d}",
                     "use": "home"}],
        "gender": gender,
        "birthDate": _day(birth_ord),
        "address": [{"use": "home", "line": [f"{rng.randint(1, 9999)} {rng.choice(STREETS)}"],
                     "city": city, "state": state, "postalCode": f"{zip3}{rng.randrange(100):02d}",
                     "country": "US"}],
    }  # fmt: skip
    pat = add("Patient", patient)
    subject = _ref(pat)

    # encounters: sorted by start, all in [YEAR_LO, YEAR_HI) and after birth
    t_lo = max(_T_LO, birth_t + 86400)
    n_enc = rng.randint(3, 13)
    starts = sorted(rng.randrange(t_lo, _T_HI - 5 * 86400) for _ in range(n_enc))
    encounters: list[tuple[str, int]] = []  # (fullUrl, start)
    for start in starts:
        start -= start % 300  # on a 5-minute boundary
        cls, _d, type_code, _disp, hours, _w = rng.choices(ENCOUNTER_KINDS, _ENC_WEIGHTS)[0]
        end = start + int(hours * 3600 * (0.5 + rng.random()))
        url = add("Encounter", {
            "resourceType": "Encounter", "status": "finished", "class": _ENC_CLASS[cls],
            "type": _ENC_TYPE[type_code], "subject": subject,
            "period": {"start": _dt(start, tz), "end": _dt(end, tz)},
        })  # fmt: skip
        encounters.append((url, start))

    # conditions: distinct kinds, sex-appropriate, diagnosed at one of the encounters
    n_cond = rng.randint(1, 7)
    kinds: list[CondKind] = []
    for kind in rng.choices(CONDITIONS, _COND_WEIGHTS, k=n_cond + 3):
        if (kind.sex is None or kind.sex == gender) and all(k.snomed != kind.snomed for k in kinds):
            kinds.append(kind)
        if len(kinds) == n_cond:
            break
    conditions: list[tuple[str, CondKind, int, int]] = []  # (url, kind, encounter idx, onset)
    for kind in kinds:
        e = rng.randrange(len(encounters))
        enc_url, onset = encounters[e]
        chronic = not kind.cancer and kind.snomed not in ("233604007", "36118008", "59282003")
        status = "active" if chronic or rng.random() < 0.4 else "resolved"
        url = add("Condition", {
            "resourceType": "Condition", "clinicalStatus": _CLINICAL[status],
            "verificationStatus": _CONFIRMED,
            "category": _PROBLEM_CAT if chronic else _COND_CAT, "code": kind.concept,
            "subject": subject, "encounter": _ref(enc_url), "onsetDateTime": _dt(onset, tz),
            "recordedDate": _dt(onset + 1800, tz),
        })  # fmt: skip
        conditions.append((url, kind, e, onset))

    # radiology: order + report + one imaging observation, for a condition
    n_rad = rng.randint(1, 5)
    n_obs = rng.randint(20, 120)
    imaging_obs = 0
    for r in range(n_rad):
        c_url, kind, e0, _onset = conditions[rng.randrange(len(conditions))]
        e = rng.randrange(e0, len(encounters))
        enc_url, start = encounters[e]
        study = rng.choice(kind.imaging)
        concept = _IMG_CONCEPTS[study[0]]
        accession = f"A{seed % 100:02d}{i:07d}{r:02d}"
        acsn = [{"type": _ACSN_TYPE, "system": ACCESSION_SYSTEM, "value": accession}]
        ordered = start + 600
        sr = add("ServiceRequest", {
            "resourceType": "ServiceRequest", "identifier": acsn, "status": "completed",
            "intent": "order", "category": _IMAGING_SR_CAT, "code": concept, "subject": subject,
            "encounter": _ref(enc_url), "occurrenceDateTime": _dt(ordered + 3600, tz),
            "authoredOn": _dt(ordered, tz), "reasonReference": [_ref(c_url)],
        })  # fmt: skip
        seen = ordered + 3600 + rng.randrange(600, 7200)
        obs: dict[str, Any] = {
            "resourceType": "Observation", "status": "final", "category": IMAGING_CATEGORY,
            "subject": subject, "encounter": _ref(enc_url), "effectiveDateTime": _dt(seen, tz),
            "issued": _dt(seen + 1800, tz),
        }  # fmt: skip
        if kind.cancer:
            size = _value(rng, TUMOR_SIZE)
            obs["code"] = TUMOR_SIZE.concept
            obs["valueQuantity"] = {"value": size, "unit": "cm", "system": UCUM, "code": "cm"}
            conclusion = f"{kind.concept['text']}: lesion measuring {size} cm."
        else:
            finding = rng.choice(NORMAL_FINDINGS)
            obs["code"] = IMAGING_NARRATIVE
            obs["valueString"] = finding
            conclusion = finding
        o_url = add("Observation", obs)
        imaging_obs += 1
        add("DiagnosticReport", {
            "resourceType": "DiagnosticReport", "identifier": acsn, "basedOn": [_ref(sr)],
            "status": "final", "category": _RAD_CAT, "code": concept, "subject": subject,
            "encounter": _ref(enc_url), "effectiveDateTime": _dt(seen, tz),
            "issued": _dt(seen + 1800, tz), "result": [_ref(o_url)], "conclusion": conclusion,
        })  # fmt: skip

    # vital signs and labs at the encounters
    for _ in range(max(0, n_obs - imaging_obs)):
        k = _pick_obs(rng)
        enc_url, start = encounters[rng.randrange(len(encounters))]
        t = start + rng.randrange(0, 3600, 60)
        resource: dict[str, Any] = {
            "resourceType": "Observation", "status": "final", "category": k.categories,
            "code": k.concept, "subject": subject, "encounter": _ref(enc_url),
            "effectiveDateTime": _dt(t, tz),
            "valueQuantity": {"value": _value(rng, k), "unit": k.unit_display, "system": UCUM,
                              "code": k.unit},
        }  # fmt: skip
        if k.reference_range is not None:
            resource["issued"] = _dt(t + 7200, tz)
            resource["referenceRange"] = k.reference_range
        add("Observation", resource)

    # medications and procedures for the conditions
    for _ in range(rng.randint(2, 14)):
        c_url, kind, e0, _onset = conditions[rng.randrange(len(conditions))]
        if not kind.meds:
            continue
        code, _name = rng.choice(kind.meds)
        enc_url, start = encounters[rng.randrange(e0, len(encounters))]
        add("MedicationRequest", {
            "resourceType": "MedicationRequest", "status": rng.choice(("active", "completed")),
            "intent": "order", "category": _MED_CAT,
            "medicationCodeableConcept": _MED_CONCEPTS[code], "subject": subject,
            "encounter": _ref(enc_url), "authoredOn": _dt(start + 2400, tz),
            "reasonReference": [_ref(c_url)],
            "dosageInstruction": [{"text": rng.choice(DOSAGES)}],
        })  # fmt: skip
    for _ in range(rng.randint(1, 7)):
        c_url, kind, e0, _onset = conditions[rng.randrange(len(conditions))]
        if not kind.procedures:
            continue
        code, _name = rng.choice(kind.procedures)
        enc_url, start = encounters[rng.randrange(e0, len(encounters))]
        add("Procedure", {
            "resourceType": "Procedure", "status": "completed", "category": _PROC_CAT,
            "code": _PROC_CONCEPTS[code], "subject": subject, "encounter": _ref(enc_url),
            "performedDateTime": _dt(start + 3000, tz), "reasonReference": [_ref(c_url)],
        })  # fmt: skip
    return entries


def patient_info(seed: int, i: int) -> PatientInfo:
    """The searchable facts of patient ``i`` (generates the patient; for a few, not bulk)."""
    entries = patient_entries(seed, i)
    p = entries[0]["resource"]
    codes = tuple(
        e["resource"]["code"]["coding"][0]["code"]
        for e in entries
        if e["resource"]["resourceType"] == "Condition"
    )
    return PatientInfo(mrn(i), p["gender"], p["birthDate"], codes)


def transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def bundle_bytes(seed: int, patients: Sequence[int]) -> tuple[bytes, int]:
    """One transaction Bundle of ``patients`` as compact UTF-8 JSON, and its resource count."""
    entries: list[dict[str, Any]] = []
    for i in patients:
        entries += patient_entries(seed, i)
    body = json.dumps(transaction(entries), separators=(",", ":"), ensure_ascii=False)
    return body.encode(), len(entries)


def bundles(seed: int, start: int, stop: int, per_bundle: int = 1) -> Iterator[tuple[bytes, int]]:
    """Transaction Bundles of patients ``start..stop-1``, ``per_bundle`` patients each."""
    for lo in range(start, stop, per_bundle):
        yield bundle_bytes(seed, range(lo, min(stop, lo + per_bundle)))


# -- what the searches ask for ------------------------------------------------------------------


def condition_code(rng: random.Random) -> CondKind:
    """A condition kind, drawn by prevalence (what a clinician would look for)."""
    return rng.choices(CONDITIONS, _COND_WEIGHTS)[0]


def onset_window(rng: random.Random, years: int = 2) -> tuple[str, str]:
    """``[ge, lt)`` dates of a ``years``-long onset window inside [YEAR_LO, YEAR_HI)."""
    y = rng.randrange(YEAR_LO, YEAR_HI - years + 1)
    return f"{y}-01-01", f"{y + years}-01-01"


def observation_threshold(rng: random.Random) -> tuple[ObsKind, float | int]:
    """A quantitative observation kind (by frequency) and a value near its 90th-98th
    percentile (``value-quantity=gt<v>`` then matches a few percent of that code)."""
    k = _pick_obs(rng)
    return k, k.threshold(rng.uniform(1.3, 2.0))


def birthdate_cutoff(rng: random.Random) -> str:
    """``lt`` date for "patients born before": 1940-1960."""
    return f"{rng.randint(1940, 1960)}-01-01"


def random_patient(rng: random.Random, patients: int) -> int:
    return rng.randrange(patients)
