"""Vendor whole-slide files to DICOM VL Whole Slide Microscopy Image objects (wsidicomizer).

Pure of medflow services: a file in, Part 10 files in a folder out. What it makes follows the
VL Whole Slide Microscopy Image IOD (DICOM PS3.3 A.32.8): one instance per pyramid level
(ImageType ``VOLUME``; the base ``ORIGINAL``, the others ``DERIVED ... RESAMPLED``), plus the
slide's ``LABEL``, ``OVERVIEW`` (macro) and ``THUMBNAIL`` images as instances of their own, all
in one series of the SM modality, tiled full (TILED_FULL) with the source's tile size
(the Whole Slide Microscopy Image module, PS3.3 C.8.12.4; multi-frame, PS3.3 C.7.6.6), the
Optical Path (C.8.12.5) and Specimen (C.7.6.22) modules filled. Storage is PS3.4 B (Storage
Service Class, SOP Class 1.2.840.10008.5.1.4.1.1.77.1.6).

Readers: ``opentile`` first (Aperio SVS, Hamamatsu NDPI, Philips TIFF, 3DHistech TIFF,
OME-TIFF), whose JPEG and JPEG 2000 tiles are copied into the frames without re-encoding
(JPEG tables spliced into each frame where a TIFF keeps them apart); then ``tiffslide``
(generic tiled TIFF), CZI, and OpenSlide's formats when ``openslide-bin`` is installed, which
are decoded and encoded again as JPEG. opentile needs libjpeg-turbo's shared library
(Debian ``libturbojpeg0``): :func:`check_turbojpeg` says so when it is missing.

Memory: wsidicom writes each instance tile chunk by tile chunk, reading them from the source
as it goes; a multi-gigabyte slide never needs to be in memory (nor do its levels).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import logging
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset, config
from pydicom.sr.coding import Code
from pydicom.uid import UID, generate_uid

from medflow.core.errors import InvalidInput
from medflow.pathology.errors import ConverterUnavailable, NotASlide
from medflow.pathology.metadata import SlideMetadata

log = logging.getLogger(__name__)

TURBOJPEG_MISSING = (
    "whole-slide conversion needs libjpeg-turbo's shared library (libturbojpeg.so.0), which "
    "opentile loads to read JPEG tiles: install the Debian/Ubuntu package libturbojpeg0 "
    "(scripts/system-deps.sh does), or set TURBOJPEG to the folder holding the library"
)
WSIDICOMIZER_MISSING = (
    "whole-slide conversion needs the Python packages wsidicomizer, wsidicom and opentile "
    "(installed with medflow): reinstall medflow"
)
FORMATS = "Aperio SVS, Hamamatsu NDPI, Philips TIFF, 3DHistech TIFF, OME-TIFF, tiled TIFF"
SM_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
"""VL Whole Slide Microscopy Image Storage (PS3.4 B.5)."""

_READ_ERRORS: tuple[type[BaseException], ...] = (
    NotImplementedError, ValueError, IndexError, KeyError, TypeError, AttributeError,
    AssertionError, OSError, EOFError,
)  # fmt: skip
"""What the third-party readers raise for a file they cannot read; each becomes a medflow
error with a message in words."""

_turbojpeg_checked = False


@dataclass(frozen=True)
class Conversion:
    """The Part 10 files written for one slide (levels, label, overview, thumbnail)."""

    files: list[Path]
    format: str
    """The source format as opentile names it (``svs``, ``ome_tiff``, ...), or ``other``."""
    pixels: int
    """Pixels of the base level (width x height), for throughput figures."""
    seconds: float


def check_turbojpeg() -> None:
    """Raise :class:`ConverterUnavailable` (saying what to install) unless libjpeg-turbo's
    ``libturbojpeg`` can be found and loaded as opentile does it."""
    global _turbojpeg_checked
    if _turbojpeg_checked:
        return
    try:
        from opentile.jpeg import jpeg
    except ImportError:
        raise ConverterUnavailable(WSIDICOMIZER_MISSING) from None
    try:
        ctypes.CDLL(str(jpeg.find_turbojpeg_path()))
    except (FileNotFoundError, OSError):
        raise ConverterUnavailable(TURBOJPEG_MISSING) from None
    _turbojpeg_checked = True


_CONFIG_LOCK = threading.RLock()
"""Serializes :func:`pydicom_config_kept`: a second thread entering while the first is inside
would save the strict settings and restore them last, leaving the process strict."""


def preload() -> None:
    """Import wsidicomizer now (``medflow serve`` calls this before its threads start), so the
    first conversion does not change pydicom's settings under a running STOW-RS or C-STORE even
    for the moment of the import. Does nothing when wsidicomizer is missing."""
    with pydicom_config_kept(), contextlib.suppress(ImportError):
        import wsidicomizer  # noqa: F401


@contextlib.contextmanager
def pydicom_config_kept() -> Iterator[None]:
    """Undo what importing wsidicomizer does to pydicom's process-wide configuration
    (``enforce_valid_values = True`` and ``future_behavior()``): the rest of medflow (STOW-RS,
    C-STORE, ingest) reads and writes DICOM under pydicom's defaults, and must not become
    strict because a slide was converted once in the same process. The imports' deprecation
    warnings (dicomweb_client, which wsidicom imports, names a deprecated pydicom function) are
    not shown."""
    _CONFIG_LOCK.acquire()
    saved = (config.enforce_valid_values, config._use_future, config.INVALID_KEYWORD_BEHAVIOR,
             config.settings._writing_validation_mode,
             config.settings._reading_validation_mode)  # fmt: skip
    pydicom_log = logging.getLogger("pydicom")
    level = pydicom_log.level
    pydicom_log.setLevel(logging.ERROR)  # dicomweb_client's import of a deprecated name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        pydicom_log.setLevel(level)
        (config.enforce_valid_values, config._use_future, config.INVALID_KEYWORD_BEHAVIOR,
         config.settings._writing_validation_mode,
         config.settings._reading_validation_mode) = saved  # fmt: skip
        _CONFIG_LOCK.release()


def _da(value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        raise InvalidInput("a date must be YYYYMMDD or YYYY-MM-DD") from None


def _tm(value: str | None) -> dt.time | None:
    if not value:
        return None
    digits = value.split(".")[0].ljust(6, "0")
    try:
        return dt.time(int(digits[0:2]), int(digits[2:4]), int(digits[4:6]))
    except ValueError:
        raise InvalidInput("a time must be HHMMSS") from None


def wsi_metadata(meta: SlideMetadata) -> Any:
    """``meta`` as wsidicom's ``WsiMetadata``, overriding what the file says: Patient
    (C.7.1.1), General Study (C.7.2.1), General Series, Specimen (C.7.6.22: container, the
    specimen on the slide, its body site and staining) and the label's text."""
    with pydicom_config_kept():
        from wsidicom.conceptcode import SpecimenStainsCode
        from wsidicom.metadata import (
            Label,
            Patient,
            PatientSex,
            Series,
            Slide,
            SlideSample,
            Staining,
            Study,
        )
        from wsidicomizer.metadata import WsiDicomizerMetadata

    sex = PatientSex[meta.patient_sex] if meta.patient_sex in ("M", "F", "O") else None
    patient = Patient(name=meta.patient_name, identifier=meta.patient_id,
                      birth_date=_da(meta.patient_birth_date), sex=sex)  # fmt: skip
    study = Study(
        uid=UID(meta.study_uid) if meta.study_uid else None,
        identifier=meta.study_id,
        date=_da(meta.study_date),
        time=_tm(meta.study_time),
        accession_number=meta.accession_number,
        referring_physician_name=meta.referring_physician_name,
        description=meta.study_description,
    )
    samples = None
    if meta.specimen_id:
        sites = [Code(*meta.body_site)] if meta.body_site else None
        short = meta.specimen_description[:64] if meta.specimen_description else None
        samples = [SlideSample(identifier=meta.specimen_id, anatomical_sites=sites,
                               short_description=short)]  # fmt: skip
    stainings = None
    if meta.stain_codes:
        substances = [SpecimenStainsCode(meaning, value, scheme)
                      for value, scheme, meaning in meta.stain_codes]  # fmt: skip
        stainings = [Staining(substances=substances, description=meta.stain)]
    elif meta.stain:
        stainings = [Staining(substances=meta.stain)]
    slide = Slide(identifier=meta.container_id, stainings=stainings, samples=samples)
    return WsiDicomizerMetadata(
        study=study,
        series=Series(description=meta.series_description),
        patient=patient,
        slide=slide,
        label=Label(text=meta.label_text),
    )


def _post_processor(meta: SlideMetadata) -> Callable[[Dataset, Any], Dataset]:
    """Attributes wsidicom's metadata model has no field for: Issuer of Patient ID, and the
    Slide Label module's (PS3.3 C.8.12.8) Type 2 Barcode Value next to a Label Text."""

    def process(dataset: Dataset, _metadata: Any) -> Dataset:
        if meta.issuer_of_patient_id:
            dataset.IssuerOfPatientID = meta.issuer_of_patient_id
        if "LabelText" in dataset and "BarcodeValue" not in dataset:
            dataset.BarcodeValue = ""
        return dataset

    return process


def _refuse_dicom(path: Path) -> None:
    with path.open("rb") as fp:
        head = fp.read(132)
    if head[128:132] == b"DICM":
        raise NotASlide(
            "the file is already a DICOM file: store it with `medflow ingest` or STOW-RS"
        )


def _format(path: Path) -> str:
    from opentile import OpenTile

    try:
        found = OpenTile.detect_format(path)
    except _READ_ERRORS:
        found = None
    return found.name.lower() if found is not None else "other"


def convert(
    source: Path,
    out_dir: Path,
    *,
    metadata: SlideMetadata,
    workers: int | None = None,
    chunk_size: int | None = None,
) -> Conversion:
    """Convert the slide file ``source`` into DICOM files in ``out_dir`` (created; it should
    be empty), tile by tile. ``metadata`` overrides what the file says. Raises
    :class:`NotASlide` for a file no reader understands, :class:`ConverterUnavailable` when
    libjpeg-turbo or wsidicomizer is missing, ``InvalidInput`` for a slide without a pixel
    size."""
    if not source.is_file():
        raise InvalidInput("the slide is not a file")
    _refuse_dicom(source)
    check_turbojpeg()
    with pydicom_config_kept():
        try:
            from wsidicom.file import OffsetTableType
            from wsidicom.metadata import CallableUidGenerator
            from wsidicomizer import WsiDicomizer
        except ImportError:
            raise ConverterUnavailable(WSIDICOMIZER_MISSING) from None
    wsi_meta = wsi_metadata(metadata)
    started = time.perf_counter()
    uids = CallableUidGenerator(generate_uid)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        opened = WsiDicomizer.open(source, metadata=wsi_meta, uid_generator=uids,
                                   metadata_post_processor=_post_processor(metadata))  # fmt: skip
    except _READ_ERRORS as exc:
        raise _read_error(source, exc) from None
    with opened as wsi:
        size = wsi.size
        try:
            written = wsi.save(out_dir, uids, workers, chunk_size, OffsetTableType.BASIC,
                               include_labels=True, include_overviews=True,
                               include_thumbnails=True)  # fmt: skip
        except _READ_ERRORS as exc:
            raise _read_error(source, exc) from None
    files = sorted(Path(str(p)) for p in written)
    seconds = time.perf_counter() - started
    log.info("converted a %dx%d slide into %d instances in %.2f s", size.width, size.height,
             len(files), seconds)  # fmt: skip
    return Conversion(files=files, format=_format(source), pixels=size.width * size.height,
                      seconds=seconds)  # fmt: skip


def _read_error(source: Path, exc: BaseException) -> Exception:
    if isinstance(exc, NotImplementedError):
        return NotASlide("the file is not a whole-slide image medflow can convert "
                         f"(it reads {FORMATS}; more with openslide-bin installed)")  # fmt: skip
    text = str(exc).replace(str(source), "<file>").replace(source.name, "<file>")
    if "turbojpeg" in text.lower():
        return ConverterUnavailable(TURBOJPEG_MISSING)
    if "pixel spacing" in text.lower() or "mpp" in text.lower():
        return InvalidInput("the slide does not say its pixel size (micrometres per "
                            "pixel), which DICOM whole-slide images require")  # fmt: skip
    return NotASlide("the file cannot be read as a whole-slide image "
                     f"({type(exc).__name__}: {text[:200]})")  # fmt: skip
