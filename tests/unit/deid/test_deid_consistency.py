"""DICOM and FHIR de-identified with one Deidentification agree where their links depend on
the profile: the patient key (also with IssuerOfPatientID systems), UIDs (mapped, or kept
with retain-uids on both sides), dates (shifted by the same offset, or kept with full dates
retained on both sides)."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydantic import SecretStr
from pydicom.data import get_testdata_file

from medflow.core.settings import DeidSettings, Settings, SyncSettings
from medflow.deid.service import Deidentification
from medflow.fhir.identifiers import MRN_SYSTEM, patient_system

KEY = SecretStr("consistency-test-key-0123456789")


def _deid(tmp_path: Path, options: list[str], *, use_issuer: bool = False) -> Deidentification:
    profile = tmp_path / "profile.yaml"
    profile.write_text("name: test\noptions: [" + ", ".join(options) + "]\n")
    settings = Settings(deid=DeidSettings(key=KEY), sync=SyncSettings(use_issuer=use_issuer))
    return Deidentification.from_settings(settings, profile=str(profile))


def _ct() -> pydicom.Dataset:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    ds = pydicom.dcmread(path)
    ds.StudyDate = "20240305"
    return ds


def _fhir(ds: pydicom.Dataset, system: str) -> list[dict[str, Any]]:
    """The Patient, a Condition and the ImagingStudy the sync would write for ``ds``."""
    patient = {"resourceType": "Patient", "id": "p1",
               "identifier": [{"system": system, "value": str(ds.PatientID)}]}  # fmt: skip
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                 "code": {"text": "x"}, "onsetDateTime": "2024-02-20"}  # fmt: skip
    study = {"resourceType": "ImagingStudy", "id": "s1", "status": "available",
             "subject": {"reference": "Patient/p1"},
             "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{ds.StudyInstanceUID}"}],
             "series": [{"uid": str(ds.SeriesInstanceUID), "modality": {"code": "CT"},
                         "instance": [{"uid": str(ds.SOPInstanceUID),
                                       "sopClass": {"code": str(ds.SOPClassUID)}}]}]}  # fmt: skip
    return [patient, condition, study]


def _both(deid: Deidentification, ds: pydicom.Dataset, system: str) -> tuple[Any, ...]:
    resources = _fhir(ds, system)
    deid.fhir.prepare(resources)
    patient, condition, study = (deid.fhir.deidentify(r) for r in resources)
    assert patient is not None and condition is not None and study is not None
    return deid.dicom.deidentify(ds), patient, condition, study


@pytest.mark.parametrize("use_issuer", [False, True])
def test_patient_uids_and_dates_agree(tmp_path: Path, use_issuer: bool) -> None:
    ds = _ct()
    ds.IssuerOfPatientID = "HOSPITAL A"
    system = patient_system(ds.IssuerOfPatientID, use_issuer=use_issuer)
    assert (system != MRN_SYSTEM) is use_issuer
    deid = _deid(tmp_path, ["retain-long-modified-dates"], use_issuer=use_issuer)
    out, patient, condition, study = _both(deid, ds, system)
    assert out.PatientID == patient["id"] == deid.keys.patient_pseudonym(system, ds.PatientID)
    assert study["subject"]["reference"] == f"Patient/{patient['id']}"
    assert study["identifier"][0]["value"] == f"urn:oid:{out.StudyInstanceUID}"
    assert study["series"][0]["uid"] == out.SeriesInstanceUID != ds.SeriesInstanceUID
    assert study["series"][0]["instance"][0]["uid"] == out.SOPInstanceUID
    shifted = date.fromisoformat(condition["onsetDateTime"][:10])
    study_day = date(int(out.StudyDate[:4]), int(out.StudyDate[4:6]), int(out.StudyDate[6:]))
    assert study_day - shifted == date(2024, 3, 5) - date(2024, 2, 20)
    assert study_day != date(2024, 3, 5)


def test_retained_uids_and_full_dates_are_retained_in_fhir_too(tmp_path: Path) -> None:
    ds = _ct()
    deid = _deid(tmp_path, ["retain-uids", "retain-long-full-dates"])
    out, patient, condition, study = _both(deid, ds, MRN_SYSTEM)
    assert out.StudyInstanceUID == ds.StudyInstanceUID
    assert study["identifier"][0]["value"] == f"urn:oid:{ds.StudyInstanceUID}"
    assert study["series"][0]["uid"] == ds.SeriesInstanceUID
    assert out.StudyDate == "20240305" and condition["onsetDateTime"] == "2024-02-20"
    assert out.PatientID == patient["id"]  # the pseudonym is never retained


def test_dicom_ages_over_89_are_grouped(tmp_path: Path) -> None:
    deid = _deid(tmp_path, ["retain-patient-characteristics"])
    for age, shown in (("095Y", "090Y"), ("090Y", "090Y"), ("089Y", "089Y"), ("030M", "030M")):
        ds = _ct()
        ds.PatientAge = age
        assert deid.dicom.deidentify(ds).PatientAge == shown
