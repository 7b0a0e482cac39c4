"""The archive over S3-compatible object storage (moto's server on loopback): store, retrieve,
delete and verify, the same round trip as on the filesystem."""

from __future__ import annotations

import hashlib
from typing import Any

import boto3
import pydicom
import pytest
from fastapi.testclient import TestClient

from medflow.core.settings import BlobSettings
from tests.factories import make_instance, multipart, store_datasets, to_bytes

pytestmark = pytest.mark.integration


@pytest.fixture
def blob_settings(s3_blob_settings: BlobSettings) -> BlobSettings:
    return s3_blob_settings


@pytest.fixture
def s3(blob_settings: BlobSettings) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=blob_settings.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def objects(s3: Any, bucket: str) -> dict[str, bytes]:
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def test_store_retrieve_delete_verify_round_trip(
    client: TestClient, container: Any, s3: Any, blob_settings: BlobSettings
) -> None:
    store = container.store
    bucket = blob_settings.s3_bucket
    assert container.settings.blobs.backend == "s3"
    study = pydicom.uid.generate_uid()
    dss = [
        make_instance(study_uid=study, series_uid="1.2.3" if i < 2 else "1.2.4") for i in range(3)
    ]
    sent = {d.SOPInstanceUID: to_bytes(d) for d in dss}
    mp = multipart(list(sent.values()))
    r = client.post("/dicomweb/studies", content=mp.body, headers={"Content-Type": mp.content_type})
    assert r.status_code == 200, r.text

    stored = objects(s3, bucket)
    assert len(stored) == 3
    assert sorted(hashlib.sha256(b).hexdigest() for b in stored.values()) == sorted(
        hashlib.sha256(b).hexdigest() for b in sent.values()
    )
    assert not [p for p in store.spool_dir.rglob("*") if p.is_file()]
    assert not container.settings.resolved_blob_path().exists() or not [
        p for p in container.settings.resolved_blob_path().rglob("*") if p.is_file()
    ]

    for rec in store.find_instances(study_uid=study):
        assert store.local_path(rec) is None
        assert b"".join(store.iter_bytes(rec)) == sent[rec.sop_instance_uid]
        with store.open_instance(rec) as fp:
            fp.seek(128)
            assert fp.read(4) == b"DICM"
            fp.seek(0)
            assert fp.read() == sent[rec.sop_instance_uid]
    report = store.verify()
    assert report.ok and report.checked == 3

    # Idempotent re-store uploads nothing new.
    r = client.post("/dicomweb/studies", content=mp.body, headers={"Content-Type": mp.content_type})
    assert r.status_code == 200
    assert len(objects(s3, bucket)) == 3

    one = dss[0]
    r = client.delete(f"/dicomweb/studies/{study}/series/1.2.3/instances/{one.SOPInstanceUID}")
    assert r.status_code == 204
    remaining = objects(s3, bucket)
    assert len(remaining) == 2
    assert not any(one.SOPInstanceUID in k for k in remaining)
    assert client.delete(f"/dicomweb/studies/{study}").status_code == 204
    assert objects(s3, bucket) == {}
    assert store.counts() == {"studies": 0, "series": 0, "instances": 0}
    assert store.verify().ok


def test_verify_on_s3_finds_missing_corrupted_orphaned(
    container: Any, s3: Any, blob_settings: BlobSettings
) -> None:
    store = container.store
    bucket = blob_settings.s3_bucket
    dss = [make_instance() for _ in range(3)]
    store_datasets(store, dss)
    keys = {
        d.SOPInstanceUID: next(k for k in objects(s3, bucket) if d.SOPInstanceUID in k) for d in dss
    }
    s3.delete_object(Bucket=bucket, Key=keys[dss[0].SOPInstanceUID])
    data = bytearray(s3.get_object(Bucket=bucket, Key=keys[dss[1].SOPInstanceUID])["Body"].read())
    data[200] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=keys[dss[1].SOPInstanceUID], Body=bytes(data))
    s3.put_object(Bucket=bucket, Key="1.2.3/stray.dcm", Body=b"stray")
    report = store.verify()
    assert report.missing == [dss[0].SOPInstanceUID]
    assert report.corrupted == [dss[1].SOPInstanceUID]
    assert report.orphaned == ["1.2.3/stray.dcm"]
    assert report.checked == 3
    assert not report.ok


def test_s3_prefix_keeps_blobs_under_it(
    tmp_path: Any, db_url: str, blob_settings: BlobSettings, s3: Any
) -> None:
    from medflow.bootstrap import build
    from medflow.core.settings import Settings

    prefixed = blob_settings.model_copy(update={"s3_prefix": "archive/one"})
    container = build(Settings(data_dir=tmp_path / "p", database_url=db_url, blobs=prefixed))
    try:
        s3.put_object(Bucket=prefixed.s3_bucket, Key="elsewhere/not-ours.bin", Body=b"x")
        ds = make_instance()
        assert [o.ok for o in store_datasets(container.store, [ds])] == [True]
        keys = sorted(objects(s3, prefixed.s3_bucket))
        assert len(keys) == 2
        assert keys[0].startswith("archive/one/") and keys[1] == "elsewhere/not-ours.bin"
        assert container.store.verify().ok  # objects outside the prefix are not orphans
        container.store.delete(study_uid=ds.StudyInstanceUID)
        assert sorted(objects(s3, prefixed.s3_bucket)) == ["elsewhere/not-ours.bin"]
    finally:
        container.close()
