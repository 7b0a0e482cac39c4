"""``PathologyService``: whole-slide files converted to DICOM and stored in the archive.

A slide is converted (:mod:`medflow.pathology.convert`: VL Whole Slide Microscopy Image IOD,
DICOM PS3.3 A.32.8; the Whole Slide Microscopy Image module, C.8.12.4) into a temporary folder
under the store's spool directory, then stored file by file through
:meth:`StoreService.store` (the Storage Service Class's semantics, PS3.4 B), so each instance
gets a change feed entry and the DICOM -> FHIR sync makes the ImagingStudy (with its SM series)
and links the pathology DiagnosticReport of the same accession number. The folder is removed
whatever happens. Nothing here holds a slide in memory: the converter writes tile by tile and
the store moves the written files.

The slide's patient and study come from the options, then from the archive's study with the
same Accession Number (so the slide joins the patient's study), then from a sidecar
``<slide>.json`` (:mod:`medflow.pathology.metadata`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pydicom

from medflow.core.errors import AlreadyExists, InvalidInput, MedflowError, StorageFailure
from medflow.dicom.matching import Match, MatchType, parse_attribute
from medflow.pathology.convert import Conversion, convert
from medflow.pathology.metadata import (
    STUDY_RETURN_KEYS,
    SlideMetadata,
    from_study_json,
    read_sidecar,
    resolve,
)
from medflow.store.query import Query
from medflow.store.records import StoreOutcome
from medflow.store.service import StoreService
from medflow.store.spool import SpooledObject

log = logging.getLogger(__name__)

_INCLUDE = tuple(parse_attribute(tag) for tag in STUDY_RETURN_KEYS)


@dataclass(frozen=True)
class ImportedInstance:
    """One stored instance of a converted slide."""

    sop_instance_uid: str
    sop_class_uid: str
    image_type: str
    """The third value of Image Type (0008,0008): VOLUME, LABEL, OVERVIEW or THUMBNAIL."""
    columns: int
    rows: int
    """Total Pixel Matrix Columns/Rows (the image's full size)."""
    frames: int
    transfer_syntax_uid: str
    action: str
    """What the store did: "create", "update" or "none"."""


@dataclass(frozen=True)
class SlideImport:
    """What importing one slide file stored."""

    source: str
    """The slide file's name."""
    format: str
    study_uid: str
    series_uid: str
    joined_existing_study: bool
    """True when an archived study with the accession number received the slide."""
    instances: list[ImportedInstance]
    pixels: int
    seconds: float
    """Conversion time."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def file_sha256(path: Path, chunk: int = 1 << 22) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in 4 MB chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fp:
        while block := fp.read(chunk):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def describe(path: Path) -> dict[str, Any]:
    """The header facts of a converted file that an import reports."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    image_type = list(ds.get("ImageType", []))
    return {
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "sop_class_uid": str(ds.SOPClassUID),
        "study_uid": str(ds.StudyInstanceUID),
        "series_uid": str(ds.SeriesInstanceUID),
        "image_type": str(image_type[2]) if len(image_type) > 2 else "",
        "columns": int(ds.get("TotalPixelMatrixColumns", ds.get("Columns", 0))),
        "rows": int(ds.get("TotalPixelMatrixRows", ds.get("Rows", 0))),
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
        "transfer_syntax_uid": str(ds.file_meta.TransferSyntaxUID),
    }


def _failure(outcome: StoreOutcome) -> MedflowError:
    reason = outcome.failure_reason or 0x0110
    message = f"the archive refused a converted instance (0x{reason:04X}): {outcome.message}"
    if reason == 0x0111:
        return AlreadyExists(message)
    if reason == 0xA700:
        return StorageFailure(message)
    return StorageFailure(message, retryable=False, dicom_reason=reason)


class PathologyService:
    """Imports whole-slide files into the archive (keyword-only arguments)."""

    def __init__(self, *, store: StoreService, workers: int | None = None) -> None:
        self._store = store
        self._workers = workers

    def studies_with_accession(self, *, accession_number: str) -> list[SlideMetadata]:
        """The archive's studies carrying ``accession_number`` (patient and study
        attributes), at most 10."""
        key = Match(parse_attribute("AccessionNumber"), MatchType.SINGLE, value=accession_number)
        result = self._store.search(Query(level="study", matches=(key,), include=_INCLUDE,
                                          limit=10))  # fmt: skip
        return [from_study_json(row) for row in result.rows]

    def resolve_metadata(
        self, *, path: Path, options: SlideMetadata, use_sidecar: bool = True
    ) -> tuple[SlideMetadata, bool]:
        """The slide's metadata (options, then the study of its accession number, then the
        sidecar) and whether an archived study carries the accession number."""
        sidecar = read_sidecar(path) if use_sidecar else SlideMetadata()
        accession = options.accession_number or sidecar.accession_number
        existing = self.studies_with_accession(accession_number=accession) if accession else []
        return resolve(options=options, existing=existing, sidecar=sidecar), bool(existing)

    def import_slide(
        self,
        *,
        path: Path,
        options: SlideMetadata | None = None,
        use_sidecar: bool = True,
        name: str | None = None,
    ) -> SlideImport:
        """Convert the slide file at ``path`` and store every instance (levels, label,
        overview, thumbnail) in one new series. ``name`` is the file's name to report (an
        upload's). Raises ``NotASlide``, ``ConverterUnavailable``, ``InvalidInput`` (metadata
        that contradicts the archive), or the store's error for a refused instance."""
        (options or SlideMetadata()).check()  # before minutes of conversion
        meta, joined = self.resolve_metadata(
            path=path, options=options or SlideMetadata(), use_sidecar=use_sidecar
        )
        spool = self._store.spool_dir
        spool.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="wsi-", dir=spool))
        try:
            conversion = convert(path, work / "dicom", metadata=meta, workers=self._workers)
            instances, study_uid, series_uid = self._store_files(conversion)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        log.info("imported a slide: %d instances, %s", len(instances), conversion.format)
        return SlideImport(source=name or path.name, format=conversion.format,
                           study_uid=study_uid, series_uid=series_uid,
                           joined_existing_study=joined, instances=instances,
                           pixels=conversion.pixels, seconds=conversion.seconds)  # fmt: skip

    def _store_files(self, conversion: Conversion) -> tuple[list[ImportedInstance], str, str]:
        """Store the converted files one at a time (each is consumed); the first refusal
        stops the import with the store's reason, and the instances of the (new) series
        stored before it are deleted, so a failed import leaves nothing half-stored."""
        instances: list[ImportedInstance] = []
        study_uid = series_uid = ""
        for path in conversion.files:
            facts = describe(path)
            study_uid, series_uid = facts.pop("study_uid"), facts.pop("series_uid")
            size, sha256 = file_sha256(path)
            (outcome,) = self._store.store(objects=[SpooledObject(path, size, sha256)])
            if not outcome.ok:
                if instances:  # the series is new (new UIDs): take back its first instances
                    self._store.delete(study_uid=study_uid, series_uid=series_uid)
                raise _failure(outcome)
            instances.append(ImportedInstance(**facts, action=outcome.action or "create"))
        if not instances:
            raise InvalidInput("the conversion wrote no DICOM instance")
        return instances, study_uid, series_uid

    def upload_file(self, *, suffix: str = "") -> Path:
        """A new empty file under the spool directory for an uploaded slide (the caller
        writes it, imports it and removes it)."""
        spool = self._store.spool_dir
        spool.mkdir(parents=True, exist_ok=True)
        safe = "".join(c for c in suffix if c.isalnum() or c == ".")[:20]
        handle, name = tempfile.mkstemp(prefix="wsi-upload-", suffix=safe, dir=spool)
        os.close(handle)
        return Path(name)
