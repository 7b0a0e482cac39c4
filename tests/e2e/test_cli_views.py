"""``medflow views`` as a real process over a small synthetic hospital (loaded through a running
``medflow serve``, the sync making the ImagingStudies): a DuckDB file and Parquet files whose
row counts equal the FHIR store's and the archive's, joins between views that work, a CSV run of
a view file, and ``medflow views list``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import duckdb
import httpx
import pytest

from medflow.bootstrap import build
from medflow.core.settings import Settings
from medflow.synthetic.plan import plan_hospital
from tests.e2e.test_cli import medflow, medflow_here, serving

pytestmark = pytest.mark.e2e
VIEWS = {
    "patient": "Patient",
    "condition": "Condition",
    "medication_request": "MedicationRequest",
    "diagnostic_report": "DiagnosticReport",
    "imaging_study": "ImagingStudy",
}


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding 3 synthetic patients, their FHIR records and studies (synced)."""
    root = tmp_path_factory.mktemp("views")
    out, data = root / "hospital", root / "data"
    done = medflow(
        "demo",
        "generate",
        "--out",
        out,
        "--patients",
        "3",
        "--metadata-only",
        "--no-slides",
        "--workers",
        "1",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    studies = sum(len(p.studies) for p in plan_hospital(0, 3))
    with serving(data) as base:
        loaded = medflow("demo", "load", out, "--url", base)
        assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        deadline = time.monotonic() + 60
        while True:
            r = httpx.get(f"{base}/fhir/ImagingStudy", params={"_summary": "count"})
            if r.json()["total"] >= studies:
                break
            assert time.monotonic() < deadline, "the sync did not make every ImagingStudy"
            time.sleep(0.2)
    return data


def fhir_counts(data: Path) -> dict[str, int]:
    container = build(Settings(data_dir=data))
    try:
        counts = container.fhir.type_counts(resource_types=list(VIEWS.values()))
        counts["studies"] = container.store.counts()["studies"]
        return counts
    finally:
        container.close()


def test_views_run_duckdb_and_parquet(hospital: Path, tmp_path: Path) -> None:
    counts = fhir_counts(hospital)
    db = tmp_path / "medflow.duckdb"
    done = medflow("views", "run", "--out", db, "--data-dir", hospital)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rows/s" in done.stdout and "dicom_series" in done.stdout
    with duckdb.connect(str(db), read_only=True) as con:
        for view, rtype in VIEWS.items():
            (rows,) = con.execute(f"SELECT count(*) FROM {view}").fetchone() or (None,)
            assert rows == counts[rtype] > 0, view
        joined = con.execute(
            "SELECT count(*), count(p.mrn) FROM condition c JOIN patient p ON c.patient_id = p.id"
        ).fetchone()
        assert joined == (counts["Condition"], counts["Condition"])
        (studies,) = con.execute("SELECT count(*) FROM dicom_studies").fetchone() or (None,)
        assert studies == counts["studies"]
        linked = con.execute(
            "SELECT count(*) FROM imaging_study i JOIN dicom_studies d USING (study_uid)"
            " JOIN patient p ON i.patient_id = p.id WHERE i.accession = d.accession"
        ).fetchone()
        assert linked == (counts["studies"],)
        types = dict(
            con.execute(
                "SELECT column_name, data_type FROM information_schema.columns"
                " WHERE table_name = 'patient'"
            ).fetchall()
        )
        assert types["birth_date"] == "DATE" and types["deceased"] == "BOOLEAN"
        (series,) = con.execute("SELECT sum(number_of_instances) FROM dicom_series").fetchone() or (
            None,
        )
        assert series and series > 0

    folder = tmp_path / "parquet"
    done = medflow_here("views", "run", "--out", folder, "--format", "parquet",
                        "--data-dir", hospital)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    with duckdb.connect() as con:
        for view, rtype in VIEWS.items():
            path = folder / f"{view}.parquet"
            (rows,) = con.execute(
                "SELECT count(*) FROM read_parquet(?)", [str(path)]
            ).fetchone() or (None,)
            assert rows == counts[rtype], view
        reports = con.execute(
            "SELECT count(*) FROM read_parquet(?) r JOIN read_parquet(?) p ON r.patient_id = p.id"
            " WHERE r.category = 'RAD' AND r.accession IS NOT NULL",
            [str(folder / "diagnostic_report.parquet"), str(folder / "patient.parquet")],
        ).fetchone()
        assert reports and reports[0] > 0


def test_views_run_view_file_as_csv_and_list(hospital: Path, tmp_path: Path) -> None:
    view = {
        "resourceType": "ViewDefinition",
        "name": "genders",
        "status": "active",
        "resource": "Patient",
        "select": [
            {
                "column": [
                    {"name": "id", "path": "getResourceKey()"},
                    {"name": "gender", "path": "gender"},
                ]
            }
        ],
    }
    (tmp_path / "genders.json").write_text(json.dumps(view))
    done = medflow_here(
        "views",
        "run",
        tmp_path / "genders.json",
        "--out",
        tmp_path / "csv",
        "--format",
        "csv",
        "--data-dir",
        hospital,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = (tmp_path / "csv" / "genders.csv").read_text().splitlines()
    assert lines[0] == "id,gender" and len(lines) == 4

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(view | {"select": []}))
    failed = medflow_here("views", "run", bad, "--out", tmp_path / "x", "--data-dir", hospital)
    assert failed.returncode == 1 and "select" in failed.stdout

    listed = medflow_here("views", "list")
    assert listed.returncode == 0
    for name in (*VIEWS, "dicom_studies", "dicom_series"):
        assert name in listed.stdout
