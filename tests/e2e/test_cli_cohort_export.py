"""``medflow cohort export`` as a real process over a data dir holding a small synthetic
hospital: a zip with the FHIR ndjson, the DICOM files and the manifest; with ``--deidentify``
the same, de-identified (refused without a key); an id without cohort tracking is refused."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import zipfile
from pathlib import Path

import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pydicom
import pytest

from medflow.bootstrap import build
from medflow.core.settings import Settings
from medflow.synthetic.writer import generate
from tests.conftest import load_data_dir
from tests.e2e.test_cli import MEDFLOW, env

pytestmark = pytest.mark.e2e
DEFINITION = """\
name: mr-or-ct
evaluation_date: 2026-11-01
criteria:
  - imaging: {modality: [MR, CT]}
"""


def run(
    *args: str | Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MEDFLOW), "cohort", "export", *map(str, args)],
                          capture_output=True, text=True, env={**env(), **(extra_env or {})},
                          timeout=300, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-export")
    generate(root / "generated", patients=12, seed=8, size=16, slides=False)
    return load_data_dir(root / "generated", root / "data")


def test_export_to_a_zip(data_dir: Path, tmp_path: Path) -> None:
    definition = tmp_path / "cohort.yaml"
    definition.write_text(DEFINITION)
    out = tmp_path / "export" / "mr-or-ct.zip"
    done = run(definition, "--out", out, "--data-dir", data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DICOM:" in done.stdout and str(out) in done.stdout.replace("\n", "")
    assert not out.with_name("mr-or-ct.zip.parts").exists()
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        rows = pq.read_table(io.BytesIO(zf.read("manifest.parquet"))).to_pylist()
        listed = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
        patients = [json.loads(x) for x in zf.read("fhir/Patient.ndjson").splitlines()]
        result = json.loads(zf.read("cohort.json"))
        assert rows and len(rows) == len(listed) == len([n for n in names if n.endswith(".dcm")])
        for row in rows:
            data = zf.read(row["path"])
            assert hashlib.sha256(data).hexdigest() == row["sha256"] and len(data) == row["size"]
    assert {p["id"] for p in patients} == {p["id"] for p in result["patients"]}
    assert {r["patient_id"] for r in rows} == {p["id"] for p in result["patients"]}

    again = run(definition, "--out", out, "--data-dir", data_dir)  # a finished zip: made anew
    assert again.returncode == 0, again.stdout + again.stderr


def test_deidentify_needs_a_key(data_dir: Path, tmp_path: Path) -> None:
    definition = tmp_path / "cohort.yaml"
    definition.write_text(DEFINITION)
    done = run(definition, "--out", tmp_path / "out", "--deidentify", "basic",
               "--data-dir", data_dir)  # fmt: skip
    assert done.returncode == 2
    assert "MEDFLOW_DEID__KEY" in done.stdout.replace("\n", "")
    assert not (tmp_path / "out").exists()


def _source_phi(data_dir: Path) -> set[str]:
    """Names, MRNs, birth dates, patient ids and study UIDs of the source data dir."""
    container = build(Settings(data_dir=data_dir))
    try:
        phi: set[str] = set()
        for patient in container.fhir.search_resources(resource_type="Patient", params=[],
                                                       limit=1000):  # fmt: skip
            phi.add(patient["id"])
            phi.add(patient["birthDate"])
            phi.update(i["value"] for i in patient.get("identifier", []))
            for name in patient.get("name", []):
                phi.update(x for x in [name.get("family", ""), *name.get("given", [])])
        for study in container.store.find_studies():
            phi.add(study.study_uid)
        return {x for x in phi if len(x) >= 4}
    finally:
        container.close()


def test_deidentified_export(data_dir: Path, tmp_path: Path) -> None:
    """``--deidentify research``: pseudonyms and new UIDs everywhere (manifest, cohort.json,
    FHIR, DICOM headers and paths), consistent with each other; none of the source's
    identifying values anywhere in the zip; the same key exports the same bytes."""
    definition = tmp_path / "cohort.yaml"
    definition.write_text(DEFINITION)
    out = tmp_path / "deid" / "mr-or-ct.zip"
    key = {"MEDFLOW_DEID__KEY": "e2e-deid-key-0123456789abcdef"}
    done = run(definition, "--out", out, "--deidentify", "research", "--data-dir", data_dir,
               extra_env=key)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    raw = out.read_bytes()
    leaked = {x for x in _source_phi(data_dir) if x.encode() in raw}
    # the zip deflates text: look inside every member too
    with zipfile.ZipFile(out) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    leaked |= {x for x in _source_phi(data_dir) if any(x.encode() in b for b in members.values())}
    assert not leaked, f"{len(leaked)} identifying values of the source in the export"
    rows = pq.read_table(io.BytesIO(members["manifest.parquet"])).to_pylist()
    patients = [json.loads(x) for x in members["fhir/Patient.ndjson"].splitlines()]
    studies = [json.loads(x) for x in members.get("fhir/ImagingStudy.ndjson", b"").splitlines()]
    result = json.loads(members["cohort.json"])
    assert rows and {r["patient_id"] for r in rows} <= {p["id"] for p in patients}
    assert {p["id"] for p in result["patients"]} == {p["id"] for p in patients}
    assert result["deidentified"] == {"profile": "research"}
    for row in rows:
        ds = pydicom.dcmread(io.BytesIO(members[row["path"]]))
        assert ds.PatientIdentityRemoved == "YES"
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
            row["study_uid"], row["series_uid"], row["sop_instance_uid"])  # fmt: skip
        assert ds.PatientID == row["patient_id"] == row["mrn"]
        assert hashlib.sha256(members[row["path"]]).hexdigest() == row["sha256"]
    uids = {f"urn:oid:{r['study_uid']}" for r in rows}
    for study in studies:  # the sync's ImagingStudy, de-identified with its DICOM study
        assert any(i["value"] in uids for i in study["identifier"])
        assert study["subject"]["reference"].removeprefix("Patient/") in {p["id"] for p in patients}

    again = tmp_path / "again.zip"
    done = run(definition, "--out", again, "--deidentify", "research", "--data-dir", data_dir,
               extra_env=key)  # fmt: skip
    assert done.returncode == 0 and again.read_bytes() == raw


def test_a_bad_definition_or_unknown_cohort(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nevaluation_date: 2026-11-01\ncriteria: []\n")
    done = run(bad, "--out", tmp_path / "out", "--data-dir", data_dir)
    assert done.returncode == 2 and "not a valid cohort definition" in done.stdout
    missing = run("no-such-cohort", "--out", tmp_path / "out", "--data-dir", data_dir)
    assert missing.returncode in (1, 2) and "no-such-cohort" in missing.stdout


def test_export_a_saved_cohort_by_name(data_dir: Path, tmp_path: Path) -> None:
    definition = tmp_path / "cohort.yaml"
    definition.write_text(DEFINITION)
    saved = subprocess.run([str(MEDFLOW), "cohort", "save", str(definition), "--data-dir",
                            str(data_dir)], capture_output=True, text=True, env=env(),
                           timeout=120, check=False)  # fmt: skip
    assert saved.returncode == 0, saved.stdout + saved.stderr
    by_file, by_name = tmp_path / "file", tmp_path / "name"
    assert run(definition, "--out", by_file, "--data-dir", data_dir).returncode == 0
    done = run("mr-or-ct", "--out", by_name, "--data-dir", data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    manifest = "manifest.csv"
    assert (by_name / manifest).read_bytes() == (by_file / manifest).read_bytes()
