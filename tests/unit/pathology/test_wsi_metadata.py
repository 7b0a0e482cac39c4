"""Where a slide's patient, study and specimen come from: options, then the archived study of
the same accession number, then the sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medflow.core.errors import InvalidInput
from medflow.pathology.metadata import (
    SlideMetadata,
    from_sidecar,
    from_study_json,
    read_sidecar,
    resolve,
    sidecar_path,
)
from medflow.synthetic import pathology
from tests.slides import biopsied

STUDY = SlideMetadata(patient_id="P1", patient_name="Doe^Jane", patient_birth_date="19700101",
                      patient_sex="F", accession_number="A1", study_uid="1.2.3",
                      study_date="20240101")  # fmt: skip
SIDE = SlideMetadata(patient_id="P1", patient_name="Sidecar^Name", accession_number="A1",
                     study_uid="9.9.9", study_date="20250101", container_id="S-1",
                     specimen_id="SP-1", stain="H&E")  # fmt: skip


def test_the_synthetic_sidecar_is_read() -> None:
    (plan,) = biopsied()
    meta = from_sidecar(pathology.sidecar(plan))
    assert meta.patient_id == plan.mrn and meta.accession_number == plan.pathology_accession
    assert meta.container_id == plan.slide_id and meta.specimen_id == plan.specimen_id
    assert meta.patient_birth_date == plan.birth_date.strftime("%Y%m%d")
    assert meta.stain == "H&E" and [c[0] for c in meta.stain_codes] == ["12710003", "36879007"]
    assert meta.stain_codes[0][1] == "SCT" and meta.body_site is not None
    assert meta.label_text == pathology.label_text(plan)


def test_sidecar_next_to_the_slide(tmp_path: Path) -> None:
    (tmp_path / "S1.json").write_text(json.dumps({"PatientID": "X"}))
    for name in ("S1.tiff", "S1.ome.tiff", "S1.svs"):
        assert sidecar_path(tmp_path / name) == tmp_path / "S1.json"
    assert sidecar_path(tmp_path / "S2.tiff") is None
    assert read_sidecar(tmp_path / "S2.tiff") == SlideMetadata()
    (tmp_path / "bad.json").write_text("[")
    with pytest.raises(InvalidInput, match="sidecar JSON is not readable"):
        read_sidecar(tmp_path / "bad.tiff")


def test_options_win_over_the_sidecar() -> None:
    options = SlideMetadata(patient_id="P1", container_id="OPT")
    got = resolve(options=options, existing=[], sidecar=SIDE)
    assert got.container_id == "OPT" and got.specimen_id == "SP-1"
    assert got.study_uid == "9.9.9" and got.patient_name == "Sidecar^Name"


def test_the_study_of_the_accession_decides_the_study_and_patient() -> None:
    got = resolve(options=SlideMetadata(), existing=[STUDY], sidecar=SIDE)
    assert got.study_uid == "1.2.3" and got.patient_name == "Doe^Jane"
    assert got.study_date == "20240101"  # the study's, not the sidecar's
    assert got.container_id == "S-1" and got.accession_number == "A1"


def test_a_sidecar_of_another_patient_gives_no_patient_attributes() -> None:
    other = SlideMetadata(patient_id="P2", patient_name="Other^One", accession_number="A1")
    got = resolve(options=SlideMetadata(), existing=[STUDY], sidecar=other)
    assert got.patient_id == "P1" and got.patient_name == "Doe^Jane"


def test_conflicts_with_the_archive_are_refused_without_identifiers() -> None:
    with pytest.raises(InvalidInput, match="another patient") as err:
        resolve(options=SlideMetadata(patient_id="P9", accession_number="A1"),
                existing=[STUDY], sidecar=SlideMetadata())  # fmt: skip
    assert "P9" not in err.value.message and "A1" not in err.value.message
    two = [STUDY, SlideMetadata(patient_id="P1", study_uid="4.5.6")]
    with pytest.raises(InvalidInput, match="2 studies"):
        resolve(options=SlideMetadata(accession_number="A1"), existing=two,
                sidecar=SlideMetadata())  # fmt: skip
    chosen = resolve(options=SlideMetadata(accession_number="A1", study_uid="4.5.6"),
                     existing=two, sidecar=SlideMetadata())  # fmt: skip
    assert chosen.study_uid == "4.5.6"


def test_study_json_of_qido() -> None:
    row = {"00100020": {"vr": "LO", "Value": ["P1"]},
           "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
           "0020000D": {"vr": "UI", "Value": ["1.2.3"]}, "00080050": {"vr": "SH"}}  # fmt: skip
    meta = from_study_json(row)
    assert (meta.patient_id, meta.patient_name, meta.study_uid) == ("P1", "Doe^Jane", "1.2.3")
    assert meta.accession_number is None
