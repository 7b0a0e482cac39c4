"""The synthetic hospital's DICOM images: valid objects of their IODs, deterministic, blind to the
finding in their headers, and with pixels from which the finding is learnable, but not trivially."""

from __future__ import annotations

import io
import shutil
import subprocess
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from medflow.core.errors import InvalidInput
from medflow.synthetic.imaging import SOP_CLASSES, chest_xray, study_datasets
from medflow.synthetic.plan import PatientPlan, StudyPlan, plan_patient
from tests.conftest import need_peer

SEED = 11
MODALITIES = ("CR", "CT", "MR", "MG")
FINDING_WORDS = (
    "lesion",
    "malignant",
    "benign",
    "pneumothorax",
    "consolidation",
    "finding",
    "tumor",
    "tumour",
    "nodule",
    "cancer",
    "pneumonia",
    "sarcoma",
    "fibroadenoma",
)


@cache
def _cases() -> dict[tuple[str, str], tuple[PatientPlan, StudyPlan]]:
    """The first (patient, study) of each (modality, finding) among the hospital's patients."""
    found: dict[tuple[str, str], tuple[PatientPlan, StudyPlan]] = {}
    for index in range(400):
        plan = plan_patient(SEED, index)
        for study in plan.studies:
            found.setdefault((study.modality, study.finding), (plan, study))
    return found


def _case(modality: str, finding: str | None = None) -> tuple[PatientPlan, StudyPlan]:
    cases = _cases()
    if finding is not None:
        return cases[modality, finding]
    return next(v for (m, f), v in sorted(cases.items()) if m == modality and f)


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _strings(ds: Dataset) -> list[str]:
    """Every textual value in a dataset, sequences included."""
    out: list[str] = []
    for elem in ds.iterall():
        if elem.VR in ("SQ", "OB", "OW", "UN") or elem.value is None:
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        out.extend(str(v) for v in values)
    return out


@pytest.mark.parametrize("modality", MODALITIES)
def test_same_plan_gives_the_same_bytes(modality: str) -> None:
    plan, study = _case(modality)
    first = [_bytes(ds) for ds in study_datasets(plan, study, size=32)]
    again = [_bytes(ds) for ds in study_datasets(plan_patient(SEED, plan.index), study, size=32)]
    assert first == again
    assert len(set(first)) == len(first)


def test_different_patients_give_different_pixels() -> None:
    (p1, s1), (p2, s2) = _case("CR", ""), _case("CR", "pneumothorax")
    assert not np.array_equal(chest_xray(p1, s1, size=64), chest_xray(p2, s2, size=64))


@pytest.mark.parametrize("modality", MODALITIES)
def test_datasets_round_trip_with_the_required_attributes(modality: str) -> None:
    plan, study = _case(modality)
    datasets = list(study_datasets(plan, study, size=32))
    assert len(datasets) == study.series * study.instances
    assert len({ds.SOPInstanceUID for ds in datasets}) == len(datasets)
    assert len({ds.SeriesInstanceUID for ds in datasets}) == study.series
    for original in datasets:
        ds = pydicom.dcmread(io.BytesIO(_bytes(original)))
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.SOPClassUID == SOP_CLASSES[modality]
        assert str(ds.PatientName) == f"{plan.family}^{plan.given}"
        assert ds.PatientID == plan.mrn
        assert ds.IssuerOfPatientID == "MEDFLOW"
        assert ds.PatientBirthDate == plan.birth_date.strftime("%Y%m%d")
        assert ds.PatientSex == plan.sex
        assert ds.StudyInstanceUID == study.study_uid
        assert ds.StudyDate == study.day.strftime("%Y%m%d")
        assert ds.AccessionNumber == study.accession
        assert ds.StudyDescription == study.description
        assert ds.BodyPartExamined == study.body_part
        assert ds.Modality == modality
        assert ds.Manufacturer == "medflow synthetic"
        for keyword in ("StudyTime", "ReferringPhysicianName", "StudyID", "SeriesNumber",
                        "SeriesDescription", "InstitutionName", "InstanceNumber", "ContentDate",
                        "ContentTime", "ImageType", "WindowCenter", "WindowWidth"):  # fmt: skip
            assert keyword in ds, keyword
        assert (ds.SamplesPerPixel, ds.PhotometricInterpretation) == (1, "MONOCHROME2")
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (
            16, 12, 11, 0)  # fmt: skip
        pixels = ds.pixel_array
        assert pixels.shape == (32, 32) and pixels.dtype == np.uint16
        assert pixels.max() < 4096
        _modality_attributes(ds, modality)


def _modality_attributes(ds: Dataset, modality: str) -> None:
    if modality == "CR":
        assert ds.ViewPosition == "PA"
        assert len(ds.ImagerPixelSpacing) == 2
    if modality in ("CT", "MR"):
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                        "SliceThickness", "FrameOfReferenceUID", "PositionReferenceIndicator",
                        "PatientPosition"):  # fmt: skip
            assert keyword in ds, keyword
    if modality == "CT":
        assert (ds.RescaleIntercept, ds.RescaleSlope) == (-1024, 1)
        assert "KVP" in ds
    if modality == "MR":
        for keyword in ("ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType",
                        "RepetitionTime", "EchoTime", "EchoTrainLength",
                        "MagneticFieldStrength"):  # fmt: skip
            assert keyword in ds, keyword
        assert ds.Laterality in ("L", "R")
    if modality == "MG":
        assert ds.PresentationIntentType == "FOR PRESENTATION"
        assert ds.ImageLaterality in ("L", "R")
        assert ds.ViewPosition in ("CC", "MLO")
        assert ds.DetectorType
        assert ds.ViewCodeSequence[0].CodeValue


def test_mammography_has_both_views_of_both_breasts() -> None:
    plan, study = _case("MG")
    views = {(ds.ImageLaterality, ds.ViewPosition) for ds in study_datasets(plan, study, size=16)}
    assert views == {("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")}


def test_ct_slices_are_stacked_along_z() -> None:
    plan, study = _case("CT")
    series = [ds for ds in study_datasets(plan, study, size=16) if ds.SeriesNumber == 1]
    z = [float(ds.ImagePositionPatient[2]) for ds in series]
    assert len(set(z)) == len(z) == study.instances
    assert len({ds.FrameOfReferenceUID for ds in series}) == 1


@pytest.mark.parametrize("modality", MODALITIES)
def test_dciodvfy_finds_no_errors(modality: str, tmp_path: Path) -> None:
    available = shutil.which("dciodvfy") is not None
    need_peer(available, "dciodvfy (Debian dicom3tools) is missing; `make test` installs it")
    plan, study = _case(modality)
    ds = next(study_datasets(plan, study, size=64))
    path = tmp_path / f"{modality}.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert not errors, report


@pytest.mark.parametrize("modality", MODALITIES)
def test_headers_do_not_reveal_the_finding(modality: str) -> None:
    """No word of the finding anywhere, and the same header values whatever the finding."""
    cases = [(p, s) for (m, _), (p, s) in sorted(_cases().items()) if m == modality]
    shapes = set()
    for plan, study in cases:
        for ds in study_datasets(plan, study, metadata_only=True):
            text = " ".join(_strings(ds)).lower()
            assert not [w for w in FINDING_WORDS if w in text], text
            assert plan.disease.display.lower() not in text
            shapes.add(
                (tuple(sorted(e.keyword for e in ds.iterall())), ds.SeriesNumber, ds.InstanceNumber,
                 ds.SeriesDescription, ds.StudyDescription, tuple(ds.ImageType),
                 str(ds.WindowCenter), str(ds.WindowWidth), ds.get("ViewPosition"))
            )  # fmt: skip
    if modality == "CR":
        assert {study.finding for _, study in cases} == {"", "pneumothorax", "consolidation"}
    # one header shape per (series, instance) position, shared by every finding
    positions = {(shape[1], shape[2]) for shape in shapes}
    assert len(shapes) == len(positions)


def test_metadata_only_gives_tiny_pixels() -> None:
    plan, study = _case("CT")
    for ds in study_datasets(plan, study, metadata_only=True):
        assert (ds.Rows, ds.Columns) == (8, 8)
        assert ds.pixel_array.shape == (8, 8)


def test_chest_xray_is_the_cr_datasets_pixels() -> None:
    plan, study = _case("CR", "consolidation")
    (ds,) = study_datasets(plan, study, size=64)
    pixels = chest_xray(plan, study, size=64)
    assert pixels.dtype == np.uint16 and pixels.shape == (64, 64)
    assert np.array_equal(pixels, pydicom.dcmread(io.BytesIO(_bytes(ds))).pixel_array)


def test_chest_xray_refuses_other_modalities() -> None:
    plan, study = _case("CT")
    with pytest.raises(InvalidInput):
        chest_xray(plan, study)


# Learnability --------------------------------------------------------------------------------


def _features(pixels: np.ndarray) -> list[float]:
    """Global statistics only: no position, no shape."""
    a = pixels.astype(np.float64)
    hist = np.histogram(a, bins=16, range=(0, 4096))[0] / a.size
    return [a.mean(), a.std(), *np.percentile(a, [5, 25, 50, 75, 95]), *hist]


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    ranks = np.argsort(np.argsort(scores)) + 1
    pos = labels.sum()
    neg = len(labels) - pos
    return float((ranks[labels == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """L2-regularized logistic regression by gradient descent (no scikit-learn in the venv)."""
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(2000):
        grad = 1 / (1 + np.exp(-(x @ w + b))) - y
        w -= 0.5 * (x.T @ grad / len(y) + 1e-2 * w)
        b -= 0.5 * grad.mean()
    return w, b


def test_global_statistics_are_only_weakly_informative() -> None:
    """500 chest X-rays: a logistic regression on global pixel statistics gets a cross-validated
    AUC between 0.6 (the finding is in the pixels) and 0.8 (but not trivially)."""
    features, labels = [], []
    index = 0
    while len(labels) < 500:
        plan = plan_patient(42, index)
        index += 1
        for study in plan.studies:
            if study.modality == "CR" and len(labels) < 500:
                features.append(_features(chest_xray(plan, study, size=128)))
                labels.append(study.finding != "")
    x, y = np.array(features), np.array(labels, dtype=np.float64)
    assert 0.2 < y.mean() < 0.8
    folds = np.arange(len(y)) % 5
    scores = np.zeros(len(y))
    for fold in range(5):
        train = folds != fold
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-9
        w, b = _logistic((x[train] - mu) / sd, y[train])
        scores[~train] = (x[~train] - mu) / sd @ w + b
    auc = _auc(scores, y)
    assert 0.6 <= auc <= 0.8, auc
