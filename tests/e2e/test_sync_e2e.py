"""The sync worker in real processes: ``medflow serve`` reflects a study stored over DICOMweb
and one stored over DIMSE in FHIR within seconds (every mapped field checked against the DICOM
headers, read back through the FHIR REST API); ``medflow sync once`` killed with SIGKILL in
the middle of a backlog and run again ends with the same FHIR resources as an uninterrupted
run (issue 5)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from medflow.bootstrap import build
from medflow.core.settings import Settings
from medflow.fhir.search import search_bundle
from medflow.sync.worker import EmbeddedFhir
from tests.conftest import free_port
from tests.e2e.test_cli import MEDFLOW, env, serving
from tests.factories import make_instance, multipart, store_datasets, to_bytes

pytestmark = pytest.mark.e2e


def wait_for(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def imaging_study(base: str, study_uid: str) -> dict[str, Any] | None:
    query = {"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
    r = httpx.get(f"{base}/fhir/ImagingStudy", params=query, timeout=10)
    entries = r.json().get("entry", [])
    return entries[0]["resource"] if entries else None


def test_serve_syncs_dicomweb_and_dimse_stores(tmp_path: Path) -> None:
    dimse = free_port()
    with serving(tmp_path / "data", dimse_port=dimse) as base:
        web_study, dimse_study, web_series = generate_uid(), generate_uid(), generate_uid()
        web = [make_instance(study_uid=web_study, series_uid=web_series, patient_id="WEB-1",
                             patient_name="Web^Ann", patient_sex="F", modality="MR",
                             accession_number="A-WEB", instance_number=n)
               for n in (1, 2)]  # fmt: skip
        body = multipart([to_bytes(ds) for ds in web])
        r = httpx.post(f"{base}/dicomweb/studies", content=body.body,
                       headers={"Content-Type": body.content_type}, timeout=30)  # fmt: skip
        assert r.status_code == 200, r.text
        ds = make_instance(study_uid=dimse_study, patient_id="DIMSE-1", modality="CR",
                           patient_birth_date="19800229", study_description="CHEST PA")  # fmt: skip
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", dimse, ae_title="MEDFLOW")
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0
        assoc.release()

        s_web = wait_for(lambda: imaging_study(base, web_study))
        assert [c["code"] for c in s_web["modality"]] == ["MR"]
        assert s_web["numberOfInstances"] == 2 and s_web["numberOfSeries"] == 1
        assert any(i.get("value") == "A-WEB" for i in s_web["identifier"])
        assert s_web["series"][0]["uid"] == str(web[0].SeriesInstanceUID)
        assert {i["uid"] for i in s_web["series"][0]["instance"]} == {
            str(d.SOPInstanceUID) for d in web
        }
        patient = httpx.get(f"{base}/fhir/{s_web['subject']['reference']}", timeout=10).json()
        assert patient["identifier"] == [{"system": "urn:medflow:mrn", "value": "WEB-1"}]
        assert patient["gender"] == "female" and patient["name"][0]["family"] == "Web"
        endpoint = httpx.get(f"{base}/fhir/{s_web['endpoint'][0]['reference']}", timeout=10)
        assert endpoint.json()["address"] == f"{base}/dicomweb"

        s_dimse = wait_for(lambda: imaging_study(base, dimse_study))
        assert [c["code"] for c in s_dimse["modality"]] == ["CR"]
        assert s_dimse["description"] == "CHEST PA"
        p2 = httpx.get(f"{base}/fhir/{s_dimse['subject']['reference']}", timeout=10).json()
        assert p2["birthDate"] == "1980-02-29"
        status = httpx.get(f"{base}/sync/status", timeout=10).json()
        assert status["running"] and status["backlog"] == 0 and status["failures"] == 0
        assert status["lag_p95_s"] is not None


def seed(data: Path, studies: int, per_study: int) -> None:
    container = build(Settings(data_dir=data))
    try:
        for s in range(studies):
            study, series = f"1.2.826.0.1.3680043.8.498.7{s}", f"1.2.826.0.1.3680043.8.498.8{s}"
            store_datasets(container.store, [
                make_instance(study_uid=study, series_uid=series, patient_id=f"K-{s % 7}",
                              sop_uid=f"1.2.826.0.1.3680043.8.498.9{s}.{n}", instance_number=n)
                for n in range(per_study)])  # fmt: skip
    finally:
        container.close()


def fhir_state(data: Path) -> dict[str, Any]:
    """The FHIR side, without server-assigned ids and versions."""
    container = build(Settings(data_dir=data))
    try:

        def search(rtype: str, query: str) -> list[dict[str, Any]]:
            found = search_bundle(container.engine, rtype, f"{query}&_count=1000", base_url="")
            return [e["resource"] for e in found.get("entry", [])]

        studies = search("ImagingStudy", "status=available")
        patients = search("Patient", "identifier=urn:medflow:mrn|")
        endpoints = search("Endpoint", "status=active")
        ids = {f"Patient/{p['id']}": p["identifier"][0]["value"] for p in patients}
        out = {}
        for s in studies:
            body = {k: v for k, v in s.items() if k not in ("id", "meta", "endpoint")}
            body["subject"] = ids[s["subject"]["reference"]]
            out[s["identifier"][0]["value"]] = body
        return {"studies": out, "patients": sorted(ids.values()), "endpoints": len(endpoints)}
    finally:
        container.close()


def test_sigkill_in_a_backlog_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for data in (a, b):
        seed(data, studies=50, per_study=10)  # 500 instances
    small = {**env(), "MEDFLOW_SYNC__BATCH": "40"}
    done = subprocess.run([str(MEDFLOW), "sync", "once", "--data-dir", str(a)], env=small,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr

    proc = subprocess.Popen([str(MEDFLOW), "sync", "once", "--data-dir", str(b)], env=small,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    container = build(Settings(data_dir=b))
    try:
        target = EmbeddedFhir(container.fhir)
        wait_for(lambda: target.search("ImagingStudy", "status=available"), 120)
    finally:
        container.close()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(20)
    assert proc.returncode == -signal.SIGKILL
    partial = fhir_state(b)
    assert 0 < len(partial["studies"]) < 50, "the kill came too late to interrupt the backlog"
    again = subprocess.run([str(MEDFLOW), "sync", "once", "--data-dir", str(b)], env=small,
                           capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert fhir_state(b) == fhir_state(a)
    assert len(fhir_state(b)["studies"]) == 50 and fhir_state(b)["endpoints"] == 1


def test_standalone_sync_over_http(tmp_path: Path) -> None:
    """``medflow sync --dicomweb-url --fhir-url --state`` against a running medflow (its own
    sync off) over real HTTP on another port: the study appears; a second run has nothing
    to do (the cursor is in the state file)."""
    data = tmp_path / "data"
    study = generate_uid()
    container = build(Settings(data_dir=data))
    try:
        store_datasets(container.store, [make_instance(study_uid=study, patient_id="SA-1")])
    finally:
        container.close()
    with serving(data, extra_env={"MEDFLOW_SYNC__ENABLED": "false"}) as base:
        assert httpx.get(f"{base}/sync/status", timeout=10).json() == {"running": False}
        args = [str(MEDFLOW), "sync", "--dicomweb-url", f"{base}/dicomweb", "--fhir-url",
                f"{base}/fhir", "--state", str(tmp_path / "state.json"), "--once"]  # fmt: skip
        done = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=120,
                              check=False)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "synced 1 studies" in done.stdout
        s = imaging_study(base, study)
        assert s is not None and s["numberOfInstances"] == 1
        again = subprocess.run(args, env=env(), capture_output=True, text=True, timeout=120,
                               check=False)  # fmt: skip
        assert "synced 0 studies" in again.stdout and "backlog 0" in again.stdout
