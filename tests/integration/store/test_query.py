"""Study/series/instance queries through ``StoreService.search`` on a real index (SQLite, and
PostgreSQL when MEDFLOW_TEST_POSTGRES_URL is set): every matching rule of PS3.4 C.2.2.2 and
the attributes PS3.18 10.6.3.3 requires."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from pydicom.dataset import Dataset

from medflow.dicom.matching import parse_attribute, parse_include_fields, parse_match
from medflow.store.query import Level, Query, QueryResult
from medflow.store.service import StoreService
from tests.factories import MR_IMAGE_STORAGE, make_instance, store_datasets

pytestmark = pytest.mark.integration
BASE = "https://pacs.example.org/dicomweb"
A, B, C, D = "1.2.840.99.1", "1.2.840.99.2", "1.2.840.99.3", "1.2.840.99.4"
A1, A2 = "1.2.840.99.1.1", "1.2.840.99.1.2"


@dataclass
class Archive:
    store: StoreService
    a_sops: list[str]


def _rq(sps: str, rp: str) -> list[Dataset]:
    item = Dataset()
    item.ScheduledProcedureStepID = sps
    item.RequestedProcedureID = rp
    return [item]


@pytest.fixture
def archive(store: StoreService) -> Archive:
    a = [
        make_instance(
            study_uid=A,
            series_uid=A1,
            instance_number=2,
            patient_name="Doe^John",
            patient_id="PAT-1",
            accession_number="ACC-1",
            study_description="CT Chest",
            PhysiciansOfRecord="House^Gregory",
            Manufacturer="ACME",
        ),
        make_instance(
            study_uid=A,
            series_uid=A1,
            instance_number=1,
            patient_name="Doe^John",
            patient_id="PAT-1",
            accession_number="ACC-1",
            study_description="CT Chest",
            PhysiciansOfRecord="House^Gregory",
            Manufacturer="ACME",
        ),
        make_instance(
            study_uid=A,
            series_uid=A2,
            instance_number=1,
            series_number=2,
            modality="MR",
            sop_class_uid=MR_IMAGE_STORAGE,
            patient_name="Doe^John",
            patient_id="PAT-1",
            accession_number="ACC-1",
            study_description="CT Chest",
            RequestAttributesSequence=_rq("SPS1", "RP1"),
            BodyPartExamined="HEAD",
            SeriesDescription="Axial T1",
        ),
    ]
    others = [
        make_instance(
            study_uid=B,
            patient_name="Müller^Hans",
            patient_id="PAT-2",
            study_date="20230601",
            study_time="233000",
            accession_number="ACC_2",
            study_description="MR Brain",
            modality="MR",
            rows=32,
        ),
        make_instance(
            study_uid=C,
            patient_name="O'Brien^Mary",
            patient_id="100%",
            study_date="20220101",
            accession_number="A%B",
            modality="US",
            study_description="Ultrasound",
        ),
        make_instance(
            study_uid=D,
            patient_name="DOEF^Jane",
            patient_id="pat-1",
            study_date="",
            accession_number="'; DROP TABLE study; --",
            modality="CT",
        ),
    ]
    outcomes = store_datasets(store, a + others)
    assert all(o.ok for o in outcomes)
    return Archive(store, [str(ds.SOPInstanceUID) for ds in a])


def search(
    archive: Archive,
    level: Level = "study",
    *,
    fuzzy: bool = False,
    include: list[str] | None = None,
    limit: int = 100,
    offset: int = 0,
    study: str | None = None,
    series: str | None = None,
    **keys: str,
) -> QueryResult:
    matches = tuple(parse_match(parse_attribute(k.replace("__", ".")), v) for k, v in keys.items())
    include_all, fields = parse_include_fields(include or [])
    return archive.store.search(
        Query(
            level=level,
            matches=matches,
            study_uid=study,
            series_uid=series,
            fuzzy=fuzzy,
            include_all=include_all,
            include=fields,
            limit=limit,
            offset=offset,
            base_url=BASE,
        )
    )


def value(row: dict[str, Any], tag: str) -> Any:
    values = row.get(tag, {}).get("Value")
    return None if values is None else values[0] if len(values) == 1 else values


def studies(archive: Archive, **kw: Any) -> list[str]:
    return [value(r, "0020000D") for r in search(archive, "study", **kw).rows]


# -- ordering, paging ------------------------------------------------------------------------------
def test_studies_newest_first_with_undated_last(archive: Archive) -> None:
    assert studies(archive) == [A, B, C, D]


def test_limit_offset_and_more(archive: Archive) -> None:
    first = search(archive, limit=2)
    assert [value(r, "0020000D") for r in first.rows] == [A, B] and first.more
    last = search(archive, limit=2, offset=2)
    assert [value(r, "0020000D") for r in last.rows] == [C, D] and not last.more
    assert search(archive, offset=50).rows == []
    assert search(archive, limit=0).rows == [] and search(archive, limit=0).more


# -- person names --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("doe*", [A, D]),
        ("DOE^*", [A]),
        ("doe^john", [A]),
        ("muller*", [B]),
        ("MÜLLER^HANS", [B]),
        ("*brien*", [C]),
        ("o'brien^mary", [C]),
        ("?OE^JOHN", [A]),
        ("jo", []),
        ("*", [A, B, C, D]),
    ],
)
def test_person_name_matching_ignores_case_and_accents(
    archive: Archive, key: str, expected: list[str]
) -> None:
    assert studies(archive, PatientName=key) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("jan", [D]),
        ("HANS", [B]),
        ("john doe", [A]),
        ("do", [A, D]),
        ("mull", [B]),
        ("o'bri", [C]),
        ("brien", []),
        ("doe^mary", []),
        ("", [A, B, C, D]),
    ],
)
def test_fuzzy_matching_on_name_words(archive: Archive, key: str, expected: list[str]) -> None:
    assert studies(archive, PatientName=key, fuzzy=True) == expected


def test_fuzzy_referring_physician(archive: Archive) -> None:
    assert studies(archive, ReferringPhysicianName="marc", fuzzy=True) == [A, B, C, D]
    assert studies(archive, ReferringPhysicianName="marc") == []
    assert studies(archive, ReferringPhysicianName="welby*") == [A, B, C, D]


# -- literal values, wild cards, escaping ---------------------------------------------------------
@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"PatientID": "PAT-1"}, [A]),
        ({"PatientID": "pat*"}, [D]),
        ({"PatientID": "PAT*"}, [A, B]),
        ({"PatientID": "100%"}, [C]),
        ({"PatientID": "10_%"}, []),
        ({"PatientID": "1?0%"}, [C]),
        ({"AccessionNumber": "ACC_*"}, [B]),
        ({"AccessionNumber": "ACC?2"}, [B]),
        ({"AccessionNumber": "A%*"}, [C]),
        ({"AccessionNumber": "%"}, []),
        ({"AccessionNumber": "'; DROP TABLE study; --"}, [D]),
        ({"AccessionNumber": "*DROP*"}, [D]),
        ({"PatientID": "' OR '1'='1"}, []),
        ({"PatientName": "*[a-z]*"}, []),
        ({"StudyDescription": "*chest*"}, [A, D]),
        ({"StudyDescription": "mr brain"}, [B]),
        ({"StudyInstanceUID": f"{A},{C}"}, [A, C]),
        ({"StudyInstanceUID": B}, [B]),
        ({"StudyID": "1"}, [A, B, C, D]),
        ({"PatientSex": "F"}, []),
        ({"PatientBirthDate": "1960-1980"}, [A, B, C, D]),
    ],
)
def test_study_keys(archive: Archive, keys: dict[str, str], expected: list[str]) -> None:
    assert studies(archive, **keys) == expected
    assert studies(archive) == [A, B, C, D]  # nothing was dropped or altered


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"StudyDate": "2023-2024"}, [A, B]),
        ({"StudyDate": "-20221231"}, [C]),
        ({"StudyDate": "20240115"}, [A]),
        ({"StudyDate": "20230101-"}, [A, B]),
        ({"StudyDate": "202306-202306"}, [B]),
        ({"StudyTime": "2300-"}, [B]),
        ({"StudyTime": "10"}, [A, C, D]),
        ({"StudyTime": "-1015"}, [A, C, D]),
        ({"StudyDate": "20230601-20240115", "StudyTime": "2300-1000"}, [B]),
        ({"StudyDate": "20230601-20240115", "StudyTime": "2330-1015"}, [A, B]),
        ({"StudyDate": "20230601-20240115", "StudyTime": "1000-"}, [A, B]),
    ],
)
def test_date_and_time_ranges(archive: Archive, keys: dict[str, str], expected: list[str]) -> None:
    assert studies(archive, **keys) == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [("MR", [A, B]), ("CT\\US", [A, C, D]), ("CT,US", [A, C, D]), ("M*", [A, B]), ("XA", [])],
)
def test_modalities_in_study(archive: Archive, key: str, expected: list[str]) -> None:
    assert studies(archive, ModalitiesInStudy=key) == expected


# -- returned attributes ---------------------------------------------------------------------------
def test_study_result_attributes(archive: Archive) -> None:
    rows = {value(r, "0020000D"): r for r in search(archive).rows}
    a = rows[A]
    assert value(a, "00201206") == 2 and value(a, "00201208") == 3
    assert value(a, "00080061") == ["CT", "MR"]
    assert value(a, "00081190") == f"{BASE}/studies/{A}"
    assert value(a, "00080056") == "ONLINE"
    assert value(a, "00100010") == {"Alphabetic": "Doe^John"}
    for tag in (
        "00080020",
        "00080030",
        "00080050",
        "00080090",
        "00100020",
        "00100030",
        "00100040",
        "00200010",
        "00080005",
        "00081030",
    ):
        assert tag in a
    assert rows[D]["00080020"] == {"vr": "DA"}  # type R: present, empty when unknown
    assert "00081048" not in a


def test_series_of_a_study(archive: Archive) -> None:
    rows = search(archive, "series", study=A).rows
    assert [value(r, "0020000E") for r in rows] == [A1, A2]
    assert [value(r, "00201209") for r in rows] == [2, 1]
    assert value(rows[0], "00081190") == f"{BASE}/studies/{A}/series/{A1}"
    mr = rows[1]
    assert value(mr, "00080060") == "MR" and value(mr, "0008103E") == "Axial T1"
    assert value(mr, "00400275") == {
        "00400009": {"vr": "SH", "Value": ["SPS1"]},
        "00401001": {"vr": "SH", "Value": ["RP1"]},
    }
    assert "00201206" not in mr  # study attributes only in the "all series" form


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"Modality": "MR"}, [A2]),
        ({"SeriesNumber": "2"}, [A2]),
        ({"SeriesNumber": "02"}, [A2]),
        ({"RequestAttributesSequence__ScheduledProcedureStepID": "SPS1"}, [A2]),
        ({"RequestAttributesSequence__RequestedProcedureID": "RP*"}, [A2]),
        ({"00400275.00400009": "SPS2"}, []),
        ({"BodyPartExamined": "HEAD"}, [A2]),
        ({"SeriesDescription": "axial*"}, [A2]),
        ({"SeriesInstanceUID": f"{A1},{A2}"}, [A1, A2]),
    ],
)
def test_series_keys(archive: Archive, keys: dict[str, str], expected: list[str]) -> None:
    rows = search(archive, "series", study=A, **keys).rows
    assert [value(r, "0020000E") for r in rows] == expected


def test_all_series_carry_study_attributes(archive: Archive) -> None:
    result = search(archive, "series", Modality="MR", PatientName="doe*", ModalitiesInStudy="CT")
    assert [value(r, "0020000E") for r in result.rows] == [A2]
    row = result.rows[0]
    assert value(row, "00201206") == 2 and value(row, "00080061") == ["CT", "MR"]
    assert value(row, "00081190") == f"{BASE}/studies/{A}/series/{A2}"
    assert value(row, "00100020") == "PAT-1"


def test_instances_of_a_series_in_instance_number_order(archive: Archive) -> None:
    rows = search(archive, "instance", study=A, series=A1).rows
    assert [value(r, "00200013") for r in rows] == [1, 2]
    row = rows[0]
    sop = value(row, "00080018")
    assert value(row, "00081190") == f"{BASE}/studies/{A}/series/{A1}/instances/{sop}"
    assert value(row, "00280010") == 16 and value(row, "00280100") == 16
    assert value(row, "00080016") == "1.2.840.10008.5.1.4.1.1.2"
    assert value(row, "0020000E") == A1 and value(row, "0020000D") == A
    assert value(row, "00100010") == {"Alphabetic": "Doe^John"}


@pytest.mark.parametrize(
    ("keys", "count"),
    [
        ({"SOPClassUID": MR_IMAGE_STORAGE}, 1),
        ({"InstanceNumber": "1"}, 2),
        ({"Rows": "16"}, 3),
        ({"Modality": "CT"}, 2),
        ({"Rows": "32"}, 0),
    ],
)
def test_instance_keys(archive: Archive, keys: dict[str, str], count: int) -> None:
    assert len(search(archive, "instance", study=A, **keys).rows) == count


def test_all_instances(archive: Archive) -> None:
    rows = search(archive, "instance", Rows="32", ModalitiesInStudy="M*").rows
    assert len(rows) == 1 and value(rows[0], "0020000D") == B
    assert value(rows[0], "00201208") == 1


def test_uid_in_path_limits_the_search(archive: Archive) -> None:
    assert search(archive, "series", study="1.2.3.4.5").rows == []
    assert len(search(archive, "instance", study=A).rows) == 3
    assert search(archive, "instance", study=B, series=A1).rows == []


# -- includefield ----------------------------------------------------------------------------------
def test_includefield_from_stored_metadata(archive: Archive) -> None:
    row = search(
        archive, include=["PhysiciansOfRecord,WindowCenter,Manufacturer"], StudyInstanceUID=A
    ).rows[0]
    assert value(row, "00081048") == {"Alphabetic": "House^Gregory"}
    assert "00281050" not in row and "00080070" not in row  # lower levels are not returned
    series = search(archive, "series", study=A, include=["Manufacturer", "WindowCenter"]).rows
    assert value(series[0], "00080070") == "ACME" and "00281050" not in series[0]
    inst = search(archive, "instance", study=A, include=["WindowCenter"]).rows[0]
    assert value(inst, "00281050") == 1024.0


def test_includefield_all(archive: Archive) -> None:
    study = search(archive, include=["all"], StudyInstanceUID=A).rows[0]
    assert "00081048" in study and "00280010" not in study and "7FE00010" not in study
    series = search(archive, "series", study=A, include=["all"]).rows[0]
    assert "00080070" in series and "00281050" not in series
    inst = search(archive, "instance", study=A, series=A1, include=["all"]).rows[0]
    pixel = inst["7FE00010"]["BulkDataURI"]
    assert pixel.startswith(f"{BASE}/studies/{A}/series/{A1}/instances/")


def test_universal_match_on_unindexed_attribute_returns_it(archive: Archive) -> None:
    result = search(archive, StudyInstanceUID=A, PhysiciansOfRecord="")
    assert value(result.rows[0], "00081048") == {"Alphabetic": "House^Gregory"}
    assert result.ignored == ()


# -- keys that cannot be matched -------------------------------------------------------------------
def test_unsupported_keys_are_ignored_and_reported(archive: Archive) -> None:
    result = search(archive, PhysiciansOfRecord="House*", Modality="MR")
    assert result.ignored == ("PhysiciansOfRecord", "Modality")
    assert [value(r, "0020000D") for r in result.rows] == [A, B, C, D]
    assert search(archive, SpecificCharacterSet="ISO_IR 100").ignored == ()
