"""The feedback loop in process (issue 11): a tiny pneumothorax model trained in the test on
half of a synthetic hospital's labelled chest X-rays, promoted, every chest X-ray scored by
the triage worker (RiskAssessments in FHIR); the hospital's Conditions (pneumothorax
confirmed on the day of the X-ray) and follow-up are the outcomes. Then:

- ``/api/models/{name}/performance`` counts exactly what the truth says, its false positives
  and negatives link to the studies, and a reader's finding is judged against outcomes;
- outcomes become labels (provenance "outcome", a KOS whose observer is a device), once;
- ``retrain`` trains a challenger on the grown set, compares both on the same test rows and
  promotes only by the rule."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pydicom
import pytest
from fastapi.testclient import TestClient

from medflow.bootstrap import Container, build, create_app, triage_worker
from medflow.core.errors import InvalidInput
from medflow.core.settings import Settings
from medflow.labels.manifest import assign_splits
from medflow.labels.schemas import LabelSetDefinition
from medflow.ml.feedback.outcomes import Rules
from medflow.ml.feedback.service import Feedback
from medflow.ml.train.retrain import retrain
from medflow.ml.train.service import TrainConfig, train_model
from medflow.ml.train.source import export_labels, manifests_dir
from medflow.synthetic.loader import load
from medflow.synthetic.writer import generate

pytestmark = pytest.mark.integration
PTX = {
    "name": "ptx", "scope": "study", "negative_class": "normal",
    "classes": [{"name": "normal"}, {"name": "pneumothorax", "code": {
        "scheme": "SCT", "value": "36118008", "meaning": "Pneumothorax"}}],
}  # fmt: skip
SPLIT = "0.5,0.25,0.25"
FRACTIONS = (0.5, 0.25, 0.25)
LATER = date(2030, 1, 1)
"""Evaluated as of this day: every follow-up interval has passed."""
QUERY = {"as_of": LATER.isoformat(), "exclude_training": "false"}


@dataclass
class World:
    container: Container
    client: TestClient
    truth: dict[str, str]
    """MRN -> the patient's chest X-ray finding ("" none, "pneumothorax", "consolidation")."""
    seed: int
    data_dir: Path


def _cr_truth(truth: list[dict[str, Any]]) -> dict[str, str]:
    out = {}
    for record in truth:
        if record["disease"] in ("pneumothorax", "pneumonia", "screening"):
            (finding,) = record["studies"].values()
            out[record["mrn"]] = finding
    return out


def _first_half(truth: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in truth if int(r["mrn"][-7:]) % 2 == 0]


def _both_classes(classes: dict[str, int], seed: int) -> bool:
    splits = assign_splits(classes, seed=seed, fractions=FRACTIONS)
    return all({classes[p] for p, s in splits.items() if s == name} == {0, 1}
               for name in ("train", "val", "test"))  # fmt: skip


def _seed(cr: dict[str, str]) -> int:
    """A seed giving both classes to every split of the first half's labels (pneumothorax
    against none) and of the grown set (every chest X-ray patient: pneumothorax against the
    rest, negatives by follow-up)."""
    half = {m: int(f == "pneumothorax") for m, f in cr.items()
            if int(m[-7:]) % 2 == 0 and f in ("", "pneumothorax")}  # fmt: skip
    grown = {m: int(f == "pneumothorax") for m, f in cr.items()}
    return next(s for s in range(5000) if _both_classes(half, s) and _both_classes(grown, s))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("feedback")
    generate(tmp / "hospital", patients=70, seed=3, size=32, slides=False)
    truth = json.loads((tmp / "hospital" / "truth.json").read_text())
    cr = _cr_truth(truth)
    seed = _seed(cr)
    container = build(Settings(data_dir=tmp / "data"))
    try:
        with TestClient(create_app(container)) as client:
            load(tmp / "hospital", url="http://testserver", client=client)
            container.labels.sets.save(definition=LabelSetDefinition.model_validate(PTX))
            container.labels.from_truth(truth=_first_half(truth), label_set="ptx")
            data = export_labels(labels=container.labels, label_set="ptx", seed=seed,
                                 split=SPLIT, directory=manifests_dir(tmp / "data"))  # fmt: skip
            config = TrainConfig(arch="small", size=32, epochs=1, batch_size=4, bootstrap=20,
                                 seed=seed, max_steps=2)  # fmt: skip
            result = train_model(store=container.store, manifest=data.manifest, config=config,
                                 registry=container.registry, name="ptx")  # fmt: skip
            assert result.model is not None
            container.registry.promote(name="ptx", version=result.model.version,
                                       stage="production")  # fmt: skip
            worker = triage_worker(container)
            for study in container.store.find_studies(modalities=["CR"]):
                assert worker.score_study(study.study_uid)
            yield World(container, client, cr, seed, tmp / "data")
    finally:
        container.close()


def test_performance_matches_the_truth(world: World) -> None:
    r = world.client.get("/api/models/ptx/performance", params=QUERY)
    assert r.status_code == 200, r.text
    report = r.json()
    n, positives = len(world.truth), sum(f == "pneumothorax" for f in world.truth.values())
    assert report["counts"]["predictions"] == n and report["counts"]["with_outcome"] == n
    assert report["counts"]["by_source"] == {"condition": positives, "follow-up": n - positives}
    overall = report["overall"]
    assert overall["positives"] == positives and overall["negatives"] == n - positives
    assert (
        overall["tp"] + overall["fn"] == positives
        and overall["fp"] + overall["tn"] == n - positives
    )
    assert overall["auc"] is not None and 0 <= overall["auc"] <= 1
    assert report["finding"]["code"] == "36118008"
    assert list(report["by_version"]) == ["1"] and report["by_version"]["1"]["n"] == n
    assert sum(w["n"] for w in report["windows"]) == n
    assert len(report["false_positives"]) == overall["fp"]
    assert len(report["false_negatives"]) == overall["fn"]
    mrn_of = {c["study_uid"]: c["patient_id"] for c in
              report["false_positives"] + report["false_negatives"]}  # fmt: skip
    for case in report["false_negatives"]:
        assert world.truth[case["patient_id"]] == "pneumothorax"
        assert case["outcome"]["source"] == "condition"
        assert case["outcome"]["reference"].startswith("Condition/")
        assert case["link"] == f"/studies/{case['study_uid']}"
    for case in report["false_positives"]:
        assert world.truth[mrn_of[case["study_uid"]]] != "pneumothorax"
    # without follow-up negatives only the confirmed Conditions are outcomes
    strict = world.client.get("/api/models/ptx/performance",
                              params={**QUERY, "followup_days": 0}).json()  # fmt: skip
    assert strict["counts"]["with_outcome"] == positives
    assert strict["overall"]["auc"] is None  # one class: no AUC, no crash
    quarterly = world.client.get("/api/models/ptx/performance",
                                 params={**QUERY, "window": "quarter"}).json()  # fmt: skip
    assert all("-Q" in w["period"] for w in quarterly["windows"])


def test_the_studies_a_version_learned_from_are_left_out(world: World) -> None:
    report = world.client.get("/api/models/ptx/performance",
                              params={"as_of": LATER.isoformat()}).json()  # fmt: skip
    c = world.container
    manifest = manifests_dir(world.data_dir) / c.registry.get(name="ptx", version=1).lineage[
        "manifest"]  # fmt: skip
    rows = pq.read_table(manifest).to_pylist()
    learned = {r["study_uid"] for r in rows if r["split"] in ("train", "val")}
    assert report["exclude_training"] and report["training_unknown_for_versions"] == []
    assert report["counts"]["excluded_training"] == len(learned) > 0
    assert report["counts"]["predictions"] == len(world.truth) - len(learned)
    cases = report["false_positives"] + report["false_negatives"]
    assert not {case["study_uid"] for case in cases} & learned


def test_bad_requests_are_problems(world: World) -> None:
    assert world.client.get("/api/models/nope/performance").status_code == 404
    assert world.client.get("/api/models/ptx/performance", params={"version": 9}).status_code == 404
    bad = world.client.get("/api/models/ptx/performance", params={"window": "decade"})
    assert bad.status_code == 400 and bad.headers["content-type"].startswith(
        "application/problem+json")  # fmt: skip


def test_a_reader_is_judged_against_outcomes(world: World) -> None:
    c = world.container
    studies = {s.patient_id: s.study_uid for s in c.store.find_studies(modalities=["CR"])}
    positive = next(m for m, f in sorted(world.truth.items()) if f == "pneumothorax")
    negative = next(m for m, f in sorted(world.truth.items()) if f == "")
    c.reading.read(study_uid=studies[positive], reader="Grey^Meredith", finding="normal")
    c.reading.read(study_uid=studies[negative], reader="Grey^Meredith", finding="normal")
    report = world.client.get("/api/models/ptx/performance", params=QUERY).json()
    (reader,) = [r for r in report["readers"] if r["reader"] == "Grey^Meredith"]
    assert (reader["tp"], reader["fn"], reader["tn"], reader["fp"]) == (0, 1, 1, 0)
    assert reader["sensitivity"] == 0.0 and reader["specificity"] == 1.0
    (missed,) = reader["discordant"]
    assert missed["study_uid"] == studies[positive] and missed["reader_positive"] is False
    assert missed["outcome"]["source"] == "condition"
    assert reader["model_on_same_studies"]["n"] == 2
    # for the model, the Condition outranks the reading; the reading outranks follow-up
    n, positives = len(world.truth), sum(f == "pneumothorax" for f in world.truth.values())
    assert report["counts"]["by_source"] == {"condition": positives, "reader": 1,
                                             "follow-up": n - positives - 1}  # fmt: skip


def test_outcomes_become_labels_once_then_retrain(world: World) -> None:
    c = world.container
    feedback = Feedback(fhir=c.fhir, store=c.store, registry=c.registry, labels=c.labels)
    labelled = {r.study_uid for r in c.labels.labels(label_set="ptx")}
    rules = Rules(as_of=LATER)
    first = feedback.outcome_labels(name="ptx", rules=rules,
                                    sources=("condition", "follow-up"))  # fmt: skip
    n, positives = len(world.truth), sum(f == "pneumothorax" for f in world.truth.values())
    written = first["written"]  # the reader's labels (previous test) stay: "labelled" has them
    assert written["positive"] + written["negative"] == n - len(labelled) > 0
    assert first["already_labelled"] == len(labelled) and not first["skipped"]
    rows = c.labels.labels(label_set="ptx")
    assert len({r.study_uid for r in rows}) == n
    new_rows = [r for r in rows if r.study_uid not in labelled]
    for row in new_rows:  # each outcome label says what the truth says
        truly = world.truth[row.patient_id] == "pneumothorax"
        assert row.label == ("pneumothorax" if truly else "normal")
    assert written["positive"] == sum(r.label == "pneumothorax" for r in new_rows)
    assert 0 < written["positive"] < positives  # the other half's (and not a reader's)
    new = new_rows[0]
    (doc,) = [i for i in c.store.find_instances(study_uid=new.study_uid)
              if i.sop_instance_uid == new.source_uid]  # fmt: skip
    with c.store.open_instance(doc) as fp:
        ds = pydicom.dcmread(fp)
    observer = {item.ConceptNameCodeSequence[0].CodeValue: item for item in ds.ContentSequence}
    assert observer["121005"].ConceptCodeSequence[0].CodeValue == "121007"  # a device
    assert observer["121013"].TextValue == "medflow outcome"  # Device Observer Name
    again = feedback.outcome_labels(name="ptx", rules=rules, sources=("condition", "follow-up"))
    assert again["written"] == {"positive": 0, "negative": 0}
    with pytest.raises(InvalidInput):
        feedback.outcome_labels(name="ptx", sources=("gossip",))

    done = retrain(store=c.store, labels=c.labels, registry=c.registry, data_dir=world.data_dir,
                   name="ptx", device="cpu", overrides={"max_steps": 2})  # fmt: skip
    comparison = done.comparison
    assert done.champion.ref == "ptx:1" and done.challenger.ref == "ptx:2"
    assert comparison["test"]["images"] == len(
        [1 for s in assign_splits(world.truth, seed=world.seed, fractions=FRACTIONS).values()
         if s == "test"])  # fmt: skip
    assert comparison["champion_auc"] is not None and comparison["challenger_auc"] is not None
    better = comparison["challenger_auc"] - comparison["champion_auc"] > 0
    assert done.promoted is better
    production = c.registry.production(name="ptx")
    assert production.version == (2 if better else 1)
    assert c.registry.get(name="ptx", version=2).lineage["retrain"]["champion"] == "ptx:1"
    # an impossible gain keeps the champion of the day
    kept = retrain(store=c.store, labels=c.labels, registry=c.registry, data_dir=world.data_dir,
                   name="ptx", device="cpu", min_gain=1.0, overrides={"max_steps": 1})  # fmt: skip
    assert not kept.promoted and c.registry.production(name="ptx").version == production.version


def test_the_pages(world: World) -> None:
    listing = world.client.get("/models")
    assert listing.status_code == 200 and 'data-model="ptx:1"' in listing.text
    assert "/models/ptx/performance" in listing.text
    page = world.client.get("/models/ptx/performance",
                            params={**QUERY, "include_training": "1"})  # fmt: skip
    assert page.status_code == 200
    report = world.client.get("/api/models/ptx/performance", params=QUERY).json()
    overall = report["overall"]
    for cell in ("tp", "fp", "tn", "fn"):
        assert f'id="cm-{cell}">{overall[cell]}<' in page.text
    for case in report["false_negatives"]:
        assert f'href="/studies/{case["study_uid"]}"' in page.text
    assert 'id="windows-table"' in page.text and 'id="versions-table"' in page.text
    assert world.client.get("/models/nope/performance").status_code == 404
    bad = world.client.get("/models/ptx/performance", params={"followup_days": "soon"})
    assert bad.status_code == 400 and 'id="models-error"' in bad.text
