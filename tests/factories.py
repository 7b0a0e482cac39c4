"""Test data built in code: DICOM instances with file meta, multipart bodies."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from itertools import count

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from medflow.dicom.multipart import iter_multipart
from medflow.store.records import StoreOutcome
from medflow.store.service import StoreService
from medflow.store.spool import SpoolWriter

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_numbers = count(1)


def make_instance(
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class_uid: str = CT_IMAGE_STORAGE,
    modality: str = "CT",
    patient_id: str = "PAT-001",
    patient_name: str = "Doe^John",
    patient_birth_date: str = "19700101",
    patient_sex: str = "M",
    study_date: str = "20240115",
    study_time: str = "101500",
    accession_number: str = "ACC-001",
    study_description: str = "CT CHEST",
    series_number: int = 1,
    instance_number: int | None = None,
    rows: int = 16,
    columns: int = 16,
    frames: int = 1,
    seed: int = 0,
    **extra: object,
) -> Dataset:
    """A small valid image instance with file meta (explicit VR little endian)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class_uid)
    sop_uid = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = patient_birth_date
    ds.PatientSex = patient_sex
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession_number
    ds.ReferringPhysicianName = "Welby^Marcus"
    ds.StudyID = "1"
    ds.StudyDescription = study_description
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number if instance_number is not None else next(_numbers)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = 1024
    ds.WindowWidth = 2048
    if frames > 1:
        ds.NumberOfFrames = frames
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 4096, size=(frames, rows, columns), dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    for key, value in extra.items():
        setattr(ds, key, value)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@dataclass
class Multipart:
    body: bytes
    content_type: str
    boundary: str = "medflow-test-boundary"
    parts: list[bytes] = field(default_factory=list)


def multipart(
    parts: list[bytes],
    *,
    part_type: str = "application/dicom",
    boundary: str = "medflow-test-boundary",
) -> Multipart:
    body = b"".join(iter_multipart([({"Content-Type": part_type}, [p]) for p in parts], boundary))
    ctype = f'multipart/related; type="{part_type}"; boundary={boundary}'
    return Multipart(body, ctype, boundary, parts)


def store_datasets(store: StoreService, datasets: list[Dataset]) -> list[StoreOutcome]:
    """Store datasets through the store service (the path STOW-RS and ingest use)."""
    objects = []
    for ds in datasets:
        writer = SpoolWriter(store.spool_dir)
        writer.write(to_bytes(ds))
        objects.append(writer.finish(fsync=False))
    return store.store(objects=objects)
