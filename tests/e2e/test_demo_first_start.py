"""``ensure_demo`` (what ``medflow serve --demo-patients`` runs on first start) against a real
server: it loads once, sees a hospital already there, regenerates a different hospital without
leaving the old one's files, and loads again when the marker outlived the index."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import httpx
import pytest

from medflow.cli.demo import ensure_demo
from medflow.synthetic.plan import plan_hospital
from medflow.synthetic.writer import Cancelled, generate
from tests.e2e.test_cli import serving

pytestmark = pytest.mark.e2e


def patients(base: str) -> int:
    r = httpx.get(f"{base}/fhir/Patient", params={"_summary": "count"}, timeout=30)
    return int(r.json()["total"])


def test_first_start_loads_once_and_regenerates_cleanly(tmp_path: Path) -> None:
    data, said = tmp_path / "data", list[str]()
    with serving(data) as base:
        assert ensure_demo(data, url=base, patients=2, seed=0, say=said.append)
        assert patients(base) == 2
        labeling = httpx.get(f"{base}/api/labels/sets/chest-xray", timeout=10)
        assert labeling.status_code == 200 and labeling.json()["version"] == 1
        assert not ensure_demo(data, url=base, patients=2, seed=0, say=said.append)
        assert "already loaded" in said[-1]
        # Another hospital: the folder then holds exactly its files (none of seed 0's).
        assert ensure_demo(data, url=base, patients=1, seed=5, say=said.append)
        bundles = sorted(p.name for p in (data / "demo" / "fhir").iterdir())
        assert bundles == [f"{p.mrn}.json" for p in plan_hospital(5, 1)]
        studies = {p.name for p in (data / "demo" / "dicom").iterdir()}
        assert studies == {s.study_uid for p in plan_hospital(5, 1) for s in p.studies}
        assert patients(base) == 3


def test_a_marker_without_its_data_loads_again(tmp_path: Path) -> None:
    first, said = tmp_path / "first", list[str]()
    with serving(first) as base:
        assert ensure_demo(first, url=base, patients=2, seed=0, say=said.append)
    second = tmp_path / "second"  # a new index beside the old demo folder and its marker
    second.mkdir()
    shutil.copytree(first / "demo", second / "demo")
    with serving(second) as base:
        assert ensure_demo(second, url=base, patients=2, seed=0, say=said.append)
        assert patients(base) == 2
    assert not [line for line in said[-3:] if "generating" in line]  # the files were reused


def test_a_cancelled_generation_leaves_no_hospital(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        generate(tmp_path, patients=3, seed=0, size=32, slides=False, cancelled=stop.is_set)
    assert not (tmp_path / "hospital.json").exists()
