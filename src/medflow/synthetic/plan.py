"""The synthetic hospital's plan: who the patients are, what they have, which studies are made
and what those studies show. Deterministic for (seed, patient index): patient ``i`` of a run
with 20 patients is patient ``i`` of a run with 100k. The clinical (FHIR) and imaging (DICOM)
generators both render a :class:`PatientPlan`, so their identifiers agree (MRN = PatientID,
accession numbers = ACSN identifiers), and the ground truth is the plan itself: nothing of it is
written into the DICOM or FHIR data beyond what a real record would say.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import date, timedelta

from pydicom.uid import generate_uid

MRN_SYSTEM = "urn:medflow:mrn"
TODAY = date(2026, 11, 1)
"""The hospital's "now": dates are relative to it, never to the clock."""

FAMILY = ("Smith", "Garcia", "Nguyen", "Müller", "Rossi", "Kowalski", "Okafor", "Tanaka",
          "Johansson", "Dubois", "Silva", "Cohen", "Ivanova", "Murphy", "Haddad", "Larsen",
          "Moreau", "Novak", "Fischer", "Khan")  # fmt: skip
GIVEN_F = ("Anna", "Maria", "Sofia", "Emma", "Aisha", "Yuki", "Ingrid", "Lucia", "Chloe", "Nadia")
GIVEN_M = ("James", "Luca", "Omar", "Jonas", "Kenji", "Mateo", "Pierre", "Ivan", "Arjun", "Noah")
CITIES = ("Springfield", "Riverton", "Lakeside", "Hillview", "Fairhaven")


@dataclass(frozen=True)
class Disease:
    """A diagnosis the generator knows: its codes, who gets it, how it is imaged and treated."""

    key: str
    snomed: str
    icd10: str
    display: str
    malignant: bool
    modality: str
    """The imaging that follows it: CR (chest X-ray), CT, MR or MG."""
    body_part: str
    finding: str
    """What its images show: ``lesion``, ``pneumothorax`` or ``consolidation``."""
    weight: float
    min_age: int
    sex: str | None = None
    """``F``/``M`` when only one sex gets it here."""


DISEASES = (
    Disease("osteosarcoma", "307576001", "C40.20", "Osteosarcoma of bone", True, "MR", "KNEE",
            "lesion", 0.08, 10),
    Disease("lung-cancer", "363358000", "C34.90", "Malignant tumor of lung", True, "CT", "CHEST",
            "lesion", 0.12, 45),
    Disease("breast-cancer", "254837009", "C50.919", "Malignant neoplasm of breast", True, "MG",
            "BREAST", "lesion", 0.12, 35, "F"),
    Disease("benign-lung-nodule", "427359005", "D14.30", "Benign neoplasm of lung", False, "CT",
            "CHEST", "lesion", 0.10, 30),
    Disease("fibroadenoma", "73085000", "D24.9", "Fibroadenoma of breast", False, "MG", "BREAST",
            "lesion", 0.08, 18, "F"),
    Disease("pneumothorax", "36118008", "J93.9", "Pneumothorax", False, "CR", "CHEST",
            "pneumothorax", 0.15, 15),
    Disease("pneumonia", "233604007", "J18.9", "Pneumonia", False, "CR", "CHEST",
            "consolidation", 0.20, 0),
)  # fmt: skip
NONE = Disease("screening", "", "", "No finding", False, "CR", "CHEST", "", 0.15, 0)
"""Patients imaged without a disease (screening, pre-operative chest X-ray): negatives."""
BIOPSY_SITES = {"CHEST": ("39607008", "Lung structure"), "BREAST": ("76752008", "Breast structure"),
                "KNEE": ("272673000", "Bone structure")}  # fmt: skip
"""SNOMED CT body structure of a biopsy, by the disease's body part."""
DESCRIPTIONS = {"CR": "XR CHEST PA", "CT": "CT CHEST W CONTRAST", "MR": "MR KNEE W/WO",
                "MG": "MAMMOGRAPHY BILATERAL"}  # fmt: skip
"""Study Description by modality (one per modality: no header tells a finding)."""
SERIES_SHAPE = {"CR": (1, 1), "MG": (1, 4), "CT": (2, 16), "MR": (2, 12)}
"""(series, instances per series before the jitter of CT and MR) by modality."""
STAGING = {"osteosarcoma": ("CT", "CHEST")}
"""Imaging of another body part that a diagnosis calls for, shortly after it: a chest CT
stages an osteosarcoma, since the lungs are where it spreads first (NCCN Guidelines, Bone
Cancer: chest CT at work-up). Here it shows no metastasis; it is described and shaped as every
study of its modality is, so that no header tells a negative study from a positive one."""
SPECIMEN_TYPE = ("119376003", "Tissue specimen")
"""SNOMED CT type of the biopsy specimen (FHIR Specimen.type, the slide's specimen)."""


@dataclass(frozen=True)
class StudyPlan:
    accession: str
    study_uid: str
    modality: str
    body_part: str
    description: str
    day: date
    finding: str
    """What the images show (``lesion-malignant``, ``lesion-benign``, ``pneumothorax``,
    ``consolidation``) or "" (normal)."""
    series: int
    instances: int
    """Instances per series."""
    purpose: str = ""
    """"" for the imaging of the disease's own site; ``staging`` for a study of another body
    part that the diagnosis calls for (see :data:`STAGING`)."""


@dataclass(frozen=True)
class PatientPlan:
    index: int
    mrn: str
    family: str
    given: str
    sex: str
    """DICOM PatientSex: ``F`` or ``M``."""
    birth_date: date
    city: str
    disease: Disease
    onset: date | None
    """When the diagnosis was made (None: no disease)."""
    studies: tuple[StudyPlan, ...]
    biopsy: date | None
    """Tissue sampled (malignant and benign lesions): pathology report, slide image."""
    outcome: str
    """``remission``, ``response``, ``stable``, ``progression``, ``death`` or ``resolved``."""
    outcome_day: date | None
    seed: int

    @property
    def age(self) -> int:
        born = self.birth_date
        return TODAY.year - born.year - ((TODAY.month, TODAY.day) < (born.month, born.day))

    @property
    def pathology_accession(self) -> str | None:
        """The surgical pathology case's accession number (the biopsy's report and the slide's
        AccessionNumber); None without a biopsy."""
        return None if self.biopsy is None else f"S{self.seed % 1000:03d}{self.index:07d}"

    @property
    def specimen_id(self) -> str | None:
        """The biopsy specimen (part A of the case)."""
        acc = self.pathology_accession
        return None if acc is None else f"{acc}-A"

    @property
    def slide_id(self) -> str | None:
        """The H&E slide cut from block A1 of the specimen (its container identifier)."""
        acc = self.pathology_accession
        return None if acc is None else f"{acc}-A1-1"


def _rng(seed: int, *parts: object) -> random.Random:
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def uid(seed: int, *parts: object) -> str:
    """A DICOM UID under pydicom's root, derived from seed and parts (``generate_uid`` with
    entropy sources: the same inputs give the same UID, so a run is reproducible)."""
    return str(generate_uid(entropy_srcs=[repr((seed, *parts))]))


def _disease(rng: random.Random, sex: str, age: int) -> Disease:
    options = [d for d in (*DISEASES, NONE) if age >= d.min_age and d.sex in (None, sex)]
    return rng.choices(options, weights=[d.weight for d in options])[0]


def plan_patient(seed: int, index: int) -> PatientPlan:
    """Patient ``index`` of the hospital generated with ``seed``."""
    rng = _rng(seed, "patient", index)
    sex = rng.choice("FM")
    birth = TODAY - timedelta(days=rng.randint(8 * 365, 90 * 365))
    age = (TODAY - birth).days // 365
    disease = _disease(rng, sex, age)
    onset = None if disease is NONE else TODAY - timedelta(days=rng.randint(20, 6 * 365))
    first = onset or TODAY - timedelta(days=rng.randint(1, 3 * 365))
    studies = [_study(seed, index, 0, disease, first, diagnostic=disease is not NONE, rng=rng)]
    if disease.malignant:  # follow-up imaging during treatment
        for n in range(1, rng.randint(2, 3)):
            day = first + timedelta(days=90 * n + rng.randint(0, 30))
            if day < TODAY:
                studies.append(_study(seed, index, n, disease, day, diagnostic=True, rng=rng))
    lesion = disease.finding == "lesion"
    biopsy = onset + timedelta(days=rng.randint(3, 20)) if lesion and onset else None
    outcome, outcome_day = _outcome(rng, disease, onset)
    if outcome == "death" and outcome_day is not None:  # no imaging after death
        studies = [s for n, s in enumerate(studies) if n == 0 or s.day <= outcome_day]
    family = rng.choice(FAMILY)
    given = rng.choice(GIVEN_F if sex == "F" else GIVEN_M)
    staging = _staging(seed, index, disease, onset)
    if staging is not None:
        studies.append(staging)
    return PatientPlan(
        index=index, mrn=f"MRN{seed % 1000:03d}{index:07d}", family=family, given=given,
        sex=sex, birth_date=birth, city=rng.choice(CITIES), disease=disease, onset=onset,
        studies=tuple(studies), biopsy=biopsy, outcome=outcome, outcome_day=outcome_day,
        seed=seed,
    )  # fmt: skip


def _study(
    seed: int,
    index: int,
    n: int,
    disease: Disease,
    day: date,
    *,
    diagnostic: bool,
    rng: random.Random,
) -> StudyPlan:
    finding = ""
    if diagnostic and disease.finding == "lesion":
        finding = "lesion-malignant" if disease.malignant else "lesion-benign"
    elif diagnostic:
        finding = disease.finding
    modality = disease.modality
    series, instances = SERIES_SHAPE[modality]
    return StudyPlan(
        accession=f"A{seed % 1000:03d}{index:07d}{n}",
        study_uid=uid(seed, "study", index, n),
        modality=modality,
        body_part=disease.body_part,
        description=DESCRIPTIONS[modality],
        day=day,
        finding=finding,
        series=series,
        instances=instances + (rng.randint(0, 4) if modality in ("CT", "MR") else 0),
    )


def _outcome(rng: random.Random, disease: Disease, onset: date | None) -> tuple[str, date | None]:
    if onset is None:
        return "", None
    day = min(TODAY, onset + timedelta(days=rng.randint(60, 720)))
    if disease.malignant:
        return rng.choices(["remission", "response", "stable", "progression", "death"],
                           weights=[3, 3, 2, 2, 1])[0], day  # fmt: skip
    return "resolved", day


def _staging(seed: int, index: int, disease: Disease, onset: date | None) -> StudyPlan | None:
    """The staging study of :data:`STAGING` (its own random stream, so that adding it changed
    nothing else the plan draws)."""
    if onset is None or disease.key not in STAGING:
        return None
    modality, body_part = STAGING[disease.key]
    rng = _rng(seed, "staging", index)
    series, instances = SERIES_SHAPE[modality]
    return StudyPlan(
        accession=f"A{seed % 1000:03d}{index:07d}9", study_uid=uid(seed, "study", index, 9),
        modality=modality, body_part=body_part, description=DESCRIPTIONS[modality],
        day=min(TODAY, onset + timedelta(days=rng.randint(5, 18))), finding="",
        series=series, instances=instances + rng.randint(0, 4), purpose="staging",
    )  # fmt: skip


def plan_hospital(seed: int, patients: int) -> list[PatientPlan]:
    return [plan_patient(seed, i) for i in range(patients)]
