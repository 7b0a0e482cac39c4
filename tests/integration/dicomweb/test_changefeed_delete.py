"""The change feed (Sequence order, offset/limit, metadata, time window, latest, delete entries)
and DELETE of studies, series and instances (204/404, blobs gone, empty parents pruned)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from tests.factories import make_instance, multipart, to_bytes

pytestmark = pytest.mark.integration
# Ordering, windows and pruning run on every database; the simpler cases on SQLite only.
SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def stow(client: TestClient, datasets: list[Any]) -> None:
    mp = multipart([to_bytes(d) for d in datasets])
    r = client.post("/dicomweb/studies", content=mp.body, headers={"Content-Type": mp.content_type})
    assert r.status_code == 200, r.text


def feed(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    r = client.get("/dicomweb/changefeed", params={"limit": 10000, **params})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def blob_files(container: Any) -> list[Path]:
    root = container.settings.resolved_blob_path()
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def five(client: TestClient) -> list[Any]:
    """Five instances stored one request each (two studies)."""
    a, b = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    dss = [make_instance(study_uid=a if i < 3 else b) for i in range(5)]
    for ds in dss:
        stow(client, [ds])
    return dss


# ------------------------------------------------------------------------------------------
# Change feed
# ------------------------------------------------------------------------------------------
def test_sequence_is_monotonic_and_complete(client: TestClient, five: list[Any]) -> None:
    entries = feed(client)
    seqs = [e["Sequence"] for e in entries]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == 5
    assert [e["SOPInstanceUID"] for e in entries] == [d.SOPInstanceUID for d in five]
    for e, d in zip(entries, five, strict=True):
        assert e["StudyInstanceUID"] == d.StudyInstanceUID
        assert e["SeriesInstanceUID"] == d.SeriesInstanceUID
        assert (e["Action"], e["State"]) == ("create", "current")
        assert datetime.fromisoformat(e["Timestamp"]).tzinfo is not None
        assert "Metadata" not in e


def test_offset_is_exclusive_and_limit_applies(client: TestClient, five: list[Any]) -> None:
    seqs = [e["Sequence"] for e in feed(client)]
    assert [e["Sequence"] for e in feed(client, offset=seqs[1])] == seqs[2:]
    assert [e["Sequence"] for e in feed(client, offset=seqs[1], limit=2)] == seqs[2:4]
    assert [e["Sequence"] for e in feed(client, limit=1)] == seqs[:1]
    assert feed(client, offset=seqs[-1]) == []
    assert feed(client, offset=seqs[-1] + 1000) == []
    # Paging with the last Sequence seen as the next offset visits every entry once.
    seen, cursor = [], 0
    while page := feed(client, offset=cursor, limit=2):
        seen += [e["Sequence"] for e in page]
        cursor = page[-1]["Sequence"]
    assert seen == seqs
    r = client.get("/dicomweb/changefeed")  # default limit
    assert r.status_code == 200 and len(r.json()) == 5


def test_include_metadata_gives_dicom_json_with_absolute_bulkdata(
    client: TestClient, five: list[Any]
) -> None:
    entries = feed(client, includemetadata="true")
    assert len(entries) == 5
    for e, d in zip(entries, five, strict=True):
        meta = e["Metadata"]
        assert meta["00080018"] == {"vr": "UI", "Value": [d.SOPInstanceUID]}
        assert meta["0020000D"]["Value"] == [d.StudyInstanceUID]
        assert meta["00100020"]["Value"] == [d.PatientID]
        assert meta["00100010"]["Value"] == [{"Alphabetic": "Doe^John"}]
        assert meta["00280010"]["Value"] == [d.Rows]
        pixel = meta["7FE00010"]
        assert "InlineBinary" not in pixel
        assert pixel["BulkDataURI"].startswith(
            f"http://testserver/dicomweb/studies/{d.StudyInstanceUID}/series/"
            f"{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}/"
        )
        assert not any(k.startswith("0002") for k in meta)  # no file meta in the JSON model
    assert all("Metadata" not in e for e in feed(client, includemetadata="false"))


def test_time_window_form(client: TestClient, five: list[Any]) -> None:
    entries = feed(client)
    stamps = [datetime.fromisoformat(e["Timestamp"]) for e in entries]
    start, end = stamps[1], stamps[3]
    expected = [e["Sequence"] for e, t in zip(entries, stamps, strict=True) if start <= t < end]
    assert expected  # at least entry 1
    got = feed(client, startTime=start.isoformat(), endTime=end.isoformat())
    assert [e["Sequence"] for e in got] == expected
    # In the time-window form offset counts entries of the window to skip.
    got = feed(client, startTime=start.isoformat(), endTime=end.isoformat(), offset=1)
    assert [e["Sequence"] for e in got] == expected[1:]
    everything = feed(client, startTime=stamps[0].isoformat())
    assert [e["Sequence"] for e in everything] == [e["Sequence"] for e in entries]
    skipped = feed(client, startTime=stamps[0].isoformat(), offset=2, limit=2)
    assert [e["Sequence"] for e in skipped] == [e["Sequence"] for e in entries][2:4]
    assert feed(client, endTime=stamps[0].isoformat()) == []
    # A naive time is read as UTC; a "+" left unencoded in the URL arrives as a space.
    naive = stamps[0].replace(tzinfo=None).isoformat()
    assert len(feed(client, startTime=naive)) == 5
    r = client.get(f"/dicomweb/changefeed?startTime={stamps[0].isoformat()}")
    assert r.status_code == 200 and len(r.json()) == 5


@SQLITE_ONLY
def test_latest(client: TestClient) -> None:
    r = client.get("/dicomweb/changefeed/latest")
    assert r.status_code == 200
    assert r.json() == {"Sequence": 0}
    dss = [make_instance(), make_instance()]
    stow(client, dss)
    latest = client.get("/dicomweb/changefeed/latest").json()
    assert latest == feed(client)[-1]
    assert latest["SOPInstanceUID"] == dss[-1].SOPInstanceUID


def test_delete_entries(client: TestClient, five: list[Any]) -> None:
    target = five[1]
    r = client.delete(
        f"/dicomweb/studies/{target.StudyInstanceUID}/series/"
        f"{target.SeriesInstanceUID}/instances/{target.SOPInstanceUID}"
    )
    assert r.status_code == 204
    entries = feed(client, includemetadata="true")
    assert len(entries) == 6
    last = entries[-1]
    assert (last["Action"], last["State"]) == ("delete", "deleted")
    assert last["SOPInstanceUID"] == target.SOPInstanceUID
    assert last["StudyInstanceUID"] == target.StudyInstanceUID
    assert last["SeriesInstanceUID"] == target.SeriesInstanceUID
    assert last["Sequence"] > entries[-2]["Sequence"]
    earlier = [e for e in entries[:-1] if e["SOPInstanceUID"] == target.SOPInstanceUID]
    assert [(e["Action"], e["State"]) for e in earlier] == [("create", "deleted")]
    assert all("Metadata" not in e for e in [*earlier, last])
    others = [e for e in entries if e["SOPInstanceUID"] != target.SOPInstanceUID]
    assert all(e["State"] == "current" and "Metadata" in e for e in others)
    assert client.get("/dicomweb/changefeed/latest").json()["Action"] == "delete"


@SQLITE_ONLY
def test_delete_study_feed_entries(client: TestClient, five: list[Any]) -> None:
    study = five[0].StudyInstanceUID
    assert client.delete(f"/dicomweb/studies/{study}").status_code == 204
    entries = feed(client)
    deletes = [e for e in entries if e["Action"] == "delete"]
    assert sorted(e["SOPInstanceUID"] for e in deletes) == sorted(
        d.SOPInstanceUID for d in five[:3]
    )
    assert all(e["State"] == "deleted" for e in entries if e["StudyInstanceUID"] == study)
    assert all(e["State"] == "current" for e in entries if e["StudyInstanceUID"] != study)


# ------------------------------------------------------------------------------------------
# DELETE
# ------------------------------------------------------------------------------------------
def test_delete_instance_series_study(client: TestClient, container: Any) -> None:
    store = container.store
    study = pydicom.uid.generate_uid()
    s1, s2 = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    dss = [make_instance(study_uid=study, series_uid=s1) for _ in range(2)]
    dss += [make_instance(study_uid=study, series_uid=s2) for _ in range(2)]
    other = make_instance()
    stow(client, [*dss, other])
    assert store.counts() == {"studies": 2, "series": 3, "instances": 5}
    assert len(blob_files(container)) == 5

    one = dss[0]
    url = f"/dicomweb/studies/{study}/series/{s1}/instances/{one.SOPInstanceUID}"
    r = client.delete(url)
    assert r.status_code == 204 and r.content == b""
    assert client.delete(url).status_code == 404
    assert store.counts() == {"studies": 2, "series": 3, "instances": 4}
    assert len(blob_files(container)) == 4
    assert not any(one.SOPInstanceUID in p.name for p in blob_files(container))

    assert client.delete(f"/dicomweb/studies/{study}/series/{s1}").status_code == 204
    assert store.counts() == {"studies": 2, "series": 2, "instances": 3}  # empty series gone
    assert client.delete(f"/dicomweb/studies/{study}/series/{s1}").status_code == 404

    assert (
        client.delete(
            f"/dicomweb/studies/{study}/series/{s2}/instances/{dss[2].SOPInstanceUID}"
        ).status_code
        == 204
    )
    assert (
        client.delete(
            f"/dicomweb/studies/{study}/series/{s2}/instances/{dss[3].SOPInstanceUID}"
        ).status_code
        == 204
    )
    # The last instance of a study removes its series and study rows too.
    assert store.counts() == {"studies": 1, "series": 1, "instances": 1}
    assert client.delete(f"/dicomweb/studies/{study}").status_code == 404
    assert store.verify().ok

    assert client.delete(f"/dicomweb/studies/{other.StudyInstanceUID}").status_code == 204
    assert store.counts() == {"studies": 0, "series": 0, "instances": 0}
    assert blob_files(container) == []
    report = store.verify()
    assert report.ok and report.checked == 0


@SQLITE_ONLY
def test_delete_absent_gives_404(client: TestClient, five: list[Any]) -> None:
    d = five[0]
    absent = pydicom.uid.generate_uid()
    for path in (
        f"/dicomweb/studies/{absent}",
        f"/dicomweb/studies/{d.StudyInstanceUID}/series/{absent}",
        f"/dicomweb/studies/{d.StudyInstanceUID}/series/{d.SeriesInstanceUID}/instances/{absent}",
        # exists, but not under that study / series
        f"/dicomweb/studies/{five[4].StudyInstanceUID}/series/{d.SeriesInstanceUID}",
        f"/dicomweb/studies/{d.StudyInstanceUID}/series/{five[1].SeriesInstanceUID}"
        f"/instances/{d.SOPInstanceUID}",
    ):
        r = client.delete(path)
        assert r.status_code == 404, (path, r.text)
    assert len(feed(client)) == 5


@SQLITE_ONLY
def test_delete_then_store_again(client: TestClient, container: Any) -> None:
    ds = make_instance()
    stow(client, [ds])
    assert client.delete(f"/dicomweb/studies/{ds.StudyInstanceUID}").status_code == 204
    stow(client, [ds])
    entries = feed(client)
    assert [(e["Action"], e["State"]) for e in entries] == [
        ("create", "deleted"),
        ("delete", "deleted"),
        ("create", "current"),
    ]
    assert container.store.counts()["instances"] == 1
    assert len(blob_files(container)) == 1
    assert container.store.verify().ok
