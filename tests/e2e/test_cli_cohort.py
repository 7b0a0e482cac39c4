"""``medflow cohort save|run|list|show|diff`` over a data directory holding a small synthetic
hospital: a saved cohort gets an id and versions, runs are stored, a patient who starts
matching between two runs is listed as entered, and ``run FILE`` saves nothing. The first
command runs as a real process; the rest run the same Typer app in process (each CLI process
start costs seconds of imports, and the commands are the same code)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medflow.bootstrap import build
from medflow.cli.main import app
from medflow.core.settings import Settings
from medflow.synthetic.writer import generate
from tests.conftest import load_data_dir
from tests.e2e.test_cli import medflow

pytestmark = pytest.mark.e2e
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
DEFINITION = """\
name: cli-pneumonia
evaluation_date: 2026-11-01
criteria:
  - label: pneumonia
    condition: {codes: [{system: icd10, prefixes: [J18]}]}
"""


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-cohort")
    generate(root / "hospital", patients=12, seed=3, size=16, slides=False)
    return load_data_dir(root / "hospital", root / "data")


def add_pneumonia_patient(data_dir: Path, mrn: str) -> str:
    container = build(Settings(data_dir=data_dir))
    try:
        patient = container.fhir.create(resource={
            "resourceType": "Patient", "identifier": [{"system": "urn:medflow:mrn",
                                                       "value": mrn}]})  # fmt: skip
        container.fhir.create(resource={
            "resourceType": "Condition", "subject": {"reference": f"Patient/{patient.res_id}"},
            "code": {"coding": [{"system": ICD10, "code": "J18.9"}]}})  # fmt: skip
        return patient.res_id
    finally:
        container.close()


TERMINAL = {"COLUMNS": "500", "NO_COLOR": "1", "TERM": "dumb"}


def cli(*args: str | Path) -> tuple[int, str]:
    """``medflow cohort ARGS`` in process: (exit code, output)."""
    done = CliRunner().invoke(app, ["cohort", *map(str, args)], env=TERMINAL)
    return done.exit_code, done.stdout


def ok(*args: str | Path) -> str:
    code, out = cli(*args)
    assert code == 0, out
    return out


def test_cohort_cli(data_dir: Path, tmp_path: Path) -> None:
    file = tmp_path / "pneumonia.yaml"
    file.write_text(DEFINITION)
    done = medflow("cohort", "run", file, "--data-dir", data_dir, "--json")  # a real process
    assert done.returncode == 0, done.stdout + done.stderr
    evaluated = json.loads(done.stdout)  # evaluated only
    assert evaluated["patients"] and evaluated["attrition"][1]["criterion"] == "pneumonia"
    assert json.loads(ok("list", "--data-dir", data_dir, "--json")) == []

    cid = ok("save", file, "--data-dir", data_dir).strip()
    assert cid.isdigit()
    assert ok("save", file, "--data-dir", data_dir).strip() == cid  # unchanged: same version
    file.write_text(DEFINITION.replace("2026-11-01", "2026-12-01"))
    saved = json.loads(ok("save", file, "--data-dir", data_dir, "--json"))
    assert (str(saved["id"]), saved["version"], saved["created"]) == (cid, 2, True)
    other = ok("save", file, "--name", "cli-copy", "--data-dir", data_dir).strip()
    assert other != cid

    first = json.loads(ok("run", cid, "--data-dir", data_dir, "--json"))
    assert first["version"] == 2 and first["evaluation_date"] == "2026-12-01"
    assert {p["id"] for p in first["patients"]} == {p["id"] for p in evaluated["patients"]}
    newcomer = add_pneumonia_patient(data_dir, "CLI-NEW-1")
    text = ok("run", "cli-pneumonia", "--as-of", "2026-12-02", "--data-dir", data_dir)
    assert "1 entered, 0 left" in text and "CLI-NEW-1" in text
    assert "FHIR Group/cohort-" in text

    diff = json.loads(ok("diff", cid, "--data-dir", data_dir, "--json"))
    assert [p["id"] for p in diff["entered"]] == [newcomer] and diff["left"] == []
    assert diff["from_run"] == first["id"]
    back = json.loads(ok("diff", cid, "--from", str(diff["to_run"]), "--to",
                         str(diff["from_run"]), "--data-dir", data_dir, "--json"))  # fmt: skip
    assert [p["id"] for p in back["left"]] == [newcomer]
    assert "CLI-NEW-1" in ok("diff", cid, "--data-dir", data_dir)

    listed = json.loads(ok("list", "--data-dir", data_dir, "--json"))
    mine = next(c for c in listed if str(c["id"]) == cid)
    assert (mine["name"], mine["version"], mine["runs"]) == ("cli-pneumonia", 2, 2)
    assert mine["last_run"]["as_of"] == "2026-12-02"
    table = ok("list", "--data-dir", data_dir)
    assert "cli-pneumonia" in table and "cli-copy" in table
    shown = ok("show", cid, "--data-dir", data_dir)
    assert "versions" in shown and "2026-12-02" in shown and "cli-pneumonia" in shown
    shown_json = json.loads(ok("show", cid, "--data-dir", data_dir, "--json"))
    assert len(shown_json["versions"]) == 2 and len(shown_json["run_list"]) == 2


def test_cohort_cli_errors(data_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(DEFINITION.replace("icd10", "icd9"))
    code, out = cli("save", bad, "--data-dir", data_dir)
    assert code == 2 and "criteria.0.condition.codes.0.system" in out
    code, out = cli("show", "no-such-cohort", "--data-dir", data_dir)
    assert code == 1 and "no cohort" in out
    code, out = cli("run", "missing.yaml", "--data-dir", data_dir)
    assert code == 2
    code, out = cli("run", "whatever", "--as-of", "soon", "--data-dir", data_dir)
    assert code == 2 and "ISO date" in out
