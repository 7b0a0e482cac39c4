"""``medflow demo generate`` as a real process: the same seed writes the same bytes; the
folder holds one FHIR Bundle per patient, the DICOM studies of the plan and the ground truth."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import httpx
import pydicom
import pytest

from medflow.synthetic.plan import plan_hospital
from tests.e2e.test_cli import medflow, serving

pytestmark = pytest.mark.e2e


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_demo_generate_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for out, workers in ((a, "1"), (b, "2")):  # one process or two: the same bytes
        done = medflow("demo", "generate", "--out", out, "--patients", "6", "--seed", "3",
                       "--size", "64", "--slide-size", "512", "--workers", workers)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "6 patients" in done.stdout
    assert digest(a) == digest(b)
    plans = plan_hospital(3, 6)
    assert sorted(p.name for p in (a / "fhir").iterdir()) == sorted(f"{p.mrn}.json" for p in plans)
    studies = {s.study_uid: s for p in plans for s in p.studies}
    assert {p.name for p in (a / "dicom").iterdir()} == set(studies)
    one = next((a / "dicom").rglob("*.dcm"))
    ds = pydicom.dcmread(one)
    assert studies[ds.StudyInstanceUID].accession == ds.AccessionNumber
    truth = json.loads((a / "truth.json").read_text())
    assert [t["mrn"] for t in truth] == [p.mrn for p in plans]


def test_demo_load_twice_and_sync_links(tmp_path: Path) -> None:
    """``medflow demo load`` into a running server: FHIR then DICOM; a second load adds
    nothing; the sync makes an ImagingStudy per study, linked to its radiology report."""
    out = tmp_path / "hospital"
    assert (
        medflow("demo", "generate", "--out", out, "--patients", "3", "--size", "32").returncode == 0
    )
    with serving(tmp_path / "data") as base:
        first = medflow("demo", "load", out, "--url", base)
        assert first.returncode == 0, first.stdout + first.stderr
        again = medflow("demo", "load", out, "--url", base)
        assert again.returncode == 0, again.stdout + again.stderr
        studies = {s.study_uid: s for p in plan_hospital(0, 3) for s in p.studies}

        def synced() -> list[dict[str, object]]:
            r = httpx.get(f"{base}/fhir/ImagingStudy", params={"_count": 100, "_total": "accurate"})
            return [e["resource"] for e in r.json().get("entry", [])]

        deadline = time.monotonic() + 60
        while len(synced()) < len(studies):
            assert time.monotonic() < deadline, "the sync did not make every ImagingStudy"
            time.sleep(0.2)
        reports = httpx.get(f"{base}/fhir/DiagnosticReport",
                            params={"category": "RAD", "_count": 100}).json()["entry"]  # fmt: skip
        assert reports and all(r["resource"].get("imagingStudy") for r in reports)
        assert httpx.get(f"{base}/sync/status").json()["failures"] == 0

        def count(rtype: str) -> int:
            r = httpx.get(f"{base}/fhir/{rtype}", params={"_summary": "count"})
            return int(r.json()["total"])

        assert count("Patient") == 3 and count("ImagingStudy") == len(studies)  # not twice
        assert count("Endpoint") == 1
        assert (
            count("ServiceRequest")
            == len(studies)
            == count("DiagnosticReport")
            - sum(1 for p in plan_hospital(0, 3) if p.biopsy is not None)
        )
