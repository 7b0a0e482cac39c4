"""Label documents built with highdicom (pure: datasets in, datasets out).

- A class label of a study, series or instance: a Key Object Selection document (PS3.3
  A.35.4, TID 2010) titled with a CID 7010 code (the set's ``kos_title``, default (113004,
  DCM, "For Teaching")), referencing every selected instance. TID 2010 has no place for a
  coded finding: its Document Title Modifier rows (113011, DCM) are allowed only under the
  titles "Rejected for Quality Reasons", "Quality Issue" (CID 7011) and "Best In Set" (CID
  7012). So the class is said by the Key Object Description (113012, DCM) TEXT,
  ``"<set>: <class> (<scheme> <value>)"``, whose trailing code :func:`description_code`
  reads back (:mod:`medflow.labels.readers` adds it to the document's concepts). The
  document decodes with ``KeyObjectSelectionDocument.from_dataset``.
- A classification or region finding: a Comprehensive 3D SR with a TID 1500 Measurement
  Report; one measurement group per finding: Finding (121071, DCM) = the class code and a
  qualitative evaluation (the class code = (52101004, SCT, "Present")), a region as SCOORD
  (a box or polygon as a closed POLYLINE, a point as POINT) on its source image (TID 1410),
  an image-level classification as a TID 1501 group with the image as its source. A
  reference to a multi-frame image names its frame (Referenced Frame Number): the frame the
  region is drawn on, or the frame an image-level label is given for.
- A mask: a binary Segmentation (PS3.3 A.51) with one segment whose Segmented Property Type
  is the class code; one frame, derived from the labelled frame of the source image (named
  in its Derivation Image Sequence when the source is multi-frame).
Every document is a new series of the original study, made by "medflow" (Manufacturer), so
consumers can tell medflow's own output.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medflow.labels.schemas import Code, Roi

MANUFACTURER = "medflow"
MODEL = "medflow labels"
OUTCOME_DEVICE = "medflow outcome"
"""The device observer of a label written from an outcome (provenance "outcome")."""
SERIES_NUMBER = {"kos": 9901, "sr": 9902, "seg": 9903}
DESCRIPTION_CODE = re.compile(r"\((?P<scheme>[A-Za-z0-9_.-]{1,16}) (?P<value>[^\s()]{1,64})\)\s*$")
"""The class code at the end of a medflow KOS's Key Object Description."""
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
ABNORMAL_STRUCTURE = hd.sr.CodedConcept("49755003", "SCT", "Morphologically Abnormal Structure")


def coded(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning or code.value)


def _observer(
    observer: str | None, device_name: str = MODEL
) -> tuple[hd.sr.ObserverContext | None, hd.sr.ObserverContext | None]:
    """(person context, device context): the named person, else medflow as the device
    (named ``device_name``: "medflow labels", or "medflow outcome" for a label the
    feedback loop wrote from an outcome)."""
    if observer:
        attributes = hd.sr.PersonObserverIdentifyingAttributes(name=observer)
        person = hd.sr.ObserverContext(
            observer_type=codes.DCM.Person, observer_identifying_attributes=attributes
        )
        return person, None
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=generate_uid(), name=device_name)
    return None, hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device
    )


def kos_description(description: str, concept: Code) -> str:
    """The Key Object Description of a class label: the words, then the class code."""
    return f"{description} ({concept.scheme} {concept.value})"


def description_code(text: str) -> tuple[str, str] | None:
    """The (scheme, value) a Key Object Description ends with (:func:`kos_description`)."""
    found = DESCRIPTION_CODE.search(text)
    return (found["scheme"].upper(), found["value"]) if found else None


def build_kos(
    *,
    evidence: Sequence[Dataset],
    title: Code,
    concept: Code,
    description: str,
    observer: str | None = None,
    device_name: str = MODEL,
) -> Dataset:
    """A KOS selecting ``evidence`` (headers of instances of one study); the class
    ``concept`` is named in the Key Object Description (TID 2010 row 6); no ``observer``:
    the device ``device_name`` is."""
    person, device = _observer(observer, device_name)
    content = hd.ko.KeyObjectSelection(
        document_title=coded(title),
        referenced_objects=list(evidence),
        description=kos_description(description, concept),
        observer_person_context=person,
        observer_device_context=device,
    )
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


def frame_count(ds: Dataset) -> int:
    """The image's Number of Frames (1 when absent)."""
    return int(ds.get("NumberOfFrames", 1) or 1)


def _frame_numbers(ds: Dataset, frame: int | None) -> list[int] | None:
    """Referenced Frame Numbers for a reference to ``frame`` of ``ds``: none for a
    single-frame image or ``frame`` None (the whole image), else ``[frame]``; ``ValueError``
    when the image has no such frame."""
    count = frame_count(ds)
    if frame is not None and not 1 <= frame <= count:
        raise ValueError(f"frame {frame}: the image has {count} frame(s)")
    return None if count == 1 or frame is None else [frame]


def _region(roi: Roi, source: Dataset, frame: int) -> hd.sr.ImageRegion:
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
        source_image=hd.sr.SourceImageForRegion.from_source_image(
            source, referenced_frame_numbers=_frame_numbers(source, frame)
        ),
    )


def build_sr(
    *,
    evidence: Sequence[Dataset],
    concept: Code,
    label: str,
    roi: Roi | None = None,
    frame: int | None = None,
    observer: str | None = None,
) -> Dataset:
    """A Comprehensive 3D SR (TID 1500) with one finding: a planar ROI on ``evidence[0]``
    when ``roi`` is given, else an image-level classification of every evidence image.

    ``frame`` (1-based): with a ``roi``, the frame it is drawn on (None: 1), referenced by
    the region's source image when the image is multi-frame; without one, the frame of each
    multi-frame evidence image that is labelled (None: every frame, no frame numbers).
    ``ValueError`` when an image has no such frame."""
    tracking = hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=label[:64])
    evaluation = [hd.sr.QualitativeEvaluation(name=coded(concept), value=PRESENT)]
    group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations | (
        hd.sr.MeasurementsAndQualitativeEvaluations
    )
    if roi is not None:
        group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking,
            referenced_region=_region(roi, evidence[0], 1 if frame is None else frame),
            finding_type=coded(concept),
            qualitative_evaluations=evaluation,
        )
    else:
        sources = [
            hd.sr.SourceImageForMeasurementGroup.from_source_image(
                ds, referenced_frame_numbers=_frame_numbers(ds, frame)
            )
            for ds in evidence
        ]
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


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
"""A single-frame image class without a Frame of Reference: the SOP class of the one-frame
view of a multi-frame source that has no coordinate system (see :func:`_one_frame`)."""


def _one_frame(source: Dataset, frame: int) -> Dataset:
    """The header of frame ``frame`` of a multi-frame ``source`` as a one-frame image (no
    pixels), for highdicom to segment. With a patient coordinate system (an enhanced CT or
    MR) it keeps its class and the frame's Per-frame Functional Groups item. Without one (a
    multi-frame secondary capture, ultrasound, XA cine), highdicom segments no frame of a
    multi-frame class (it reads functional groups that those images do not have), so the
    view is a single-frame secondary capture. :func:`_point_at_frame` then makes the SEG's
    references name the real class and frame."""
    view = Dataset()
    skip = {"PixelData", "NumberOfFrames", "PerFrameFunctionalGroupsSequence"}
    for element in source:
        if element.keyword not in skip:
            view.add(copy.copy(element))  # a new element: setting a value leaves the source's
    if hasattr(source, "file_meta"):
        view.file_meta = source.file_meta
    if hd.spatial.get_image_coordinate_system(source) is None:
        view.SOPClassUID = SECONDARY_CAPTURE
        return view
    view.NumberOfFrames = 1
    per_frame = source.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) >= frame:
        view.PerFrameFunctionalGroupsSequence = DicomSequence([per_frame[frame - 1]])
    return view


def _point_at_frame(seg: Dataset, source: Dataset, frame: int) -> None:
    """References of ``seg`` to the source instance name its SOP class, and those of the
    per-frame Derivation Image and the root Source Image Sequence its frame ``frame``."""

    def walk(ds: Dataset) -> None:
        for element in ds:
            if element.VR == "SQ":
                for item in element.value:
                    if item.get("ReferencedSOPInstanceUID") == source.SOPInstanceUID:
                        item.ReferencedSOPClassUID = source.SOPClassUID
                    walk(item)

    def at_frame(refs: Any) -> DicomSequence:
        # copies: highdicom shares these items with the Referenced Series Sequence, whose
        # Referenced Instance items have no Referenced Frame Number
        out = DicomSequence([copy.deepcopy(ref) for ref in refs])
        for ref in out:
            if ref.get("ReferencedSOPInstanceUID") == source.SOPInstanceUID:
                ref.ReferencedFrameNumber = frame
        return out

    walk(seg)
    if "SourceImageSequence" in seg:
        seg.SourceImageSequence = at_frame(seg.SourceImageSequence)
    for item in seg.PerFrameFunctionalGroupsSequence:
        for derivation in item.get("DerivationImageSequence", []):
            derivation.SourceImageSequence = at_frame(derivation.get("SourceImageSequence", []))


def build_seg(
    *, source: Dataset, mask: np.ndarray, concept: Code, label: str, frame: int = 1
) -> Dataset:
    """A binary SEG of frame ``frame`` (1-based) of ``source`` from a rows x columns mask.

    A single-frame source is segmented as it is (``frame`` must be 1). Of a multi-frame
    source, the SEG has one frame, derived from frame ``frame``: its Derivation Image
    Sequence names it (Referenced Frame Number) and, with a patient coordinate system, its
    Plane Position is that frame's. ``ValueError`` when the mask is not rows x columns or the
    source has no such frame."""
    if mask.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(
            f"the mask is {mask.shape[0]}x{mask.shape[1]}, the image {source.Rows}x{source.Columns}"
        )
    count = frame_count(source)
    if not 1 <= frame <= count:
        raise ValueError(f"frame {frame}: the image has {count} frame(s)")
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label[:64],
        segmented_property_category=ABNORMAL_STRUCTURE,
        segmented_property_type=coded(concept),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=[source if count == 1 else _one_frame(source, frame)],
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
    if count > 1:
        _point_at_frame(seg, source, frame)
    if "ImageOrientationPatient" not in source and "PatientOrientation" not in seg:
        # General Image Module: Patient Orientation is Type 2C when there is no Plane
        # Orientation (a projection radiograph's SEG): the source's, or empty
        seg.PatientOrientation = source.get("PatientOrientation", "")
    return seg
