"""``medflow wsi import`` as a real process: into a data dir (the sidecar's identifiers), and
with ``--url`` through a running ``medflow serve`` (joining the study of the accession number
found by QIDO-RS); a file that is not a slide is refused with its reason."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pydicom
import pytest

from medflow.bootstrap import build
from medflow.core.settings import Settings
from medflow.synthetic import ome, pathology
from tests.e2e.test_cli import counts, medflow, serving
from tests.factories import make_instance, to_bytes
from tests.slides import biopsied

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    (plan,) = biopsied()
    root = tmp_path_factory.mktemp("slides")
    return {
        "svs": pathology.write_slide(plan, root / "svs", size=1024, associated=True),
        "ome": ome.write_ome_slide(plan, root / "ome", size=512),
    }


def _stored(data_dir: Path) -> list[pydicom.Dataset]:
    container = build(Settings(data_dir=data_dir))
    try:
        studies = container.store.find_studies()
        out = []
        for study in studies:
            for record in container.store.find_instances(study_uid=study.study_uid):
                with container.store.open_instance(record) as fp:
                    out.append(pydicom.dcmread(fp, stop_before_pixels=True))
        return out
    finally:
        container.close()


def test_import_into_a_data_dir_with_the_sidecar(tmp_path: Path, slides: dict[str, Path]) -> None:
    (plan,) = biopsied()
    data = tmp_path / "data"
    run = medflow("wsi", "import", slides["svs"], "--data-dir", data, "--json")
    assert run.returncode == 0, run.stdout + run.stderr
    (done,) = json.loads(run.stdout)["imported"]
    assert done["format"] == "svs" and done["study_uid"] == pathology.sidecar(plan)[
        "StudyInstanceUID"]  # fmt: skip
    stored = _stored(data)
    assert {ds.ImageType[2] for ds in stored} == {"VOLUME", "LABEL", "OVERVIEW", "THUMBNAIL"}
    assert {(ds.PatientID, ds.AccessionNumber) for ds in stored} == {
        (plan.mrn, plan.pathology_accession)}  # fmt: skip
    text = medflow("wsi", "import", slides["ome"], "--data-dir", data, "--patient-id", "P-2",
                   "--accession", "ACC-2", "--no-sidecar")  # fmt: skip
    assert text.returncode == 0, text.stdout + text.stderr
    assert "1 imported, 0 failed" in text.stdout and "ome_tiff" in text.stdout


def test_a_file_that_is_not_a_slide_is_refused(tmp_path: Path, slides: dict[str, Path]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("not a slide")
    run = medflow("wsi", "import", notes, slides["ome"], "--data-dir", tmp_path / "data")
    assert run.returncode == 1
    assert "notes.txt" in run.stdout and "not a whole-slide image" in run.stdout
    assert "1 imported, 1 failed" in run.stdout  # the other file went on


def test_import_through_a_running_server_joins_the_accessions_study(
    tmp_path: Path, slides: dict[str, Path]
) -> None:
    (plan,) = biopsied()
    data = tmp_path / "data"
    existing = make_instance(accession_number="ACC-77", patient_id="PAT-77",
                             patient_name="Roe^Richard", modality="XC")  # fmt: skip
    with serving(data) as base:
        stow = httpx.post(f"{base}/dicomweb/studies", content=b"".join([
            b"--b\r\nContent-Type: application/dicom\r\n\r\n", to_bytes(existing),
            b"\r\n--b--\r\n"]),
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        )  # fmt: skip
        assert stow.status_code == 200, stow.text
        run = medflow("wsi", "import", slides["svs"], "--url", base, "--accession", "ACC-77",
                      "--json")  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        (done,) = json.loads(run.stdout)["imported"]
        assert done["joined_existing_study"] and done["study_uid"] == existing.StudyInstanceUID
        series = httpx.get(f"{base}/dicomweb/studies/{existing.StudyInstanceUID}/series",
                           params={"Modality": "SM"}).json()  # fmt: skip
        assert len(series) == 1
        mismatch = medflow("wsi", "import", slides["ome"], "--url", base, "--accession",
                           "ACC-77", "--patient-id", plan.mrn)  # fmt: skip
        assert mismatch.returncode == 1 and "another patient" in mismatch.stdout
    assert counts(data)["instances"] == 1 + len(done["instances"])
    stored = [ds for ds in _stored(data) if ds.Modality == "SM"]
    assert {(ds.PatientID, str(ds.PatientName)) for ds in stored} == {("PAT-77", "Roe^Richard")}
