"""``/api/models`` end to end (issue 11, Serving): a tiny model trained in the test on a small
synthetic hospital's chest X-rays, registered and promoted, then asked over HTTP (the app
``medflow serve`` runs) with a DICOM upload, archive references and a batch; the problem
details of each refusal; ``medflow serve``'s import path without torch."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from medflow.bootstrap import Container, build, create_app
from medflow.core.settings import Settings
from medflow.ml.serving import api
from medflow.ml.train.images import FrameRef, decode_frames
from medflow.ml.train.service import TrainConfig, load_model, predict, train_model
from tests.ml_data import chest_hospital, cr_rows, write_manifest
from tests.wsi_fixtures import store_files

pytestmark = pytest.mark.integration
DICOM = {"Content-Type": "application/dicom"}


@dataclass
class World:
    data_dir: Path
    cr: list[Path]
    """Stored chest X-rays (CR)."""
    ct_study: str
    ct_file: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Container]]:
    """40 patients' CR images and one CT study stored; ``cxr`` v1 trained (a few steps), v2
    the same weights in production; ``draft`` v1 in no stage."""
    tmp = tmp_path_factory.mktemp("serving")
    chest = chest_hospital(tmp_path_factory)
    cr, ct = [], {}
    for path in sorted((chest / "dicom").glob("*/*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == "CR":
            cr.append(path)
        elif ds.Modality == "CT" and (not ct or ds.StudyInstanceUID in ct):
            ct.setdefault(ds.StudyInstanceUID, []).append(path)
    ((ct_study, ct_files),) = ct.items()
    container = build(Settings(data_dir=tmp / "data"))
    try:
        store_files(container.store, cr + ct_files)
        manifest = write_manifest(cr_rows(chest), tmp / "manifest.parquet")
        config = TrainConfig(arch="small", size=32, epochs=1, batch_size=4, bootstrap=20, seed=5,
                             max_steps=2)  # fmt: skip
        result = train_model(store=container.store, manifest=manifest, config=config,
                             registry=container.registry, name="cxr")  # fmt: skip
        assert result.model is not None
        for name, stage in (("cxr", "production"), ("draft", "none")):
            container.registry.register(
                name=name, architecture="small", input_spec=result.input_spec,
                metrics=result.metrics, manifest_sha256=result.model.manifest_sha256,
                state_dict=result.state_dict, stage=stage,
            )  # fmt: skip
        yield World(tmp / "data", cr, ct_study, ct_files[0]), container
    finally:
        container.close()


@pytest.fixture(scope="module")
def client(world: tuple[World, Container]) -> Iterator[TestClient]:
    with TestClient(create_app(world[1])) as c:
        yield c


def _problem(response: object, status: int) -> str:
    r = response  # an httpx.Response
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    assert r.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert body["status"] == status
    return str(body["detail"])


def test_listing(client: TestClient) -> None:
    listed = client.get("/api/models").json()
    assert [m["name"] for m in listed] == ["cxr", "draft"]
    cxr = listed[0]
    assert (cxr["production"], cxr["latest"]) == (2, 2)
    assert [v["stage"] for v in cxr["versions"]] == ["none", "production"]
    v1 = cxr["versions"][0]
    assert v1["input_spec"]["modality"] == "CR" and v1["input_spec"]["size"] == 32
    assert {"auc", "threshold", "sensitivity", "epochs_run"} <= set(v1["metrics"])
    assert "history" not in v1["metrics"]
    shown = client.get("/api/models/draft").json()
    assert (shown["production"], [v["version"] for v in shown["versions"]]) == (None, [1])
    assert "no model nope" in _problem(client.get("/api/models/nope"), 404)


def test_dicom_upload_matches_training_predictions(
    client: TestClient, world: tuple[World, Container]
) -> None:
    w, container = world
    path = w.cr[0]
    r = client.post("/api/models/cxr/predict", content=path.read_bytes(), headers=DICOM)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"]) == ("cxr", 2) and body["elapsed_ms"] > 0
    (p,) = body["predictions"]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert (p["sop_instance_uid"], p["study_uid"], p["frame"]) == (
        ds.SOPInstanceUID, ds.StudyInstanceUID, 1)  # fmt: skip
    assert sum(p["probabilities"].values()) == pytest.approx(1.0)
    assert p["probability"] == p["probabilities"]["finding"]
    assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
    # the same frame through training's decoding and prediction
    info = container.registry.get(name="cxr", version=2)
    decoded = decode_frames(container.store, [FrameRef(ds.SOPInstanceUID, 1)], size=32)
    want = predict(load_model(container.registry, info), info, decoded.images)
    np.testing.assert_allclose(p["probabilities"]["finding"], want[0, 1], rtol=1e-5)
    assert container.models.loaded() == ["cxr:2"]


def test_references_batch_and_versions(client: TestClient, world: tuple[World, Container]) -> None:
    w, _ = world
    a, b = (pydicom.dcmread(p, stop_before_pixels=True) for p in (w.cr[0], w.cr[-1]))
    study = client.post("/api/models/cxr/predict", json={"study": a.StudyInstanceUID}).json()
    uids = {p["sop_instance_uid"] for p in study["predictions"]}
    assert a.SOPInstanceUID in uids and all(p["study_uid"] == a.StudyInstanceUID
                                            for p in study["predictions"])  # fmt: skip
    series = client.post("/api/models/cxr/predict", json={
        "study": a.StudyInstanceUID, "series": a.SeriesInstanceUID,
        "instances": [a.SOPInstanceUID]}).json()  # fmt: skip
    assert [p["sop_instance_uid"] for p in series["predictions"]] == [a.SOPInstanceUID]
    batch = client.post("/api/models/cxr/predict", json=[
        {"study": a.StudyInstanceUID, "instances": [a.SOPInstanceUID]},
        {"study": b.StudyInstanceUID, "instances": [b.SOPInstanceUID]},
        {"study": a.StudyInstanceUID, "instances": [a.SOPInstanceUID]},  # counted once
    ]).json()  # fmt: skip
    assert [p["sop_instance_uid"] for p in batch["predictions"]] == [a.SOPInstanceUID,
                                                                     b.SOPInstanceUID]  # fmt: skip
    # the same image in a batch of two: equal up to float rounding (batched kernels)
    assert batch["predictions"][0]["probability"] == pytest.approx(
        series["predictions"][0]["probability"], abs=1e-6)  # fmt: skip
    v1 = client.post("/api/models/cxr/versions/1/predict", content=w.cr[0].read_bytes(),
                     headers=DICOM).json()  # fmt: skip
    assert (v1["model"], v1["version"]) == ("cxr", 1)
    assert v1["predictions"][0]["version"] == 1
    # the same weights under another version give the same probability
    assert v1["predictions"][0]["probability"] == pytest.approx(
        series["predictions"][0]["probability"], rel=1e-6)  # fmt: skip
    draft = client.post("/api/models/draft/versions/1/predict", json={"study": a.StudyInstanceUID})
    assert draft.status_code == 200


def test_problems(client: TestClient, world: tuple[World, Container],
                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    w, _ = world
    cr = w.cr[0].read_bytes()
    a = pydicom.dcmread(w.cr[0], stop_before_pixels=True)
    # 404: model, version, production version, study, instance
    assert "no model nope" in _problem(client.post("/api/models/nope/predict", content=cr,
                                                   headers=DICOM), 404)  # fmt: skip
    _problem(client.post("/api/models/cxr/versions/9/predict", content=cr, headers=DICOM), 404)
    assert "no production version" in _problem(client.post(
        "/api/models/draft/predict", content=cr, headers=DICOM), 404)  # fmt: skip
    _problem(client.post("/api/models/cxr/predict", json={"study": "1.2.3.4"}), 404)
    _problem(client.post("/api/models/cxr/predict", json={
        "study": a.StudyInstanceUID, "instances": ["1.2.3.4"]}), 404)  # fmt: skip
    # 422: not what the model reads
    detail = _problem(client.post("/api/models/cxr/predict", content=w.ct_file.read_bytes(),
                                  headers=DICOM), 422)  # fmt: skip
    assert "reads CR" in detail and "CT" in detail
    assert "holds CT" in _problem(client.post("/api/models/cxr/predict",
                                              json={"study": w.ct_study}), 422)  # fmt: skip
    # 400: malformed bodies and parameters
    _problem(client.post("/api/models/cxr/predict", content=b"not dicom", headers=DICOM), 400)
    _problem(client.post("/api/models/cxr/predict", content=b"{", headers={
        "Content-Type": "application/json"}), 400)  # fmt: skip
    _problem(client.post("/api/models/cxr/predict", json={"study": "1.2", "x": 1}), 400)
    _problem(client.post("/api/models/cxr/versions/one/predict", json={"study": "1.2"}), 400)
    # 415: another content type
    _problem(client.post("/api/models/cxr/predict", content=b"study=1.2", headers={
        "Content-Type": "text/plain"}), 415)  # fmt: skip
    # 413: over the size limit
    monkeypatch.setattr(api, "MAX_DICOM_BYTES", 1000)
    _problem(client.post("/api/models/cxr/predict", content=cr, headers=DICOM), 413)


def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/api/models/{name}/predict"]["post"]
    assert post["tags"] == ["Models"] and post["summary"]
    assert {"application/dicom", "application/json"} <= set(post["requestBody"]["content"])
    assert {"400", "404", "413", "415", "422"} <= set(post["responses"])
    assert "/api/models/{name}/versions/{version}/predict" in spec["paths"]
    assert "/api/models" in spec["paths"] and "/api/models/{name}" in spec["paths"]


def test_serve_lists_models_without_torch(world: tuple[World, Container]) -> None:
    code = f"""
import sys
from fastapi.testclient import TestClient
import medflow.cli.main
from medflow.bootstrap import build, create_app
from medflow.core.settings import Settings
container = build(Settings(data_dir={str(world[0].data_dir)!r}), migrate=False)
listed = TestClient(create_app(container)).get("/api/models")
assert listed.status_code == 200 and listed.json()[0]["name"] == "cxr", listed.text
loaded = sorted(m for m in ("torch", "monai") if m in sys.modules)
assert not loaded, loaded
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
