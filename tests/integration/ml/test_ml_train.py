"""Training end to end on a small synthetic hospital stored in a test archive: manifest ->
images through the store -> FHIR features -> train -> metrics -> registry -> weights loaded
back predict the same; the ``medflow train`` and ``medflow models`` commands."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medflow.bootstrap import Container, build
from medflow.core.errors import InvalidInput
from medflow.core.settings import Settings
from medflow.ml.registry.service import ModelRegistry
from medflow.ml.train import features as feats
from medflow.ml.train.images import FrameRef, decode_frames
from medflow.ml.train.manifest import read_manifest
from medflow.ml.train.service import TrainConfig, load_model, predict, train_model
from tests.conftest import load_data_dir
from tests.ml_data import chest_hospital, cr_rows, write_manifest

pytestmark = pytest.mark.integration
CONFIG = TrainConfig(arch="small", size=32, epochs=2, batch_size=4, bootstrap=100, seed=5)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data dir with 40 synthetic patients loaded, manifest of their chest X-rays)."""
    tmp = tmp_path_factory.mktemp("ml")
    chest = chest_hospital(tmp_path_factory)
    data_dir = load_data_dir(chest, tmp / "data")
    rows = cr_rows(chest)
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    return data_dir, write_manifest(rows, tmp / "manifest.parquet")


@pytest.fixture
def container(hospital: tuple[Path, Path]) -> Iterator[Container]:
    c = build(Settings(data_dir=hospital[0]))
    try:
        yield c
    finally:
        c.close()


def _registry(c: Container) -> ModelRegistry:
    return ModelRegistry(engine=c.engine, blobs=c.blobs, spool_dir=c.settings.spool_dir())


def test_train_register_and_predict_again(
    container: Container, hospital: tuple[Path, Path]
) -> None:
    manifest = hospital[1]
    config = TrainConfig(**{**CONFIG.__dict__, "features": ("age", "sex", "history")})
    registry = _registry(container)
    result = train_model(store=container.store, fhir=container.fhir, manifest=manifest,
                         config=config, registry=registry, name="cxr", cohort_id=4)  # fmt: skip
    info = result.model
    assert info is not None and info.ref == "cxr:1"
    m = info.metrics
    assert 0.0 <= m["auc"] <= 1.0 and m["n"] == len(result.test_labels)
    assert m["auc_ci95"][0] <= m["auc"] <= m["auc_ci95"][1]
    assert {"sensitivity", "specificity", "brier", "threshold", "reliability"} <= set(m)
    assert m["training"]["epochs_run"] <= 2
    spec = info.input_spec
    assert (spec["modality"], spec["size"], spec["channels"]) == ("CR", 32, 1)
    assert spec["classes"] == ["normal", "finding"]
    assert spec["features"] == ["age", "sex", "history"]
    assert spec["tabular_width"] == 2 + len(spec["history_vocabulary"])
    assert (info.label_set, info.label_set_version, info.cohort_id) == ("cxr-finding", 1, 4)
    assert info.lineage["splits"]["test"]["images"] == len(result.test_labels)
    assert registry.read_blob(info, "roc").startswith(b"\x89PNG")
    assert registry.read_blob(info, "calibration").startswith(b"\x89PNG")
    # the registered weights, rebuilt from the spec, predict the same probabilities
    rows = [r for r in read_manifest(manifest).to_pylist() if r["split"] == "test"]
    decoded = decode_frames(container.store, [FrameRef(r["sop_instance_uid"], r["frame"])
                                              for r in rows], size=spec["size"])  # fmt: skip
    records = feats.fetch_patients(container.fhir, [r["patient_id"] for r in rows])
    tabular = feats.feature_matrix(spec["features"], [records[r["patient_id"]] for r in rows],
                                   decoded.study_dates, spec["history_vocabulary"])  # fmt: skip
    net = load_model(registry, registry.get(name="cxr"))
    again = predict(net, info, decoded.images, tabular)
    np.testing.assert_allclose(again, result.test_probabilities, rtol=1e-5, atol=1e-6)


def test_same_seed_same_weights(container: Container, hospital: tuple[Path, Path]) -> None:
    config = TrainConfig(**{**CONFIG.__dict__, "epochs": 1})
    first = train_model(store=container.store, manifest=hospital[1], config=config)
    again = train_model(store=container.store, manifest=hospital[1], config=config)
    assert first.state_dict.keys() == again.state_dict.keys()
    assert all(torch.equal(first.state_dict[k], again.state_dict[k]) for k in first.state_dict)
    np.testing.assert_array_equal(first.test_probabilities, again.test_probabilities)


def test_bad_requests(container: Container, hospital: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="FHIR"):
        train_model(store=container.store, manifest=hospital[1],
                    config=TrainConfig(features=("age",)))  # fmt: skip
    with pytest.raises(InvalidInput):
        train_model(store=container.store, manifest=hospital[1], config=TrainConfig(arch="vgg"))
    rows = [r for r in read_manifest(hospital[1]).to_pylist() if r["split"] != "val"]
    no_val = write_manifest(rows, tmp_path / "noval.parquet")
    with pytest.raises(InvalidInput, match="no val rows"):
        train_model(store=container.store, manifest=no_val, config=CONFIG)


def test_cli_train_and_models(hospital: tuple[Path, Path]) -> None:
    from medflow.cli.main import app

    data_dir, manifest = hospital
    runner = CliRunner()
    common = ["--data-dir", str(data_dir)]
    args = ["train", "--manifest", str(manifest), "--model", "cli-cxr", "--size", "32",
            "--epochs", "1", "--batch-size", "4", "--device", "cpu", *common]  # fmt: skip
    for _ in range(2):
        out = runner.invoke(app, args)
        assert out.exit_code == 0, out.output
    assert "test AUC" in out.output
    listed = runner.invoke(app, ["models", "list", "cli-cxr", "--json", *common])
    assert [m["version"] for m in json.loads(listed.output)] == [1, 2]
    promoted = runner.invoke(app, ["models", "promote", "cli-cxr:2", "--stage", "production",
                                   *common])  # fmt: skip
    assert promoted.exit_code == 0 and "production" in promoted.output
    shown = runner.invoke(app, ["models", "show", "cli-cxr", "--json", *common])
    assert json.loads(shown.output)["stage"] == "production"
    missing = runner.invoke(app, ["models", "show", "cli-cxr:9", *common])
    assert missing.exit_code == 1
    bad = runner.invoke(app, [*args[:-2], "--features", "bmi", *common])
    assert bad.exit_code == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_train_on_cuda(container: Container, hospital: tuple[Path, Path]) -> None:
    config = TrainConfig(**{**CONFIG.__dict__, "device": "cuda", "epochs": 1})
    result = train_model(store=container.store, manifest=hospital[1], config=config)
    assert result.metrics["training"]["device"] == "cuda"
    assert all(t.device.type == "cpu" for t in result.state_dict.values())  # saved on the CPU
