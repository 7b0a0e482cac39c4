"""``medflow fhir load`` as a real process: ndjson files (references between files hold, since
ids are kept), a transaction Bundle, a collection Bundle, and a bad file named in the failures
while the others load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medflow.bootstrap import build
from medflow.core.settings import Settings
from tests.e2e.test_cli import medflow

pytestmark = pytest.mark.e2e


def test_fhir_load(tmp_path: Path) -> None:
    data, src = tmp_path / "data", tmp_path / "in"
    src.mkdir()
    patients = [{"resourceType": "Patient", "id": f"p{i}", "gender": "female"} for i in range(3)]
    (src / "Patient.ndjson").write_text("\n".join(json.dumps(p) for p in patients) + "\n")
    conditions = [
        {"resourceType": "Condition", "id": f"c{i}", "subject": {"reference": f"Patient/p{i}"},
         "code": {"coding": [{"system": "http://snomed.info/sct", "code": "307576001"}]}}
        for i in range(3)
    ]  # fmt: skip
    (src / "Condition.ndjson").write_text("\n".join(json.dumps(c) for c in conditions))
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "male"},
         "request": {"method": "POST", "url": "Patient"}}]}  # fmt: skip
    (src / "tx.json").write_text(json.dumps(tx))
    coll = {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": {"resourceType": "Patient", "id": "p9"}}]}  # fmt: skip
    (src / "collection.json").write_text(json.dumps(coll))
    (src / "bad.ndjson").write_text('{"resourceType": "Patient", "birthDate": "1970-99-99"}\n')

    done = medflow("fhir", "load", src, "--data-dir", data)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "bad.ndjson" in done.stdout and "resource 1" in done.stdout
    assert "8 resources written from 5 files, 1 failed" in done.stdout

    container = build(Settings(data_dir=data))
    try:
        assert container.fhir.read(resource_type="Condition", res_id="c2")["subject"] == {
            "reference": "Patient/p2"
        }
        everything = container.fhir.everything(patient_id="p1")
        assert [r["id"] for r in everything] == ["p1", "c1"]
    finally:
        container.close()
