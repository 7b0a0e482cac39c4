"""Reading label documents: what medflow writes (highdicom) and each real-world quirk, built in
code (tests/labels_fixtures.py); codes matched by value, never by meaning."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medflow.labels.readers import Unreadable, classify, read_document, scoord_roi
from medflow.labels.schemas import Mapping, Roi
from tests import labels_fixtures as fx

STUDY = generate_uid()
SERIES = generate_uid()
IMAGES = [fx.image(study=STUDY, series=SERIES) for _ in range(2)]
UIDS = {str(i.SOPInstanceUID) for i in IMAGES}
BY_CONCEPT = Mapping.model_validate(
    {"rules": [{"label": "pneumothorax", "concept": {"scheme": "SCT", "value": "36118008"}}]}
)
BY_TITLE = Mapping.model_validate(
    {"rules": [{"label": "pneumothorax", "title": {"scheme": "DCM", "value": "113000"}}]}
)


def refs(document: object) -> set[str]:
    return {r.sop_uid for f in document.findings for r in f.references}  # type: ignore[attr-defined]


def _items(ds: Dataset) -> list[Dataset]:
    out: list[Dataset] = []
    for item in ds.ContentSequence:
        out += [item, *_items(item)] if "ContentSequence" in item else [item]
    return out


def test_medflow_kos_names_its_class_in_the_description_only() -> None:
    """TID 2010 allows a Document Title Modifier (113011, DCM) only under the titles
    "Rejected for Quality Reasons", "Quality Issue" (CID 7011) and "Best In Set" (CID 7012):
    medflow's "For Teaching" KOS carries none; the Key Object Description names the class
    with its code, which the reader reads back as a concept."""
    ds = fx.highdicom_kos(IMAGES)
    names = [tuple(i.ConceptNameCodeSequence[0][t].value for t in ("CodingSchemeDesignator",
             "CodeValue")) for i in _items(ds) if "ConceptNameCodeSequence" in i]  # fmt: skip
    assert ("DCM", "113011") not in names and ("DCM", "113012") in names
    (text,) = [
        i.TextValue
        for i in _items(ds)
        if getattr(i, "ValueType", "") == "TEXT"
        and i.ConceptNameCodeSequence[0].CodeValue == "113012"
    ]
    assert text == "pneumothorax (SCT 36118008)"
    doc = read_document(ds)
    assert ("SCT", "36118008") in doc.concepts


def test_highdicom_kos_is_read_with_its_class() -> None:
    doc = read_document(fx.highdicom_kos(IMAGES))
    assert doc.kind == "KOS" and doc.title == ("DCM", "113004") and not doc.notes
    assert refs(doc) == UIDS
    assert {r.series_uid for r in doc.findings[0].references} == {SERIES}
    assert classify(doc, doc.findings[0], BY_CONCEPT) == "pneumothorax"


def test_kos_without_template_identifier() -> None:
    doc = read_document(fx.kos_without_template(IMAGES))
    assert "no template identifier" in doc.notes
    assert any("not highdicom-valid" in n for n in doc.notes)
    assert refs(doc) == UIDS
    assert classify(doc, doc.findings[0], BY_CONCEPT) == "pneumothorax"


def test_kos_without_image_items_takes_the_evidence() -> None:
    doc = read_document(fx.kos_evidence_only(IMAGES))
    assert any("evidence" in n for n in doc.notes)
    assert refs(doc) == UIDS
    assert {r.study_uid for r in doc.findings[0].references} == {STUDY}


def test_vendor_kos_matches_on_code_values_not_meanings() -> None:
    doc = read_document(fx.vendor_kos(IMAGES))  # meaning "KEY IMAGES", not "Of Interest"
    assert doc.title == ("DCM", "113000")
    assert classify(doc, doc.findings[0], BY_TITLE) == "pneumothorax"
    assert classify(doc, doc.findings[0], BY_CONCEPT) is None
    wrong_scheme = Mapping.model_validate(
        {"rules": [{"label": "x", "title": {"scheme": "SCT", "value": "113000"}}]}
    )
    assert classify(doc, doc.findings[0], wrong_scheme) is None
    any_scheme = Mapping.model_validate({"rules": [{"label": "x", "title": {"value": "113000"}}]})
    assert classify(doc, doc.findings[0], any_scheme) == "x"


@pytest.mark.parametrize(
    ("build", "reason"),
    [(fx.kos_without_title, "no document title"), (fx.kos_referencing_nothing, "no instance")],
)
def test_unreadable_kos_says_why(build: object, reason: str) -> None:
    with pytest.raises(Unreadable, match=reason):
        read_document(build(IMAGES))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("roi", "expected"),
    [
        (Roi(type="box", points=[(5, 6), (1, 2)]), {"type": "box", "points": [[1, 2], [5, 6]]}),
        (
            Roi(type="polygon", points=[(1, 2), (5, 6), (3, 9)]),
            {"type": "polygon", "points": [[1, 2], [5, 6], [3, 9]]},
        ),
        (Roi(type="point", points=[(3, 4)]), {"type": "point", "points": [[3, 4]]}),
        (None, None),
    ],
)
def test_highdicom_sr_regions_round_trip(roi: Roi | None, expected: object) -> None:
    doc = read_document(fx.highdicom_sr(IMAGES[:1], roi))
    assert doc.kind == "SR" and not doc.notes
    (finding,) = doc.findings
    assert finding.roi == expected
    assert refs(doc) == {str(IMAGES[0].SOPInstanceUID)}
    assert classify(doc, finding, BY_CONCEPT) == "pneumothorax"


def test_sr_without_template_is_read_and_noted() -> None:
    doc = read_document(fx.sr_without_template(IMAGES[:1], Roi(type="point", points=[(1, 1)])))
    assert "no template identifier" in doc.notes
    assert doc.findings[0].roi == {"type": "point", "points": [[1, 1]]}


def test_seg_segments_carry_the_property_type() -> None:
    doc = read_document(fx.seg(IMAGES[0]))
    assert doc.kind == "SEG"
    (finding,) = doc.findings
    assert ("SCT", "36118008") in finding.concepts and finding.roi is None
    assert refs(doc) == {str(IMAGES[0].SOPInstanceUID)}


def test_gsps_annotation_is_a_box_matched_by_text() -> None:
    doc = read_document(fx.gsps(IMAGES))
    (finding,) = doc.findings
    assert finding.roi == {"type": "box", "points": [[2, 3], [9, 8]]}
    by_text = Mapping.model_validate({"rules": [{"label": "p", "text": "PNEUMOTHORAX"}]})
    assert classify(doc, finding, by_text) == "p"
    display = read_document(fx.gsps(IMAGES, units="DISPLAY"))
    assert display.findings[0].roi is None and display.notes


def test_scoord_shapes() -> None:
    assert scoord_roi("CIRCLE", [5, 5, 8, 5]) == {"type": "box", "points": [[2, 2], [8, 8]]}
    assert scoord_roi("POLYLINE", [0, 0, 4, 0]) is None  # a line is no region
    assert scoord_roi("POLYLINE", [0, 0, 4, 0, 2, 3])["type"] == "polygon"  # type: ignore[index]
    assert scoord_roi("MULTIPOINT", [0, 0, 1, 1]) is None


def test_not_a_label_document() -> None:
    with pytest.raises(Unreadable, match="not a label document"):
        read_document(IMAGES[0])


def _walk(items: object) -> list[object]:
    out = []
    for item in items or []:  # type: ignore[attr-defined]
        out.append(item)
        out += _walk(item.get("ContentSequence"))
    return out


def test_a_finding_said_to_be_absent_is_no_positive() -> None:
    """TID 1500 qualitative evaluation "Pneumothorax = Absent" (SCT 2667000): neither the
    evaluation's name nor its value makes the image a pneumothorax."""
    ds = fx.highdicom_sr(IMAGES[:1])
    changed = 0
    for item in _walk(ds.ContentSequence):
        codes = [*item.get("ConceptNameCodeSequence", []), *item.get("ConceptCodeSequence", [])]
        if item.get("ValueType") == "CODE" and any(c.CodeValue == "36118008" for c in codes):
            item.ConceptNameCodeSequence[0].CodeValue = "36118008"
            item.ConceptNameCodeSequence[0].CodingSchemeDesignator = "SCT"
            item.ConceptNameCodeSequence[0].CodeMeaning = "Pneumothorax"
            item.ConceptCodeSequence[0].CodeValue = "2667000"
            item.ConceptCodeSequence[0].CodingSchemeDesignator = "SCT"
            item.ConceptCodeSequence[0].CodeMeaning = "Absent"
            changed += 1
    assert changed
    doc = read_document(ds)
    assert all(classify(doc, f, BY_CONCEPT) is None for f in doc.findings)


# -- one malformed item leaves the rest of the document readable ---------------------------
def test_kos_image_item_without_uid_is_skipped_alone() -> None:
    images = [fx.image(study=STUDY, series=SERIES) for _ in range(3)]
    doc = read_document(fx.kos_with_a_malformed_image_item(images))
    assert refs(doc) == {str(i.SOPInstanceUID) for i in images[1:]}
    assert {r.series_uid for r in doc.findings[0].references} == {SERIES}
    assert doc.skipped == [
        "a reference without Referenced SOP Instance UID: left out",
        "an evidence reference without Referenced SOP Instance UID: left out",
    ]
    assert classify(doc, doc.findings[0], BY_CONCEPT) == "pneumothorax"


def test_kos_whose_every_image_item_is_malformed_is_unreadable_with_the_reason() -> None:
    ds = fx.kos_with_a_malformed_image_item(IMAGES[:1])  # no evidence fallback for it
    with pytest.raises(Unreadable, match=r"no instance.*Referenced SOP Instance UID"):
        read_document(ds)


def test_sr_malformed_region_and_reference_skip_only_those_items() -> None:
    """The region with 5 coordinates is left out (its finding and image kept); the finding
    whose only image reference has no UID is left out (not widened to the evidence)."""
    roi = Roi(type="box", points=[(1, 2), (5, 6)])
    whole = read_document(fx.sr_with_two_findings(IMAGES, roi))
    assert len(whole.findings) == 2 and not whole.skipped
    doc = read_document(fx.sr_with_malformed_items(IMAGES, roi))
    (finding,) = doc.findings
    assert finding.roi is None and refs(doc) == {str(IMAGES[0].SOPInstanceUID)}
    assert classify(doc, finding, BY_CONCEPT) == "pneumothorax"
    assert doc.skipped == [
        "the region of a graphic with 5 Graphic Data values (pairs expected): left out",
        "a reference without Referenced SOP Instance UID: left out",
        "a finding whose every image reference is malformed: left out",
    ]


def test_seg_malformed_segment_and_source_skip_only_those() -> None:
    whole = read_document(fx.seg_two_segments(IMAGES[0]))
    assert len(whole.findings) == 2 and not whole.skipped
    doc = read_document(fx.seg_with_a_malformed_segment(IMAGES[0]))
    (finding,) = doc.findings
    assert ("SCT", "36118008") in finding.concepts
    assert refs(doc) == {str(IMAGES[0].SOPInstanceUID)}
    assert doc.skipped == [
        "a segment without a Segment Number: left out",
        "a reference without Referenced SOP Instance UID: left out",
        "segment 2, no frame of which names a source image: left out",
    ]


def test_gsps_malformed_graphic_and_reference_skip_only_those() -> None:
    doc = read_document(fx.gsps_with_malformed_items(IMAGES))
    assert [f.roi for f in doc.findings] == [{"type": "box", "points": [[2, 3], [9, 8]]}, None]
    assert [{r.sop_uid for r in f.references} for f in doc.findings] == [
        UIDS,
        {str(IMAGES[0].SOPInstanceUID)},
    ]
    assert doc.skipped == [
        "the region of a graphic with 1 Graphic Data values (pairs expected): left out",
        "a reference without Referenced SOP Instance UID: left out",
        "an annotation whose every image reference is malformed: left out",
    ]


def test_gsps_annotation_without_image_references_takes_the_series_images() -> None:
    ds = fx.gsps(IMAGES)
    del ds.GraphicAnnotationSequence[0].ReferencedImageSequence
    doc = read_document(ds)  # Presentation Series Module: Referenced Image Sequence
    assert refs(doc) == UIDS and not doc.skipped
    assert {r.series_uid for r in doc.findings[0].references} == {SERIES}


def test_frame_numbers_that_are_no_frames_skip_the_reference() -> None:
    ds = fx.highdicom_kos(IMAGES)
    item = next(i for i in ds.ContentSequence if i.get("ValueType") == "IMAGE")
    ref = item.ReferencedSOPSequence[0]
    ref.ReferencedFrameNumber = 0
    doc = read_document(ds)
    assert refs(doc) == UIDS - {str(ref.ReferencedSOPInstanceUID)}
    assert doc.skipped == [
        "a reference whose Referenced Frame Number is not a frame number: left out"
    ]
