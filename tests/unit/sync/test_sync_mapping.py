"""DICOM JSON -> FHIR R4 mapping of the sync worker (medflow.sync.mapping).

Instances are built with pydicom and turned into DICOM JSON with ``to_json_dict()`` (PS3.18
F.2); every resource built is checked with medflow's R4 validator.
"""

from __future__ import annotations

import copy
import json
import random
import warnings
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medflow.core.errors import InvalidInput
from medflow.fhir.search_values import parse_token
from medflow.fhir.validation import validate
from medflow.sync.mapping import (
    ACSN,
    DCM,
    DICOM_UID_SYSTEM,
    MappingError,
    PatientKey,
    accession_number,
    endpoint,
    endpoint_identifier,
    imaging_study,
    merge_patient,
    new_patient,
    patient_fields,
    patient_key,
    study_identifier,
)

STUDY = "1.2.826.0.1.3680043.8.498.1"
CT_SERIES = "1.2.826.0.1.3680043.8.498.1.1"
PT_SERIES = "1.2.826.0.1.3680043.8.498.1.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE = "1.2.840.10008.5.1.4.1.1.128"
BASE_URL = "https://pacs.example.org/dicomweb"


def make(
    sop: str,
    *,
    series: str = CT_SERIES,
    study: str = STUDY,
    sop_class: str | None = CT_IMAGE,
    **attributes: Any,
) -> dict[str, Any]:
    """The DICOM JSON of one instance; keyword arguments set attributes (None: not set)."""
    ds = Dataset()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = sop
    if sop_class is not None:
        ds.SOPClassUID = sop_class
    defaults = {"PatientID": "MRN-1", "PatientName": "DOE^JANE", "Modality": "CT"}
    with warnings.catch_warnings():  # some tests set invalid values on purpose
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in {**defaults, **attributes}.items():
            if value is not None:
                setattr(ds, keyword, value)
    instance: dict[str, Any] = ds.to_json_dict()
    return instance


def ct_pet_study() -> list[dict[str, Any]]:
    """A CT series of three images and a PT series of two, with study-level attributes."""
    common = {
        "AccessionNumber": "ACC-77",
        "StudyDate": "20240131",
        "StudyTime": "093015.25",
        "TimezoneOffsetFromUTC": "+0100",
        "StudyDescription": "PET-CT WHOLE BODY",
        "PatientSex": "F",
        "PatientBirthDate": "19800102",
    }
    ct = [
        make(
            f"{CT_SERIES}.{n}",
            InstanceNumber=n,
            SeriesNumber=2,
            SeriesDescription="CT AC",
            BodyPartExamined="CHEST",
            SeriesDate="20240131",
            SeriesTime="0931",
            ModalitiesInStudy=["CT", "PT"],
            **common,
        )
        for n in (3, 1, 2)
    ]
    pt = [
        make(
            f"{PT_SERIES}.{n}",
            series=PT_SERIES,
            sop_class=PET_IMAGE,
            Modality="PT",
            InstanceNumber=n,
            SeriesNumber=1,
            BodyPartExamined="WHOLEBODY",
            **common,
        )
        for n in (2, 1)
    ]
    return ct + pt


def study_of(instances: list[dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("patient_reference", "Patient/123")
    kwargs.setdefault("endpoint_reference", "Endpoint/9")
    study = imaging_study(instances, **kwargs)
    assert_valid(study)
    return study


def assert_valid(resource: Mapping[str, Any]) -> None:
    assert validate(resource) == [], json.dumps(resource, indent=1)


# -- ImagingStudy --------------------------------------------------------------------------------


def test_study_level_elements() -> None:
    study = study_of(ct_pet_study())
    assert study["resourceType"] == "ImagingStudy"
    assert study["identifier"] == [
        {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{STUDY}"},
        {"type": {"coding": [{"system": ACSN[0], "code": "ACSN"}]}, "value": "ACC-77"},
    ]
    assert study["status"] == "available"
    assert study["subject"] == {"reference": "Patient/123"}
    assert study["endpoint"] == [{"reference": "Endpoint/9"}]
    assert study["started"] == "2024-01-31T09:30:15.25+01:00"
    assert study["description"] == "PET-CT WHOLE BODY"
    assert study["numberOfSeries"] == 2
    assert study["numberOfInstances"] == 5
    assert "basedOn" not in study


def test_modality_is_the_union_of_the_series_modalities_not_modalities_in_study() -> None:
    instances = [
        make("1.2.3.1", Modality="CT", ModalitiesInStudy=["MR"]),
        make("1.2.3.2", series=PT_SERIES, Modality="PT"),
        make("1.2.3.3", series="1.2.3.99", Modality="CT"),
    ]
    study = study_of(instances)
    assert study["modality"] == [{"system": DCM, "code": "CT"}, {"system": DCM, "code": "PT"}]
    assert study["numberOfSeries"] == 3


def test_series_sorted_by_number_then_uid_with_unnumbered_last() -> None:
    instances = [
        make("1.9.1", series="1.5", SeriesNumber=None),
        make("1.9.2", series="1.4", SeriesNumber=None),
        make("1.9.3", series="1.3", SeriesNumber=7),
        make("1.9.4", series="1.2", SeriesNumber=3),
        make("1.9.5", series="1.1", SeriesNumber=7),
    ]
    study = study_of(instances)
    assert [s["uid"] for s in study["series"]] == ["1.2", "1.1", "1.3", "1.4", "1.5"]
    assert [s.get("number") for s in study["series"]] == [3, 7, 7, None, None]


def test_series_elements() -> None:
    pt, ct = study_of(ct_pet_study())["series"]
    assert ct == {
        "uid": CT_SERIES,
        "number": 2,
        "modality": {"system": DCM, "code": "CT"},
        "description": "CT AC",
        "numberOfInstances": 3,
        "bodySite": {"system": "http://snomed.info/sct", "code": "51185008", "display": "CHEST"},
        "started": "2024-01-31T09:31:00+01:00",
        "instance": [
            {
                "uid": f"{CT_SERIES}.{n}",
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{CT_IMAGE}"},
                "number": n,
            }
            for n in (1, 2, 3)
        ],
    }
    assert pt["uid"] == PT_SERIES
    assert pt["number"] == 1
    assert pt["modality"] == {"system": DCM, "code": "PT"}
    assert pt["bodySite"] == {"display": "WHOLEBODY"}
    assert "description" not in pt
    assert "started" not in pt
    assert [i["sopClass"]["code"] for i in pt["instance"]] == [f"urn:oid:{PET_IMAGE}"] * 2


@pytest.mark.parametrize(
    ("body_part", "code"),
    [
        ("CHEST", "51185008"),
        ("HEAD", "69536005"),
        ("ABDOMEN", "818983003"),
        ("BREAST", "76752008"),
        ("PELVIS", "12921003"),
        ("KNEE", "72696002"),
        ("HAND", None),
        (None, None),
    ],
)
def test_body_site(body_part: str | None, code: str | None) -> None:
    series = study_of([make("1.2.3", BodyPartExamined=body_part)])["series"][0]
    if body_part is None:
        assert "bodySite" not in series
    elif code is None:
        assert series["bodySite"] == {"display": body_part}
    else:
        expected = {"system": "http://snomed.info/sct", "code": code, "display": body_part}
        assert series["bodySite"] == expected


def test_instances_sorted_by_number_then_uid_with_unnumbered_last() -> None:
    instances = [
        make("1.7.5", InstanceNumber=None),
        make("1.7.4", InstanceNumber=10),
        make("1.7.3", InstanceNumber=2),
        make("1.7.2", InstanceNumber=10),
        make("1.7.1", InstanceNumber=None),
    ]
    series = study_of(instances)["series"][0]
    assert [i["uid"] for i in series["instance"]] == ["1.7.3", "1.7.2", "1.7.4", "1.7.1", "1.7.5"]
    assert [i.get("number") for i in series["instance"]] == [2, 10, 10, None, None]


def test_instance_number_as_a_string_and_out_of_range() -> None:
    good, negative = make("1.8.1"), make("1.8.2", InstanceNumber=-4)
    good["00200013"] = {"vr": "IS", "Value": [" 12 "]}
    numbers = {
        i["uid"]: i.get("number") for i in study_of([good, negative])["series"][0]["instance"]
    }
    assert numbers == {"1.8.1": 12, "1.8.2": None}


def test_instance_title_from_document_title_or_content_label() -> None:
    instances = [
        make("1.6.1", InstanceNumber=1, DocumentTitle="Discharge letter", ContentLabel="LBL"),
        make("1.6.2", InstanceNumber=2, ContentLabel="SEGMENTATION"),
        make("1.6.3", InstanceNumber=3),
    ]
    titles = [i.get("title") for i in study_of(instances)["series"][0]["instance"]]
    assert titles == ["Discharge letter", "SEGMENTATION", None]


@pytest.mark.parametrize(
    ("date", "time", "offset", "started"),
    [
        ("20240131", "093015", "+0100", "2024-01-31T09:30:15+01:00"),
        ("20240131", "093015.123456", "-0500", "2024-01-31T09:30:15.123456-05:00"),
        ("20240131", "09", "+0000", "2024-01-31T09:00:00+00:00"),
        ("20240131", "0930", "+1400", "2024-01-31T09:30:00+14:00"),
        ("20240131", "235960", "-1200", "2024-01-31T23:59:60-12:00"),
        ("20240131", "093015", None, "2024-01-31"),
        ("20240131", None, "+0100", "2024-01-31"),
        ("20240131", "253015", "+0100", "2024-01-31"),
        ("20240131", "093015", "+1500", "2024-01-31"),
        ("20240131", "093015", "0100", "2024-01-31"),
        ("2024.01.31", None, None, "2024-01-31"),
        ("20240230", "093015", "+0100", None),
        ("2024", None, None, None),
        (None, "093015", "+0100", None),
    ],
)
def test_started(
    date: str | None, time: str | None, offset: str | None, started: str | None
) -> None:
    instance = make("1.2.3", StudyDate=date, StudyTime=time, TimezoneOffsetFromUTC=offset)
    study = study_of([instance])
    assert study.get("started") == started


def test_missing_accession_gives_only_the_uid_identifier() -> None:
    study = study_of([make("1.2.3")])
    assert study["identifier"] == [{"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{STUDY}"}]
    assert accession_number([make("1.2.3")]) is None


def test_accession_of_the_latest_instance_that_has_one() -> None:
    instances = [
        make("1.2.1", AccessionNumber="OLD"),
        make("1.2.2", AccessionNumber="NEW"),
        make("1.2.3", AccessionNumber=""),
    ]
    assert accession_number(instances) == "NEW"
    assert study_of(instances)["identifier"][1]["value"] == "NEW"


def test_later_instances_win_on_study_and_series_attributes() -> None:
    instances = [
        make("1.2.1", StudyDescription="OLD", SeriesDescription="OLD", SeriesNumber=1),
        make("1.2.2", StudyDescription="NEW", SeriesDescription="NEW", SeriesNumber=4),
        make("1.2.3"),
    ]
    study = study_of(instances)
    assert study["description"] == "NEW"
    assert study["series"][0]["description"] == "NEW"
    assert study["series"][0]["number"] == 4


def test_series_without_modality_is_other() -> None:
    study = study_of([make("1.2.3", Modality=None)])
    assert study["series"][0]["modality"] == {"system": DCM, "code": "OT"}
    assert study["modality"] == [{"system": DCM, "code": "OT"}]


def test_duplicate_sop_instance_is_counted_once() -> None:
    first = make("1.2.3", InstanceNumber=1)
    moved = make("1.2.3", series=PT_SERIES, Modality="PT", InstanceNumber=2)
    study = study_of([first, make("1.2.4"), first, moved])
    assert study["numberOfInstances"] == 2
    assert {s["uid"]: s["numberOfInstances"] for s in study["series"]} == {
        CT_SERIES: 1,
        PT_SERIES: 1,
    }
    study = study_of([first, first])
    assert study["numberOfInstances"] == study["numberOfSeries"] == 1


def test_same_output_for_any_order_of_the_instances() -> None:
    instances = ct_pet_study()
    expected = json.dumps(study_of(instances))
    rng = random.Random(5)
    for _ in range(20):
        shuffled = instances[:]
        rng.shuffle(shuffled)
        assert json.dumps(study_of(shuffled)) == expected


def test_based_on_is_kept_and_copied() -> None:
    based_on = [{"reference": "ServiceRequest/1"}, {"reference": "ServiceRequest/2"}]
    study = study_of(ct_pet_study(), based_on=based_on)
    assert study["basedOn"] == based_on
    study["basedOn"][0]["reference"] = "changed"
    assert based_on[0]["reference"] == "ServiceRequest/1"


def test_references_as_given() -> None:
    ref = "Patient?identifier=urn:medflow:mrn|MRN-1"
    study = study_of(ct_pet_study(), patient_reference=ref, endpoint_reference=None)
    assert study["subject"] == {"reference": ref}
    assert "endpoint" not in study
    study = study_of(ct_pet_study(), patient_reference="urn:uuid:0f5a6c1e-3f0a-4c4e-9d7e-1f2a")
    assert study["subject"]["reference"].startswith("urn:uuid:")


def test_input_is_not_modified() -> None:
    instances = ct_pet_study()
    before = copy.deepcopy(instances)
    study_of(instances)
    assert instances == before


@pytest.mark.parametrize(
    ("keyword", "tag"),
    [
        ("StudyInstanceUID", "(0020,000D)"),
        ("SeriesInstanceUID", "(0020,000E)"),
        ("SOPInstanceUID", "(0008,0018)"),
        ("SOPClassUID", "(0008,0016)"),
    ],
)
@pytest.mark.parametrize("problem", ["absent", "empty", "invalid"])
def test_missing_or_bad_required_uid(keyword: str, tag: str, problem: str) -> None:
    bad = make("1.2.3.2", PatientName="SECRET^NAME", PatientID="SECRET-ID")
    key = {"StudyInstanceUID": "0020000D", "SeriesInstanceUID": "0020000E"}.get(keyword)
    key = key or {"SOPInstanceUID": "00080018", "SOPClassUID": "00080016"}[keyword]
    if problem == "absent":
        del bad[key]
    elif problem == "empty":
        bad[key] = {"vr": "UI"}
    else:
        bad[key] = {"vr": "UI", "Value": ["1.2.SECRET"]}
    with pytest.raises(MappingError) as caught:
        imaging_study(
            [make("1.2.3.1"), bad], patient_reference="Patient/1", endpoint_reference=None
        )
    assert f"{keyword} {tag}" in caught.value.message
    assert "SECRET" not in caught.value.message
    assert isinstance(caught.value, InvalidInput)


def test_no_instances_or_several_studies() -> None:
    with pytest.raises(MappingError):
        imaging_study([], patient_reference="Patient/1", endpoint_reference=None)
    other = make("1.2.3.2", study="1.2.999")
    with pytest.raises(MappingError, match="StudyInstanceUID"):
        imaging_study([make("1.2.3.1"), other], patient_reference="P/1", endpoint_reference=None)


def test_uid_padding_is_removed() -> None:
    instance = make("1.2.3")
    instance["00080018"] = {"vr": "UI", "Value": ["1.2.3\x00"]}
    assert study_of([instance])["series"][0]["instance"][0]["uid"] == "1.2.3"


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm"])
def test_pydicom_test_files_map_to_valid_resources(name: str) -> None:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not shipped with this pydicom")
    instance = dcmread(path).to_json_dict(bulk_data_threshold=64, bulk_data_element_handler=str)
    study = study_of([instance])
    assert study["numberOfInstances"] == 1
    assert_valid(new_patient(patient_key(instance), patient_fields(instance)))


def test_study_identifier() -> None:
    assert study_identifier("1.2.3") == (DICOM_UID_SYSTEM, "urn:oid:1.2.3")


# -- Patient -------------------------------------------------------------------------------------


def test_patient_key_default_and_configured_system() -> None:
    instance = make("1.2.3", PatientID="MRN-1  ", IssuerOfPatientID="HOSP A")
    assert patient_key(instance) == PatientKey("urn:medflow:mrn", "MRN-1")
    assert patient_key(instance, system="urn:oid:1.2.9").system == "urn:oid:1.2.9"


def test_patient_key_with_issuer() -> None:
    instance = make("1.2.3", IssuerOfPatientID="HOSP A")
    key = patient_key(instance, use_issuer=True)
    assert key == PatientKey("urn:medflow:issuer:HOSP%20A", "MRN-1")
    assert_valid(new_patient(key, {}))
    no_issuer = make("1.2.3")
    assert patient_key(no_issuer, system="urn:x", use_issuer=True).system == "urn:x"


@pytest.mark.parametrize("patient_id", [None, "", "   "])
def test_patient_key_needs_a_patient_id(patient_id: str | None) -> None:
    instance = make("1.2.3", PatientID=patient_id)
    with pytest.raises(MappingError, match=r"PatientID \(0010,0020\)"):
        patient_key(instance)


def test_patient_key_repr_hides_the_value() -> None:
    assert "MRN-1" not in repr(PatientKey("urn:medflow:mrn", "MRN-1"))


@pytest.mark.parametrize(
    ("value", "query"),
    [
        ("MRN-1", "identifier=urn:medflow:mrn|MRN-1"),
        ("A,B|C$D\\E", "identifier=urn:medflow:mrn|A\\,B\\|C\\$D\\\\E"),
        ("A&B+C D#E%F", "identifier=urn:medflow:mrn|A%26B%2BC%20D%23E%25F"),
        ("MÜLLER=1", "identifier=urn:medflow:mrn|M%C3%9CLLER=1"),
    ],
)
def test_patient_key_query_escaping(value: str, query: str) -> None:
    key = PatientKey("urn:medflow:mrn", value)
    assert key.query() == query
    [(name, text)] = parse_qsl(key.query(), keep_blank_values=True)
    token = parse_token(text)
    assert (name, token.system, token.code) == ("identifier", key.system, value)


def test_patient_key_query_escapes_the_system() -> None:
    key = PatientKey("urn:medflow:issuer:A|B", "1")
    token = parse_token(dict(parse_qsl(key.query()))["identifier"])
    assert (token.system, token.code) == ("urn:medflow:issuer:A|B", "1")


@pytest.mark.parametrize(
    ("pn", "name"),
    [
        (
            "DOE^JANE^ANN^DR^JR",
            {"family": "DOE", "given": ["JANE", "ANN"], "prefix": ["DR"], "suffix": ["JR"]},
        ),
        ("DOE^JANE^^DR^", {"family": "DOE", "given": ["JANE"], "prefix": ["DR"]}),
        ("DOE", {"family": "DOE"}),
        ("^JANE", {"given": ["JANE"]}),
        ("^^^^III", {"suffix": ["III"]}),
        ("Yamada^Tarou=山田^太郎=やまだ^たろう", {"family": "Yamada", "given": ["Tarou"]}),
        ("=山田^太郎", None),
        ("^^^^", None),
        ("", None),
        (None, None),
    ],
)
def test_patient_name(pn: str | None, name: dict[str, Any] | None) -> None:
    fields = patient_fields(make("1.2.3", PatientName=pn))
    if name is None:
        assert "name" not in fields
    else:
        assert fields["name"] == [name]
    assert_valid(new_patient(PatientKey("urn:x", "1"), fields))


@pytest.mark.parametrize(
    ("sex", "gender"),
    [("M", "male"), ("F", "female"), ("O", "other"), ("U", None), ("", None), (None, None)],
)
def test_patient_gender(sex: str | None, gender: str | None) -> None:
    assert patient_fields(make("1.2.3", PatientSex=sex)).get("gender") == gender


@pytest.mark.parametrize(
    ("birth", "date"),
    [
        ("19800102", "1980-01-02"),
        ("1980.01.02", "1980-01-02"),
        ("19800230", None),
        ("1980", None),
        ("00000101", None),
        ("", None),
        (None, None),
    ],
)
def test_patient_birth_date(birth: str | None, date: str | None) -> None:
    assert patient_fields(make("1.2.3", PatientBirthDate=birth)).get("birthDate") == date


def test_patient_fields_without_patient_data() -> None:
    assert patient_fields(make("1.2.3", PatientName=None)) == {}


def test_new_patient() -> None:
    instance = ct_pet_study()[0]
    fields = patient_fields(instance)
    patient = new_patient(patient_key(instance), fields)
    assert patient == {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:medflow:mrn", "value": "MRN-1"}],
        "name": [{"family": "DOE", "given": ["JANE"]}],
        "gender": "female",
        "birthDate": "1980-01-02",
    }
    assert_valid(patient)
    patient["name"][0]["family"] = "CHANGED"
    assert fields["name"][0]["family"] == "DOE"


def existing_patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "123",
        "meta": {"versionId": "4", "lastUpdated": "2024-01-01T00:00:00Z"},
        "identifier": [
            {"system": "urn:medflow:mrn", "value": "MRN-1"},
            {"system": "urn:ehr:id", "value": "E1"},
        ],
        "active": True,
        "name": [{"family": "DOE", "given": ["JANE"]}],
        "telecom": [{"system": "phone", "value": "555-0100"}],
        "gender": "female",
        "birthDate": "1980-01-02",
        "address": [{"city": "Springfield"}],
    }


def test_merge_patient_unchanged_is_none() -> None:
    fields = patient_fields(ct_pet_study()[0])
    assert merge_patient(existing_patient(), fields) is None
    other_meta = {**existing_patient(), "meta": {"versionId": "9"}}
    assert merge_patient(other_meta, fields) is None
    assert merge_patient(existing_patient(), {}) is None


def test_merge_patient_replaces_only_dicom_fields() -> None:
    existing = existing_patient()
    before = copy.deepcopy(existing)
    fields = patient_fields(make("1.2.3", PatientName="DOE^JANET^M", PatientSex="O"))
    merged = merge_patient(existing, fields)
    assert merged is not None
    assert existing == before
    assert merged["name"] == [{"family": "DOE", "given": ["JANET", "M"]}]
    assert merged["gender"] == "other"
    untouched = {k: v for k, v in merged.items() if k not in ("name", "gender")}
    assert untouched == {k: v for k, v in before.items() if k not in ("name", "gender")}
    assert_valid(merged)


def test_merge_patient_fills_absent_fields() -> None:
    existing = {"resourceType": "Patient", "id": "1", "identifier": [{"value": "X"}]}
    merged = merge_patient(existing, {"birthDate": "1970-05-06"})
    assert merged == {**existing, "birthDate": "1970-05-06"}


def test_merge_patient_keeps_a_richer_equal_name() -> None:
    existing = existing_patient()
    existing["name"] = [
        {"use": "official", "family": "DOE", "given": ["JANE"], "text": "Jane Doe"},
        {"use": "maiden", "family": "ROE"},
    ]
    assert merge_patient(existing, {"name": [{"family": "DOE", "given": ["JANE"]}]}) is None
    assert merge_patient(existing, {"name": [{"family": "ROE"}]}) is None
    merged = merge_patient(existing, {"name": [{"family": "SMITH", "given": ["JANE"]}]})
    assert merged is not None
    assert merged["name"] == [{"family": "SMITH", "given": ["JANE"]}]


# -- Endpoint ------------------------------------------------------------------------------------


def test_endpoint() -> None:
    assert endpoint_identifier(BASE_URL) == ("urn:medflow:endpoint", BASE_URL)
    resource = endpoint(BASE_URL)
    assert_valid(resource)
    assert resource["status"] == "active"
    assert resource["address"] == BASE_URL
    assert resource["identifier"] == [{"system": "urn:medflow:endpoint", "value": BASE_URL}]
    assert resource["connectionType"] == {
        "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
        "code": "dicom-wado-rs",
    }
    assert resource["payloadType"] == [{"text": "DICOM"}]
    assert resource["name"]
    assert endpoint(BASE_URL) == resource


@pytest.mark.parametrize("url", ["", "http://a b/"])
def test_endpoint_needs_a_url(url: str) -> None:
    with pytest.raises(MappingError):
        endpoint(url)
