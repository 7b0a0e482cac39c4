"""Label documents for the labels tests, built in code: what medflow writes (highdicom) and
real-world quirks of commercial PACS (pydicom by hand or highdicom output altered).

Each ``*_kos``/``*_sr``/``gsps`` function takes the headers of archived (or synthetic) images
of one study and returns a Part 10 ready dataset of a new series in that study."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medflow.labels import builders
from medflow.labels.readers import GSPS, KOS
from medflow.labels.schemas import FOR_TEACHING, Code, Roi

__all__ = ["KOS", "PNEUMOTHORAX", "Roi"]

PNEUMOTHORAX = Code(scheme="SCT", value="36118008", meaning="Pneumothorax")
OF_INTEREST = ("DCM", "113000")


def image(
    *,
    study: str,
    series: str | None = None,
    patient: str = "P1",
    size: int = 16,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.1",
) -> Dataset:
    """A small CR image (or ``sop_class``) with pixels."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = patient, "TEST^P", "", "O"
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = (
        "20260101",
        "",
        "",
        "",
    )
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber, ds.Modality = "1", 1, 1, "CR"
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((size, size), np.uint16).tobytes()
    ds.PatientOrientation = ["L", "F"]
    return ds


def _sop_ref(img: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = img.SOPClassUID
    ref.ReferencedSOPInstanceUID = img.SOPInstanceUID
    return ref


def _part10(ds: Dataset) -> Dataset:
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def highdicom_kos(images: Sequence[Dataset], concept: Code = PNEUMOTHORAX) -> Dataset:
    return _part10(
        builders.build_kos(
            evidence=images, title=FOR_TEACHING, concept=concept, description="pneumothorax"
        )
    )


def kos_without_template(images: Sequence[Dataset]) -> Dataset:
    """Quirk: no Content Template Sequence (highdicom's from_dataset refuses it)."""
    ds = highdicom_kos(images)
    del ds.ContentTemplateSequence
    return ds


def kos_evidence_only(images: Sequence[Dataset]) -> Dataset:
    """Quirk: no IMAGE content items; the selection is only in the evidence sequence."""
    ds = highdicom_kos(images)
    ds.ContentSequence = DicomSequence(
        [i for i in ds.ContentSequence if i.ValueType not in ("IMAGE", "COMPOSITE")]
    )
    return ds


def _code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def vendor_kos(
    images: Sequence[Dataset],
    *,
    title: tuple[str, str, str] = ("113000", "DCM", "KEY IMAGES"),
    with_evidence: bool = True,
) -> Dataset:
    """Quirk: hand-built like a commercial PACS's "key images": vendor wording of the title's
    meaning, no template, no title modifier, the finding only as Key Object Description text,
    IMAGE items without a concept name."""
    first = images[0]
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = KOS, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, generate_uid()
    ds.PatientID, ds.PatientName = first.PatientID, first.get("PatientName", "")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "KO", 77, 1
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = DicomSequence([_code_item(*title)])
    text = Dataset()
    text.RelationshipType, text.ValueType, text.TextValue = "CONTAINS", "TEXT", "PNX"
    text.ConceptNameCodeSequence = DicomSequence([_code_item("113012", "DCM", "Description")])
    items = [text]
    for img in images:
        ref = _sop_ref(img)
        item = Dataset()
        item.RelationshipType, item.ValueType = "CONTAINS", "IMAGE"
        item.ReferencedSOPSequence = DicomSequence([ref])
        items.append(item)
    ds.ContentSequence = DicomSequence(items)
    ds.CurrentRequestedProcedureEvidenceSequence = DicomSequence(
        [_evidence(images)] if with_evidence else []
    )
    return _part10(ds)


def _evidence(images: Sequence[Dataset]) -> Dataset:
    study = Dataset()
    study.StudyInstanceUID = images[0].StudyInstanceUID
    series: dict[str, list[Dataset]] = {}
    for img in images:
        ref = _sop_ref(img)
        series.setdefault(str(img.SeriesInstanceUID), []).append(ref)
    items = []
    for uid, refs in series.items():
        item = Dataset()
        item.SeriesInstanceUID, item.ReferencedSOPSequence = uid, DicomSequence(refs)
        items.append(item)
    study.ReferencedSeriesSequence = DicomSequence(items)
    return study


def kos_without_title(images: Sequence[Dataset]) -> Dataset:
    """Unreadable: the root has no Concept Name Code Sequence."""
    ds = vendor_kos(images)
    del ds.ConceptNameCodeSequence
    return ds


def kos_referencing_nothing(images: Sequence[Dataset]) -> Dataset:
    """Unreadable: no IMAGE items and an empty evidence sequence."""
    ds = vendor_kos(images, with_evidence=False)
    ds.ContentSequence = DicomSequence([ds.ContentSequence[0]])
    return ds


def highdicom_sr(images: Sequence[Dataset], roi: Roi | None = None) -> Dataset:
    return _part10(
        builders.build_sr(evidence=images, concept=PNEUMOTHORAX, label="pneumothorax", roi=roi)
    )


def sr_without_template(images: Sequence[Dataset], roi: Roi) -> Dataset:
    ds = highdicom_sr(images, roi)
    del ds.ContentTemplateSequence
    return ds


def seg(source: Dataset) -> Dataset:
    mask = np.zeros((int(source.Rows), int(source.Columns)), np.uint8)
    mask[2:5, 3:7] = 1
    return _part10(
        builders.build_seg(source=source, mask=mask, concept=PNEUMOTHORAX, label="pneumothorax")
    )


def gsps(images: Sequence[Dataset], *, text: str = "Pneumothorax", units: str = "PIXEL") -> Dataset:
    """A GSPS with one annotation: a closed POLYLINE rectangle and a text object."""
    first = images[0]
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = GSPS, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = first.StudyInstanceUID, generate_uid()
    ds.PatientID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = first.PatientID, "PR", 78, 1
    refs = []
    for img in images:
        ref = _sop_ref(img)
        refs.append(ref)
    graphic = Dataset()
    graphic.GraphicAnnotationUnits, graphic.GraphicDimensions = units, 2
    graphic.GraphicType, graphic.NumberOfGraphicPoints = "POLYLINE", 5
    graphic.GraphicData = [2.0, 3.0, 9.0, 3.0, 9.0, 8.0, 2.0, 8.0, 2.0, 3.0]
    graphic.GraphicFilled = "N"
    note = Dataset()
    note.UnformattedTextValue, note.AnchorPointAnnotationUnits = text, "PIXEL"
    annotation = Dataset()
    annotation.GraphicLayer = "FINDINGS"
    annotation.ReferencedImageSequence = DicomSequence(refs)
    annotation.GraphicObjectSequence = DicomSequence([graphic])
    annotation.TextObjectSequence = DicomSequence([note])
    ds.GraphicAnnotationSequence = DicomSequence([annotation])
    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ReferencedImageSequence = DicomSequence(refs)
    ds.ReferencedSeriesSequence = DicomSequence([series])
    return _part10(ds)
