"""The timeline builder (``medflow.patients.timeline``) on hand-made R4 resources: what each
resource becomes, order, grouping, the header, trends, priors and the filters."""

from __future__ import annotations

from datetime import date
from typing import Any

from medflow.patients.sources import studies_of_series
from medflow.patients.timeline import KINDS, StudyRef, Trend, build

SNOMED, LOINC = "http://snomed.info/sct", "http://loinc.org"
CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}
PATIENT = {"resourceType": "Patient", "id": "p1", "birthDate": "1970-06-15", "gender": "female",
           "name": [{"use": "official", "family": "Doe", "given": ["Jane"]}],
           "identifier": [{"system": "urn:medflow:mrn", "value": "MRN1",
                           "type": {"text": "MRN"}}]}  # fmt: skip
TODAY = date(2026, 6, 1)


def cc(code: str, display: str, system: str = SNOMED) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def obs(rid: str, day: str, code: str, name: str, value: float, unit: str,
        category: str) -> dict[str, Any]:  # fmt: skip
    return {"resourceType": "Observation", "id": rid, "status": "final",
            "category": [{"coding": [{"system": CAT, "code": category}]}],
            "code": cc(code, name, LOINC), "effectiveDateTime": day,
            "valueQuantity": {"value": value, "unit": unit}}  # fmt: skip


RESOURCES: list[dict[str, Any]] = [
    {"resourceType": "Condition", "id": "c1", "code": cc("307576001", "Osteosarcoma of bone"),
     "clinicalStatus": cc("active", "Active"), "verificationStatus": cc("confirmed", "Confirmed"),
     "onsetDateTime": "2024-01-10"},
    {"resourceType": "Condition", "id": "c2", "code": cc("233604007", "Pneumonia"),
     "clinicalStatus": cc("resolved", "Resolved"), "onsetDateTime": "2020-02-01",
     "abatementDateTime": "2020-02-20"},
    {"resourceType": "Condition", "id": "c3", "code": cc("1", "Mistake"),
     "verificationStatus": cc("entered-in-error", "x"), "onsetDateTime": "2024-01-11"},
    {"resourceType": "Procedure", "id": "pr1", "status": "completed",
     "code": cc("86273004", "Biopsy"), "performedDateTime": "2024-01-12"},
    {"resourceType": "MedicationRequest", "id": "m1", "status": "active",
     "medicationCodeableConcept": {"text": "methotrexate"}, "authoredOn": "2024-02-01",
     "dosageInstruction": [{"text": "12 g/m2"}]},
    {"resourceType": "MedicationRequest", "id": "m2", "status": "completed",
     "medicationCodeableConcept": {"text": "amoxicillin"}, "authoredOn": "2020-02-01"},
    {"resourceType": "AllergyIntolerance", "id": "a1", "code": {"text": "Penicillin"},
     "clinicalStatus": cc("active", "Active"),
     "reaction": [{"manifestation": [{"text": "Hives"}]}]},
    {"resourceType": "DiagnosticReport", "id": "r1", "status": "final",
     "category": [cc("RAD", "Radiology", "http://terminology.hl7.org/CodeSystem/v2-0074")],
     "code": {"text": "MR KNEE"}, "effectiveDateTime": "2024-01-10",
     "identifier": [{"type": ACSN, "value": "A1"}], "conclusion": "Aggressive lesion, 46 mm."},
    {"resourceType": "DiagnosticReport", "id": "r2", "status": "final",
     "category": [cc("SP", "Surgical Pathology", "http://terminology.hl7.org/CodeSystem/v2-0074")],
     "code": {"text": "Surgical pathology"}, "effectiveDateTime": "2024-01-12",
     "conclusion": "Conventional osteosarcoma.", "conclusionCode": [cc("1", "Osteosarcoma")],
     "identifier": [{"type": ACSN, "value": "S1"}]},
    {"resourceType": "DiagnosticReport", "id": "r3", "status": "final",
     "category": [cc("RAD", "Radiology", "http://terminology.hl7.org/CodeSystem/v2-0074")],
     "code": {"text": "MR KNEE"}, "effectiveDateTime": "2024-05-10",
     "imagingStudy": [{"reference": "ImagingStudy/is2"}], "conclusion": "Smaller, 30 mm."},
    {"resourceType": "ImagingStudy", "id": "is2", "status": "available",
     "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.2"}]},
    obs("o1", "2024-01-10", "21889-1", "Size Tumor", 46, "mm", "imaging"),
    obs("o2", "2024-05-10", "21889-1", "Size Tumor", 30, "mm", "imaging"),
    obs("o3", "2024-01-10", "8867-4", "Heart rate", 80, "/min", "vital-signs"),
    obs("o4", "2024-01-10", "8310-5", "Body temperature", 37.2, "Cel", "vital-signs"),
    obs("o5", "2024-05-10", "8867-4", "Heart rate", 72, "/min", "vital-signs"),
    {"resourceType": "Observation", "id": "o6", "status": "final",
     "code": cc("97509-4", "Cancer disease status", LOINC), "effectiveDateTime": "2024-09-01",
     "valueCodeableConcept": {"text": "Improved"}},
    {"resourceType": "RiskAssessment", "id": "ra1", "status": "final",
     "identifier": [{"system": "urn:medflow:ai-result", "value": "1.2.2/knee:1"}],
     "method": {"text": "medflow model knee:1"}, "occurrenceDateTime": "2024-05-10T12:00:00Z",
     "prediction": [{"outcome": {"text": "lesion"}, "probabilityDecimal": 0.873}]},
    {"resourceType": "Encounter", "id": "e1", "status": "finished",
     "class": {"code": "AMB", "display": "ambulatory"}, "type": [{"text": "Check up"}],
     "period": {"start": "2024-01-10", "end": "2024-01-10"}},
]  # fmt: skip
RESOURCES_BY_ID = {r["id"]: r for r in RESOURCES}
STUDIES = [
    StudyRef("1.2.1", "2024-01-10", "MR KNEE W/WO", "A1", ("MR",), ("KNEE",), 2),
    StudyRef("1.2.2", "2024-05-10", "MR KNEE W/WO", "A2", ("MR",), ("KNEE",), 2),
    StudyRef("1.2.3", "2024-03-01", "CT CHEST", "A3", ("CT",), ("CHEST",), 1),
    StudyRef("1.2.4", "2023-01-01", "XR KNEE", "A4", ("CR",), ("KNEE",), 1),
    StudyRef("1.2.5", "2024-01-12", "Slide", "S1", ("SM",), (), 1),
    StudyRef("1.2.6", "2024-06-01", "MR KNEE later", "A6", ("MR",), ("KNEE",), 1),
]


def timeline(**kw: Any) -> Any:
    return build(patient=PATIENT, resources=RESOURCES, studies=STUDIES, today=TODAY, **kw)


def test_what_each_resource_becomes() -> None:
    t = timeline()
    kinds = [e.kind for e in t.events]
    assert set(kinds) == set(KINDS) - {"finding"}
    assert all(e.ref != "Condition/c3" for e in t.events)  # entered in error
    whens = [e.when for e in t.events]
    assert whens == sorted(whens, reverse=True)
    path = next(e for e in t.events if e.kind == "pathology")
    assert path.ref == "DiagnosticReport/r2" and "Coded: Osteosarcoma" in path.notes
    slide = next(e for e in t.events if e.kind == "slide")
    assert slide.study_uid == "1.2.5" and slide.thumbnail
    first = next(e for e in t.events if e.kind == "imaging" and e.study_uid == "1.2.1")
    assert first.title == "MR KNEE W/WO" and "2 series" in first.detail
    assert first.notes == ["Report: Aggressive lesion, 46 mm."]  # by accession
    second = next(e for e in t.events if e.kind == "imaging" and e.study_uid == "1.2.2")
    assert second.notes[0] == "Report: Smaller, 30 mm."  # by ImagingStudy
    assert any("0.87" in n for n in second.notes)  # the AI result
    vitals = [e for e in t.events if e.title == "Vital signs"]
    assert [len(e.notes) for e in vitals] == [1, 2]  # per day
    outcomes = {e.title for e in t.events if e.kind == "outcome"}
    assert outcomes == {"Cancer disease status", "Pneumonia: resolved"}
    med = next(e for e in t.events if e.title == "methotrexate")
    assert med.detail == "12 g/m2" and med.status == "active"
    assert t.counts["imaging"] == 5 and sum(t.counts.values()) == len(t.events)


def test_the_header() -> None:
    h = timeline().header
    assert (h.name, h.gender, h.age) == ("Jane Doe", "female", 55)
    assert h.identifiers == [("MRN", "MRN1")]
    assert h.problems == ["Osteosarcoma of bone (since 2024-01-10)"]
    assert h.allergies == ["Penicillin: Hives"] and h.medications == ["methotrexate"]
    dead = build(patient={**PATIENT, "deceasedDateTime": "2000-06-14"}, resources=[],
                 studies=[], today=TODAY)  # fmt: skip
    assert dead.header.age == 29 and dead.header.deceased == "2000-06-14"
    assert [e.kind for e in dead.events] == ["outcome"]
    # R4 dates may be partial: a month of death, a year of birth
    partial = build(patient={**PATIENT, "birthDate": "1970", "deceasedDateTime": "2000-05"},
                    resources=[], studies=[], today=TODAY)  # fmt: skip
    assert partial.header.age == 30 and partial.header.deceased == "2000-05"


def test_absolute_and_versioned_references_link_a_report_to_its_study() -> None:
    """An external server may answer absolute references, or versioned ones."""
    base = "https://fhir.example.org/R4/ImagingStudy/is2"
    for ref in (base, f"{base}/_history/3"):
        report = {**RESOURCES_BY_ID["r3"], "imagingStudy": [{"reference": ref}]}
        t = build(patient=PATIENT, studies=STUDIES, today=TODAY,
                  resources=[report, RESOURCES_BY_ID["is2"]])  # fmt: skip
        second = next(e for e in t.events if e.kind == "imaging" and e.study_uid == "1.2.2")
        assert second.notes == ["Report: Smaller, 30 mm."], ref


def test_trends() -> None:
    trends = timeline().trends
    assert [t.label for t in trends] == ["Size Tumor", "Heart rate"]  # imaging first
    assert trends[0].points == [("2024-01-10", 46.0), ("2024-05-10", 30.0)]
    assert trends[0].latest == 30 and trends[0].unit == "mm"
    line = Trend("x", "x", "", [("a", 1.0), ("b", 3.0), ("c", 2.0)]).polyline(100, 20, 0)
    assert line == "0.0,20.0 50.0,0.0 100.0,10.0"
    assert Trend("x", "x", "", [("a", 5.0), ("b", 5.0)]).polyline(10, 10, 0) == "0.0,10.0 10.0,10.0"


def test_filters() -> None:
    t = timeline(kinds=["medication", "imaging", "nonsense"])
    assert {e.kind for e in t.events} == {"medication", "imaging"}
    assert t.kinds == ["medication", "imaging"]
    assert timeline(kinds=[]).kinds == []  # all
    dated = timeline(date_from=date(2024, 1, 11), date_to=date(2024, 1, 31))
    assert {e.when[:10] for e in dated.events} == {"2024-01-12"}
    assert dated.counts == timeline().counts


def test_priors() -> None:
    t = timeline(study_uid="1.2.2")
    assert t.study is not None and t.study.uid == "1.2.2"
    order = [(p.study.uid, p.match) for p in t.priors]
    assert order == [("1.2.1", "modality+body part"), ("1.2.4", "body part"),
                     ("1.2.3", "other"), ("1.2.5", "other")]  # fmt: skip
    assert t.priors[0].report == "Aggressive lesion, 46 mm."
    assert t.priors[0].report_ref == "DiagnosticReport/r1"
    assert timeline(study_uid="9.9").priors == []


def test_studies_from_qido_series() -> None:
    def series(study: str, uid: str, modality: str, part: str, n: int) -> dict[str, Any]:
        values = {"0020000D": ("UI", study), "0020000E": ("UI", uid), "00080060": ("CS", modality),
                  "00180015": ("CS", part), "00080020": ("DA", "20240110"),
                  "00081030": ("LO", "MR"), "00080050": ("SH", "A1"),
                  "00201209": ("IS", n)}  # fmt: skip
        return {tag: {"vr": vr, "Value": [v]} for tag, (vr, v) in values.items()}

    found = studies_of_series([series("1.1", "1.1.1", "MR", "KNEE", 10),
                               series("1.1", "1.1.2", "SR", "", 1),
                               series("1.2", "1.2.1", "CT", "CHEST", 5)])  # fmt: skip
    assert found[0] == StudyRef("1.1", "2024-01-10", "MR", "A1", ("MR", "SR"), ("KNEE",), 2, 11)
    assert found[1].series == 1 and found[1].instances == 5
