"""Label documents built with highdicom (pure: datasets in, datasets out).

- A class label of a study, series or instance: a Key Object Selection document (PS3.3
  A.35.4, TID 2010) titled with a CID 7010 code (default (113004, DCM, "For Teaching")),
  referencing every selected instance. highdicom's ``KeyObjectSelection`` takes no coded
  concept besides the title, so the class is said by a TID 2010 row 2 item, (113011, DCM,
  "Document Title Modifier") HAS CONCEPT MOD, CODE = the class's code, inserted first in the
  root container; the Key Object Description (113012) TEXT repeats it in words. The document
  still decodes with ``KeyObjectSelectionDocument.from_dataset``.
- A classification or region finding: a Comprehensive 3D SR with a TID 1500 Measurement
  Report; one measurement group per finding: Finding (121071, DCM) = the class code and a
  qualitative evaluation (the class code = (52101004, SCT, "Present")), a region as SCOORD
  (a box or polygon as a closed POLYLINE, a point as POINT) on its source image (TID 1410),
  an image-level classification as a TID 1501 group with the image as its source.
- A mask: a binary Segmentation (PS3.3 A.51) with one segment whose Segmented Property Type
  is the class code.
Every document is a new series of the original study, made by "medflow" (Manufacturer), so
consumers can tell medflow's own output.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medflow.labels.schemas import Code, Roi

MANUFACTURER = "medflow"
MODEL = "medflow labels"
SERIES_NUMBER = {"kos": 9901, "sr": 9902, "seg": 9903}
TITLE_MODIFIER = hd.sr.CodedConcept("113011", "DCM", "Document Title Modifier")
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
ABNORMAL_STRUCTURE = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")


def coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning or code.value)


def _observer(
    observer: str | None,
) -> tuple[hd.sr.ObserverContext | None, hd.sr.ObserverContext | None]:
    """(person context, device context): the named person, else medflow as the device."""
    if observer:
        attributes = hd.sr.PersonObserverIdentifyingAttributes(name=observer)
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person, observer_identifying_attributes=attributes
        )
        return person, None
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name=MODEL)
    return None, hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device
    )


def build_kos(
    *,
    evidence: Sequence[Dataset],
    title: Code,
    concept: Code,
    description: str,
    observer: str | None = None,
) -> Dataset:
    """A KOS selecting ``evidence`` (headers of instances of one study)."""
    person, device = _observer(observer)
    content = hd.ko.KeyObjectSelection(
        document_title=coded(title),
        referenced_objects=list(evidence),
        description=description,
        observer_person_context=person,
        observer_device_context=device,
    )
    modifier = hd.sr.CodeContentItem(
        name=TITLE_MODIFIER,
        value=coded(concept),
        relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
    )
    content[0].ContentSequence.insert(0, modifier)
    return hd.ko.KeyObjectSelectionDocument(
        evidence=list(evidence),
        content=content,
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER["kos"],
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )


def _region(roi: Roi, source: Dataset) -> hd.sr.ImageRegion:
    points = np.asarray(roi.points, dtype=float)
    if roi.type == "box":
        (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]])
    elif roi.type == "polygon":
        points = np.vstack([points, points[:1]])  # closed: the first point repeated
    graphic_type = (
        hd.sr.GraphicTypeValues.POINT if roi.type == "point" else (hd.sr.GraphicTypeValues.POLYLINE)
    )
    return hd.sr.ImageRegion(
        graphic_type=graphic_type,
        graphic_data=points,
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )


def build_sr(
    *,
    evidence: Sequence[Dataset],
    concept: Code,
    label: str,
    roi: Roi | None = None,
    frame: int = 1,
    observer: str | None = None,
) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) with one finding: a planar ROI on ``evidence[0]``
    when ``roi`` is given, else an image-level classification of every evidence image."""
    tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=label[:64])
    evaluation = [hd.sr.QualitativeEvaluation(name=coded(concept), value=PRESENT)]
    group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | (
        hd.sr.MeasurementsAndQualitativeEvaluations
    )
    if roi is not None:
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=_region(roi, evidence[0]),
            finding_type=coded(concept),
            qualitative_evaluations=evaluation,
        )
    else:
        sources = [hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in evidence]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            finding_type=coded(concept),
            qualitative_evaluations=evaluation,
            source_images=sources,
        )
    person, device = _observer(observer)
    context = hd.sr.ObservationContext(
        observer_person_context=person, observer_device_context=device
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[group],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )


def build_seg(*, source: Dataset, mask: np.ndarray, concept: Code, label: str) -> Dataset:
    """A binary SEG of ``source`` (with its pixels) from a rows x columns mask."""
    if mask.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(
            f"the mask is {mask.shape[0]}x{mask.shape[1]}, the image {source.Rows}x{source.Columns}"
        )
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label[:64],
        segmented_property_category=ABNORMAL_STRUCTURE,
        segmented_property_type=coded(concept),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=(mask > 0)[np.newaxis],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER["seg"],
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL,
        software_versions="1",
        device_serial_number="0",
        omit_empty_frames=False,
    )
    if "ImageOrientationPatient" not in source and "PatientOrientation" not in seg:
        # General Image Module: Patient Orientation is Type 2C when there is no Plane
        # Orientation (a projection radiograph's SEG): the source's, or empty
        seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg
