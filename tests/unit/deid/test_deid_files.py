"""De-identifying a folder: layout kept, non-DICOM and DICOMDIR skipped, a report outside."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest

from medflow.core.errors import InvalidInput
from medflow.deid.files import deidentify_tree
from tests.factories import make_instance, to_bytes


def _tree(src: Path) -> None:
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "ct1.dcm").write_bytes(to_bytes(make_instance()))
    (src / "a" / "b" / "ct2").write_bytes(to_bytes(make_instance()))
    us = make_instance(modality="US", sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1")
    (src / "a" / "us.dcm").write_bytes(to_bytes(us))
    (src / "notes.txt").write_text("Doe^John", encoding="utf-8")
    (src / "broken.dcm").write_bytes(to_bytes(make_instance())[:300])
    shutil.copy(pydicom.data.get_testdata_file("DICOMDIR"), src / "DICOMDIR")


def test_tree(tmp_path: Path, make) -> None:
    src, dst, report = tmp_path / "in", tmp_path / "out", tmp_path / "report.json"
    _tree(src)
    seen: list[str] = []
    summary = deidentify_tree(
        src, dst, make("basic"), report, progress=lambda n, rel: seen.append(rel)
    )
    assert summary.written == 2 and summary.skipped == 2
    assert [p for p, _ in summary.excluded] == ["a/us.dcm"]
    assert [p for p, _ in summary.failed] == ["broken.dcm"]
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == [
        "a/b/ct2",
        "a/ct1.dcm",
    ]
    assert pydicom.dcmread(dst / "a" / "ct1.dcm").PatientIdentityRemoved == "YES"
    data = json.loads(report.read_text(encoding="utf-8"))
    assert data["counts"] == {"written": 2, "skipped": 2, "excluded": 1, "failed": 1}
    assert (
        data["excluded"][0]["path"] == "a/us.dcm" and "burned-in" in data["excluded"][0]["reason"]
    )
    assert len(seen) == 6
    assert (
        summary.describe()
        == "2 de-identified, 2 skipped (not DICOM or DICOMDIR), 1 excluded, 1 failed"
    )
    one = deidentify_tree(src / "a" / "ct1.dcm", tmp_path / "single", make("basic"))
    assert one.written == 1 and (tmp_path / "single" / "ct1.dcm").is_file()


def test_refusals(tmp_path: Path, make) -> None:
    src = tmp_path / "in"
    src.mkdir()
    deid = make("basic")
    with pytest.raises(InvalidInput, match="inside"):
        deidentify_tree(src, src / "out", deid, None)
    with pytest.raises(InvalidInput, match="inside"):
        deidentify_tree(src, tmp_path, deid, None)
    with pytest.raises(InvalidInput, match="report"):
        deidentify_tree(src, tmp_path / "out", deid, tmp_path / "out" / "r.json")
    with pytest.raises(InvalidInput, match="does not exist"):
        deidentify_tree(tmp_path / "missing", tmp_path / "out", deid, None)
