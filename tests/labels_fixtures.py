"""Label documents for the labels tests, built in code: what medflow writes (highdicom) and
real-world quirks of commercial PACS (pydicom by hand or highdicom output altered).

Each ``*_kos``/``*_sr``/``gsps`` function takes the headers of archived (or synthetic) images
of one study and returns a Part 10 ready dataset of a new series in that study."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medflow.labels import builders
from medflow.labels.readers import GSPS, KOS
from medflow.labels.schemas import FOR_TEACHING, Code, Roi

__all__ = ["KOS", "PNEUMOTHORAX", "Roi"]

PNEUMOTHORAX = Code(scheme="SCT", value="36118008", meaning="Pneumothorax")
CONSOLIDATION = Code(scheme="SCT", value="95436008", meaning="Lung consolidation")
OF_INTEREST = ("DCM", "113000")
MULTIFRAME_SC = "1.2.840.10008.5.1.4.1.1.7.3"
"""Multi-frame Grayscale Word Secondary Capture: no Frame of Reference, no functional groups."""
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"


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


# -- multi-frame images ---------------------------------------------------------------------
def multiframe_image(
    *, study: str, frames: int = 3, size: int = 16, spatial: bool = False, patient: str = "P1"
) -> Dataset:
    """A multi-frame image with pixels: a Multi-frame Grayscale Word SC (no Frame of
    Reference), or with ``spatial`` an enhanced-MR-like image with a Frame of Reference and
    functional groups (shared orientation and pixel measures, one plane position per frame,
    1 mm apart) as highdicom reads them."""
    ds = image(study=study, size=size, patient=patient,
               sop_class=ENHANCED_MR if spatial else MULTIFRAME_SC)  # fmt: skip
    ds.Modality = "MR" if spatial else "OT"
    ds.NumberOfFrames = frames
    ds.BitsStored, ds.HighBit = 16, 15
    ds.PixelData = np.zeros((frames, size, size), np.uint16).tobytes()
    if not spatial:
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
        ds.FrameTime = 100
        return ds
    del ds.PatientOrientation
    ds.FrameOfReferenceUID = generate_uid()
    orientation, measures = Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [1, 1], 1
    shared = Dataset()
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    per_frame = []
    for i in range(frames):
        position, item = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, float(i)]
        item.PlanePositionSequence = DicomSequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    return ds


def sr_on_frame(image: Dataset, frame: int | None, roi: Roi | None = None) -> Dataset:
    return _part10(builders.build_sr(evidence=[image], concept=PNEUMOTHORAX,
                                     label="pneumothorax", roi=roi, frame=frame))  # fmt: skip


def seg_of_frame(source: Dataset, frame: int) -> Dataset:
    mask = np.zeros((int(source.Rows), int(source.Columns)), np.uint8)
    mask[2:5, 3:7] = 1
    return _part10(builders.build_seg(source=source, mask=mask, concept=PNEUMOTHORAX,
                                      label="pneumothorax", frame=frame))  # fmt: skip


# -- malformed items: one bad item in an otherwise readable document -------------------------
def _walk_items(item: Dataset) -> list[Dataset]:
    out = []
    for child in item.get("ContentSequence", []):
        out += [child, *_walk_items(child)]
    return out


def _image_items(item: Dataset) -> list[Dataset]:
    return [i for i in _walk_items(item) if i.get("ValueType") == "IMAGE"]


def _without_uid(item: Dataset) -> None:
    """The item's first Referenced SOP Sequence item loses its SOP Instance UID (a copy:
    highdicom may share reference items between sequences)."""
    ref = copy.deepcopy(item.ReferencedSOPSequence[0])
    del ref.ReferencedSOPInstanceUID
    item.ReferencedSOPSequence = DicomSequence([ref])


def kos_with_a_malformed_image_item(images: Sequence[Dataset]) -> Dataset:
    """The first IMAGE item's reference has no Referenced SOP Instance UID, and one evidence
    reference has none either; the other images are selected as usual."""
    ds = highdicom_kos(images)
    _without_uid(_image_items(ds)[0])
    series = ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    extra = Dataset()
    extra.ReferencedSOPClassUID = images[0].SOPClassUID
    series.ReferencedSOPSequence.append(extra)
    return ds


def sr_with_two_findings(images: Sequence[Dataset], roi: Roi) -> Dataset:
    """Two measurement groups: a pneumothorax region on ``images[0]`` and an image-level
    consolidation of ``images[1]`` (the second SR's group grafted into the first)."""
    first = highdicom_sr(images[:1], roi)
    second = _part10(builders.build_sr(evidence=images[1:2], concept=CONSOLIDATION,
                                       label="consolidation"))  # fmt: skip
    _measurements(first).ContentSequence.extend(_measurements(second).ContentSequence)
    first.CurrentRequestedProcedureEvidenceSequence = DicomSequence([_evidence(images[:2])])
    return first


def _measurements(ds: Dataset) -> Dataset:
    """The Imaging Measurements container (126010, DCM) of a TID 1500 report."""
    found: Dataset = next(
        i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010"
    )
    return found


def sr_with_malformed_items(images: Sequence[Dataset], roi: Roi) -> Dataset:
    """:func:`sr_with_two_findings` whose region has 5 Graphic Data values and whose second
    finding's only image reference has no Referenced SOP Instance UID."""
    ds = sr_with_two_findings(images, roi)
    first, second = _measurements(ds).ContentSequence[:2]
    scoord = next(i for i in _walk_items(first) if i.get("ValueType") == "SCOORD")
    scoord.GraphicData = [1.0, 2.0, 3.0, 4.0, 5.0]
    for item in _image_items(second):
        _without_uid(item)
    return ds


def seg_two_segments(source: Dataset) -> Dataset:
    """A binary SEG of ``source`` with two segments (pneumothorax 1, consolidation 2)."""
    mask = np.zeros((1, int(source.Rows), int(source.Columns), 2), bool)
    mask[0, 2:5, 3:7, 0] = True
    mask[0, 8:10, 8:12, 1] = True
    segments = [
        hd.seg.SegmentDescription(
            segment_number=n, segment_label=code.meaning or code.value,
            segmented_property_category=builders.ABNORMAL_STRUCTURE,
            segmented_property_type=builders.coded(code),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        )
        for n, code in ((1, PNEUMOTHORAX), (2, CONSOLIDATION))
    ]  # fmt: skip
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments, series_instance_uid=generate_uid(), series_number=5,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="other",
        manufacturer_model_name="other", software_versions="1", device_serial_number="0",
    )  # fmt: skip
    seg.PatientOrientation = source.get("PatientOrientation", "")
    return _part10(seg)


def seg_with_a_malformed_segment(source: Dataset) -> Dataset:
    """:func:`seg_two_segments` whose consolidation frame's source reference has no SOP
    Instance UID, and with a third segment description without a Segment Number."""
    ds = seg_two_segments(source)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        if frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 2:
            derivation = copy.deepcopy(frame.DerivationImageSequence[0])
            del derivation.SourceImageSequence[0].ReferencedSOPInstanceUID
            frame.DerivationImageSequence = DicomSequence([derivation])
    broken = copy.deepcopy(ds.SegmentSequence[0])
    del broken.SegmentNumber
    ds.SegmentSequence.append(broken)
    return ds


def gsps_with_malformed_items(images: Sequence[Dataset]) -> Dataset:
    """:func:`gsps` plus a second annotation whose graphic has one Graphic Data value (a
    point needs two) on ``images[0]``, and a third whose only image reference has no SOP
    Instance UID."""
    ds = gsps(images)
    good = ds.GraphicAnnotationSequence[0]
    bad_graphic = copy.deepcopy(good)
    bad_graphic.ReferencedImageSequence = DicomSequence([_sop_ref(images[0])])
    bad_graphic.GraphicObjectSequence[0].GraphicType = "POINT"
    bad_graphic.GraphicObjectSequence[0].NumberOfGraphicPoints = 1
    bad_graphic.GraphicObjectSequence[0].GraphicData = [3.0]
    no_uid = copy.deepcopy(good)
    ref = _sop_ref(images[1])
    del ref.ReferencedSOPInstanceUID
    no_uid.ReferencedImageSequence = DicomSequence([ref])
    ds.GraphicAnnotationSequence.extend([bad_graphic, no_uid])
    return ds
