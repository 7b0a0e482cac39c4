"""Triage end to end, in process (issue 11): a tiny chest X-ray model trained in the test on a
synthetic hospital (FHIR and DICOM loaded through the public APIs) and promoted; a new chest
X-ray study arrives over STOW-RS; once it settles the worker scores it: a TID 1500 AI result SR
is in the study (origin recorded, so it triggers nothing), a RiskAssessment in FHIR, the study
on the worklist with its priority. A restarted worker writes no second SR or RiskAssessment; a
model that throws on a study is recorded and the worker goes on; reading the study from the
worklist records the reader's finding in FHIR (Observation) and DICOM (a KOS label)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from medflow.bootstrap import Container, build, create_app, triage_worker
from medflow.core.settings import Settings, TriageSettings
from medflow.labels.schemas import LabelSetDefinition
from medflow.ml.train.service import TrainConfig, train_model
from medflow.ml.triage.worker import ORIGIN
from medflow.synthetic.loader import load
from tests.ml_data import chest_hospital, cr_rows, write_manifest

pytestmark = pytest.mark.integration
AI_SR = "1.2.840.10008.5.1.4.1.1.88.34"
LATER = timedelta(seconds=60)


@dataclass
class World:
    container: Container
    client: TestClient
    hospital: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("triage")
    chest = chest_hospital(tmp_path_factory)
    settings = Settings(data_dir=tmp / "data", triage=TriageSettings(settle_seconds=5))
    container = build(settings)
    try:
        with TestClient(create_app(container)) as client:
            load(chest, url="http://testserver", client=client)
            container.labels.sets.save(definition=LabelSetDefinition.model_validate({
                "name": "cxr-finding", "scope": "study", "negative_class": "normal",
                "classes": [{"name": "normal"}, {"name": "finding", "code": {
                    "scheme": "SCT", "value": "404684003", "meaning": "Clinical finding"}}],
            }))  # fmt: skip
            manifest = write_manifest(cr_rows(chest), tmp / "manifest.parquet")
            config = TrainConfig(arch="small", size=32, epochs=1, batch_size=4, bootstrap=20,
                                 seed=5, max_steps=2)  # fmt: skip
            result = train_model(store=container.store, manifest=manifest, config=config,
                                 registry=container.registry, name="cxr")  # fmt: skip
            assert result.model is not None
            container.registry.promote(name="cxr", version=result.model.version,
                                       stage="production")  # fmt: skip
            yield World(container, client, chest)
    finally:
        container.close()


def new_cr_study(world: World) -> tuple[str, str]:
    """A new chest X-ray study of an existing patient, sent over STOW-RS: (study, patient)."""
    path = next(p for p in sorted((world.hospital / "dicom").glob("*/*.dcm"))
                if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CR")  # fmt: skip
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.AccessionNumber = "TRIAGE1"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    boundary = "triage-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + buf.getvalue()
            + f"\r\n--{boundary}--\r\n".encode())  # fmt: skip
    r = world.client.post(
        "/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
    )
    assert r.status_code == 200, r.text
    return str(ds.StudyInstanceUID), str(ds.PatientID)


def ai_results(world: World, study: str) -> list[Any]:
    return [r for r in world.container.store.find_instances(study_uid=study)
            if r.sop_class_uid == AI_SR]  # fmt: skip


def risk_assessments(world: World, study: str) -> list[dict[str, Any]]:
    return world.container.fhir.search_resources(
        resource_type="RiskAssessment",
        params=[("identifier", f"urn:medflow:ai-result|{study}/cxr:1")], limit=10,
    )  # fmt: skip


def test_a_new_study_is_scored_once_it_settles(world: World) -> None:
    worker = triage_worker(world.container)
    worker.step()  # the training archive: no cursor yet, it starts at the feed's end
    study, patient = new_cr_study(world)
    assert worker.step() == 0  # not settled yet (5 s)
    assert worker.status().pending == 1
    assert worker.step(now=datetime.now(UTC) + LATER) == 1

    (sr,) = ai_results(world, study)
    assert sr.origin == ORIGIN
    with world.container.store.open_instance(sr) as fp:
        ds = pydicom.dcmread(fp)
    assert ds.Manufacturer == "medflow"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    (risk,) = risk_assessments(world, study)
    probability = risk["prediction"][0]["probabilityDecimal"]
    assert 0 <= probability <= 1 and risk["subject"]["reference"].startswith("Patient/")
    assert risk["prediction"][0]["outcome"]["coding"][0]["code"] == "404684003"

    page = world.client.get("/api/worklist").json()
    (entry,) = [e for e in page["entries"] if e["study_uid"] == study]
    assert entry["patient_id"] == patient and entry["probability"] == pytest.approx(probability)
    assert entry["sr_uid"] == sr.sop_instance_uid and entry["risk_assessment_id"] == risk["id"]
    assert entry["priority"] in (1, 2, 3) and entry["status"] == "unread"

    # the worklist row as a FHIR Task (the reading work, for any FHIR client)
    (task,) = world.container.fhir.search_resources(
        resource_type="Task", params=[("identifier", f"urn:medflow:worklist|{study}")], limit=2
    )
    assert (task["status"], task["intent"]) == ("requested", "order")
    assert task["priority"] == {1: "asap", 2: "urgent", 3: "routine"}[entry["priority"]]
    assert task["for"] == risk["subject"]
    imaging = [b for b in risk["basis"] if b.get("reference", "").startswith("ImagingStudy/")]
    assert task["focus"] == (imaging[0] if imaging else {  # no sync here: the study's UID
        "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{study}"}})  # fmt: skip
    assert task["reasonReference"]["reference"] == f"RiskAssessment/{risk['id']}"

    # its own SR (origin medflow:triage) puts nothing on the pending list
    worker.consume()
    assert worker.status().pending == 0


def test_a_restart_writes_nothing_twice(world: World) -> None:
    study = next(e["study_uid"] for e in world.client.get("/api/worklist").json()["entries"])
    again = triage_worker(world.container)  # a new worker, as after a restart: state is in the DB
    again.score_study(study)
    assert len(ai_results(world, study)) == 1
    assert len(risk_assessments(world, study)) == 1


def test_a_throwing_model_is_recorded_and_the_worker_goes_on(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = triage_worker(world.container)
    worker.step()
    bad, _ = new_cr_study(world)
    good, _ = new_cr_study(world)
    predictor = world.container.models.get("cxr")
    original = predictor.predict

    def flaky(datasets: Any) -> Any:
        if any(str(d.StudyInstanceUID) == bad for d in datasets):
            raise RuntimeError("the model broke on this image")
        return original(datasets)

    monkeypatch.setattr(predictor, "predict", flaky)
    assert worker.step(now=datetime.now(UTC) + LATER) == 1  # the good one
    assert ai_results(world, good) and not ai_results(world, bad)
    failures = world.client.get("/api/triage/failures").json()
    assert any(f["study_uid"] == bad and "the model broke" in f["reason"] for f in failures)


def test_reading_records_the_finding(world: World) -> None:
    entry = world.client.get("/api/worklist").json()["entries"][0]
    study = entry["study_uid"]
    r = world.client.post(f"/api/worklist/{study}/read",
                          json={"reader": "Reader^One", "finding": "finding"})  # fmt: skip
    assert r.status_code == 200, r.text
    read = r.json()
    assert (read["status"], read["reader"], read["reader_finding"]) == (
        "read", "Reader^One", "finding")  # fmt: skip
    observation = world.container.fhir.read(resource_type="Observation",
                                            res_id=read["reader_observation_id"])  # fmt: skip
    assert observation["valueBoolean"] is True
    assert observation["code"]["coding"][0]["code"] == "404684003"
    (task,) = world.container.fhir.search_resources(
        resource_type="Task", params=[("identifier", f"urn:medflow:worklist|{study}")], limit=2
    )
    assert task["status"] == "completed" and task["owner"] == {"display": "Reader^One"}
    assert task["output"][0]["valueReference"]["reference"] == f"Observation/{observation['id']}"
    labels = world.client.get("/api/labels", params={"set": "cxr-finding", "study": study}).json()
    assert {(lb["label"], lb["source_kind"]) for lb in labels} == {("finding", "KOS")}
    assert world.client.get("/api/worklist", params={"status": "read"}).json()["total"] >= 1
    bad = world.client.post(f"/api/worklist/{study}/read", json={"reader": "R", "finding": "x"})
    assert bad.status_code == 400
    assert world.client.post("/api/worklist/1.2.3/read", json={"reader": "R"}).status_code == 404
    page = world.client.get("/worklist", params={"status": "all"})
    assert page.status_code == 200 and f'data-study-uid="{study}"' in page.text


def test_a_deleted_study_leaves_the_worklist(world: World) -> None:
    worker = triage_worker(world.container)
    worker.step()
    study, _ = new_cr_study(world)
    worker.step(now=datetime.now(UTC) + LATER)
    assert world.client.get(f"/api/worklist/{study}").status_code == 200
    assert world.client.delete(f"/dicomweb/studies/{study}").status_code in (200, 202, 204)
    worker.step()
    assert world.client.get(f"/api/worklist/{study}").status_code == 404
    (task,) = world.container.fhir.search_resources(
        resource_type="Task", params=[("identifier", f"urn:medflow:worklist|{study}")], limit=2
    )
    assert task["status"] == "cancelled"
