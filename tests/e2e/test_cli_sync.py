"""``medflow sync once|failures|replay`` as real processes over a data dir: a study that the
FHIR store refuses (a Patient identifier system that is not a URI, from a bad setting) is a
dead letter; after the setting is fixed, ``replay`` syncs it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from medflow.bootstrap import build
from medflow.core.settings import Settings
from medflow.sync.worker import EmbeddedFhir
from tests.e2e.test_cli import MEDFLOW, env
from tests.factories import make_instance, store_datasets

pytestmark = pytest.mark.e2e


def run(*args: str | Path, **extra_env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MEDFLOW), *map(str, args)], capture_output=True, text=True,
                          env={**env(), **extra_env}, timeout=120, check=False)  # fmt: skip


def test_sync_dead_letter_and_replay(tmp_path: Path) -> None:
    data = tmp_path / "data"
    study = generate_uid()
    container = build(Settings(data_dir=data))
    try:
        store_datasets(container.store, [make_instance(study_uid=study, patient_id="P-1")])
    finally:
        container.close()

    bad = {"MEDFLOW_SYNC__PATIENT_SYSTEM": "not a uri"}
    done = run("sync", "once", "--data-dir", data, **bad)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "dead letters 1" in done.stdout
    listed = run("sync", "failures", "--data-dir", data)
    assert study in listed.stdout and "identifier" in listed.stdout, listed.stdout
    again = run("sync", "replay", "--data-dir", data, **bad)
    assert again.returncode == 1 and "1 still failing" in again.stdout

    fixed = run("sync", "replay", "--data-dir", data)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "1 studies synced" in fixed.stdout
    assert "no dead letters" in run("sync", "failures", "--data-dir", data).stdout
    container = build(Settings(data_dir=data))
    try:
        target = EmbeddedFhir(container.fhir)
        found = target.search("ImagingStudy", f"identifier=urn:dicom:uid|urn:oid:{study}")
        assert len(found) == 1
        assert len(target.search("Patient", "identifier=urn:medflow:mrn|P-1")) == 1
    finally:
        container.close()
