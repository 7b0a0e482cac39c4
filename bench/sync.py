"""Sync benchmark (issue 5): how soon a stored study shows in FHIR, and how fast a backlog drains.

Lag: ``medflow serve`` (sync on, SQLite) receives ``--studies`` studies of ``--per-study`` small
instances (64x64, one STOW-RS request a study, one client, back to back); a poller thread reads
``GET /fhir/ImagingStudy?identifier=urn:dicom:uid|urn:oid:<uid>`` every 50 ms for each study not
yet complete. Lag = the moment the ImagingStudy shows every instance - the moment the STOW
response arrived. Also reported: the worker's own lag (change timestamp -> FHIR write) from
``GET /sync/status``.

Catch-up: a fresh data dir is filled with ``--backlog`` instances (``--per-study`` a study) by a
server whose sync is off; then ``medflow sync once`` drains the change feed: changes/s and
studies/s (wall time of the process, which includes its start, ~1-2 s).

    .venv/bin/python bench/sync.py --quick                 # 10 studies, 1,000-instance backlog
    .venv/bin/python bench/sync.py                         # 40 x 50 = 2,000; 10,000 backlog
    .venv/bin/python bench/sync.py --json bench/.cache/sync.json

Targets (issue 5): lag p95 < 2 s; catch-up >= 500 changes/s. No peer runs here (Microsoft's
DICOMcast needs Azure services); run by hand, never by tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _measure as m
import _servers

BENCH = Path(__file__).resolve().parent
CT = "1.2.840.10008.5.1.4.1.1.2"


def instance(study: str, series: str, n: int, patient: str) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CT
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientID, ds.PatientName, ds.PatientSex = patient, "BENCH^PATIENT", "F"
    ds.PatientBirthDate, ds.StudyDate, ds.StudyTime = "19600101", "20240101", "120000"
    ds.AccessionNumber, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "B1", "CT", 1, n
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 64, 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((64, 64), dtype=np.uint16).tobytes()
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def study_bodies(studies: int, per_study: int) -> list[tuple[str, bytes]]:
    out = []
    for s in range(studies):
        study, series = generate_uid(), generate_uid()
        blobs = [instance(study, series, n + 1, f"BENCH-{s % 50}") for n in range(per_study)]
        out.append((study, m.multipart_body(blobs)))
    return out


def stow(client: httpx.Client, dicomweb: str, body: bytes) -> None:
    r = client.post(f"{dicomweb}/studies", content=body,
                    headers={"Content-Type": m.DICOM_MULTIPART})  # fmt: skip
    if r.status_code != 200:
        raise RuntimeError(f"STOW-RS answered {r.status_code}: {r.text[:300]}")


def measure_lag(work: Path, studies: int, per_study: int) -> dict[str, Any]:
    bodies = study_bodies(studies, per_study)
    server = _servers.start_medflow(work)
    try:
        base = server.base_url
        stored: dict[str, float] = {}
        seen: dict[str, float] = {}
        done = threading.Event()

        def poll() -> None:
            with httpx.Client(timeout=30) as c:
                while not done.is_set() or len(seen) < len(stored):
                    for uid, _t in list(stored.items()):
                        if uid in seen:
                            continue
                        query = {"identifier": f"urn:dicom:uid|urn:oid:{uid}"}
                        r = c.get(f"{base}/fhir/ImagingStudy", params=query)
                        entries = r.json().get("entry", [])
                        if entries and entries[0]["resource"].get("numberOfInstances") == per_study:
                            seen[uid] = time.perf_counter()
                    if done.is_set() and len(seen) == len(stored):
                        return
                    time.sleep(0.05)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        started = time.perf_counter()
        with httpx.Client(timeout=600) as client:
            for uid, body in bodies:
                stow(client, server.dicomweb, body)
                stored[uid] = time.perf_counter()
        stow_seconds = time.perf_counter() - started
        done.set()
        poller.join(timeout=300)
        lags = [seen[u] - stored[u] for u in stored if u in seen]
        status = httpx.get(f"{base}/sync/status", timeout=30).json()
    finally:
        server.stop()
    return {
        "studies": studies,
        "instances": studies * per_study,
        "stow_seconds": stow_seconds,
        "complete": len(lags),
        "lag_p50": m.percentile(lags, 50),
        "lag_p95": m.percentile(lags, 95),
        "lag_max": max(lags) if lags else float("nan"),
        "worker_lag_p50": status.get("lag_p50_s"),
        "worker_lag_p95": status.get("lag_p95_s"),
        "dead_letters": status.get("failures"),
    }


def measure_catch_up(work: Path, backlog: int, per_study: int) -> dict[str, Any]:
    studies = max(1, backlog // per_study)
    bodies = study_bodies(studies, per_study)
    data = work / "catch-up"
    server = _servers.start_medflow(work, data_dir=data, keep=True,
                                    env={"MEDFLOW_SYNC__ENABLED": "false"})  # fmt: skip
    try:
        with httpx.Client(timeout=600) as client:
            for _uid, body in bodies:
                stow(client, server.dicomweb, body)
    finally:
        server.stop(remove=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDFLOW_")}
    cmd = [*_servers.medflow_command(), "sync", "once", "--data-dir", str(data)]
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stdout + done.stderr)
    return {
        "changes": studies * per_study,
        "studies": studies,
        "seconds": seconds,
        "changes_per_s": studies * per_study / seconds,
        "studies_per_s": studies / seconds,
        "output": done.stdout.strip(),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=40)
    ap.add_argument("--per-study", type=int, default=50)
    ap.add_argument("--backlog", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.studies, args.backlog = 10, 1_000
    with tempfile.TemporaryDirectory(dir=BENCH / ".cache" if (BENCH / ".cache").exists()
                                     else None) as tmp:  # fmt: skip
        work = Path(tmp)
        lag = measure_lag(work, args.studies, args.per_study)
        catch = measure_catch_up(work, args.backlog, args.per_study)
    rows = [
        ("lag p50 s (STOW response -> complete ImagingStudy)", f"{lag['lag_p50']:.2f}", "", ""),
        ("lag p95 s", f"{lag['lag_p95']:.2f}", "< 2", "yes" if lag["lag_p95"] < 2 else "NO"),
        ("lag max s", f"{lag['lag_max']:.2f}", "", ""),
        ("worker lag p50 / p95 s (change -> FHIR write)",
         f"{lag['worker_lag_p50']} / {lag['worker_lag_p95']}", "", ""),
        ("studies complete / stored", f"{lag['complete']} / {lag['studies']}", "", ""),
        ("catch-up changes/s", f"{catch['changes_per_s']:.0f}", ">= 500",
         "yes" if catch["changes_per_s"] >= 500 else "NO"),
        ("catch-up studies/s", f"{catch['studies_per_s']:.1f}", "", ""),
    ]  # fmt: skip
    print(f"\nsync: lag over {lag['instances']} instances in {lag['studies']} studies "
          f"(STOW took {lag['stow_seconds']:.1f} s); catch-up of {catch['changes']} changes "
          f"({catch['studies']} studies) in {catch['seconds']:.1f} s")  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>14}  {'target':>7}  met")
    for name, value, target, met in rows:
        print(f"{name:<{width}}  {value:>14}  {target:>7}  {met}")
    if args.json:
        args.json.write_text(json.dumps({"lag": lag, "catch_up": catch}, indent=1, default=str))


if __name__ == "__main__":
    main()
