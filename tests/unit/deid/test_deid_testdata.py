"""PS3.15 Annex E on every file of pydicom's test data: nothing identifying survives, and
dciodvfy finds no new error in the output."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import InvalidDicomError

from medflow.core.errors import InvalidInput
from medflow.deid.dicom import DicomDeidentifier, DicomdirSkipped, Excluded
from medflow.deid.keys import DeidKeys
from medflow.deid.profile import load_profile, parse_profile
from tests.unit.deid.conftest import KEY, leaks, shipped_file

BLANKING = {
    "name": "research-blank",
    "options": [
        "retain-long-modified-dates",
        "retain-patient-characteristics",
        "clean-descriptors",
        "clean-structured-content",
        "clean-graphics",
    ],
    "burned_in": {
        "policy": "blank",
        "regions": [
            {"modality": m, "boxes": [[0, 0, 8, 8]]} for m in ("US", "SC", "OT", "XC", "ES")
        ],
    },
}


def _files() -> list[Path]:
    return sorted(Path(f) for f in pydicom.data.get_testdata_files() if os.path.isfile(f))


def _read(path: Path) -> pydicom.Dataset | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pydicom.dcmread(path)
        except (InvalidDicomError, ValueError, OSError, EOFError, KeyError, TypeError):
            return None


@pytest.mark.parametrize("profile", ["basic", "research", "research-blank"])
def test_no_identifying_value_survives(profile: str) -> None:
    prof = parse_profile(BLANKING) if profile == "research-blank" else load_profile(profile)
    deid = DicomDeidentifier(prof, DeidKeys(KEY))
    options = frozenset(deid.profile.options)
    skipped: dict[str, list[str]] = {"unreadable": [], "dicomdir": [], "not-instance": []}
    failures: list[str] = []
    done = excluded = 0
    for path in _files():
        ds = _read(path)
        if ds is None:
            skipped["unreadable"].append(path.name)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = deid.deidentify_bytes(path.read_bytes())
        except DicomdirSkipped:
            skipped["dicomdir"].append(path.name)
            continue
        except Excluded as exc:
            assert "burned-in" in exc.reason, path.name
            assert profile != "research-blank" or "cannot" in exc.reason, path.name
            excluded += 1
            continue
        except InvalidInput as exc:
            skipped["not-instance"].append(f"{path.name}: {exc.message}")
            continue
        found = leaks(ds, out, options)
        if found:
            failures.append(f"{path.name}: {found[:5]}")
        done += 1
    assert not failures, "\n".join(failures)
    assert done >= 120, (done, excluded, skipped)
    assert len(skipped["not-instance"]) <= 8, skipped
    assert len(skipped["unreadable"]) <= 15, skipped


DCIODVFY = shutil.which("dciodvfy")
SUBSET = [
    "CT_small.dcm",
    "MR_small.dcm",
    "IM000000",
    "examples_overlay.dcm",
    "test-SR.dcm",
    "reportsi.dcm",
    "rtplan.dcm",
    "rtdose.dcm",
    "rtdose_expb.dcm",
    "rtdose_rle.dcm",
    "liver_1frame.dcm",
    "liver_expb_1frame.dcm",
    "waveform_ecg.dcm",
    "examples_rgb_color.dcm",
    "examples_palette.dcm",
    "examples_ybr_color.dcm",
    "examples_jpeg2k.dcm",
]


def _errors(path: Path) -> set[str] | None:
    """dciodvfy's errors with values, UIDs and numbers stripped; None if it cannot read it."""
    assert DCIODVFY is not None
    run = subprocess.run(
        [DCIODVFY, "-new", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    lines = (run.stdout + run.stderr).splitlines()
    if any("read failed" in line for line in lines):
        return None
    out = set()
    for line in lines:
        if line.startswith("Error"):
            line = re.sub(r"=\s*<[^>]*>", "=<>", line)
            out.add(re.sub(r"\d+(\.\d+)*", "#", line).strip())
    return out


@pytest.mark.parametrize("profile", ["basic", BLANKING], ids=["basic", "research-blank"])
def test_dciodvfy_finds_no_new_error(profile: object, tmp_path: Path) -> None:
    if DCIODVFY is None:
        if os.environ.get("MEDFLOW_REQUIRE_PEERS") == "1":
            pytest.fail("dciodvfy (Debian dicom3tools) is required but absent")
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed")
    prof = load_profile(profile) if isinstance(profile, str) else parse_profile(profile)
    deid = DicomDeidentifier(prof, DeidKeys(KEY))
    problems: list[str] = []
    checked = 0
    for name in SUBSET:
        source = shipped_file(name)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = deid.deidentify_bytes(source.read_bytes())
        except Excluded:
            continue
        target = tmp_path / f"{name}.out"
        target.write_bytes(data)
        before, after = _errors(source), _errors(target)
        if before is None:
            continue
        assert after is not None, f"{name}: dciodvfy cannot read the output"
        checked += 1
        problems += [f"{name}: {e}" for e in sorted(after - before)]
    assert checked >= 12
    assert not problems, "\n".join(problems)


def test_the_scanner_sees_identifying_values() -> None:
    """The PHI scan is not vacuous: run on an input against itself it finds its names,
    dates and UIDs."""
    path = shipped_file("CT_small.dcm")
    ds = _read(path)
    assert ds is not None
    found = leaks(ds, path.read_bytes(), frozenset())
    assert str(ds.PatientName) in found
    assert str(ds.StudyInstanceUID) in found
    assert str(ds.StudyDate) in found
