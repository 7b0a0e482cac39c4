"""Frames of multi-frame images: an SR region or an image-level SR label, and a SEG, name the
frame they are about (Referenced Frame Number), and the readers give that frame back instead
of every frame (SR) or frame 1 (SEG). Single-frame images keep frameless references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medflow.labels import builders
from medflow.labels.readers import Document, read_document
from medflow.labels.schemas import Roi
from tests import labels_fixtures as fx
from tests.slides import dciodvfy_errors

STUDY = generate_uid()
SC = fx.multiframe_image(study=STUDY)  # no Frame of Reference
ENHANCED = fx.multiframe_image(study=STUDY, spatial=True)
SINGLE = fx.image(study=STUDY)


def frames(document: Document) -> list[tuple[str, int | None]]:
    return [(r.sop_uid, r.frame) for f in document.findings for r in f.references]


@pytest.mark.parametrize("source", [SC, ENHANCED], ids=["sc", "enhanced"])
def test_sr_region_on_frame_2_reads_back_as_frame_2(source: Dataset) -> None:
    roi = Roi(type="box", points=[(2, 3), (9, 8)])
    doc = read_document(fx.sr_on_frame(source, 2, roi))
    assert frames(doc) == [(str(source.SOPInstanceUID), 2)]
    assert doc.findings[0].roi == {"type": "box", "points": [[2, 3], [9, 8]]}


def test_image_level_sr_names_the_frame_only_when_given() -> None:
    doc = read_document(fx.sr_on_frame(SC, 3))
    assert frames(doc) == [(str(SC.SOPInstanceUID), 3)]
    every = read_document(fx.sr_on_frame(SC, None))
    assert frames(every) == [(str(SC.SOPInstanceUID), None)]
    mixed = builders.build_sr(evidence=[SC, SINGLE], concept=fx.PNEUMOTHORAX, label="p", frame=1)
    assert frames(read_document(fx._part10(mixed))) == [
        (str(SC.SOPInstanceUID), 1),
        (str(SINGLE.SOPInstanceUID), None),  # a single-frame image's reference names no frame
    ]


@pytest.mark.parametrize("source", [SC, ENHANCED], ids=["sc", "enhanced"])
def test_seg_of_frame_3_reads_back_as_frame_3(source: Dataset, tmp_path: Path) -> None:
    seg = fx.seg_of_frame(source, 3)
    assert seg.NumberOfFrames == 1
    derivation = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    ref = derivation.SourceImageSequence[0]
    assert ref.ReferencedSOPClassUID == source.SOPClassUID
    assert ref.ReferencedFrameNumber == 3
    assert frames(read_document(seg)) == [(str(source.SOPInstanceUID), 3)]
    assert np.array_equal(seg.pixel_array[2:5, 3:7], np.ones((3, 4)))
    if "FrameOfReferenceUID" in source:
        position = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
        assert [float(v) for v in position.ImagePositionPatient] == [0.0, 0.0, 2.0]
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert not dciodvfy_errors(path)


def test_single_frame_seg_is_unchanged() -> None:
    seg = fx.seg(SINGLE)
    ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert "ReferencedFrameNumber" not in ref
    assert frames(read_document(seg)) == [(str(SINGLE.SOPInstanceUID), None)]


def test_frames_the_image_lacks_are_refused() -> None:
    mask = np.ones((16, 16), np.uint8)
    with pytest.raises(ValueError, match="frame 4: the image has 3"):
        builders.build_seg(source=SC, mask=mask, concept=fx.PNEUMOTHORAX, label="p", frame=4)
    with pytest.raises(ValueError, match="frame 2: the image has 1"):
        builders.build_seg(source=SINGLE, mask=mask, concept=fx.PNEUMOTHORAX, label="p", frame=2)
    with pytest.raises(ValueError, match="frame 0"):
        builders.build_sr(evidence=[SC], concept=fx.PNEUMOTHORAX, label="p", frame=0,
                          roi=Roi(type="point", points=[(1, 1)]))  # fmt: skip
    assert SC.SOPClassUID == fx.MULTIFRAME_SC and SC.NumberOfFrames == 3  # source untouched
