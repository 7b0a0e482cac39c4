"""Bad input at the DICOMweb edge: every request below is refused (4xx, or a FailedSOPSequence),
never a 500; afterwards the server still serves and what was stored before is unchanged (a
snapshot of counts, index rows, blob hashes and the change feed is taken before and after)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from sqlalchemy import select

from medflow.store.models import Instance
from tests.factories import make_instance, multipart, to_bytes

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]
# Edge-only cases (framing, headers, parameters) run on SQLite; cases that reach the index run
# on every database.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

FAILED = "00081198"
FAILURE_REASON = "00081197"
BOUNDARY = "medflow-test-boundary"
CTYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def reasons(response: Any) -> list[int]:
    return [i["00081197"]["Value"][0] for i in response.json().get(FAILED, {}).get("Value", [])]


def snapshot(client: TestClient, store: Any) -> dict[str, Any]:
    with store.read_session() as s:
        rows = sorted(
            tuple(r)
            for r in s.execute(
                select(Instance.sop_instance_uid, Instance.sha256, Instance.blob_key, Instance.size)
            )
        )
    root = store.blobs.root  # filesystem blobs (the default ``blob_settings``)
    blobs = {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }
    r = client.get("/dicomweb/changefeed", params={"limit": 10000})
    assert r.status_code == 200
    return {"counts": store.counts(), "rows": rows, "blobs": blobs, "feed": r.json()}


@pytest.fixture
def seeded(client: TestClient, store: Any) -> Iterator[dict[str, Any]]:
    """Three instances in one study stored first; yields the snapshot and checks it after."""
    study = pydicom.uid.generate_uid()
    dss = [
        make_instance(study_uid=study, series_uid=None if i == 2 else "1.2.3.4.5") for i in range(3)
    ]
    mp = multipart([to_bytes(d) for d in dss])
    r = client.post("/dicomweb/studies", content=mp.body, headers={"Content-Type": mp.content_type})
    assert r.status_code == 200, r.text
    before = snapshot(client, store)
    assert before["counts"]["instances"] == 3
    yield {"datasets": dss, "study": study, "snapshot": before}
    # The server still serves, and nothing stored before has changed.
    assert client.get("/healthz").status_code == 200
    assert snapshot(client, store) == before
    assert store.verify().ok
    assert not [p for p in store.spool_dir.rglob("*") if p.is_file()], "spool files left behind"


def post(
    client: TestClient, body: bytes, ctype: str = CTYPE, path: str = "/dicomweb/studies"
) -> Any:
    return client.post(path, content=body, headers={"Content-Type": ctype})


def stow_one(client: TestClient, data: bytes) -> Any:
    return post(client, multipart([data]).body)


# ------------------------------------------------------------------------------------------
# Truncated, non-DICOM, no file meta
# ------------------------------------------------------------------------------------------
@SQLITE_ONLY
def test_truncated_mid_header(client: TestClient, seeded: dict[str, Any]) -> None:
    # Fixed UIDs: the cuts must land inside an element. With random UIDs, a cut could fall on an
    # element boundary, leaving a well-formed but incomplete data set (refused as 0xA900 instead).
    data = to_bytes(
        make_instance(study_uid="1.2.3.4.1", series_uid="1.2.3.4.2", sop_uid="1.2.3.4.3")
    )
    for cut in (140, 200, 400):  # inside the file meta, and inside the data set's elements
        r = stow_one(client, data[:cut])
        assert r.status_code == 409, (cut, r.text)
        assert reasons(r) == [0xC000]


def test_truncated_mid_pixel_data(client: TestClient, seeded: dict[str, Any]) -> None:
    data = to_bytes(make_instance(rows=32, columns=32))
    for cut in (len(data) - 1, len(data) - 100, len(data) - 2000):
        r = stow_one(client, data[:cut])
        assert r.status_code == 409, (cut, r.text)
        assert reasons(r) == [0xC000]


@SQLITE_ONLY
def test_truncated_inside_encapsulated_item(client: TestClient, seeded: dict[str, Any]) -> None:
    path = Path(get_testdata_file("JPEG2000.dcm"))  # type: ignore[arg-type]
    data = path.read_bytes()
    pixel = pydicom.dcmread(path).get_item(0x7FE00010)
    start = pixel.value_tell  # Basic Offset Table item, then one fragment item, then delimiter
    assert data[start : start + 4] == b"\xfe\xff\x00\xe0"
    cuts = [start + 4, start + 8 + 4, start + 8 + 8 + 100, len(data) - 8, len(data) - 3]
    for cut in cuts:
        r = stow_one(client, data[:cut])
        assert r.status_code == 409, (cut, r.text)
        assert reasons(r) == [0xC000]


@SQLITE_ONLY
def test_non_dicom_parts(client: TestClient, seeded: dict[str, Any]) -> None:
    parts = [b"", b"\0" * 132, b"\0" * 128 + b"DICM", b"PK\x03\x04 a zip", "héllo".encode() * 99]
    r = post(client, multipart(parts).body)
    assert r.status_code == 409, r.text
    assert reasons(r) == [0xC000] * len(parts)


@SQLITE_ONLY
def test_missing_file_meta(client: TestClient, seeded: dict[str, Any]) -> None:
    ds = make_instance()
    del ds.file_meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False, implicit_vr=False, little_endian=True)
    with_preamble = b"\0" * 128 + b"DICM" + buf.getvalue()  # DICM but no group 0002 at all
    r = post(client, multipart([buf.getvalue(), with_preamble]).body)
    assert r.status_code == 409, r.text
    assert reasons(r) == [0xC000, 0xC000]


# ------------------------------------------------------------------------------------------
# Missing or invalid UIDs, path traversal in the data set
# ------------------------------------------------------------------------------------------
BAD_UIDS = ["", "1.2.abc", "1." + "2" * 63, "../../etc", "1.2/../3", "%2e%2e", "1.2.3\\4.5"]


def test_invalid_uids_in_dataset(
    client: TestClient, seeded: dict[str, Any], tmp_path: Path
) -> None:
    assert len(BAD_UIDS[2]) == 65
    keywords = {
        "study_uid": "StudyInstanceUID",
        "series_uid": "SeriesInstanceUID",
        "sop_uid": "SOPInstanceUID",
    }
    for attr, keyword in keywords.items():
        for bad in BAD_UIDS:
            ds = make_instance(**{attr: "1.2.3"})
            setattr(ds, keyword, bad)
            if attr == "sop_uid":  # pydicom refuses to write an empty one into the file meta
                ds.file_meta.MediaStorageSOPInstanceUID = bad or "1.2.3"
            r = stow_one(client, to_bytes(ds))
            assert r.status_code == 409, (keyword, bad, r.text)
            assert reasons(r) == [0xA900], (keyword, bad)
    assert not list(tmp_path.rglob("etc")), "a UID escaped the blob root"


@SQLITE_ONLY
def test_missing_uids_in_dataset(client: TestClient, seeded: dict[str, Any]) -> None:
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        ds = make_instance()
        delattr(ds, keyword)
        r = stow_one(client, to_bytes(ds))
        assert r.status_code == 409, (keyword, r.text)
        assert reasons(r) == [0xA900], keyword


# ------------------------------------------------------------------------------------------
# Path traversal and invalid UIDs in URLs
# ------------------------------------------------------------------------------------------
TRAVERSALS = [
    "..%2F..%2Fetc",
    "%2e%2e%2f%2e%2e%2fetc",
    "%2e%2e",
    "1.2%2F..%2F3",
    "1.2/../3",
    "abc",
    "1." + "2" * 63,
    "%00",
]


def test_path_traversal_in_delete_urls(client: TestClient, seeded: dict[str, Any]) -> None:
    study = seeded["study"]
    series = seeded["datasets"][0].SeriesInstanceUID
    for bad in TRAVERSALS:
        for path in (
            f"/dicomweb/studies/{bad}",
            f"/dicomweb/studies/{study}/series/{bad}",
            f"/dicomweb/studies/{study}/series/{series}/instances/{bad}",
            f"/dicomweb/studies/{bad}/series/{series}",
        ):
            r = client.delete(path)
            assert r.status_code in (400, 404, 405), (path, r.status_code, r.text)


@SQLITE_ONLY
def test_path_traversal_in_get_urls(client: TestClient, seeded: dict[str, Any]) -> None:
    study = seeded["study"]
    for bad in TRAVERSALS:
        for path in (
            f"/dicomweb/studies/{bad}",
            f"/dicomweb/studies/{bad}/metadata",
            f"/dicomweb/studies/{study}/series/{bad}",
            f"/dicomweb/studies/{study}/series/{bad}/instances/{bad}",
            f"/dicomweb/studies/{study}/series/{bad}/instances/{bad}/frames/1",
        ):
            r = client.get(path)
            assert r.status_code in (400, 404, 405, 406), (path, r.status_code, r.text)


@SQLITE_ONLY
def test_invalid_study_uid_in_stow_url(client: TestClient, seeded: dict[str, Any]) -> None:
    body = multipart([to_bytes(make_instance())]).body
    for bad in ("abc", "1." + "2" * 63, "..%2F..%2Fetc", "%2e%2e"):
        r = post(client, body, path=f"/dicomweb/studies/{bad}")
        assert r.status_code in (400, 404, 405), (bad, r.status_code, r.text)


# ------------------------------------------------------------------------------------------
# Content-Type, multipart framing
# ------------------------------------------------------------------------------------------
WRONG_CONTENT_TYPES = [
    "application/dicom",
    "text/plain",
    "application/json",
    'multipart/related; type="application/dicom+json"; boundary=x',
    'multipart/related; type="image/jpeg"; boundary=x',
    "multipart/form-data; boundary=x",
    ";;;",
    "",
]


@SQLITE_ONLY
def test_wrong_content_type(client: TestClient, seeded: dict[str, Any]) -> None:
    body = multipart([to_bytes(make_instance())], boundary="x").body
    got = {ctype: post(client, body, ctype=ctype).status_code for ctype in WRONG_CONTENT_TYPES}
    assert got == dict.fromkeys(WRONG_CONTENT_TYPES, 415)


@SQLITE_ONLY
def test_body_without_closing_boundary(client: TestClient, seeded: dict[str, Any]) -> None:
    mp = multipart([to_bytes(make_instance()), to_bytes(make_instance())])
    closing = f"--{BOUNDARY}--\r\n".encode()
    for body in (
        mp.body[: -len(closing)],
        mp.body[: -len(closing)] + closing[:-4],
        mp.body[: len(mp.body) // 2],
    ):
        r = post(client, body)
        assert r.status_code == 400, r.text


GARBAGE_BOUNDARY_CASES = [
    "too-long",
    "unused",
    "bad-delimiter-line",
    "no-delimiter",
    "empty-param",
    "quoted-garbage",
    "only-dashes",
]


@SQLITE_ONLY
def test_garbage_boundaries(client: TestClient, seeded: dict[str, Any]) -> None:
    data = to_bytes(make_instance())
    got = {case: _garbage_boundary(client, data, case) for case in GARBAGE_BOUNDARY_CASES}
    assert got == dict.fromkeys(GARBAGE_BOUNDARY_CASES, 400)


def _garbage_boundary(client: TestClient, data: bytes, case: str) -> int:
    good = multipart([data])
    body, ctype = good.body, CTYPE
    if case == "too-long":
        b = "x" * 300
        body = multipart([data], boundary=b).body
        ctype = f'multipart/related; type="application/dicom"; boundary={b}'
    elif case == "unused":
        ctype = 'multipart/related; type="application/dicom"; boundary=not-in-the-body'
    elif case == "bad-delimiter-line":
        body = body.replace(f"--{BOUNDARY}\r\n".encode(), f"--{BOUNDARY}GARBAGE\r\n".encode(), 1)
    elif case == "no-delimiter":
        body = data
    elif case == "empty-param":
        ctype = 'multipart/related; type="application/dicom"; boundary=""'
    elif case == "quoted-garbage":
        ctype = 'multipart/related; type="application/dicom"; boundary="\\"; ;"'
    elif case == "only-dashes":
        body = b"--" * 1000
        ctype = 'multipart/related; type="application/dicom"; boundary=--'
    return int(post(client, body, ctype=ctype).status_code)


@SQLITE_ONLY
@pytest.mark.parametrize("head", ["one-long", "many-short"])
def test_huge_header_block_in_a_part(client: TestClient, store: Any, head: str) -> None:
    data = to_bytes(make_instance())
    block = (
        f"X-Padding: {'a' * 20000}\r\n"
        if head == "one-long"
        else "".join(f"X-H{i}: v\r\n" for i in range(4000))
    )
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n{block}\r\n".encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    r = post(client, body)
    assert client.get("/healthz").status_code == 200
    assert r.status_code == 400, r.text
    assert store.counts()["instances"] == 0


@SQLITE_ONLY
def test_malformed_part_header_line(client: TestClient, seeded: dict[str, Any]) -> None:
    data = to_bytes(make_instance())
    body = (
        f"--{BOUNDARY}\r\nthis line has no colon\r\n\r\n".encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    assert post(client, body).status_code == 400


# ------------------------------------------------------------------------------------------
# Change feed parameters, QIDO values
# ------------------------------------------------------------------------------------------
ABSURD_FEED_PARAMS = [
    {"limit": "-1"},
    {"limit": "abc"},
    {"limit": str(10**9)},
    {"limit": "0"},
    {"limit": "1e3"},
    {"offset": "-1"},
    {"offset": "x"},
    {"offset": str(10**30)},
    {"startTime": "yesterday"},
    {"endTime": "2024-13-45T99:99:99"},
    {"includemetadata": "perhaps"},
]


@SQLITE_ONLY
def test_absurd_change_feed_parameters(client: TestClient, seeded: dict[str, Any]) -> None:
    got = [
        (p, client.get("/dicomweb/changefeed", params=p).status_code) for p in ABSURD_FEED_PARAMS
    ]
    assert got == [(p, 400) for p in ABSURD_FEED_PARAMS]


QIDO_VALUES = [
    "O'Brien",
    "100%",
    "%",
    "_",
    'a"b',
    "'; DROP TABLE study; --",
    "1' OR '1'='1",
    "*",
    "\\",
    "Doe^*",
    "x" * 5000,
    "\u00e9\u4e2d",
]


@SQLITE_ONLY
def test_qido_values_with_quotes_percent_sql(client: TestClient, seeded: dict[str, Any]) -> None:
    for v in QIDO_VALUES:
        for params in (
            {"PatientName": v},
            {"PatientID": v},
            {"StudyInstanceUID": v},
            {"StudyDate": v},
            {"00100020": v},
            {"fuzzymatching": v},
            {"limit": v},
            {"includefield": v},
        ):
            r = client.get("/dicomweb/studies", params=params)
            assert r.status_code in (200, 204, 400), (params, r.status_code, r.text[:200])


# ------------------------------------------------------------------------------------------
# Values the index must keep as sent
# ------------------------------------------------------------------------------------------
def test_values_longer_than_their_vr_are_stored(client: TestClient, store: Any) -> None:
    """Old ACR-NEMA style dates ('1997.04.24', as in pydicom's ExplVR_BigEnd.dcm) and overlong
    values are common in the wild; the archive stores the object as sent."""
    ds = make_instance(
        study_date="1997.04.24",
        study_time="14:04:38.123456",
        PatientSex="UNKNOWN-VALUE-TOO-LONG",
        StudyID="S" * 20,
    )
    r = stow_one(client, to_bytes(ds))
    assert r.status_code == 200, r.text
    assert client.get("/healthz").status_code == 200
    (rec,) = store.find_instances(study_uid=ds.StudyInstanceUID)
    assert rec.sha256 == hashlib.sha256(to_bytes(ds)).hexdigest()
