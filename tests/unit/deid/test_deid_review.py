"""Regression tests of what a review of the de-identification found leaking or disagreeing:
URLs with the source's UIDs, free text and names outside the table's rows, institution code
sequences, slide labels and photos, identifying patterns in cleaned descriptors, specimen and
container identifiers (DICOM vs FHIR), instances without PatientID, the source preamble, and
FHIR free text the default rules kept."""

from __future__ import annotations

import io
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medflow.deid.dicom import DicomDeidentifier, Excluded
from medflow.deid.fhir import FhirDeidentifier, load_rules
from medflow.deid.keys import DeidKeys
from medflow.deid.profile import load_profile

KEY = b"review-test-key-0123456789abcdef"


def _ct() -> pydicom.FileDataset:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    return pydicom.dcmread(path)


def _deid(profile: str = "research") -> DicomDeidentifier:
    return DicomDeidentifier(load_profile(profile), DeidKeys(KEY))


def _text(ds: Dataset) -> str:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue().decode("latin-1")


@pytest.mark.parametrize("profile", ["basic", "research"])
def test_urls_free_text_and_names_outside_the_table(profile: str) -> None:
    ds = _ct()
    ds.RetrieveURL = f"https://pacs.stmary.example/dicomweb/studies/{ds.StudyInstanceUID}"
    ds.TextValue = "top-level text John Doe"
    ds.DocumentTitle = "Report for John Doe"
    ds.HL7InstanceIdentifier = "DOC-MRN12345^1.2.3"
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "Springfield General"
    ds.IssuerOfAccessionNumberSequence = Sequence([issuer])
    ds.add_new(0x00142006, "PN", "Inspector^Gadget")  # an unlisted PN
    ds.PatientName = "Doe^John"
    out = _deid(profile).deidentify(ds)
    text = _text(out)
    for value in ("stmary", "John", "Doe", "MRN12345", "Springfield", "Gadget",
                  str(ds.StudyInstanceUID)):  # fmt: skip
        assert value not in text, value
    assert "RetrieveURL" not in out and "DocumentTitle" not in out


def test_institution_code_sequence_is_emptied() -> None:
    ds = _ct()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = "STMARY01", "L"
    code.CodeMeaning = "Saint Mary Clinic Springfield"
    ds.InstitutionCodeSequence = Sequence([code])
    out = _deid().deidentify(ds)
    assert "STMARY01" not in _text(out) and "Springfield" not in _text(out)
    kept = _deid("research").deidentify(ds)  # research does not retain institution identity
    assert not kept.get("InstitutionCodeSequence")


@pytest.mark.parametrize("flag", [
    {"ImageType": ["DERIVED", "PRIMARY", "LABEL", "NONE"]},
    {"ImageType": ["ORIGINAL", "PRIMARY", "OVERVIEW", "NONE"]},
    {"SpecimenLabelInImage": "YES"},
    {"RecognizableVisualFeatures": "YES"},
])  # fmt: skip
def test_labels_overviews_and_faces_are_excluded(flag: dict[str, Any]) -> None:
    ds = _ct()
    ds.BurnedInAnnotation = "NO"  # a wrong NO does not let a slide label through
    for keyword, value in flag.items():
        setattr(ds, keyword, value)
    with pytest.raises(Excluded):
        _deid().deidentify(ds)


def test_cleaning_scrubs_identifying_patterns() -> None:
    ds = _ct()
    request = Dataset()
    request.ReasonForTheRequestedProcedure = "fall at home, 12 Elm Street, call 555-1234"
    ds.RequestAttributesSequence = Sequence([request])
    ds.StudyDescription = "CT CHEST seen 3/14/2024 jd@example.org"
    ds.SeriesDescription = "T1 3.0 1.5 2.0"
    out = _deid("research").deidentify(ds)
    text = _text(out)
    for value in ("Elm Street", "555-1234", "3/14/2024", "jd@example.org"):
        assert value not in text, value
    assert out.SeriesDescription == "T1 3.0 1.5 2.0" and "CT CHEST" in out.StudyDescription


def test_specimen_and_container_identifiers_agree_with_fhir() -> None:
    keys = DeidKeys(KEY)
    ds = _ct()
    ds.ContainerIdentifier = "SLIDE-0042"
    specimen = Dataset()
    specimen.SpecimenIdentifier = "SP-26-0042"
    specimen.SpecimenUID = "1.2.3.4.5.6"
    ds.SpecimenDescriptionSequence = Sequence([specimen])
    out = _deid().deidentify(ds)
    fhir = FhirDeidentifier(load_rules(), keys)
    resource = {"resourceType": "Specimen", "id": "s1",
                "identifier": [{"system": "urn:hospital:specimen", "value": "SP-26-0042"}],
                "container": [{"identifier": [{"system": "urn:x", "value": "SLIDE-0042"}]}],
                "accessionIdentifier": {"system": "urn:lab", "value": "S26-42"}}  # fmt: skip
    fhir.prepare([resource])
    done = fhir.deidentify(resource)
    assert done is not None
    assert out.ContainerIdentifier == done["container"][0]["identifier"][0]["value"]
    assert out.SpecimenDescriptionSequence[0].SpecimenIdentifier == done["identifier"][0]["value"]
    assert done["accessionIdentifier"]["value"] == keys.identifier("accession", "S26-42")


def test_patients_without_patient_id_do_not_merge() -> None:
    a, b = _ct(), _ct()
    for ds, name, uid in ((a, "Doe^John", "1.2.3.1"), (b, "Roe^Jane", "1.2.3.2")):
        del ds.PatientID
        ds.PatientName, ds.StudyInstanceUID = name, uid
    out_a, out_b = _deid().deidentify(a), _deid().deidentify(b)
    assert str(out_a.PatientName) != str(out_b.PatientName)


def test_the_preamble_is_not_copied() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert path is not None
    data = open(path, "rb").read()  # noqa: SIM115
    source = bytearray(data)
    source[:128] = b"II*\0" + b"X" * 124  # a TIFF header in the preamble
    out = _deid().deidentify_bytes(bytes(source))
    assert out[:128] == b"\0" * 128 and out[128:132] == b"DICM"


def _fhir(resource: dict[str, Any]) -> dict[str, Any] | None:
    deid = FhirDeidentifier(load_rules(), DeidKeys(KEY))
    deid.prepare([resource])
    return deid.deidentify(resource)


def test_fhir_free_text_the_rules_remove() -> None:
    response = {"resourceType": "QuestionnaireResponse", "id": "q", "status": "completed",
                "item": [{"linkId": "1", "item": [{"linkId": "1.1", "answer": [
                    {"valueString": "nested: John Doe, 12 Elm St"}]}]}]}  # fmt: skip
    assert "John Doe" not in str(_fhir(response))
    condition = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}],
                          "text": "John's osteosarcoma"}}  # fmt: skip
    out = _fhir(condition)
    assert out is not None and "text" not in out["code"] and out["code"]["coding"]
    plan = {"resourceType": "CarePlan", "id": "cp", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/p"}, "title": "Call Jane at 555-1234",
            "activity": [{"detail": {"status": "scheduled",
                                     "description": "Jane 555"}}]}  # fmt: skip
    assert "Jane" not in str(_fhir(plan))
    assert _fhir({"resourceType": "Binary", "id": "b", "contentType": "text/plain",
                  "data": "Sm9obiBEb2U="}) is None  # fmt: skip
    assert _fhir({"resourceType": "AuditEvent", "id": "a", "type": {"code": "rest"},
                  "recorded": "2024-01-01T00:00:00Z", "agent": [{"requestor": True}],
                  "source": {"observer": {"display": "x"}}}) is None  # fmt: skip
