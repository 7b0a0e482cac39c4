"""Regressions found by a review of the labels code: the SEG of a projection radiograph has
its Patient Orientation (Type 2C without Plane Orientation; dciodvfy flagged it), and
``medflow labels write`` with bad ``--roi`` JSON exits 2 with the reason, no traceback."""

from __future__ import annotations

import numpy as np
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from medflow.cli.main import app
from medflow.labels import builders
from tests import labels_fixtures as fx
from tests.slides import dciodvfy_errors


def test_seg_of_a_radiograph_has_patient_orientation(tmp_path: object) -> None:
    source = fx.image(study=generate_uid())
    seg = builders.build_seg(source=source, mask=np.ones((16, 16), dtype=np.uint8),
                             concept=fx.PNEUMOTHORAX, label="pneumothorax")  # fmt: skip
    assert list(seg.PatientOrientation) == ["L", "F"]
    path = tmp_path / "seg.dcm"  # type: ignore[operator]
    seg.save_as(path, enforce_file_format=True)
    errors = dciodvfy_errors(path)
    assert not [e for e in errors if "PatientOrientation" in e], errors


def test_bad_roi_json_is_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["labels", "write", "--set", "x", "--label", "y",
                                      "--study", "1.2.3", "--roi", "{not json"])  # fmt: skip
    assert result.exit_code == 2 and "--roi" in result.output
