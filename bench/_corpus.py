"""Deterministic benchmark corpus: CT-like 512x512 and small 64x64 instances, and demographics.

Every object depends only on ``(seed, kind, index)``, so a corpus of 500 CT instances is a prefix
of one of 2,000 and the cache under ``bench/.cache/`` is reused across sizes. The same demographic
model (patients, names, dates, modalities) feeds the 1M-instance metadata-only index
(``_million.py``), so the QIDO queries select similar fractions at every size.

Layout: CT instance ``i`` belongs to series ``0`` for ``i < 700`` (the /metadata series), then to
series of 150 instances, two series per study. Small instance ``i`` belongs to study ``i // 20``
(two series of 10). Extra small instances past ``--small`` top the index up for QIDO.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

CORPUS_VERSION = 1
METADATA_SERIES_SIZE = 700
CT_SERIES_SIZE = 150
CT_SERIES_PER_STUDY = 2
SMALL_SERIES_SIZE = 10
SMALL_SERIES_PER_STUDY = 2


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


SURNAMES = _words(
    "SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS RODRIGUEZ MARTINEZ HERNANDEZ "
    "LOPEZ GONZALEZ WILSON ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE PEREZ THOMPSON "
    "WHITE HARRIS SANCHEZ CLARK RAMIREZ LEWIS ROBINSON WALKER YOUNG ALLEN KING WRIGHT SCOTT "
    "TORRES NGUYEN HILL FLORES GREEN ADAMS NELSON BAKER HALL RIVERA CAMPBELL MITCHELL CARTER "
    "ROBERTS MUELLER SCHMIDT SCHNEIDER FISCHER WEBER MEYER WAGNER BECKER SCHULZ HOFFMANN "
    "DUBOIS DURAND LEROY MOREAU SIMON LAURENT LEFEBVRE MICHEL ROSSI RUSSO FERRARI ESPOSITO "
    "BIANCHI ROMANO COLOMBO RICCI MARINO GRECO BRUNO GALLO CONTI DEJONG JANSEN DEVRIES "
    "VANDENBERG BAKKER VISSER SMIT MEIJER NIELSEN HANSEN PEDERSEN ANDERSEN KOWALSKI NOWAK "
    "WISNIEWSKI TANAKA SUZUKI TAKAHASHI WATANABE ITO YAMAMOTO NAKAMURA KOBAYASHI KIM PARK "
    "CHOI CHEN WANG LI ZHANG LIU YANG HUANG ZHAO WU ZHOU SILVA SANTOS OLIVEIRA SOUZA PEREIRA "
    "COSTA CARVALHO ALMEIDA FERREIRA RIBEIRO"
)
GIVEN = _words(
    "JAMES MARY ROBERT PATRICIA JOHN JENNIFER MICHAEL LINDA DAVID ELIZABETH WILLIAM BARBARA "
    "RICHARD SUSAN JOSEPH JESSICA THOMAS SARAH CHARLES KAREN ANNA LUCAS EMMA NOAH OLIVIA LIAM "
    "SOPHIA MATEO MIA HUGO LEA PAUL MARIE LUCA GIULIA JAN SOFIE YUKI HARUTO MIN JI WEI FANG"
)
# Study modality mix (PT studies also carry a CT series: ModalitiesInStudy is multi-valued).
MODALITIES = ("MR", "CR", "DX", "US", "MG", "NM", "PT", "XA", "CT")
MODALITY_P = (0.22, 0.16, 0.12, 0.12, 0.08, 0.04, 0.04, 0.04, 0.18)
SOP_CLASS = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "MG": "1.2.840.10008.5.1.4.1.1.1.2",
    "NM": "1.2.840.10008.5.1.4.1.1.20",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
    "XA": "1.2.840.10008.5.1.4.1.1.12.1",
}
BODY_PARTS = ("HEAD", "CHEST", "ABDOMEN", "PELVIS", "SPINE", "KNEE", "BREAST", "HEART")
FIRST_DAY = np.datetime64("2005-01-01", "D")
N_DAYS = int((np.datetime64("2025-01-01", "D") - FIRST_DAY).astype(np.int64))


def uid(seed: int, *parts: object) -> str:
    """A deterministic ``2.25.<decimal>`` UID from the seed and the parts (PS3.5 B.2)."""
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:15], "big"))


def _rng(seed: int, *parts: object) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed, *parts)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


@dataclass(frozen=True)
class StudyInfo:
    """Patient and study attributes of one study (the same model at every corpus size)."""

    study_uid: str
    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    accession: str
    description: str
    modality: str
    body_part: str
    referring: str


def patient_pool_size(n_studies: int) -> int:
    """About 1.6 studies per patient."""
    return max(1, int(n_studies / 1.6))


def study_info(seed: int, kind: str, study: int, n_patients: int) -> StudyInfo:
    """Demographics of study ``study`` of corpus ``kind`` (deterministic)."""
    r = _rng(seed, kind, "study", study)
    patient = int(r.integers(n_patients))
    p = _rng(seed, kind, "patient", patient)
    surname = SURNAMES[int(p.integers(len(SURNAMES)))]
    given = GIVEN[int(p.integers(len(GIVEN)))]
    birth = FIRST_DAY - np.timedelta64(int(p.integers(365 * 5, 365 * 90)), "D")
    date = FIRST_DAY + np.timedelta64(int(r.integers(N_DAYS)), "D")
    modality = "CT" if kind == "ct" else str(r.choice(MODALITIES, p=MODALITY_P))
    ref = f"{SURNAMES[int(r.integers(len(SURNAMES)))]}^{GIVEN[int(r.integers(len(GIVEN)))]}^^DR"
    return StudyInfo(
        study_uid=uid(seed, kind, "study", study),
        patient_id=f"{kind[:2].upper()}{patient:08d}",
        patient_name=f"{surname}^{given}",
        birth_date=str(birth).replace("-", ""),
        sex="F" if p.random() < 0.5 else "M",
        study_date=str(date).replace("-", ""),
        study_time="".join(f"{int(v):02d}" for v in (r.integers(7, 20), *r.integers(0, 60, 2))),
        accession=f"A{kind[:1].upper()}{study:09d}",
        description=f"{modality} {BODY_PARTS[int(r.integers(len(BODY_PARTS)))]}",
        modality=modality,
        body_part=BODY_PARTS[int(r.integers(len(BODY_PARTS)))],
        referring=ref,
    )


@dataclass(frozen=True)
class Placement:
    """Where an instance sits: study and series index, number in series, series modality."""

    study: int
    series: int
    number: int
    modality: str


def ct_placement(i: int) -> Placement:
    """CT layout: a 700-instance series first, then series of 150, two per study."""
    if i < METADATA_SERIES_SIZE:
        return Placement(study=0, series=0, number=i + 1, modality="CT")
    j = i - METADATA_SERIES_SIZE
    series = 1 + j // CT_SERIES_SIZE
    study = 1 + (series - 1) // CT_SERIES_PER_STUDY
    return Placement(study=study, series=series, number=j % CT_SERIES_SIZE + 1, modality="CT")


def small_placement(seed: int, i: int, n_patients: int) -> Placement:
    """Small layout: studies of two series of ten; a PT study's second series is CT."""
    per_study = SMALL_SERIES_SIZE * SMALL_SERIES_PER_STUDY
    study = i // per_study
    series = i // SMALL_SERIES_SIZE
    modality = study_info(seed, "small", study, n_patients).modality
    if modality == "PT" and series % SMALL_SERIES_PER_STUDY == 1:
        modality = "CT"
    return Placement(
        study=study, series=series, number=i % SMALL_SERIES_SIZE + 1, modality=modality
    )


def build_instance(
    seed: int, kind: str, i: int, place: Placement, info: StudyInfo, size: int
) -> Dataset:
    """One Part 10 data set with ``size`` x ``size`` 16-bit pixels."""
    r = _rng(seed, kind, "pixels", i)
    yy, xx = np.mgrid[0:size, 0:size]
    radius = size * (0.30 + 0.1 * np.sin(place.number / 25.0))
    body = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < radius**2
    img = np.where(body, 1040, 24).astype(np.int32) + r.integers(0, 40, (size, size))
    pixels = img.astype(np.uint16)

    sop_class = SOP_CLASS[place.modality]
    sop_uid = uid(seed, kind, "instance", i)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = info.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = info.study_time
    ds.AccessionNumber = info.accession
    ds.Modality = place.modality
    ds.Manufacturer = "medflow-bench"
    ds.ReferringPhysicianName = info.referring
    ds.StudyDescription = info.description
    ds.SeriesDescription = f"{place.modality} series {place.series}"
    ds.PatientName = info.patient_name
    ds.PatientID = info.patient_id
    ds.PatientBirthDate = info.birth_date
    ds.PatientSex = info.sex
    ds.BodyPartExamined = info.body_part
    ds.StudyInstanceUID = info.study_uid
    ds.SeriesInstanceUID = uid(seed, kind, "series", place.series)
    ds.StudyID = str(place.study % 10**8)
    ds.SeriesNumber = place.series % 10**6 + 1
    ds.InstanceNumber = place.number
    ds.ImagePositionPatient = [-160.0, -160.0, -1.25 * place.number]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.FrameOfReferenceUID = uid(seed, kind, "for", place.study)
    ds.SliceThickness = 1.25
    ds.PixelSpacing = [0.625, 0.625]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.WindowCenter = 40
    ds.WindowWidth = 400
    ds.PixelData = pixels.tobytes()
    return ds


@dataclass(frozen=True)
class Item:
    """One corpus instance on disk."""

    path: str
    study_uid: str
    series_uid: str
    sop_uid: str
    size: int


@dataclass
class Corpus:
    """The instances of one kind and what the measurements need to address them."""

    kind: str
    items: list[Item]

    @property
    def total_bytes(self) -> int:
        return sum(it.size for it in self.items)

    def studies(self) -> dict[str, list[Item]]:
        out: dict[str, list[Item]] = {}
        for it in self.items:
            out.setdefault(it.study_uid, []).append(it)
        return out

    def series(self) -> dict[tuple[str, str], list[Item]]:
        out: dict[tuple[str, str], list[Item]] = {}
        for it in self.items:
            out.setdefault((it.study_uid, it.series_uid), []).append(it)
        return out


def cache_root(base: Path, seed: int) -> Path:
    return base / f"corpus-v{CORPUS_VERSION}-seed{seed}"


def _placement(seed: int, kind: str, i: int, n_patients: int) -> Placement:
    if kind == "ct":
        return ct_placement(i)
    return small_placement(seed, i, n_patients)


def n_patients_for(kind: str) -> int:
    """Fixed pool sizes so that growing a corpus never changes an existing instance."""
    return 40 if kind == "ct" else 600


def build_corpus(
    base: Path, *, seed: int, kind: str, indices: Iterable[int], progress: bool = True
) -> Corpus:
    """Write (or reuse) the instances ``indices`` of ``kind`` under the cache; return them."""
    size = 512 if kind == "ct" else 64
    folder = cache_root(base, seed) / kind
    folder.mkdir(parents=True, exist_ok=True)
    index_file = folder / "index.jsonl"
    known: dict[str, Item] = {}
    if index_file.exists():
        for line in index_file.read_text().splitlines():
            rec = Item(**json.loads(line))
            known[rec.path] = rec
    n_pat = n_patients_for(kind)
    items: list[Item] = []
    fresh: list[Item] = []
    wanted = list(indices)
    for n, i in enumerate(wanted):
        name = f"{i:07d}.dcm"
        path = folder / name
        rec = known.get(name)
        if rec is None or not path.exists() or path.stat().st_size != rec.size:
            place = _placement(seed, kind, i, n_pat)
            info = study_info(seed, kind, place.study, n_pat)
            ds = build_instance(seed, kind, i, place, info, size)
            ds.save_as(path, enforce_file_format=True)
            rec = Item(
                path=name,
                study_uid=str(ds.StudyInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                sop_uid=str(ds.SOPInstanceUID),
                size=path.stat().st_size,
            )
            fresh.append(rec)
            if progress and len(fresh) % 500 == 0:
                print(f"  corpus {kind}: {n + 1}/{len(wanted)} written", flush=True)
        items.append(rec)
    if fresh:
        with index_file.open("a") as fp:
            for rec in fresh:
                fp.write(json.dumps(asdict(rec)) + "\n")
    return Corpus(kind=kind, items=[_absolute(folder, it) for it in items])


def _absolute(folder: Path, it: Item) -> Item:
    return Item(str(folder / it.path), it.study_uid, it.series_uid, it.sop_uid, it.size)


def read_bytes(items: list[Item]) -> list[bytes]:
    return [Path(it.path).read_bytes() for it in items]
