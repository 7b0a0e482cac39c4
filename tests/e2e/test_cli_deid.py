"""``medflow deid`` as real processes: refused without a key; ``dicom`` writes only
de-identified files in the input's layout and its report outside the output; ``fhir``
de-identifies ndjson; ``copy`` makes a second data dir that a second ``medflow serve`` serves,
where QIDO-RS and FHIR search show pseudonyms only and the ImagingStudy links hold."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medflow.synthetic.writer import generate
from tests.conftest import load_data_dir
from tests.e2e.test_cli import MEDFLOW, env, serving

pytestmark = pytest.mark.e2e
KEY = {"MEDFLOW_DEID__KEY": "e2e-deid-cli-key-0123456789abcdef"}
FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")


def deid(*args: str | Path, key: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MEDFLOW), "deid", *map(str, args)], capture_output=True,
                          text=True, env={**env(), **(KEY if key else {})}, timeout=300,
                          check=False)  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-deid")
    generate(root / "generated", patients=5, seed=13, size=16, slides=False)
    return load_data_dir(root / "generated", root / "data")


def test_refused_without_a_key(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    done = deid("dicom", tmp_path / "in", tmp_path / "out", key=False)
    assert done.returncode == 2 and "MEDFLOW_DEID__KEY" in done.stdout.replace("\n", "")
    assert not (tmp_path / "out").exists()


def test_dicom_folder(tmp_path: Path) -> None:
    source = tmp_path / "in"
    for i, name in enumerate(FILES):
        path = get_testdata_file(name)
        assert path is not None
        target = source / f"case{i}" / "images" / name
        target.parent.mkdir(parents=True)
        shutil.copy(path, target)
    (source / "notes.txt").write_text("not DICOM")
    out, report = tmp_path / "out", tmp_path / "report.json"
    inside = deid("dicom", source, out, "--report", out / "report.json")
    assert inside.returncode == 2  # the report would be in OUT
    done = deid("dicom", source, out, "--report", report, "--profile", "basic")
    assert done.returncode == 0, done.stdout + done.stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(f"case{i}/images/{name}" for i, name in enumerate(FILES))
    for rel in written:
        before = pydicom.dcmread(source / rel)
        after = pydicom.dcmread(out / rel)
        assert after.PatientIdentityRemoved == "YES"
        assert after.SOPInstanceUID != before.SOPInstanceUID
        assert str(after.get("PatientName", "")) != str(before.PatientName)
    shown = json.loads(report.read_text())
    assert "notes.txt" in json.dumps(shown)  # skipped, and said so
    again = tmp_path / "again"
    assert deid("dicom", source, again, "--profile", "basic").returncode == 0
    assert all((again / rel).read_bytes() == (out / rel).read_bytes() for rel in written)


def test_fhir_ndjson(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Zimmermann"}],
               "identifier": [{"system": "urn:medflow:mrn", "value": "MRN-4711"}],
               "birthDate": "1960-05-17"}  # fmt: skip
    condition = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
                 "code": {"text": "osteosarcoma"}, "onsetDateTime": "2025-02-03"}  # fmt: skip
    (source / "Patient.ndjson").write_text(json.dumps(patient) + "\n")
    (source / "Condition.ndjson").write_text(json.dumps(condition) + "\n")
    done = deid("fhir", source, tmp_path / "out")
    assert done.returncode == 0, done.stdout + done.stderr
    text = "".join(p.read_text() for p in (tmp_path / "out").glob("*.ndjson"))
    for value in ("Zimmermann", "MRN-4711", "1960-05-17", "2025-02-03", '"p1"'):
        assert value not in text
    [out_patient] = [json.loads(x) for x in (tmp_path / "out" / "Patient.ndjson").open()]
    [out_condition] = [json.loads(x) for x in (tmp_path / "out" / "Condition.ndjson").open()]
    assert out_condition["subject"]["reference"] == f"Patient/{out_patient['id']}"


def test_copy_served_by_a_second_server(data_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "research"
    done = deid("copy", "--to", copy, "--data-dir", data_dir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "instances copied" in done.stdout and f"--data-dir {copy}" in done.stdout
    assert deid("copy", "--to", data_dir, "--data-dir", data_dir).returncode == 2

    with serving(data_dir) as source:
        original = httpx.get(f"{source}/dicomweb/studies").json()
        names = {p["resource"]["name"][0]["family"] for p in
                 httpx.get(f"{source}/fhir/Patient").json()["entry"]}  # fmt: skip
        mrns = {s["00100020"]["Value"][0] for s in original}
    with serving(copy, extra_env=KEY) as research:
        studies = httpx.get(f"{research}/dicomweb/studies").json()
        assert len(studies) == len(original)
        assert not mrns & {s["00100020"]["Value"][0] for s in studies}
        patients = httpx.get(f"{research}/fhir/Patient").json()["entry"]
        text = json.dumps(patients)
        assert not any(name in text for name in names)
        ids = {p["resource"]["id"] for p in patients}
        assert {s["00100020"]["Value"][0] for s in studies} <= ids
        uids = {s["0020000D"]["Value"][0] for s in studies}
        imaging = httpx.get(f"{research}/fhir/ImagingStudy", params={"_count": "100"}).json()
        for entry in imaging.get("entry", []):
            study = entry["resource"]
            assert study["subject"]["reference"].removeprefix("Patient/") in ids
            assert any(i["value"].removeprefix("urn:oid:") in uids for i in study["identifier"])
