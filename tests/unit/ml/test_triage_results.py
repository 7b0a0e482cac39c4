"""The AI result in standard form: the SR (TID 1500, IHE AI Results) read back by highdicom
with the probability, the algorithm and the Contributing Equipment, and valid for dciodvfy;
the RiskAssessment valid FHIR R4 with the probability and the model."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.uid import generate_uid

from medflow.fhir.validation import validate
from medflow.ml.triage.results import Finding, build_ai_sr, risk_assessment
from tests import labels_fixtures as fx
from tests.slides import dciodvfy_errors

FINDING = Finding(scheme="SCT", value="36118008", meaning="Pneumothorax", probability=0.8734,
                  threshold=0.5, model="cxr", version=3)  # fmt: skip


def _images() -> list[pydicom.Dataset]:
    study = generate_uid()
    return [fx.image(study=study, size=16) for _ in range(2)]


def test_sr_says_the_probability_and_the_algorithm(tmp_path: Path) -> None:
    images = _images()
    ds = build_ai_sr(evidence=images, finding=FINDING)
    assert ds.StudyInstanceUID == images[0].StudyInstanceUID
    assert ds.Manufacturer == "medflow" and ds.SeriesNumber == 9910
    (equipment,) = [e for e in ds.ContributingEquipmentSequence if e.Manufacturer == "medflow"]
    assert equipment.ManufacturerModelName == "cxr" and equipment.SoftwareVersions == "3"
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    path = tmp_path / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    report = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(path)).content
    assert not report.get_planar_roi_measurement_groups()  # an image-level group
    (image_group,) = report.get_image_measurement_groups()
    assert image_group.finding_type.value == "36118008"
    (measurement,) = image_group.get_measurements()
    assert measurement.name.value == "122157" and abs(measurement.value - 0.8734) < 1e-6
    texts = {(i.ConceptNameCodeSequence[0].CodeValue, i.TextValue)
             for i in measurement[0].ContentSequence if i.ValueType == "TEXT"}  # fmt: skip
    assert {("111001", "cxr"), ("111003", "3")} <= texts  # TID 4019 Algorithm Name, Version
    (evaluation,) = image_group.get_qualitative_evaluations()
    assert evaluation.value.value == "52101004"  # present at the 0.5 operating point
    refs = {s.referenced_sop_instance_uid for s in image_group.source_images}
    assert refs == {str(i.SOPInstanceUID) for i in images}
    assert dciodvfy_errors(path) == []


def test_below_the_operating_point_is_absent() -> None:
    low = Finding(**{**FINDING.__dict__, "probability": 0.1})
    sr = build_ai_sr(evidence=_images(), finding=low)
    (group,) = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_image_measurement_groups()
    (evaluation,) = group.get_qualitative_evaluations()
    assert evaluation.value.value == "2667000"


def test_risk_assessment_is_valid_fhir() -> None:
    resource = risk_assessment(finding=FINDING, patient_id="p1", imaging_study_id="is1",
                               study_uid="1.2.3", sr_uid="1.2.3.4")  # fmt: skip
    assert validate(resource) == []
    assert resource["prediction"][0]["probabilityDecimal"] == 0.8734
    assert resource["basis"][0] == {"reference": "ImagingStudy/is1"}
    assert resource["method"]["coding"][0]["code"] == "cxr:3"
    assert resource["identifier"][0]["value"] == "1.2.3/cxr:3"
    bare = risk_assessment(finding=FINDING, patient_id="p1", imaging_study_id=None,
                           study_uid="1.2.3")  # fmt: skip
    assert validate(bare) == [] and "basis" not in bare  # no empty array (R4)


def test_reader_observation_is_valid_fhir_with_or_without_a_code() -> None:
    from medflow.ml.triage.worklist import reader_observation

    code = {"system": "http://snomed.info/sct", "code": "404684003", "display": "Finding"}
    for given in (code, None):
        resource = reader_observation(study_uid="1.2.3", patient_id="p1", imaging_study_id=None,
                                      reader="Reader^One", finding="finding", code=given,
                                      positive=True)  # fmt: skip
        assert validate(resource) == [], given
        assert resource["identifier"][0]["value"] == "1.2.3/Reader^One"
        assert ("coding" in resource["code"]) is (given is not None)
