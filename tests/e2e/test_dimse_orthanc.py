"""Interop with a second archive: Orthanc (Debian package ``orthanc``) started on loopback as
a remote AE. Orthanc C-STOREs into medflow; medflow C-MOVEs to Orthanc; the instance data sets
are byte-identical on both sides (PS3.4 B, C.4.2)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from medflow.bootstrap import Container
from medflow.core.settings import DimseSettings
from medflow.dimse.server import DimseServer
from tests.conftest import free_port, need_peer
from tests.factories import make_instance, store_datasets, to_bytes

pytestmark = pytest.mark.e2e
ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"


@dataclass
class Orthanc:
    rest: str
    dicom_port: int
    proc: subprocess.Popen[bytes]


@pytest.fixture
def orthanc_peer(tmp_path: Path) -> Iterator[Orthanc]:
    need_peer(Path(ORTHANC).exists(), "Orthanc is not installed (Debian package orthanc)")
    http_port, dicom_port = free_port(), free_port()
    data = tmp_path / "orthanc"
    data.mkdir()
    config = {
        "Name": "medflow-test",
        "StorageDirectory": str(data / "storage"),
        "IndexDirectory": str(data / "index"),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowMove": True,
        "TcpNoDelay": True,
        "SaveJobs": False,
        "StorageCompression": False,
        "Plugins": [],
        "DicomModalities": {},  # filled by the test through the REST API
    }
    (data / "orthanc.json").write_text(json.dumps(config))
    log = (data / "orthanc.log").open("wb")
    proc = subprocess.Popen([ORTHANC, str(data / "orthanc.json")], stdout=log, stderr=log)
    rest = f"http://127.0.0.1:{http_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{rest}/system", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("Orthanc did not start: " + (data / "orthanc.log").read_text())
        time.sleep(0.2)
    try:
        yield Orthanc(rest, dicom_port, proc)
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


@pytest.fixture
def scp(container: Container) -> Iterator[int]:
    server = DimseServer(container.store, DimseSettings(port=0, ae_title="MEDFLOW"), "127.0.0.1")
    port = server.start()
    try:
        yield port
    finally:
        server.stop()


def dataset_part(data: bytes) -> bytes:
    """The encoded data set of a Part 10 file held in memory."""
    path = Path("/dev/shm" if Path("/dev/shm").is_dir() else "/tmp") / f"mf-{generate_uid()}"
    path.write_bytes(data)
    try:
        _, offset = split_dataset(path)
    finally:
        path.unlink()
    return data[offset:]


def medflow_bytes(container: Container, sop_uid: str) -> bytes:
    (record,) = container.store.select_instances(sop_uids=[sop_uid])
    path = container.store.local_path(record)
    assert path is not None
    return dataset_part(path.read_bytes())


def orthanc_bytes(peer: Orthanc, sop_uid: str) -> bytes:
    found = httpx.post(f"{peer.rest}/tools/lookup", content=sop_uid, timeout=10).json()
    (item,) = [f for f in found if f["Type"] == "Instance"]
    data = httpx.get(f"{peer.rest}/instances/{item['ID']}/file", timeout=30).content
    return dataset_part(data)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_orthanc_stores_into_medflow_and_medflow_moves_to_orthanc(
    container: Container, scp: int, orthanc_peer: Orthanc
) -> None:
    peer = orthanc_peer
    r = httpx.put(
        f"{peer.rest}/modalities/MEDFLOW",
        json={"AET": "MEDFLOW", "Host": "127.0.0.1", "Port": scp},
        timeout=10,
    )
    assert r.status_code == 200, r.text

    # 1. Orthanc → medflow: C-STORE of a study uploaded to Orthanc over REST
    first = generate_uid()
    sent = [make_instance(study_uid=first, patient_id="ORTH-1", seed=i) for i in range(3)]
    ids = []
    for ds in sent:
        up = httpx.post(f"{peer.rest}/instances", content=to_bytes(ds), timeout=30)
        assert up.status_code == 200, up.text
        ids.append(up.json()["ID"])
    r = httpx.post(
        f"{peer.rest}/modalities/MEDFLOW/store",
        json={"Resources": ids, "Synchronous": True},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    for ds in sent:
        uid = str(ds.SOPInstanceUID)
        assert medflow_bytes(container, uid) == orthanc_bytes(peer, uid)

    # 2. medflow → Orthanc: C-MOVE (requested here) of a study only medflow holds
    container.aes.put("ORTHANC", "127.0.0.1", peer.dicom_port)
    second = generate_uid()
    held = [make_instance(study_uid=second, patient_id="ORTH-2", seed=10 + i) for i in range(4)]
    assert all(o.ok for o in store_datasets(container.store, held))
    ae = AE(ae_title="REQUESTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", scp, ae_title="MEDFLOW")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = second
    try:
        statuses = [
            s
            for s, _ in assoc.send_c_move(
                identifier, "ORTHANC", StudyRootQueryRetrieveInformationModelMove
            )
        ]
    finally:
        assoc.release()
    final = statuses[-1]
    assert final.Status == 0x0000, final
    assert final.NumberOfCompletedSuboperations == 4
    for ds in held:
        uid = str(ds.SOPInstanceUID)
        assert orthanc_bytes(peer, uid) == medflow_bytes(container, uid)
