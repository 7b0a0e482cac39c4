"""STOW-RS from outside (PS3.18 §10.5): statuses, the Store Instances Response Module with a
FailureReason per instance, idempotent re-store, overwrite, transfer syntaxes kept as sent,
absolute RetrieveURLs (and MEDFLOW_PUBLIC_URL)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from medflow.bootstrap import build, create_app
from medflow.core.settings import BlobSettings, Settings, StoreSettings
from tests.factories import make_instance, multipart, to_bytes

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::UserWarning")]
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

REFERENCED = "00081199"
FAILED = "00081198"
FAILURE_REASON = "00081197"
REF_SOP_UID = "00081155"
REF_SOP_CLASS = "00081150"
RETRIEVE_URL = "00081190"


def stow(
    client: TestClient,
    parts: list[bytes],
    *,
    study: str | None = None,
    part_type: str = "application/dicom",
) -> Any:
    mp = multipart(parts, part_type=part_type)
    path = "/dicomweb/studies" + (f"/{study}" if study else "")
    return client.post(
        path,
        content=mp.body,
        headers={"Content-Type": mp.content_type, "Accept": "application/dicom+json"},
    )


def items(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return body.get(key, {}).get("Value", [])


def value(item: dict[str, Any], tag: str) -> Any:
    return (item.get(tag, {}).get("Value") or [None])[0]


def reasons(body: dict[str, Any]) -> list[int]:
    return [value(i, FAILURE_REASON) for i in items(body, FAILED)]


def feed(client: TestClient) -> list[dict[str, Any]]:
    r = client.get("/dicomweb/changefeed", params={"limit": 10000})
    assert r.status_code == 200, r.text
    return r.json()


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def spool_files(container: Any) -> list[Path]:
    return blob_files(container.settings.spool_dir())


# ------------------------------------------------------------------------------------------
# Statuses
# ------------------------------------------------------------------------------------------
def test_all_stored_gives_200_with_referenced_sop_sequence(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    study = pydicom.uid.generate_uid()
    series = [pydicom.uid.generate_uid(), pydicom.uid.generate_uid()]
    dss = [make_instance(study_uid=study, series_uid=series[i % 2]) for i in range(3)]
    r = stow(client, [to_bytes(d) for d in dss])
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    body = r.json()
    assert FAILED not in body
    refs = items(body, REFERENCED)
    assert [value(i, REF_SOP_UID) for i in refs] == [d.SOPInstanceUID for d in dss]
    assert all(value(i, REF_SOP_CLASS) == d.SOPClassUID for i, d in zip(refs, dss, strict=True))
    for item, ds in zip(refs, dss, strict=True):
        assert value(item, RETRIEVE_URL) == (
            f"http://testserver/dicomweb/studies/{study}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}"
        )
    assert value(body, RETRIEVE_URL) == f"http://testserver/dicomweb/studies/{study}"
    assert store.counts() == {"studies": 1, "series": 2, "instances": 3}


def test_some_failed_gives_202(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    good = make_instance()
    r = stow(client, [to_bytes(good), b"this is not DICOM at all" * 20])
    assert r.status_code == 202, r.text
    body = r.json()
    assert [value(i, REF_SOP_UID) for i in items(body, REFERENCED)] == [good.SOPInstanceUID]
    assert reasons(body) == [0xC000]
    assert store.counts()["instances"] == 1


def test_none_stored_gives_409(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    r = stow(client, [b"garbage" * 50, b"\0" * 300])
    assert r.status_code == 409, r.text
    body = r.json()
    assert REFERENCED not in body
    assert reasons(body) == [0xC000, 0xC000]
    assert store.counts()["instances"] == 0


@SQLITE_ONLY
@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        'multipart/related; type="application/dicom+json"; boundary=medflow-test-boundary',
        "text/plain",
    ],
)
def test_unsupported_content_type_gives_415(client: TestClient, store, content_type: str) -> None:  # type: ignore[no-untyped-def]
    data = to_bytes(make_instance())
    body = multipart([data]).body if content_type.startswith("multipart") else data
    r = client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
    assert r.status_code == 415, r.text
    assert store.counts()["instances"] == 0


@SQLITE_ONLY
def test_missing_content_type_gives_415(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    r = client.post(
        "/dicomweb/studies", content=to_bytes(make_instance()), headers={"Content-Type": ""}
    )
    assert r.status_code == 415, r.text
    assert store.counts()["instances"] == 0


@SQLITE_ONLY
def test_no_boundary_gives_400(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    mp = multipart([to_bytes(make_instance())])
    r = client.post(
        "/dicomweb/studies",
        content=mp.body,
        headers={"Content-Type": 'multipart/related; type="application/dicom"'},
    )
    assert r.status_code == 400, r.text
    assert store.counts()["instances"] == 0


@SQLITE_ONLY
def test_empty_multipart_gives_400(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    mp = multipart([])
    assert mp.body == b"--medflow-test-boundary--\r\n"
    r = client.post("/dicomweb/studies", content=mp.body, headers={"Content-Type": mp.content_type})
    assert r.status_code == 400, r.text
    assert store.counts()["instances"] == 0


def test_body_without_closing_boundary_stores_nothing(client: TestClient, container) -> None:  # type: ignore[no-untyped-def]
    dss = [make_instance() for _ in range(3)]
    mp = multipart([to_bytes(d) for d in dss])
    cut = mp.body[: -len(b"--medflow-test-boundary--\r\n")]  # two complete parts and a third
    r = client.post("/dicomweb/studies", content=cut, headers={"Content-Type": mp.content_type})
    assert r.status_code == 400, r.text
    assert container.store.counts() == {"studies": 0, "series": 0, "instances": 0}
    assert feed(client) == []
    assert blob_files(container.settings.resolved_blob_path()) == []
    assert spool_files(container) == []
    # Cut in the middle of the last part too.
    r = client.post(
        "/dicomweb/studies",
        content=mp.body[: len(mp.body) * 2 // 3],
        headers={"Content-Type": mp.content_type},
    )
    assert r.status_code == 400, r.text
    assert container.store.counts()["instances"] == 0
    assert spool_files(container) == []


# ------------------------------------------------------------------------------------------
# FailureReason per instance
# ------------------------------------------------------------------------------------------
def test_study_uid_mismatch_is_a900(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    study = pydicom.uid.generate_uid()
    inside = make_instance(study_uid=study)
    outside = make_instance()
    r = stow(client, [to_bytes(inside), to_bytes(outside)], study=study)
    assert r.status_code == 202, r.text
    body = r.json()
    assert [value(i, REF_SOP_UID) for i in items(body, REFERENCED)] == [inside.SOPInstanceUID]
    assert reasons(body) == [0xA900]
    assert value(body, RETRIEVE_URL) == f"http://testserver/dicomweb/studies/{study}"
    assert store.counts()["instances"] == 1


def test_failed_item_of_study_mismatch_names_the_instance(client: TestClient) -> None:
    study = pydicom.uid.generate_uid()
    outside = make_instance()
    r = stow(client, [to_bytes(outside)], study=study)
    assert r.status_code == 409, r.text
    (failed,) = items(r.json(), FAILED)
    assert value(failed, REF_SOP_UID) == outside.SOPInstanceUID
    assert value(failed, REF_SOP_CLASS) == outside.SOPClassUID


def test_failure_reasons_per_instance(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    stored = make_instance()
    assert stow(client, [to_bytes(stored)]).status_code == 200
    changed = make_instance(
        study_uid=stored.StudyInstanceUID,
        series_uid=stored.SeriesInstanceUID,
        sop_uid=stored.SOPInstanceUID,
        seed=99,
    )
    full = to_bytes(make_instance())
    no_meta = make_instance()
    del no_meta.file_meta
    import io

    buf = io.BytesIO()
    no_meta.save_as(buf, enforce_file_format=False, implicit_vr=True, little_endian=True)
    dicomdir = Path(get_testdata_file("DICOMDIR")).read_bytes()  # type: ignore[arg-type]
    good = make_instance()
    parts = [
        b"%PDF-1.4 not DICOM" * 10,  # not DICOM -> C000
        full[: len(full) - 100],  # truncated in Pixel Data -> C000
        buf.getvalue(),  # no preamble, no file meta -> C000
        to_bytes(changed),  # same SOP Instance UID, other content -> 0111
        dicomdir,  # a DICOMDIR -> 0122
        to_bytes(good),
    ]
    r = stow(client, parts)
    assert r.status_code == 202, r.text
    body = r.json()
    assert reasons(body) == [0xC000, 0xC000, 0xC000, 0x0111, 0x0122]
    assert [value(i, REF_SOP_UID) for i in items(body, REFERENCED)] == [good.SOPInstanceUID]
    dup = items(body, FAILED)[3]
    assert value(dup, REF_SOP_UID) == stored.SOPInstanceUID
    assert store.counts()["instances"] == 2
    # The duplicate did not replace what was stored first.
    (rec,) = store.find_instances(study_uid=stored.StudyInstanceUID, sop_uid=stored.SOPInstanceUID)
    assert rec.sha256 == hashlib.sha256(to_bytes(stored)).hexdigest()


@SQLITE_ONLY
def test_part_of_another_type_fails_with_c000(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    good = to_bytes(make_instance())
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + good
        + f"\r\n--{boundary}\r\nContent-Type: image/jpeg\r\n\r\n".encode()
        + b"\xff\xd8\xff"
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = client.post(
        "/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
    )
    assert r.status_code == 202, r.text
    assert reasons(r.json()) == [0xC000]
    assert store.counts()["instances"] == 1


# ------------------------------------------------------------------------------------------
# Idempotency and overwrite
# ------------------------------------------------------------------------------------------
def test_restore_identical_bytes_is_idempotent(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    ds = make_instance()
    data = to_bytes(ds)
    first = stow(client, [data])
    second = stow(client, [data])
    assert first.status_code == second.status_code == 200
    assert items(second.json(), REFERENCED)
    entries = feed(client)
    assert len(entries) == 1
    assert entries[0]["Action"] == "create"
    assert entries[0]["State"] == "current"
    assert store.counts()["instances"] == 1
    assert store.verify().ok


@pytest.fixture
def make_client(tmp_path: Path, db_url: str, blob_settings: BlobSettings) -> Iterator[Any]:
    """A client over an app built with extra settings (overwrite, public_url)."""
    made: list[tuple[Any, TestClient]] = []

    def make(**kwargs: Any) -> tuple[Any, TestClient]:
        settings = Settings(
            data_dir=tmp_path / "custom", database_url=db_url, blobs=blob_settings, **kwargs
        )
        container = build(settings)
        client = TestClient(create_app(container))
        client.__enter__()
        made.append((container, client))
        return container, client

    yield make
    for container, client in made:
        client.__exit__(None, None, None)
        container.close()


def test_overwrite_when_configured(make_client: Any) -> None:
    container, client = make_client(store=StoreSettings(overwrite=True))
    old = make_instance()
    new = make_instance(
        study_uid=old.StudyInstanceUID,
        series_uid=old.SeriesInstanceUID,
        sop_uid=old.SOPInstanceUID,
        seed=7,
    )
    old_bytes, new_bytes = to_bytes(old), to_bytes(new)
    assert old_bytes != new_bytes
    assert stow(client, [old_bytes]).status_code == 200
    root = container.settings.resolved_blob_path()
    (old_blob,) = blob_files(root)
    r = stow(client, [new_bytes])
    assert r.status_code == 200, r.text
    entries = feed(client)
    assert [(e["Action"], e["State"]) for e in entries] == [
        ("create", "replaced"),
        ("update", "current"),
    ]
    assert {e["SOPInstanceUID"] for e in entries} == {old.SOPInstanceUID}
    (new_blob,) = blob_files(root)
    assert not old_blob.exists()
    assert (
        hashlib.sha256(new_blob.read_bytes()).hexdigest() == hashlib.sha256(new_bytes).hexdigest()
    )
    assert container.store.counts()["instances"] == 1
    report = container.store.verify()
    assert report.ok, report


def test_overwrite_off_keeps_first(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    old = make_instance()
    new = make_instance(
        study_uid=old.StudyInstanceUID,
        series_uid=old.SeriesInstanceUID,
        sop_uid=old.SOPInstanceUID,
        seed=7,
    )
    assert stow(client, [to_bytes(old)]).status_code == 200
    r = stow(client, [to_bytes(new)])
    assert r.status_code == 409
    assert reasons(r.json()) == [0x0111]
    assert [(e["Action"], e["State"]) for e in feed(client)] == [("create", "current")]
    assert store.verify().ok


# ------------------------------------------------------------------------------------------
# Any transfer syntax, byte for byte
# ------------------------------------------------------------------------------------------
TS_FILES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian (retired)
    "rtplan.dcm",  # implicit VR little endian
    "image_dfl.dcm",  # deflated explicit VR little endian
    "JPEG2000.dcm",  # JPEG 2000
    "SC_rgb_rle.dcm",  # RLE lossless
    "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 lossless
    "JPEG-lossy.dcm",  # JPEG extended
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
]


def test_any_transfer_syntax_is_kept_as_sent(client: TestClient, store) -> None:  # type: ignore[no-untyped-def]
    seen_ts = set()
    for name in TS_FILES:
        path = Path(get_testdata_file(name))  # type: ignore[arg-type]
        data = path.read_bytes()
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        r = stow(client, [data])
        assert r.status_code == 200, (name, r.text)
        (rec,) = store.find_instances(study_uid=ds.StudyInstanceUID, sop_uid=ds.SOPInstanceUID)
        assert rec.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
        assert rec.sha256 == hashlib.sha256(data).hexdigest()
        assert b"".join(store.iter_bytes(rec)) == data, name
        seen_ts.add(rec.transfer_syntax_uid)
    assert len(seen_ts) == len(TS_FILES)


# ------------------------------------------------------------------------------------------
# RetrieveURL
# ------------------------------------------------------------------------------------------
@SQLITE_ONLY
def test_retrieve_url_uses_public_url(make_client: Any) -> None:
    _, client = make_client(public_url="https://pacs.example.org/")
    ds = make_instance()
    r = stow(client, [to_bytes(ds)])
    assert r.status_code == 200, r.text
    body = r.json()
    assert value(body, RETRIEVE_URL) == (
        f"https://pacs.example.org/dicomweb/studies/{ds.StudyInstanceUID}"
    )
    (item,) = items(body, REFERENCED)
    assert value(item, RETRIEVE_URL) == (
        f"https://pacs.example.org/dicomweb/studies/{ds.StudyInstanceUID}"
        f"/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )


@SQLITE_ONLY
def test_retrieve_url_of_many_studies_per_instance(client: TestClient) -> None:
    a, b = make_instance(), make_instance()
    r = stow(client, [to_bytes(a), to_bytes(b)])
    assert r.status_code == 200
    body = r.json()
    assert RETRIEVE_URL not in body  # no single study to point to
    urls = [value(i, RETRIEVE_URL) for i in items(body, REFERENCED)]
    assert all(u.startswith("http://testserver/dicomweb/studies/") for u in urls)


@SQLITE_ONLY
def test_failed_instances_carry_a_readable_reason(client: TestClient) -> None:
    data = to_bytes(make_instance())
    r = stow(client, [data[: len(data) - 10], b"not dicom"])
    assert r.status_code == 409
    texts = [str(i.get("00000902", {}).get("Value", [""])[0]) for i in items(r.json(), FAILED)]
    warning = r.headers.get("warning", "")
    assert all(texts) or ("truncated" in warning and "Part 10" in warning), (texts, warning)
    assert any("truncated" in t for t in texts) and any("Part 10" in t for t in texts), texts
