"""``medflow train --labels SET [--cohort ID]`` on a small synthetic hospital whose chest
X-rays are labelled from its truth (``labels from-truth``): the manifest is exported under
``<data_dir>/ml/manifests`` and kept as lineage, a cohort restricts it to its patients (with
``--manifest`` too), and the command's usage errors exit 2."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from medflow.bootstrap import build
from medflow.cli.main import app
from medflow.cohort.schema import parse_definition
from medflow.core.settings import Settings
from medflow.labels import manifest as labels_manifest
from medflow.labels.schemas import LabelSetDefinition
from medflow.ml.train.source import (
    NoTrainingData,
    export_labels,
    filter_manifest,
    manifests_dir,
    training_data,
)
from tests.conftest import load_data_dir
from tests.ml_data import chest_hospital

pytestmark = pytest.mark.integration
CXR = {
    "name": "cxr-consolidation",
    "classes": [
        {"name": "normal"},
        {"name": "consolidation",
         "code": {"scheme": "SCT", "value": "95436008", "meaning": "Lung consolidation"}},
    ],
    "negative_class": "normal",
    "scope": "study",
}  # fmt: skip
TINY = ["--size", "32", "--epochs", "1", "--batch-size", "4", "--device", "cpu"]
SPLIT = "0.5,0.25,0.25"


@dataclass
class Labelled:
    data_dir: Path
    cohort_id: int
    female: frozenset[str]
    """MRNs of the cohort (female patients)."""
    by_patient: dict[str, str]
    """Labelled patient -> their (first) class."""


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> Labelled:
    """40 synthetic patients; their CR studies labelled normal/consolidation; cohorts
    ``women`` (gender female) and ``nobody`` (gender other: no patient)."""
    tmp = tmp_path_factory.mktemp("train-labels")
    chest = chest_hospital(tmp_path_factory)
    data_dir = load_data_dir(chest, tmp / "data")
    truth = json.loads((chest / "truth.json").read_text())
    c = build(Settings(data_dir=data_dir))
    try:
        c.labels.sets.save(definition=LabelSetDefinition.model_validate(CXR))
        c.labels.from_truth(truth=truth, label_set=CXR["name"])
        by_patient: dict[str, str] = {}
        for row in c.labels.labels(label_set=CXR["name"]):
            by_patient.setdefault(row.patient_id, row.label)
        saved = c.cohorts.save(definition=parse_definition({
            "name": "women", "evaluation_date": "2026-11-01",
            "criteria": [{"demographics": {"gender": ["female"]}}]}))  # fmt: skip
        c.cohorts.save(definition=parse_definition({
            "name": "nobody", "evaluation_date": "2026-11-01",
            "criteria": [{"demographics": {"gender": ["other"]}}]}))  # fmt: skip
        result = c.cohorts.evaluate(definition=c.cohorts.definition(ref=saved.id))
        female = frozenset(p.mrn for p in result.patients if p.mrn)
    finally:
        c.close()
    assert set(by_patient.values()) == {"normal", "consolidation"}
    assert set(by_patient) & female and set(by_patient) - female
    return Labelled(data_dir, saved.id, female, by_patient)


def _seed(by_patient: dict[str, str], *groups: frozenset[str] | None) -> int:
    """A split seed giving every split both classes, for each group of patients (None: all)."""
    for seed in range(2000):
        ok = True
        for group in groups:
            patients = [p for p in by_patient if group is None or p in group]
            splits = labels_manifest.assign_splits(
                patients, seed=seed, fractions=labels_manifest.parse_split(SPLIT)
            )
            classes: dict[str, set[str]] = {s: set() for s in labels_manifest.SPLITS}
            for p, s in splits.items():
                classes[s].add(by_patient[p])
            ok = ok and all(len(v) == 2 for v in classes.values())
        if ok:
            return seed
    raise AssertionError("no seed splits these patients with both classes everywhere")


def _invoke(data_dir: Path, *args: str) -> str:
    out = CliRunner().invoke(app, [*args, "--data-dir", str(data_dir)])
    assert out.exit_code == 0, out.output
    return out.output


def _model(data_dir: Path, ref: str) -> dict[str, object]:
    shown = json.loads(_invoke(data_dir, "models", "show", ref, "--json"))
    assert isinstance(shown, dict)
    return shown


def _manifest(data_dir: Path, info: dict[str, object]) -> Path:
    lineage = info["lineage"]
    assert isinstance(lineage, dict)
    path = manifests_dir(data_dir) / str(lineage["manifest"])
    assert path.is_file()
    return path


def test_train_from_a_label_set(labelled: Labelled) -> None:
    data_dir = labelled.data_dir
    seed = _seed(labelled.by_patient, None)
    out = _invoke(data_dir, "train", "--labels", CXR["name"], "--model", "from-labels",
                  "--seed", str(seed), "--split", SPLIT, *TINY)  # fmt: skip
    assert "manifest " in out and "test AUC" in out
    info = _model(data_dir, "from-labels")
    assert (info["label_set"], info["label_set_version"]) == (CXR["name"], 1)
    assert info["cohort_id"] is None
    path = _manifest(data_dir, info)
    assert path.name.startswith(f"{CXR['name']}-v1-")
    table = labels_manifest.read_manifest(path)  # the rows' SHA-256 checked
    assert set(table.column("patient_id").to_pylist()) == set(labelled.by_patient)
    meta = labels_manifest.manifest_metadata(path)
    assert (meta["seed"], meta["split"]) == (str(seed), SPLIT)
    assert path.name.endswith(f"-{meta['rows_sha256'][:12]}.parquet")


def test_cohort_restricts_the_patients(labelled: Labelled) -> None:
    data_dir = labelled.data_dir
    seed = _seed(labelled.by_patient, labelled.female)
    out = _invoke(data_dir, "train", "--labels", CXR["name"], "--cohort", "women",
                  "--model", "women", "--seed", str(seed), "--split", SPLIT, *TINY)  # fmt: skip
    assert f"cohort {labelled.cohort_id} (women)" in out
    info = _model(data_dir, "women")
    assert info["cohort_id"] == labelled.cohort_id  # the name resolved to the id
    assert info["label_set"] == CXR["name"]
    patients = set(pq.read_table(_manifest(data_dir, info)).column("patient_id").to_pylist())
    assert patients == set(labelled.by_patient) & labelled.female


def test_manifest_filtered_to_a_cohort(labelled: Labelled, tmp_path: Path) -> None:
    c = build(Settings(data_dir=labelled.data_dir))
    try:
        given = tmp_path / "all.parquet"
        c.labels.export(label_set=CXR["name"], out=given, seed=1, split=SPLIT)
        data = training_data(labels=c.labels, cohorts=c.cohorts, data_dir=labelled.data_dir,
                             manifest=given, cohort=str(labelled.cohort_id))  # fmt: skip
        assert data.cohort is not None and data.cohort.name == "women"
        assert data.manifest.parent == manifests_dir(labelled.data_dir)
        assert data.manifest.name.startswith(f"all-cohort{labelled.cohort_id}-")
        table = labels_manifest.read_manifest(data.manifest)  # schema and rows' SHA-256 kept
        everything = labels_manifest.read_manifest(given).to_pylist()
        assert table.to_pylist() == [r for r in everything if r["patient_id"] in labelled.female]
        meta = labels_manifest.manifest_metadata(data.manifest)
        assert meta["label_set"] == CXR["name"] and meta["rows"] == str(table.num_rows)
        assert "filtered_from" in meta
        exported = [training_data(labels=c.labels, cohorts=c.cohorts,
                                  data_dir=labelled.data_dir, label_set=CXR["name"], seed=1,
                                  split=SPLIT, cohort="women") for _ in range(2)]  # fmt: skip
        assert exported[0].manifest == exported[1].manifest  # named by the rows' SHA-256
        assert exported[0].manifest.name.startswith(f"{CXR['name']}-v1-")
        assert labels_manifest.read_manifest(exported[0].manifest).to_pylist() == table.to_pylist()
        directory = tmp_path / "made"
        with pytest.raises(NoTrainingData, match="none of the 1 patients has a label"):
            export_labels(labels=c.labels, label_set=CXR["name"], directory=directory,
                          patients={"NO-SUCH-MRN"})  # fmt: skip
        with pytest.raises(NoTrainingData, match="none of the 1 patients has a row"):
            filter_manifest(manifest=given, patients={"NO-SUCH-MRN"}, directory=directory,
                            tag="x")  # fmt: skip
        with pytest.raises(NoTrainingData, match="nobody"):
            training_data(labels=c.labels, cohorts=c.cohorts, data_dir=labelled.data_dir,
                          manifest=given, cohort="nobody")  # fmt: skip
    finally:
        c.close()


def test_usage_errors_exit_2(labelled: Labelled, tmp_path: Path) -> None:
    runner = CliRunner()
    common = [*TINY, "--data-dir", str(labelled.data_dir)]
    manifest = tmp_path / "m.parquet"
    manifest.write_bytes(b"")
    cases = {
        "neither": ["train", *common],
        "both": ["train", "--labels", CXR["name"], "--manifest", str(manifest), *common],
        "split without labels": ["train", "--manifest", str(manifest), "--split", SPLIT, *common],
        "bad split": ["train", "--labels", CXR["name"], "--split", "0.5,0.5", *common],
        "empty cohort": ["train", "--labels", CXR["name"], "--cohort", "nobody", *common],
        "empty split": ["train", "--labels", CXR["name"], "--split", "1,0,0", *common],
    }
    messages = {
        "neither": "exactly one of --manifest",
        "both": "exactly one of --manifest",
        "split without labels": "--split go with --labels",
        "bad split": "three",
        "empty cohort": "has no patients",
        "empty split": "no val or test rows",
    }
    for case, args in cases.items():
        out = runner.invoke(app, args)
        assert out.exit_code == 2, (case, out.output)
        assert messages[case] in re.sub(r"[\s│]+", " ", out.output), (case, out.output)
    unknown = runner.invoke(app, ["train", "--labels", CXR["name"], "--cohort", "nope", *common])
    assert unknown.exit_code == 1 and "no cohort" in unknown.output
    assert not list(manifests_dir(labelled.data_dir).glob(".export-*"))
