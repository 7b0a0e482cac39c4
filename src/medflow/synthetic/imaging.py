"""The synthetic hospital's images: DICOM instances rendered from a :class:`StudyPlan`.

Every instance is a complete object of its IOD, built with pydicom (no hand-written encoding):
CR Image Storage for chest X-rays, CT Image Storage, MR Image Storage and Digital Mammography
X-Ray Image Storage - For Presentation. Headers say what a real record would say and nothing of
the finding: the same descriptions, series and attributes whatever the plan's ground truth.

The pixels carry a learnable but not trivial signal: anatomy-like backgrounds whose size, position,
exposure and contrast vary per image, noise, and findings (spiculated or smooth lesions,
pneumothorax, consolidation) of random size, position and contrast. Everything is deterministic:
UIDs come from :func:`medflow.synthetic.plan.uid`, pixels from numpy generators seeded by
(seed, patient index, study, series, instance).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from medflow.core.errors import InvalidInput
from medflow.synthetic.plan import PatientPlan, StudyPlan, uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
MG_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
SOP_CLASSES = {"CR": CR_IMAGE_STORAGE, "CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE,
               "MG": MG_FOR_PRESENTATION}  # fmt: skip
MANUFACTURER = "medflow synthetic"
INSTITUTION = "Medflow Synthetic Hospital"
DEFAULT_SIZE = {"CR": 256, "CT": 256, "MR": 256, "MG": 256}
FIELD_MM = {"CR": 430.0, "CT": 360.0, "MR": 180.0, "MG": 240.0}
"""Field of view: pixel spacing is this over the matrix size."""
METADATA_ONLY_SIZE = 8
_REFERRING = ("Welby^Marcus", "Quinn^Michaela", "Kildare^James", "Grey^Meredith", "House^Gregory")
_MAX = 4095.0  # 12 bits stored

Array = NDArray[np.floating[Any]]


@dataclass(frozen=True)
class _Series:
    description: str
    window: tuple[float, float]
    """WindowCenter, WindowWidth (stored values for CR/MG, HU for CT)."""
    extra: tuple[tuple[str, object], ...] = ()


_SERIES: dict[str, tuple[_Series, ...]] = {
    "CR": (_Series("CHEST PA", (2048, 4096)),),
    "CT": (_Series("AXIAL SOFT TISSUE", (40, 400), (("ConvolutionKernel", "STANDARD"),)),
           _Series("AXIAL LUNG", (-600, 1500), (("ConvolutionKernel", "LUNG"),))),
    "MR": (_Series("AX T1 SE", (1400, 2800), (("RepetitionTime", 550.0), ("EchoTime", 12.0),
                                              ("EchoTrainLength", 1), ("SequenceName", "se2d1"))),
           _Series("AX T2 TSE", (1400, 2800), (("RepetitionTime", 4200.0), ("EchoTime", 95.0),
                                               ("EchoTrainLength", 12),
                                               ("SequenceName", "tse2d1_12")))),
    "MG": (_Series("MAMMOGRAPHY", (2048, 4096)),),
}  # fmt: skip
_MG_VIEWS = (("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO"))
_MG_VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
}
_MG_ORIENTATION = {("R", "CC"): "P\\L", ("L", "CC"): "A\\R", ("R", "MLO"): "P\\F",
                   ("L", "MLO"): "A\\F"}  # fmt: skip


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def study_datasets(
    plan: PatientPlan, study: StudyPlan, *, size: int | None = None, metadata_only: bool = False
) -> Iterator[Dataset]:
    """Every instance of ``study`` (``study.series`` x ``study.instances``), each a dataset with
    file meta (explicit VR little endian), ready for ``save_as(..., enforce_file_format=True)``.

    ``size`` is the matrix (rows = columns; default per modality); ``metadata_only`` gives 8x8
    noise matrices with otherwise identical headers (benchmarks of the metadata path)."""
    if study.modality not in SOP_CLASSES:
        raise InvalidInput(f"no synthetic images for modality {study.modality!r}")
    n = METADATA_ONLY_SIZE if metadata_only else size or DEFAULT_SIZE[study.modality]
    for series in range(1, study.series + 1):
        for instance in range(1, study.instances + 1):
            ds = _header(plan, study, series, instance, n)
            if metadata_only:
                pixels = _rng(plan, study, series, instance).integers(0, 4096, (n, n))
                ds.PixelData = pixels.astype(np.uint16).tobytes()
            else:
                ds.PixelData = _pixels(plan, study, series, instance, n).tobytes()
            yield ds


def chest_xray(plan: PatientPlan, study: StudyPlan, *, size: int = 256) -> NDArray[np.uint16]:
    """The pixels of a CR study's image alone (rows x columns, uint16, 12 bits stored): exactly
    what :func:`study_datasets` puts in its PixelData, without building the dataset."""
    if study.modality != "CR":
        raise InvalidInput(f"study {study.accession} is {study.modality}, not a chest X-ray")
    return _pixels(plan, study, 1, 1, size)


# --------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------


def _header(plan: PatientPlan, study: StudyPlan, series: int, instance: int, n: int) -> Dataset:
    ds = Dataset()
    sop_class = SOP_CLASSES[study.modality]
    sop_uid = uid(plan.seed, "instance", study.study_uid, series, instance)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    _patient_study(ds, plan, study)
    _series_equipment(ds, plan, study, series)
    _image(ds, study, series, instance, n)
    {"CR": _cr, "CT": _ct, "MR": _mr, "MG": _mg}[study.modality](ds, plan, study, instance, n)
    return ds


def _study_time(plan: PatientPlan, study: StudyPlan) -> datetime:
    digest = hashlib.sha256(repr((plan.seed, plan.index, study.study_uid)).encode()).digest()
    seconds = 7 * 3600 + int.from_bytes(digest[:4], "big") % (11 * 3600)
    return datetime.combine(study.day, time()) + timedelta(seconds=seconds)


def _patient_study(ds: Dataset, plan: PatientPlan, study: StudyPlan) -> None:
    ds.PatientName = f"{plan.family}^{plan.given}"
    ds.PatientID = plan.mrn
    ds.IssuerOfPatientID = "MEDFLOW"
    ds.PatientBirthDate = plan.birth_date.strftime("%Y%m%d")
    ds.PatientSex = plan.sex
    start = _study_time(plan, study)
    ds.StudyInstanceUID = study.study_uid
    ds.StudyDate = study.day.strftime("%Y%m%d")
    ds.StudyTime = start.strftime("%H%M%S")
    ds.AccessionNumber = study.accession
    ds.StudyDescription = study.description
    ds.ReferringPhysicianName = _REFERRING[int(study.accession[-1]) % len(_REFERRING)]
    ds.StudyID = study.accession[-8:]


def _series_equipment(ds: Dataset, plan: PatientPlan, study: StudyPlan, series: int) -> None:
    info = _SERIES[study.modality][(series - 1) % len(_SERIES[study.modality])]
    ds.Modality = study.modality
    ds.SeriesInstanceUID = uid(plan.seed, "series", study.study_uid, series)
    ds.SeriesNumber = series
    ds.SeriesDescription = info.description
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.BodyPartExamined = study.body_part
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = f"synthetic {study.modality}"
    ds.InstitutionName = INSTITUTION
    ds.StationName = f"SYN{study.modality}01"
    ds.SoftwareVersions = "1"
    if study.modality in ("CT", "MR"):
        ds.PatientPosition = "HFS" if study.modality == "CT" else "FFS"
        ds.FrameOfReferenceUID = uid(plan.seed, "frame", study.study_uid)
        ds.PositionReferenceIndicator = ""
    if study.modality == "MR":  # a knee: paired, so the series says which one
        ds.Laterality = _case(plan, study).choice(["R", "L"])
    for keyword, value in info.extra:
        setattr(ds, keyword, value)


def _image(ds: Dataset, study: StudyPlan, series: int, instance: int, n: int) -> None:
    when = _study_time_of(ds) + timedelta(seconds=60 * series + 2 * instance)
    ds.InstanceNumber = instance
    ds.ContentDate = when.strftime("%Y%m%d")
    ds.ContentTime = when.strftime("%H%M%S")
    ds.AcquisitionDate = ds.ContentDate
    ds.AcquisitionTime = ds.ContentTime
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = n
    ds.Columns = n
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    info = _SERIES[study.modality][(series - 1) % len(_SERIES[study.modality])]
    ds.WindowCenter, ds.WindowWidth = info.window
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"


def _study_time_of(ds: Dataset) -> datetime:
    return datetime.strptime(ds.StudyDate + ds.StudyTime, "%Y%m%d%H%M%S")


def _cr(ds: Dataset, plan: PatientPlan, study: StudyPlan, instance: int, n: int) -> None:
    spacing = FIELD_MM["CR"] / n
    ds.ViewPosition = "PA"
    ds.PatientOrientation = "L\\F"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.KVP = 120
    ds.ExposureTime = 10
    ds.XRayTubeCurrent = 250
    ds.PresentationLUTShape = "IDENTITY"


def _slice(ds: Dataset, modality: str, instance: int, n: int, thickness: float) -> None:
    spacing = FIELD_MM[modality] / n
    z = -(instance - 1) * thickness if modality == "CT" else (instance - 1) * thickness
    ds.ImagePositionPatient = [-FIELD_MM[modality] / 2, -FIELD_MM[modality] / 2, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [spacing, spacing]
    ds.SliceThickness = thickness
    ds.SpacingBetweenSlices = thickness
    ds.SliceLocation = z
    ds.AcquisitionNumber = 1


def _ct(ds: Dataset, plan: PatientPlan, study: StudyPlan, instance: int, n: int) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    _slice(ds, "CT", instance, n, 5.0)
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    ds.KVP = 120
    ds.XRayTubeCurrent = 200
    ds.ExposureTime = 500
    ds.DataCollectionDiameter = 500
    ds.ReconstructionDiameter = FIELD_MM["CT"]
    ds.GantryDetectorTilt = 0
    ds.TableHeight = 150
    ds.RotationDirection = "CW"
    ds.ContrastBolusAgent = "Iohexol"


def _mr(ds: Dataset, plan: PatientPlan, study: StudyPlan, instance: int, n: int) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    _slice(ds, "MR", instance, n, 4.0)
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.MagneticFieldStrength = 1.5
    ds.ImagingFrequency = 63.87
    ds.ImagedNucleus = "1H"
    ds.NumberOfAverages = 1
    ds.FlipAngle = 90
    ds.ReceiveCoilName = "KNEE"


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "SCT"
    item.CodeMeaning = meaning
    return item


def _mg(ds: Dataset, plan: PatientPlan, study: StudyPlan, instance: int, n: int) -> None:
    side, view = _MG_VIEWS[(instance - 1) % len(_MG_VIEWS)]
    spacing = FIELD_MM["MG"] / n
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageLaterality = side
    ds.ViewPosition = view
    ds.PatientOrientation = _MG_ORIENTATION[(side, view)]
    ds.AnatomicRegionSequence = Sequence([_code("76752008", "Breast")])
    view_item = _code(*_MG_VIEW_CODES[view])
    view_item.ViewModifierCodeSequence = Sequence()
    ds.ViewCodeSequence = Sequence([view_item])
    ds.OrganExposed = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "nominal magnification"
    ds.EstimatedRadiographicMagnificationFactor = 1.03125
    ds.DistanceSourceToDetector = 660
    ds.DistanceSourceToPatient = 640
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.KVP = 28
    ds.BodyPartThickness = 50
    ds.CompressionForce = 100
    ds.AcquisitionContextSequence = Sequence()


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------


def _generator(*parts: object) -> np.random.Generator:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def _rng(plan: PatientPlan, study: StudyPlan, series: int, instance: int) -> np.random.Generator:
    """The generator of one image (noise, exposure)."""
    return _generator(plan.seed, plan.index, study.study_uid, series, instance)


def _case(plan: PatientPlan, study: StudyPlan) -> np.random.Generator:
    """The generator of the study's anatomy and finding (shared by all its images)."""
    return _generator(plan.seed, plan.index, study.study_uid, "case")


def _pixels(
    plan: PatientPlan, study: StudyPlan, series: int, instance: int, n: int
) -> NDArray[np.uint16]:
    render: Callable[[np.random.Generator, np.random.Generator, str, int, int, int, int], Array]
    render = {"CR": _chest, "CT": _ct_slice, "MR": _knee, "MG": _breast}[study.modality]
    image = render(
        _case(plan, study), _rng(plan, study, series, instance), study.finding, series, instance,
        study.instances, n,
    )  # fmt: skip
    pixels: NDArray[np.uint16] = np.clip(np.rint(image), 0, _MAX).astype(np.uint16)
    return pixels


def _grid(n: int) -> tuple[Array, Array]:
    """Coordinates in [-1, 1]: x grows to the right (columns), y downwards (rows)."""
    axis = (np.arange(n, dtype=np.float32) + 0.5) / n * 2 - 1
    return axis[None, :].repeat(n, 0), axis[:, None].repeat(n, 1)


def _soft(z: Array | float, width: float) -> Array:
    """A smooth step: 0 for z << 0, 1 for z >> 0."""
    return np.asarray(0.5 * (1 + np.tanh(np.asarray(z) / max(width, 1e-6))), dtype=np.float32)


def _ellipse(x: Array, y: Array, cx: float, cy: float, ax: float, ay: float) -> Array:
    """1 - normalized elliptical radius: > 0 inside."""
    return np.asarray(1 - np.hypot((x - cx) / ax, (y - cy) / ay), dtype=np.float32)


def _smooth_noise(rng: np.random.Generator, n: int, scale: float) -> Array:
    """Unit-variance Gaussian noise low-passed to a correlation length of ``scale`` (in [-1, 1]
    units, so the texture looks the same at every matrix size)."""
    white = rng.standard_normal((n, n))
    sigma = scale * n / 2
    fy = np.fft.fftfreq(n)[:, None]
    fx = np.fft.rfftfreq(n)[None, :]
    kernel = np.exp(-2 * (np.pi * sigma) ** 2 * (fx**2 + fy**2))
    out = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(n, n))
    return np.asarray(out / (out.std() + 1e-12), dtype=np.float32)


def _blob(
    x: Array, y: Array, center: tuple[float, float], radius: float,
    rng: np.random.Generator, *, spiculated: bool,
) -> Array:  # fmt: skip
    """A lesion mask in [0, 1]: smooth and round, or lobulated with spicules."""
    dx, dy = x - center[0], y - center[1]
    theta, dist = np.arctan2(dy, dx), np.hypot(dx, dy)
    boundary = np.full_like(dist, radius)
    if spiculated:
        for k in rng.integers(3, 8, size=3):
            boundary += radius * rng.uniform(0.08, 0.2) * np.sin(k * theta + rng.uniform(0, 6.3))
        spikes = rng.integers(7, 14)
        boundary += radius * rng.uniform(0.6, 1.1) * np.cos(spikes * theta / 2) ** 16
        return _soft(boundary - dist, radius * 0.06)
    return _soft(boundary - dist, radius * 0.15)


def _texture(mask: Array, rng: np.random.Generator, n: int, *, heterogeneous: bool) -> Array:
    if not heterogeneous:
        return mask
    return np.asarray(mask * (1 + 0.45 * _smooth_noise(rng, n, 0.015)), dtype=np.float32)


def _expose(
    image: Array, img: np.random.Generator, *, gain: float, offset: float, gamma: float
) -> Array:
    """Random exposure (gain, offset, a gamma) and quantum plus electronic noise."""
    scaled = np.clip(image, 0, None) / _MAX
    scaled = scaled ** img.uniform(1 - gamma, 1 + gamma) * _MAX
    out = scaled * img.uniform(1 - gain, 1 + gain) + img.normal(0, offset)
    noise = img.standard_normal(out.shape) * (np.sqrt(np.clip(out, 1, None)) * 0.9 + 12)
    return np.asarray(out + noise, dtype=np.float32)


# Chest X-ray ---------------------------------------------------------------------------------


def _chest(
    case: np.random.Generator, img: np.random.Generator, finding: str,
    series: int, instance: int, count: int, n: int,
) -> Array:  # fmt: skip
    x, y = _grid(n)
    tissue = case.uniform(1500, 2100)
    body = _soft(_ellipse(x, y, case.normal(0, 0.03), 0.12, case.uniform(0.8, 0.95), 1.05), 0.03)
    image = 250 + (tissue - 250) * body
    lungs = []
    for side in (-1, 1):
        cx = side * case.uniform(0.33, 0.42)
        lung = _ellipse(x, y, cx, case.uniform(-0.1, 0.0), case.uniform(0.23, 0.3),
                        case.uniform(0.5, 0.62))  # fmt: skip
        lungs.append((cx, _soft(lung, 0.04)))
    lung_mask = np.clip(lungs[0][1] + lungs[1][1], 0, 1)
    image -= case.uniform(700, 1000) * lung_mask
    heart = _soft(_ellipse(x, y, case.uniform(0.08, 0.18), case.uniform(0.25, 0.4),
                           case.uniform(0.22, 0.32), case.uniform(0.2, 0.27)), 0.05)  # fmt: skip
    mediastinum = _soft(0.1 - np.abs(x - 0.02), 0.03) * _soft(0.6 - y, 0.05)
    image += 450 * np.clip(heart + mediastinum, 0, 1) * (0.5 + 0.5 * lung_mask)
    phase, pitch = case.uniform(0, 6.3), case.uniform(5.5, 7.0)
    ribs = np.clip(np.sin(2 * np.pi * pitch * (y + 0.35 * x**2) + phase), 0, None) ** 3
    image += case.uniform(120, 220) * ribs * body
    markings = lung_mask * (case.uniform(40, 90) * _smooth_noise(case, n, 0.02))
    image += markings
    image += _chest_finding(case, finding, x, y, lungs, markings, n)
    # exposure variation tuned so global statistics alone are weakly informative (AUC ~0.7)
    return _expose(image, img, gain=0.13, offset=110, gamma=0.1)


def _chest_finding(
    case: np.random.Generator, finding: str, x: Array, y: Array,
    lungs: list[tuple[float, Array]], markings: Array, n: int,
) -> Array:  # fmt: skip
    zero = np.zeros_like(x)
    if not finding:
        return zero
    side = int(case.integers(0, 2))
    cx, mask = lungs[side]
    if finding == "pneumothorax":
        depth = case.uniform(0.1, 0.3)
        collapsed = _ellipse(x, y, cx - np.sign(cx) * depth * 0.5, case.uniform(0.0, 0.15),
                             0.27 - depth * 0.5, 0.56 - depth)  # fmt: skip
        beyond = mask * _soft(-collapsed, 0.01) * _soft(0.2 - y, 0.1)
        line = mask * np.exp(-((collapsed / 0.012) ** 2)) * _soft(0.2 - y, 0.1)
        out: Array = beyond * (-case.uniform(300, 600) - markings) + case.uniform(80, 200) * line
        return out
    if finding == "consolidation":
        center = (cx + case.uniform(-0.1, 0.1), case.uniform(0.0, 0.35))
        region = _ellipse(x, y, *center, case.uniform(0.15, 0.3), case.uniform(0.15, 0.35))
        patchy = _soft(region * 3 + 0.6 * _smooth_noise(case, n, 0.04) - 0.3, 0.15)
        return patchy * mask * case.uniform(400, 900)
    center = (cx + case.uniform(-0.12, 0.12), case.uniform(-0.3, 0.3))
    malignant = finding == "lesion-malignant"
    blob = _blob(x, y, center, case.uniform(0.04, 0.1), case, spiculated=malignant)
    return _texture(blob, case, n, heterogeneous=malignant) * case.uniform(250, 550)


# CT, MR, mammography ------------------------------------------------------------------------


def _lesion_3d(
    case: np.random.Generator, finding: str, x: Array, y: Array,
    center: tuple[float, float], radius: float, depth: float, n: int,
) -> Array:  # fmt: skip
    """The finding's mask on a slice ``depth`` radii away from its center (0: none)."""
    if not finding or abs(depth) >= 1:
        return np.zeros_like(x)
    r = radius * float(np.sqrt(1 - depth**2))
    malignant = finding != "lesion-benign"
    blob = _blob(x, y, center, r, case, spiculated=malignant)
    return _texture(blob, case, n, heterogeneous=malignant)


def _slab(case: np.random.Generator, count: int) -> tuple[float, float]:
    """Where along the stack the finding sits (slice index, half-extent in slices)."""
    return case.uniform(0.3, 0.7) * (count - 1), case.uniform(1.5, 4.0)


_ANATOMY: dict[tuple[object, ...], tuple[tuple[Array, ...], dict[str, Any]]] = {}


def _anatomy(
    case: np.random.Generator, key: str, n: int,
    build: Callable[[np.random.Generator, Array, Array], tuple[Array, ...]],
) -> tuple[Array, ...]:  # fmt: skip
    """The slice-independent arrays of a study's anatomy, built once per study: every slice
    seeds ``case`` alike, so the arrays and the generator's state after them are the same for
    each; a cache hit returns the arrays and moves ``case`` to that state (bytes unchanged)."""
    start = case.bit_generator.state["state"]
    cache_key = (key, n, start["state"], start["inc"])
    hit = _ANATOMY.get(cache_key)
    if hit is not None:
        case.bit_generator.state = hit[1]
        return hit[0]
    arrays = build(case, *_grid(n))
    for array in arrays:  # shared by every slice: an in-place change would corrupt the next
        array.flags.writeable = False
    if len(_ANATOMY) >= 8:
        _ANATOMY.pop(next(iter(_ANATOMY)))
    _ANATOMY[cache_key] = (arrays, dict(case.bit_generator.state))
    return arrays


def _chest_ct(case: np.random.Generator, x: Array, y: Array) -> tuple[Array, ...]:
    body = _ellipse(x, y, 0, 0.05, case.uniform(0.8, 0.9), case.uniform(0.55, 0.65))
    hu = -1000 + 1040 * _soft(body, 0.01) - 140 * _soft(body, 0.01) * _soft(0.08 - body, 0.01)
    vessels = np.clip(_smooth_noise(case, x.shape[0], 0.01), 1.5, None) - 1.5
    spine = _soft(_ellipse(x, y, 0, 0.45, 0.1, 0.1), 0.02)
    return hu, vessels, spine


def _ct_slice(
    case: np.random.Generator, img: np.random.Generator, finding: str,
    series: int, instance: int, count: int, n: int,
) -> Array:  # fmt: skip
    x, y = _grid(n)
    z = (instance - 1) / max(count - 1, 1)  # 0 apex .. 1 base
    hu, vessels, spine = _anatomy(case, "ct", n, _chest_ct)
    lung_scale = 0.6 + 0.4 * np.sin(np.pi * (0.2 + 0.7 * z))
    lungs = np.zeros_like(x)
    for side in (-1, 1):
        lungs += _soft(_ellipse(x, y, side * 0.38, 0.0, 0.3 * lung_scale, 0.42 * lung_scale), 0.02)
    lungs = np.clip(lungs, 0, 1)
    hu = hu + lungs * (-(hu + 860) + 300 * vessels)
    hu += spine * 700
    center, half = _slab(case, count)
    contrast = case.uniform(700, 900)
    lesion = _lesion_3d(case, finding, x, y, (case.uniform(0.25, 0.5) * case.choice([-1, 1]),
                        case.uniform(-0.2, 0.2)), case.uniform(0.04, 0.1),
                        (instance - 1 - center) / half, n)  # fmt: skip
    hu += lesion * lungs * contrast
    sigma = 12 if series == 1 else 35
    return hu + 1024 + img.normal(0, sigma, hu.shape)


def _knee_anatomy(case: np.random.Generator, x: Array, y: Array) -> tuple[Array, ...]:
    limb = _soft(_ellipse(x, y, 0, 0, case.uniform(0.7, 0.85), case.uniform(0.65, 0.8)), 0.02)
    muscle = _soft(_ellipse(x, y, 0, 0, 0.62, 0.58), 0.03)
    bone = _soft(_ellipse(x, y, case.normal(0, 0.03), 0.05, 0.35, 0.3), 0.01)
    marrow = _soft(_ellipse(x, y, 0, 0.05, 0.3, 0.25), 0.01)
    return limb, muscle, bone, marrow, limb * 60 * _smooth_noise(case, x.shape[0], 0.02)


def _knee(
    case: np.random.Generator, img: np.random.Generator, finding: str,
    series: int, instance: int, count: int, n: int,
) -> Array:  # fmt: skip
    x, y = _grid(n)
    t2 = series == 2
    limb, muscle, bone, marrow, texture = _anatomy(case, "knee", n, _knee_anatomy)
    fat, mus, mar = (1800, 900, 1900) if not t2 else (1500, 600, 700)
    image = limb * fat + muscle * (mus - fat) + bone * (100 - mus) + marrow * (mar - 100)
    image += texture
    center, half = _slab(case, count)
    contrast = case.uniform(0.6, 1.0)
    lesion = _lesion_3d(case, finding, x, y, (case.uniform(-0.12, 0.12), case.uniform(-0.05, 0.15)),
                        case.uniform(0.08, 0.16), (instance - 1 - center) / half, n)  # fmt: skip
    image += lesion * (1500 if t2 else -1000) * contrast
    return image * img.uniform(0.9, 1.1) + img.normal(0, 25, image.shape)


def _breast(
    case: np.random.Generator, img: np.random.Generator, finding: str,
    series: int, instance: int, count: int, n: int,
) -> Array:  # fmt: skip
    side, view = _MG_VIEWS[(instance - 1) % len(_MG_VIEWS)]
    x, y = _grid(n)
    if side == "L":  # chest wall on the left of a left breast's image, on the right of a right's
        x = -x
    wall = 1.0
    extent = case.uniform(1.2, 1.6)
    height = case.uniform(0.7, 0.85) if view == "CC" else case.uniform(0.9, 1.0)
    breast = _soft(_ellipse(x, y, wall, 0.0 if view == "CC" else 0.1, extent, height), 0.02)
    density = case.uniform(0.2, 0.6)
    glands = _soft(_smooth_noise(case, n, 0.03) + 1.5 * (x - wall + extent * 0.5) - 1, 0.5)
    image = 200 + breast * (1400 + 900 * density * glands)
    diseased = case.choice(["R", "L"])
    center, contrast = (case.uniform(-0.1, 0.5), case.uniform(-0.3, 0.3)), case.uniform(350, 700)
    lesion = _lesion_3d(case, finding if side == diseased else "", x, y, center,
                        case.uniform(0.05, 0.12), 0.0, n)  # fmt: skip
    image += lesion * breast * contrast
    return _expose(image, img, gain=0.1, offset=60, gamma=0.1)
