"""The store service called directly: outcomes, concurrent writers on SQLite and PostgreSQL,
and ``verify`` finding missing, corrupted and orphaned blobs."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

import pydicom
import pytest

from medflow.core.errors import InvalidInput, NotFound
from medflow.store.spool import SpoolWriter
from tests.factories import make_instance, store_datasets, to_bytes

pytestmark = pytest.mark.integration


def blob_root(container: Any) -> Path:
    return container.settings.resolved_blob_path()


def blob_of(container: Any, sop_uid: str) -> Path:
    (path,) = [p for p in blob_root(container).rglob("*") if p.is_file() and sop_uid in p.name]
    return path


def spool(store: Any, data: bytes) -> Any:
    writer = SpoolWriter(store.spool_dir)
    writer.write(data)
    return writer.finish(fsync=False)


def test_store_find_read_round_trip(store: Any) -> None:
    study = pydicom.uid.generate_uid()
    dss = [make_instance(study_uid=study, series_uid="1.2.3", instance_number=n) for n in (3, 1, 2)]
    outcomes = store_datasets(store, dss)
    assert [o.ok for o in outcomes] == [True] * 3
    assert [o.action for o in outcomes] == ["create"] * 3
    assert [o.sop_instance_uid for o in outcomes] == [d.SOPInstanceUID for d in dss]
    records = store.find_instances(study_uid=study)
    assert [r.instance_number for r in records] == [1, 2, 3]  # instance number order
    by_uid = {d.SOPInstanceUID: to_bytes(d) for d in dss}
    for rec in records:
        data = by_uid[rec.sop_instance_uid]
        assert b"".join(store.iter_bytes(rec, chunk_size=7)) == data
        assert rec.size == len(data)
        assert rec.sha256 == hashlib.sha256(data).hexdigest()
        with store.open_instance(rec) as fp:
            assert fp.read() == data
    assert len(store.find_instances(study_uid=study, series_uid="1.2.3")) == 3
    with pytest.raises(NotFound):
        store.find_instances(study_uid=pydicom.uid.generate_uid())
    with pytest.raises(InvalidInput):
        store.find_instances(study_uid="../../etc")
    assert store.counts() == {"studies": 1, "series": 1, "instances": 3}
    assert not [p for p in store.spool_dir.rglob("*") if p.is_file()]  # spool consumed


def test_store_outcomes_in_request_order(store: Any) -> None:
    good, dup = make_instance(), make_instance()
    store_datasets(store, [dup])
    changed = make_instance(
        study_uid=dup.StudyInstanceUID,
        series_uid=dup.SeriesInstanceUID,
        sop_uid=dup.SOPInstanceUID,
        seed=5,
    )
    objects = [
        spool(store, b"not dicom"),
        spool(store, to_bytes(good)),
        spool(store, to_bytes(changed)),
        spool(store, to_bytes(dup)),
    ]
    outcomes = store.store(objects=objects)
    assert [(o.ok, o.failure_reason) for o in outcomes] == [
        (False, 0xC000),
        (True, None),
        (False, 0x0111),
        (True, None),
    ]
    assert outcomes[3].action == "none"
    assert outcomes[2].message
    assert not [p for p in store.spool_dir.rglob("*") if p.is_file()]
    assert store.verify().ok


def test_same_instance_twice_in_one_batch(store: Any) -> None:
    ds = make_instance()
    data = to_bytes(ds)
    outcomes = store.store(objects=[spool(store, data), spool(store, data)])
    assert all(o.ok for o in outcomes)
    assert store.counts()["instances"] == 1
    assert len(store.change_feed()) == 1
    assert store.verify().ok


@pytest.mark.parametrize("threads,per_thread", [(4, 25)])
def test_concurrent_writers_into_one_study(container: Any, threads: int, per_thread: int) -> None:
    store = container.store
    study = pydicom.uid.generate_uid()
    series = [pydicom.uid.generate_uid() for _ in range(threads)]
    work = [
        [
            to_bytes(make_instance(study_uid=study, series_uid=series[t], patient_name=f"P^{t}"))
            for _ in range(per_thread)
        ]
        for t in range(threads)
    ]
    barrier = threading.Barrier(threads)
    results: list[list[Any]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            barrier.wait()
            for data in work[t]:
                results[t] += store.store(objects=[spool(store, data)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(120)
    assert not errors, errors
    flat = [o for r in results for o in r]
    assert len(flat) == threads * per_thread
    assert all(o.ok and o.action == "create" for o in flat), [o for o in flat if not o.ok][:3]
    total = threads * per_thread
    assert store.counts() == {"studies": 1, "series": threads, "instances": total}
    entries = store.change_feed(limit=10_000)
    seqs = [e.sequence for e in entries]
    assert len(seqs) == total
    assert len(set(seqs)) == total
    assert seqs == sorted(seqs)
    if container.engine.dialect.name == "sqlite":
        assert seqs == list(range(seqs[0], seqs[0] + total))  # gap-free
    assert {e.sop_instance_uid for e in entries} == {
        pydicom.dcmread(__import__("io").BytesIO(d), stop_before_pixels=True).SOPInstanceUID
        for w in work
        for d in w
    }
    assert len(store.find_instances(study_uid=study)) == total
    report = store.verify()
    assert report.ok and report.checked == total


def test_verify_clean(store: Any) -> None:
    store_datasets(store, [make_instance() for _ in range(3)])
    report = store.verify()
    assert report.ok
    assert report.checked == 3
    assert (report.missing, report.corrupted, report.orphaned) == ([], [], [])


def test_verify_detects_missing_blob(container: Any) -> None:
    store = container.store
    dss = [make_instance() for _ in range(3)]
    store_datasets(store, dss)
    blob_of(container, dss[1].SOPInstanceUID).unlink()
    report = store.verify()
    assert not report.ok
    assert report.missing == [dss[1].SOPInstanceUID]
    assert report.corrupted == [] and report.orphaned == []


def test_verify_detects_corrupted_blob(container: Any) -> None:
    store = container.store
    dss = [make_instance() for _ in range(3)]
    store_datasets(store, dss)
    path = blob_of(container, dss[2].SOPInstanceUID)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, same size
    path.write_bytes(bytes(data))
    report = store.verify()
    assert report.corrupted == [dss[2].SOPInstanceUID]
    assert report.missing == [] and report.orphaned == []
    assert not report.ok
    assert store.verify(check_hashes=False).ok  # sizes still agree
    path.write_bytes(bytes(data[:-10]))  # a shorter file
    assert store.verify().corrupted == [dss[2].SOPInstanceUID]


def test_verify_detects_orphan_blob(container: Any) -> None:
    store = container.store
    store_datasets(store, [make_instance()])
    root = blob_root(container)
    (root / "1.2.3" / "4.5.6").mkdir(parents=True)
    (root / "1.2.3" / "4.5.6" / "7.8.9.0123456789abcdef.dcm").write_bytes(b"stray")
    (root / "loose.dcm").write_bytes(b"stray")
    report = store.verify()
    assert sorted(report.orphaned) == ["1.2.3/4.5.6/7.8.9.0123456789abcdef.dcm", "loose.dcm"]
    assert report.missing == [] and report.corrupted == []
    assert not report.ok
