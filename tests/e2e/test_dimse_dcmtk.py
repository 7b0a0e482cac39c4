"""dcmtk as the DIMSE peer (echoscu, storescu, findscu) against the SCP on a free port.

dcmtk disables Nagle only with ``TCP_NODELAY=1`` in its environment (set here)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from medflow.bootstrap import Container
from medflow.core.settings import DimseSettings
from medflow.dimse.server import DimseServer
from tests.conftest import need_peer
from tests.factories import make_instance

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
