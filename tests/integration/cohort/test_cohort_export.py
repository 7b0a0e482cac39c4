"""Cohort export on a small synthetic hospital loaded through the public APIs (SQLite, and
PostgreSQL when MEDFLOW_TEST_POSTGRES_URL is set): the ndjson files hold the patients'
compartments (as ``Patient/$everything`` over REST returns them), the DICOM files are what
WADO-RS returns with ``transfer-syntax=*``, the manifest lists every file with its SHA-256, and
an interrupted export finishes on a re-run with the same bytes as an uninterrupted one."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from pydicom.uid import generate_uid

from medflow.bootstrap import Container
from medflow.cohort.export import (
    JOURNAL,
    MANIFEST_COLUMNS,
    ExportProgress,
    ExportSummary,
    Level,
    export_cohort,
)
from medflow.cohort.results import CohortResult
from medflow.cohort.schema import CohortDefinition, parse_definition
from medflow.cohort.service import CohortService
from medflow.core.errors import InvalidInput
from medflow.core.settings import DeidSettings, Settings
from medflow.deid.service import Deidentification
from medflow.synthetic.writer import generate
from tests.conftest import loaded_hospital

pytestmark = pytest.mark.integration
SEED, PATIENTS = 8, 16
DEFINITION = parse_definition({
    "name": "export-test",
    "evaluation_date": "2026-11-01",
    "criteria": [{"imaging": {"modality": ["MR", "CT"]}}],
    "collect": [{"label": "all studies", "imaging": {}}],
})  # fmt: skip
DICOM_ANY = "application/dicom; transfer-syntax=*"


class Stop(Exception):
    """Raised from the progress callback to interrupt an export."""


@dataclass
class Hospital:
    client: TestClient
    container: Container
    result: CohortResult

    def export(self, out: Path, **options: Any) -> ExportSummary:
        c = self.container
        return export_cohort(self.result, store=c.store, fhir=c.fhir, out=out, **options)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export-hospital")
    generate(root, patients=PATIENTS, seed=SEED, size=16, slides=False)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hospital(
    request: pytest.FixtureRequest, generated: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hospital]:
    tmp = tmp_path_factory.mktemp(f"export-{request.param}")
    with loaded_hospital(generated, request.param, tmp) as (container, client):
        cohorts = CohortService(store=container.store, fhir=container.fhir)
        yield Hospital(client, container, cohorts.evaluate(DEFINITION))


def _everything(client: TestClient, patient_id: str) -> list[dict[str, Any]]:
    r = client.get(f"/fhir/Patient/{patient_id}/$everything")
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert not [link for link in bundle.get("link", []) if link["relation"] == "next"]
    return [e["resource"] for e in bundle.get("entry", [])]


def _ndjson(folder: Path) -> dict[str, list[dict[str, Any]]]:
    return {p.stem: [json.loads(line) for line in p.read_text("utf-8").splitlines()]
            for p in sorted((folder / "fhir").glob("*.ndjson"))}  # fmt: skip


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != JOURNAL}  # fmt: skip


def _instances(client: TestClient, study: str) -> list[tuple[str, str]]:
    """(series, SOP instance) UIDs of a study, by QIDO-RS."""
    r = client.get(f"/dicomweb/studies/{study}/instances", params={"limit": "10000"})
    assert r.status_code == 200, r.text
    return [(i["0020000E"]["Value"][0], i["00080018"]["Value"][0]) for i in r.json()]


def _stop_after(files: int) -> Any:
    def progress(step: ExportProgress) -> None:
        if step.phase == "dicom" and step.done >= files:
            raise Stop

    return progress


# -- tests ---------------------------------------------------------------------------------------
def test_cohort_is_a_proper_subset(hospital: Hospital) -> None:
    patients = hospital.result.patients
    assert 0 < len(patients) < PATIENTS
    assert all(p.studies for p in patients)


def test_ndjson_holds_the_patients_compartments(hospital: Hospital, tmp_path: Path) -> None:
    summary = hospital.export(tmp_path / "out")
    expected: dict[str, dict[str, Any]] = {}
    for patient in hospital.result.patients:
        for resource in _everything(hospital.client, patient.patient_id):
            expected.setdefault(resource["resourceType"], {})[resource["id"]] = resource
    written = _ndjson(tmp_path / "out")
    assert set(written) == set(expected)
    for rtype, resources in written.items():
        ids = [r["id"] for r in resources]
        assert len(ids) == len(set(ids)), f"{rtype}: a resource written twice"
        assert {r["id"]: r for r in resources} == expected[rtype], rtype
    assert summary.resources == {t: len(v) for t, v in expected.items()}
    assert len(written["Patient"]) == len(hospital.result.patients)


def test_dicom_files_are_what_wado_returns(hospital: Hospital, tmp_path: Path) -> None:
    summary = hospital.export(tmp_path / "out")
    expected = {(study, series, sop) for p in hospital.result.patients for study in p.studies
                for series, sop in _instances(hospital.client, study)}  # fmt: skip
    files = sorted((tmp_path / "out" / "dicom").rglob("*.dcm"))
    found = {(f.parent.parent.name, f.parent.name, f.stem) for f in files}
    assert found == expected
    assert summary.instances == summary.written == len(expected) and summary.skipped == 0
    for study, series, sop in sorted(expected)[::7]:
        url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        r = hospital.client.get(url, headers={"Accept": DICOM_ANY})
        assert r.status_code == 200, r.text
        assert (
            tmp_path / "out" / "dicom" / study / series / f"{sop}.dcm"
        ).read_bytes() == r.content


def test_manifest_lists_every_file(hospital: Hospital, tmp_path: Path) -> None:
    out = tmp_path / "out"
    hospital.export(out)
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    assert tuple(rows[0]) == MANIFEST_COLUMNS
    assert len(rows) == len(list((out / "dicom").rglob("*.dcm")))
    mrn_of = {p.patient_id: p.mrn for p in hospital.result.patients}
    for row in rows:
        data = (out / row["path"]).read_bytes()
        assert row["sha256"] == hashlib.sha256(data).hexdigest() and row["size"] == len(data)
        assert row["path"] == (f"dicom/{row['study_uid']}/{row['series_uid']}/"
                               f"{row['sop_instance_uid']}.dcm")  # fmt: skip
        assert row["mrn"] == mrn_of[row["patient_id"]] and row["labels"] == []
    with (out / "manifest.csv").open(encoding="utf-8", newline="") as fp:
        listed = list(csv.DictReader(fp))
    assert [(r["sop_instance_uid"], r["sha256"], int(r["size"])) for r in listed] == [
        (r["sop_instance_uid"], r["sha256"], r["size"]) for r in rows
    ]
    assert all(r["labels"] == "" for r in listed)


def test_interrupted_export_resumes_to_the_same_files(hospital: Hospital, tmp_path: Path) -> None:
    hospital.export(tmp_path / "clean")
    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        hospital.export(out, progress=_stop_after(5))
    journal = [json.loads(x) for x in (out / JOURNAL).read_text().splitlines()]
    assert [x["kind"] for x in journal] == ["header"] + ["file"] * 6
    assert journal[1]["path"] == "fhir/" and journal[2]["path"].startswith("dicom/")
    assert not (out / "manifest.parquet").exists()
    steps: list[ExportProgress] = []
    summary = hospital.export(out, progress=steps.append)
    assert summary.skipped == 5 and summary.written == summary.instances - 5
    assert [s.skipped for s in steps if s.phase == "dicom"][:6] == [True] * 5 + [False]
    assert _tree(out) == _tree(tmp_path / "clean")
    again = hospital.export(out)
    assert again.written == 0 and again.skipped == summary.instances


def test_a_file_left_unjournaled_is_checked_on_disk(hospital: Hospital, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(Stop):
        hospital.export(out, progress=_stop_after(3))
    lines = (out / JOURNAL).read_text().splitlines()
    (out / JOURNAL).write_text("\n".join(lines[:-2]) + "\n")  # the last two lines were lost
    last = json.loads(lines[-1])["path"]
    (out / last).write_bytes(b"not what the archive holds")
    summary = hospital.export(out)
    assert summary.skipped == 2  # two journaled; one on disk with the right hash; one rewritten
    assert summary.written == summary.instances - 2
    assert _tree(out) == _tree(_clean(hospital, tmp_path))


def _clean(hospital: Hospital, tmp_path: Path) -> Path:
    hospital.export(tmp_path / "clean")
    return tmp_path / "clean"


def test_zip_resumes_and_is_byte_identical(hospital: Hospital, tmp_path: Path) -> None:
    hospital.export(tmp_path / "clean.zip")
    assert not (tmp_path / "clean.zip.parts").exists()
    out = tmp_path / "resumed.zip"
    with pytest.raises(Stop):
        hospital.export(out, progress=_stop_after(4))
    assert (tmp_path / "resumed.zip.parts" / JOURNAL).exists() and not out.exists()
    hospital.export(out)
    assert out.read_bytes() == (tmp_path / "clean.zip").read_bytes()
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        assert zf.testzip() is None
    assert {"cohort.json", "manifest.parquet", "manifest.csv", "fhir/Patient.ndjson"} <= set(names)
    assert JOURNAL not in names
    assert len([n for n in names if n.endswith(".dcm")]) > 4


def test_series_level_keeps_the_matching_series(hospital: Hospital, tmp_path: Path) -> None:
    definition = parse_definition({"name": "mr-series", "evaluation_date": "2026-11-01",
                                   "criteria": [{"imaging": {"modality": ["MR"]}}]})  # fmt: skip
    result = CohortService(store=hospital.container.store,
                           fhir=hospital.container.fhir).evaluate(definition)  # fmt: skip
    series = _export_series(hospital, result, definition, tmp_path / "series", "series")
    studies = _export_series(hospital, result, definition, tmp_path / "study", "study")
    mr = set()
    for study in {s for p in result.patients for s in p.studies}:
        r = hospital.client.get(f"/dicomweb/studies/{study}/series", params={"Modality": "MR"})
        mr |= {row["0020000E"]["Value"][0] for row in r.json()}
    assert series == mr and mr <= studies


def _export_series(
    hospital: Hospital, result: CohortResult, definition: CohortDefinition, out: Path, level: Level
) -> set[str]:
    c = hospital.container
    export_cohort(result, store=c.store, fhir=c.fhir, out=out, level=level, definition=definition)
    return {row["series_uid"] for row in pq.read_table(out / "manifest.parquet").to_pylist()}


def test_refuses_a_folder_of_something_else(hospital: Hospital, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInput, match="not empty"):
        hospital.export(tmp_path / "busy")
    with pytest.raises(Stop):
        hospital.export(tmp_path / "out", progress=_stop_after(1))
    with pytest.raises(InvalidInput, match="another cohort result or level"):
        hospital.export(tmp_path / "out", level="series", definition=DEFINITION)


def test_a_journal_line_cut_by_a_crash_is_ignored(hospital: Hospital, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(Stop):
        hospital.export(out, progress=_stop_after(3))
    text = (out / JOURNAL).read_text()
    (out / JOURNAL).write_text(text.rstrip("\n")[:-7])  # the last line ends mid-write
    hospital.export(out)
    assert _tree(out) == _tree(_clean(hospital, tmp_path))


def test_refuses_to_overwrite_a_file(hospital: Hospital, tmp_path: Path) -> None:
    mine = tmp_path / "mine.zip"
    mine.write_bytes(b"someone's archive")
    with pytest.raises(InvalidInput, match="exists already and is no medflow export"):
        hospital.export(mine)
    assert mine.read_bytes() == b"someone's archive"
    (tmp_path / "notes").write_text("mine")
    with pytest.raises(InvalidInput, match="is a file"):
        hospital.export(tmp_path / "notes")


# -- de-identified (issue 8) ---------------------------------------------------------------------
def _deid(key: str = "cohort-export-test-key-0123456789", **profile: Any) -> Deidentification:
    return Deidentification.from_settings(
        Settings(deid=DeidSettings(key=SecretStr(key))), **profile
    )


def test_deidentified_export_resumes_and_agrees(hospital: Hospital, tmp_path: Path) -> None:
    """Interrupted and resumed, the de-identified export equals an uninterrupted one; its
    manifest, cohort.json, ndjson and DICOM headers name the same pseudonyms and UIDs; another
    key (or profile) does not resume it."""
    clean = hospital.export(tmp_path / "clean", deidentify=_deid())
    out = tmp_path / "resumed"
    with pytest.raises(Stop):
        hospital.export(out, progress=_stop_after(3), deidentify=_deid())
    with pytest.raises(InvalidInput, match="another cohort result"):
        hospital.export(out, deidentify=_deid("another-key-for-the-same-export-000"))
    with pytest.raises(InvalidInput, match="another cohort result"):
        hospital.export(out)  # not de-identified: not the same export either
    summary = hospital.export(out, deidentify=_deid())
    assert summary.skipped == 3 and summary.instances == clean.instances > 3
    assert _tree(out) == _tree(tmp_path / "clean")

    keys = _deid().keys
    rows = pq.read_table(out / "manifest.parquet").to_pylist()
    result = json.loads((out / "cohort.json").read_text())
    patients = {p["id"] for p in _ndjson(out)["Patient"]}
    assert {p["id"] for p in result["patients"]} == patients
    source_studies = {s for p in hospital.result.patients for s in p.studies}
    assert {s for p in result["patients"] for s in p["studies"]} == {
        keys.uid(s) for s in source_studies}  # fmt: skip
    for row in rows:
        ds = pydicom.dcmread(out / row["path"])
        assert ds.SOPInstanceUID == row["sop_instance_uid"] and ds.PatientID == row["patient_id"]
        assert row["patient_id"] in patients and row["study_uid"] in {
            keys.uid(s) for s in source_studies}  # fmt: skip
        assert hashlib.sha256((out / row["path"]).read_bytes()).hexdigest() == row["sha256"]


def test_deidentified_export_lists_what_the_profile_leaves_out(
    hospital: Hospital, tmp_path: Path
) -> None:
    """An instance with burned-in annotation (BurnedInAnnotation YES) in a cohort study is not
    written by the (default, exclude) profile; excluded.csv lists its new UID and the reason.
    (The last test of the module: it adds that instance to the archive.)"""
    study = hospital.result.patients[0].studies[0]
    record = hospital.container.store.find_instances(study_uid=study)[0]
    ds = pydicom.dcmread(io.BytesIO(b"".join(hospital.container.store.iter_bytes(record))))
    ds.BurnedInAnnotation = "YES"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    stored = hospital.client.post(
        f"/dicomweb/studies/{study}", content=_multipart(buffer.getvalue()),
        headers={"Content-Type": f"multipart/related; type=\"application/dicom\"; boundary={B}"},
    )  # fmt: skip
    assert stored.status_code == 200, stored.text
    summary = hospital.export(tmp_path / "out", deidentify=_deid())
    listed = list(csv.DictReader((tmp_path / "out" / "excluded.csv").open()))
    keys = _deid().keys
    assert summary.excluded == 1 and [r["sop_instance_uid"] for r in listed] == [
        keys.uid(ds.SOPInstanceUID)]  # fmt: skip
    assert "burned" in listed[0]["reason"].lower()
    assert not list((tmp_path / "out").glob(f"dicom/**/{keys.uid(ds.SOPInstanceUID)}.dcm"))
    assert summary.instances == len(list((tmp_path / "out").glob("dicom/**/*.dcm"))) > 0


B = "deid-test-boundary"


def _multipart(data: bytes) -> bytes:
    return (f"--{B}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data
            + f"\r\n--{B}--\r\n".encode())  # fmt: skip


# -- through the API (POST /api/cohorts/{id}/$export) --------------------------------------------
def _finished(client: TestClient, location: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = client.get(location).json()
        if status["status"] != "running":
            return dict(status)
        time.sleep(0.1)
    raise AssertionError("the export did not finish")


def test_export_through_the_api(hospital: Hospital, tmp_path: Path) -> None:
    """The API's export is the CLI's: the same zip as export_cohort writes for the saved
    cohort; asking again finds the finished job; de-identification needs the key and a
    profile name; errors are problem details."""
    c = hospital.client
    saved = c.post("/api/cohorts", json=DEFINITION.model_dump(mode="json", by_alias=True))
    cohort = saved.json()["id"]
    started = c.post(f"/api/cohorts/{cohort}/$export")
    assert started.status_code == 202, started.text
    location = started.headers["content-location"]
    status = _finished(c, location)
    assert status["status"] == "done", status
    assert status["summary"]["instances"] == hospital.export(tmp_path / "cli.zip").instances
    zipped = c.get(status["url"])
    assert zipped.status_code == 200 and zipped.headers["content-type"] == "application/zip"
    assert zipped.content == (tmp_path / "cli.zip").read_bytes()
    again = c.post(f"/api/cohorts/{cohort}/$export")
    assert again.headers["content-location"] == location and again.json()["status"] == "done"

    no_key = c.post(f"/api/cohorts/{cohort}/$export", params={"deidentify": "research"})
    assert no_key.status_code == 400 and "MEDFLOW_DEID__KEY" in no_key.json()["detail"]
    exports = hospital.container.cohort_exports
    plain = exports.settings
    key = DeidSettings(key=SecretStr("api-export-key-0123456789abcdef"))
    exports.settings = plain.model_copy(update={"deid": key})
    try:
        a_file = c.post(f"/api/cohorts/{cohort}/$export", params={"deidentify": "/etc/passwd"})
        assert a_file.status_code == 400  # a profile file is the server's choice, not a client's
        deid = c.post(f"/api/cohorts/{cohort}/$export", params={"deidentify": "research"})
        assert deid.status_code == 202 and deid.headers["content-location"] != location
        done = _finished(c, deid.headers["content-location"])
        assert done["status"] == "done" and done["file"].endswith("-deid.zip")
        with zipfile.ZipFile(io.BytesIO(c.get(done["url"]).content)) as zf:
            result = json.loads(zf.read("cohort.json"))
        assert result["deidentified"] == {"profile": "research"}
        assert not {p.patient_id for p in hospital.result.patients} & {
            p["id"] for p in result["patients"]}  # fmt: skip
    finally:
        exports.settings = plain
    assert c.get("/api/cohorts/exports/nosuchjob").status_code == 404
    assert c.post("/api/cohorts/999999/$export").status_code == 404
    assert c.post(f"/api/cohorts/{cohort}/$export", params={"level": "x"}).status_code == 422
