"""dcmtk as the DIMSE peer (echoscu, storescu, findscu, movescu to a storescp started here,
getscu) against the SCP on a free port.

dcmtk disables Nagle only with ``TCP_NODELAY=1`` in its environment (set here)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid
from pynetdicom.dsutils import split_dataset

from medflow.bootstrap import Container
from medflow.core.settings import DimseSettings
from medflow.dimse.server import DimseServer
from tests.conftest import need_peer
from tests.factories import make_instance, store_datasets

pytestmark = pytest.mark.e2e
ENV = {**os.environ, "TCP_NODELAY": "1"}
SHIPPED = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "waveform_ecg.dcm")


@pytest.fixture
def scp(container: Container) -> Iterator[tuple[str, str]]:
    need_peer(shutil.which("storescu") is not None, "dcmtk (storescu, findscu) is not installed")
    server = DimseServer(container.store, DimseSettings(port=0, ae_title="MEDFLOW"), "127.0.0.1")
    port = server.start()
    try:
        yield "127.0.0.1", str(port)
    finally:
        server.stop()


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, env=ENV, timeout=120, check=False)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_echoscu(scp: tuple[str, str]) -> None:
    done = run("echoscu", "-aec", "MEDFLOW", *scp)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_storescu_folder_then_findscu(
    scp: tuple[str, str], client: TestClient, tmp_path: Path
) -> None:
    folder = tmp_path / "inbox"
    (folder / "sub").mkdir(parents=True)
    study = generate_uid()
    made = [make_instance(study_uid=study, patient_id="DCMTK-1", seed=i) for i in range(5)]
    for i, ds in enumerate(made):
        ds.save_as(folder / ("sub" if i % 2 else "") / f"ct{i}.dcm", enforce_file_format=True)
    shipped = Path(pydicom.data.__file__).parent / "test_files"
    # Uncompressed files only: storescu converts to an uncompressed context unless told per
    # codec (compressed transfer syntaxes are covered with pynetdicom in test_dimse.py).
    for name in SHIPPED:
        shutil.copy(shipped / name, folder / name)

    # -R: propose each file's own transfer syntax (send as stored, no conversion)
    done = run("storescu", "-aec", "MEDFLOW", "-R", "+sd", "+r", "-nh", *scp, str(folder))
    assert done.returncode == 0, done.stderr[-2000:]

    for ds in made:
        r = client.get(
            f"/dicomweb/studies/{study}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/metadata"
        )
        assert r.status_code == 200
    for name in SHIPPED:
        ds = pydicom.dcmread(shipped / name, stop_before_pixels=True)
        r = client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/metadata")
        assert r.status_code == 200, name

    done = run(
        "findscu",
        "-S",
        "-aec",
        "MEDFLOW",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        "PatientID=DCMTK-1",
        "-k",
        "StudyInstanceUID",
        "-k",
        "NumberOfStudyRelatedInstances",
        *scp,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert study in done.stderr + done.stdout
    assert "[5]" in (done.stderr + done.stdout).replace(" ", "")

    done = run(
        "findscu",
        "-S",
        "-aec",
        "MEDFLOW",
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        f"StudyInstanceUID={study}",
        "-k",
        "SeriesInstanceUID",
        "-k",
        "SOPInstanceUID",
        *scp,
    )
    out = done.stderr + done.stdout
    assert all(ds.SOPInstanceUID in out for ds in made)

    done = run(
        "findscu", "-S", "-aec", "MEDFLOW",
        "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}",
        "-k", "SeriesInstanceUID", "-k", "Modality", "-k", "NumberOfSeriesRelatedInstances",
        *scp,
    )  # fmt: skip
    out = done.stderr + done.stdout
    assert done.returncode == 0, out[-2000:]
    assert str(made[0].SeriesInstanceUID) in out and "[CT]" in out.replace(" ", "")

    done = run(  # Patient Root, PATIENT level, wildcard on the name
        "findscu", "-P", "-aec", "MEDFLOW",
        "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=DCMTK-*", "-k", "PatientName",
        *scp,
    )  # fmt: skip
    out = done.stderr + done.stdout
    assert done.returncode == 0, out[-2000:]
    assert out.count("DCMTK-1") == 1  # one answer per patient, not per study


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dataset_bytes(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def stored_files(container: Container, uids: list[str]) -> dict[str, bytes]:
    records = container.store.select_instances(sop_uids=uids)
    out = {}
    for record in records:
        path = container.store.local_path(record)
        assert path is not None
        out[record.sop_instance_uid] = dataset_bytes(path)
    return out


def received_files(folder: Path) -> dict[str, bytes]:
    return {
        str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): dataset_bytes(p)
        for p in folder.iterdir()
        if p.is_file()
    }


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_movescu_to_storescp(scp: tuple[str, str], container: Container, tmp_path: Path) -> None:
    study = generate_uid()
    made = [make_instance(study_uid=study, patient_id="DCMTK-M", seed=i) for i in range(4)]
    assert all(o.ok for o in store_datasets(container.store, made))
    inbox = tmp_path / "storescp"
    inbox.mkdir()
    port = free_port()
    storescp = subprocess.Popen(
        ["storescp", "-aet", "STORESCP", "-od", str(inbox), str(port)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        container.aes.put("STORESCP", "127.0.0.1", port)  # the running server sees it
        wait_listening(port)
        done = run(
            "movescu", "-S", "-aet", "MOVESCU", "-aec", "MEDFLOW", "-aem", "STORESCP",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", *scp,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-2000:]
        unknown = run(
            "movescu", "-S", "-aec", "MEDFLOW", "-aem", "NOBODY",
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", *scp,
        )  # fmt: skip
        assert "MoveDestinationUnknown" in unknown.stdout + unknown.stderr  # 0xA801
    finally:
        storescp.terminate()
        storescp.wait(10)
    uids = [str(d.SOPInstanceUID) for d in made]
    got = received_files(inbox)
    assert set(got) == set(uids)
    assert got == stored_files(container, uids)  # sent as stored, byte for byte


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_getscu(scp: tuple[str, str], container: Container, tmp_path: Path) -> None:
    study = generate_uid()
    made = [make_instance(study_uid=study, patient_id="DCMTK-G", seed=i) for i in range(3)]
    assert all(o.ok for o in store_datasets(container.store, made))
    out = tmp_path / "getscu"
    out.mkdir()
    done = run(
        "getscu", "-S", "-aec", "MEDFLOW", "-od", str(out),
        "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", *scp,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    uids = [str(d.SOPInstanceUID) for d in made]
    got = received_files(out)
    assert set(got) == set(uids)
    assert got == stored_files(container, uids)


def wait_listening(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")
