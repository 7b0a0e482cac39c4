"""QIDO-RS over HTTP (PS3.18 10.6): resources, media types, parameters, warnings, bad input."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from medflow.dicomweb import qido
from medflow.store.service import StoreService
from tests.factories import make_instance, store_datasets

pytestmark = pytest.mark.integration
ROOT = "/dicomweb"
STUDY, OTHER, SERIES = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.1.1"


@pytest.fixture
def loaded(store: StoreService, client: TestClient) -> TestClient:
    datasets = [
        make_instance(
            study_uid=STUDY,
            series_uid=SERIES,
            patient_name="Doe^John",
            patient_id="100%",
            study_date="20240115",
            instance_number=1,
        ),
        make_instance(
            study_uid=STUDY,
            series_uid=SERIES,
            patient_name="Doe^John",
            patient_id="100%",
            study_date="20240115",
            instance_number=2,
        ),
        make_instance(
            study_uid=OTHER,
            patient_name="Roe^Jane",
            patient_id="PAT_2",
            study_date="20230301",
            modality="MR",
        ),
    ]
    assert all(o.ok for o in store_datasets(store, datasets))
    return client


def get(client: TestClient, path: str, **headers: str) -> Any:
    return client.get(ROOT + path, headers=headers)


def uids(response: Any, tag: str = "0020000D") -> list[str]:
    assert response.status_code == 200, response.text
    return [row[tag]["Value"][0] for row in response.json()]


# -- resources and media types ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("path", "count", "tag"),
    [
        ("/studies", 2, "0020000D"),
        ("/series", 2, "0020000E"),
        ("/instances", 3, "00080018"),
        (f"/studies/{STUDY}/series", 1, "0020000E"),
        (f"/studies/{STUDY}/instances", 2, "00080018"),
        (f"/studies/{STUDY}/series/{SERIES}/instances", 2, "00080018"),
    ],
)
def test_every_search_resource(loaded: TestClient, path: str, count: int, tag: str) -> None:
    r = get(loaded, path)
    assert r.headers["content-type"].startswith("application/dicom+json")
    assert len(uids(r, tag)) == count
    for row in r.json():
        assert row["00081190"]["Value"][0].startswith("http://testserver/dicomweb/studies/")


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        ("application/dicom+json", "application/dicom+json"),
        ("application/json", "application/json"),
        ("*/*", "application/dicom+json"),
        ("text/html, application/json;q=0.5", "application/json"),
    ],
)
def test_acceptable_media_types(loaded: TestClient, accept: str, media: str) -> None:
    r = get(loaded, "/studies", Accept=accept)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(media)


@pytest.mark.parametrize("accept", ["application/dicom+xml", "text/html", "image/jpeg"])
def test_unacceptable_media_types(loaded: TestClient, accept: str) -> None:
    assert get(loaded, "/studies", Accept=accept).status_code == 406


def test_accept_query_parameter(loaded: TestClient) -> None:
    r = get(loaded, "/studies?accept=application/json", Accept="text/html")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")


def test_no_match_is_an_empty_array(loaded: TestClient) -> None:
    r = get(loaded, "/studies?PatientID=nobody")
    assert r.status_code == 200 and r.json() == []
    assert get(loaded, "/studies/1.2.3/series").json() == []


# -- matching through the URL --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("PatientName=doe%2A", [STUDY]),
        ("PatientName=doe*", [STUDY]),
        ("00100010=ROE%5EJANE", [OTHER]),
        ("PatientID=100%25", [STUDY]),
        ("PatientID=PAT%5F2", [OTHER]),
        ("PatientID=PAT%252", []),
        ("StudyDate=2024-", [STUDY]),
        ("StudyDate=-20231231", [OTHER]),
        (f"StudyInstanceUID={STUDY}%2C{OTHER}", [STUDY, OTHER]),
        (f"StudyInstanceUID={STUDY},{OTHER}", [STUDY, OTHER]),
        ("ModalitiesInStudy=MR", [OTHER]),
        ("PatientName=jan&fuzzymatching=true", [OTHER]),
        ("PatientName=", [STUDY, OTHER]),
        ("PatientID=%27%3B%20DROP%20TABLE%20study%3B%20--", []),
        ("PatientID=%22quoted%22", []),
        ("PatientName=O%27Brien*", []),
    ],
)
def test_matching(loaded: TestClient, query: str, expected: list[str]) -> None:
    assert uids(get(loaded, f"/studies?{query}")) == expected
    assert len(uids(get(loaded, "/studies"))) == 2  # the index is intact


def test_sequence_key_and_includefield(loaded: TestClient) -> None:
    r = get(loaded, "/series?RequestAttributesSequence.ScheduledProcedureStepID=SPS9")
    assert uids(r) == []
    r = get(loaded, f"/studies/{STUDY}/instances?includefield=WindowCenter&limit=1")
    assert r.json()[0]["00281050"]["Value"] == [1024.0]
    r = get(loaded, f"/studies/{STUDY}/series/{SERIES}/instances?includefield=all&limit=1")
    uri = r.json()[0]["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"http://testserver/dicomweb/studies/{STUDY}/series/{SERIES}/")


# -- paging and warnings ---------------------------------------------------------------------------
def test_paging_and_more_results_warning(loaded: TestClient) -> None:
    first = get(loaded, "/studies?limit=1")
    assert uids(first) == [STUDY]
    assert first.headers["warning"].startswith("299 http://testserver/dicomweb: ")
    assert "additional results" in first.headers["warning"]
    second = get(loaded, "/studies?limit=1&offset=1")
    assert uids(second) == [OTHER] and "warning" not in second.headers
    assert get(loaded, "/studies?offset=99999999999999999999").json() == []


def test_limit_above_the_maximum_is_clamped(
    loaded: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert len(uids(get(loaded, "/instances?limit=1000000"))) == 3
    monkeypatch.setattr(qido, "MAX_LIMIT", 2)
    r = get(loaded, "/instances?limit=50")
    assert len(uids(r, "00080018")) == 2
    assert "exceeded the maximum supported by the server" in r.headers["warning"]


def test_unsupported_matching_keys_are_ignored_with_a_warning(loaded: TestClient) -> None:
    r = get(loaded, "/studies?PhysiciansOfRecord=Secret*&Modality=CT")
    assert uids(r) == [STUDY, OTHER]
    warning = r.headers["warning"]
    assert "PhysiciansOfRecord" in warning and "Modality" in warning
    assert "Secret" not in warning


def test_unsupported_flags_are_reported(loaded: TestClient) -> None:
    r = get(loaded, "/studies?emptyvaluematching=true&multiplevaluematching=false")
    assert r.status_code == 200
    assert r.headers.get_list("warning") == [
        '299 http://testserver/dicomweb: "The emptyvaluematching parameter is not supported. '
        'Empty Value Matching has not been performed."'
    ]


# -- bad requests ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("Foo=1", "Foo"),
        ("patientname=x", "patientname"),
        ("_=1700000000", "'_'"),
        ("%27%3B%20DROP%20TABLE%20study%3B--=1", "DROP TABLE"),
        ("StudyDate=2024-01-01", "StudyDate"),
        ("StudyDate=20241301x", "StudyDate"),
        ("StudyDate=20240201-20240101", "StudyDate"),
        ("StudyInstanceUID=1.2.abc", "StudyInstanceUID"),
        ("SeriesNumber=one", "SeriesNumber"),
        ("limit=-1", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("offset=-5", "offset"),
        ("fuzzymatching=maybe", "fuzzymatching"),
        ("limit=1&limit=2", "repeated"),
        ("PatientID=a&PatientID=b", "repeated"),
        ("includefield=NotAnAttribute", "NotAnAttribute"),
        ("PatientID=a%00b", "control"),
    ],
)
def test_bad_requests(loaded: TestClient, query: str, reason: str) -> None:
    r = get(loaded, f"/studies?{query}")
    assert r.status_code == 400, r.text
    assert reason in r.json()["detail"]


def test_invalid_uid_in_path(loaded: TestClient) -> None:
    assert get(loaded, "/studies/not-a-uid/series").status_code == 400
    assert get(loaded, f"/studies/{STUDY}/series/1.2.x/instances").status_code == 400


HOSTILE = [
    "O'Brien",
    "100%",
    "%",
    "_",
    'a"b',
    "'; DROP TABLE study; --",
    "1' OR '1'='1",
    "\\",
    "Doe^*",
    "x" * 5000,
    "\u00e9\u4e2d",
    "[a-z]*",
    "*?*",
]


@pytest.mark.parametrize("resource", ["/studies", "/series", "/instances"])
@pytest.mark.parametrize(
    "key",
    [
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "StudyDate",
        "ModalitiesInStudy",
        "SeriesNumber",
        "fuzzymatching",
        "limit",
        "includefield",
    ],
)
def test_hostile_values_never_break_a_query(loaded: TestClient, resource: str, key: str) -> None:
    for hostile in HOSTILE:
        r = loaded.get(ROOT + resource, params={key: hostile})
        assert r.status_code in (200, 400), (key, hostile, r.status_code, r.text[:200])
    assert len(uids(get(loaded, "/studies"))) == 2
