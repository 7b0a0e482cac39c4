"""An AI result in standard form (issue 11): what a model said about a study, as

- a DICOM Comprehensive 3D SR in the study (IHE AI Results: a TID 1500 Measurement Report
  whose TID 1501 measurement group has the finding as its Finding Type, the probability as a
  numeric measurement (122157, DCM, "Probability"), unit (1, UCUM, "no units"), and the
  finding Present/Absent at the model's operating point as a qualitative evaluation; the
  model identified by TID 4019 Algorithm Identification in the group and the measurement, by
  a device observer (TID 1004) and by the Contributing Equipment Sequence (purpose (109102,
  DCM, "Processing Equipment")); the scored images are its source images), built with
  highdicom, and
- a FHIR R4 RiskAssessment (status final, subject the Patient, basis the ImagingStudy,
  prediction[0].outcome the finding, probabilityDecimal the probability, method and
  performer naming the model: a Device reference is not made, the model is named in
  ``method.coding`` with the registry's ``urn:medflow:model`` system).

Pure: datasets and dicts in and out, nothing stored here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

MANUFACTURER = "medflow"
SERIES_NUMBER = 9910
"""Series number of medflow's AI result SRs (labels use 9901-9903)."""
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")
ABSENT = hd.sr.CodedConcept("2667000", "SCT", "Absent")
PROCESSING_EQUIPMENT = hd.sr.CodedConcept("109102", "DCM", "Processing Equipment")
IMAGING_PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
MODEL_SYSTEM = "urn:medflow:model"
"""FHIR code system of medflow's registered models: ``<name>:<version>``."""


@dataclass(frozen=True)
class Finding:
    """What the model says of one study: the class it scores (with its code), the
    probability, the operating point it was chosen at, and the model."""

    scheme: str
    value: str
    meaning: str
    probability: float
    threshold: float
    model: str
    version: int

    @property
    def present(self) -> bool:
        return self.probability >= self.threshold

    @property
    def model_ref(self) -> str:
        return f"{self.model}:{self.version}"


def _code(finding: Finding) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(finding.value, finding.scheme, finding.meaning or finding.value)


def result_key(study_uid: str, model_ref: str) -> str:
    """The RiskAssessment identifier value of a study's result by a model version."""
    return f"{study_uid}/{model_ref}"


def token(system: str, value: str) -> str:
    """A FHIR token search value ``system|value`` with the value's ``\\ | , $`` escaped
    (R4 §3.1.1.4.5, §3.1.1.5)."""
    for char in ("\\", "|", ",", "$"):
        value = value.replace(char, "\\" + char)
    return f"{system}|{value}"


def build_ai_sr(
    *,
    evidence: Sequence[Dataset],
    finding: Finding,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> Dataset:
    """The AI result SR of ``finding`` over the scored images ``evidence`` (headers of
    instances of one study), a new series of that study (UIDs given, e.g. derived so a retry
    writes the same object, or new)."""
    if not evidence:
        raise ValueError("an AI result needs the images it scored")
    algorithm = hd.sr.AlgorithmIdentification(
        name=finding.model[:64], version=str(finding.version), manufacturer=MANUFACTURER
    )
    concept = _code(finding)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"{finding.model_ref} {finding.meaning}"[:64]
        ),
        finding_type=concept,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(
                name=PROBABILITY,
                value=round(float(finding.probability), 6),
                unit=NO_UNITS,
                algorithm_id=algorithm,
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=concept, value=PRESENT if finding.present else ABSENT)
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(ds)
                       for ds in evidence],
    )  # fmt: skip
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(), name=finding.model_ref[:64], manufacturer_name=MANUFACTURER,
        model_name=finding.model[:64],
    )  # fmt: skip
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=IMAGING_PROCEDURE,
        imaging_measurements=[group],
    )
    equipment = hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=PROCESSING_EQUIPMENT,
        manufacturer_model_name=finding.model[:64],
        software_versions=str(finding.version),
        contribution_datetime=datetime.now(UTC),
        contribution_description=f"AI result of {finding.model_ref}"[:64],
    )
    return hd.sr.Comprehensive3DSR(
        evidence=list(evidence),
        content=report[0],
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        contributing_equipment=[equipment],
        series_description=f"AI result {finding.model_ref}"[:64],
    )


def risk_assessment(
    *, finding: Finding, patient_id: str, imaging_study_id: str | None, study_uid: str,
    occurrence: datetime | None = None, sr_uid: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The FHIR R4 RiskAssessment of ``finding`` for the Patient ``patient_id`` (logical id),
    based on the ImagingStudy ``imaging_study_id`` (when the sync made one) and the AI
    result SR ``sr_uid``; identified by the study and model so a retry updates, never
    duplicates (``identifier``: ``urn:medflow:ai-result`` | ``<study>/<model:version>``)."""
    systems = {"DCM": "http://dicom.nema.org/resources/ontology/DCM",
               "SCT": "http://snomed.info/sct"}  # fmt: skip
    system = systems.get(finding.scheme.upper(), f"urn:medflow:codes:{finding.scheme}")
    basis = [{"reference": f"ImagingStudy/{imaging_study_id}"}] if imaging_study_id else []
    when = (occurrence or datetime.now(UTC)).isoformat()
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "identifier": [{"system": "urn:medflow:ai-result",
                        "value": result_key(study_uid, finding.model_ref)}],
        "status": "final",
        "method": {
            "coding": [{"system": MODEL_SYSTEM, "code": finding.model_ref,
                        "display": f"medflow model {finding.model_ref}"}],
            "text": f"medflow model {finding.model_ref}",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "occurrenceDateTime": when,
        "performer": {"display": f"medflow model {finding.model_ref}"},
        "basis": basis,
        "prediction": [{
            "outcome": {"coding": [{"system": system, "code": finding.value,
                                    "display": finding.meaning or finding.value}],
                        "text": finding.meaning or finding.value},
            "probabilityDecimal": round(float(finding.probability), 6),
            "qualitativeRisk": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/risk-probability",
                "code": "high" if finding.present else "low"}]},
        }],
        "note": [{"text": f"Operating point {finding.threshold:.4f}; "
                          + ("above" if finding.present else "below") + " it."}],
    }  # fmt: skip
    if sr_uid:
        resource["basis"] = [*basis, {"identifier": {"system": "urn:dicom:uid",
                                                     "value": f"urn:oid:{sr_uid}"},
                                      "display": "AI result SR"}]  # fmt: skip
    if not resource["basis"]:  # R4: no empty arrays (no ImagingStudy yet, no SR)
        del resource["basis"]
    return resource


__all__ = ["MODEL_SYSTEM", "Finding", "build_ai_sr", "result_key", "risk_assessment", "token"]
