"""The demo model of ``make run`` (issue 11) on a tiny synthetic hospital loaded through the
public APIs, as ``medflow serve --demo-patients`` runs it after loading (``demo_model_step``
with the server's container): a binary study-scope label set from the hospital's truth, a
model trained (tiny here), registered and promoted; the CR studies of the archive, stored
before any model existed, are put on triage's pending list and scored onto the worklist; the
embedding worker embeds them; a second start changes nothing; a stopped server cancels
training and the next start trains."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient

from medflow.bootstrap import Container, build, create_app, triage_worker
from medflow.cli.demo import demo_model_step
from medflow.core.errors import InvalidInput
from medflow.core.settings import Settings, TriageSettings
from medflow.ml.demo import DEMO_LABEL_SET, DEMO_MODEL, Cancelled, DemoModelOptions
from medflow.ml.similar.store import EmbeddingStore
from medflow.ml.similar.worker import EmbeddingWorker
from medflow.ml.triage.worker import TriageWorker
from medflow.synthetic.loader import load
from tests.ml_data import chest_hospital

pytestmark = pytest.mark.integration
TINY = DemoModelOptions(size=32, epochs=1, batch_size=4, bootstrap=20, max_steps=2,
                        split="0.5,0.25,0.25")  # fmt: skip
LATER = timedelta(seconds=60)


@dataclass
class World:
    container: Container
    worker: TriageWorker
    hospital: Path
    cr: frozenset[str]
    """The archive's CR studies."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("demo-model")
    chest = chest_hospital(tmp_path_factory)
    container = build(Settings(data_dir=tmp / "data", triage=TriageSettings(settle_seconds=5)))
    try:
        worker = triage_worker(container)
        worker.step()  # as in `medflow serve`: triage runs before the demo arrives
        with TestClient(create_app(container)) as client:
            load(chest, url="http://testserver", client=client)
        worker.step(now=datetime.now(UTC) + LATER)  # the feed read: no model, nothing scored
        container.triage = worker  # the serve process's worker (its thread not started here)
        cr = frozenset(s.study_uid for s in container.store.find_studies(modalities=["CR"]))
        yield World(container, worker, chest, cr)
    finally:
        container.triage = None
        container.close()


def step(world: World, messages: list[str], stop: threading.Event | None = None) -> Any:
    return demo_model_step(world.container, folder=world.hospital, url="http://testserver",
                           say=messages.append, stop=stop or threading.Event(),
                           options=TINY)  # fmt: skip


def snapshot(world: World) -> dict[str, Any]:
    c = world.container
    page = c.reading.worklist.page(status=None, limit=1000)
    return {
        "models": [(m.ref, m.stage, m.weights_sha256) for m in c.registry.list()],
        "labels": sorted((r.study_uid, r.label) for r in
                         c.labels.labels(label_set=DEMO_LABEL_SET["name"])),
        "worklist": sorted((e.study_uid, e.probability, e.sr_uid, e.risk_assessment_id)
                           for e in page.entries),
        "counts": c.store.counts(),
        "pending": world.worker.status().pending,
    }  # fmt: skip


def test_a_stopped_server_cancels_training(world: World) -> None:
    stop = threading.Event()
    stop.set()
    with pytest.raises(Cancelled):
        step(world, [], stop)
    assert world.container.registry.list(name=DEMO_MODEL) == []  # trained at the next start
    assert world.worker.status().pending == 0 and world.worker.production_models() == []


def test_the_demo_model_fills_the_worklist(world: World) -> None:
    c = world.container
    messages: list[str] = []
    result = step(world, messages)
    info = result.model
    assert result.created and (info.name, info.stage) == (DEMO_MODEL, "production")
    assert info.input_spec["classes"] == ["normal", "pneumothorax"]
    assert (info.input_spec["modality"], info.label_set) == ("CR", DEMO_LABEL_SET["name"])
    assert [m.ref for m in world.worker.production_models()] == [info.ref]  # binary: triage
    assert any("in production, test AUC" in m for m in messages), messages
    assert any(f"{len(world.cr)} CR studies of the archive queued" in m for m in messages)

    # the labels from the truth: pneumothorax CR studies positive, those without finding normal
    truth = json.loads((world.hospital / "truth.json").read_text())
    finding = {acc: f for record in truth for acc, f in record["studies"].items()}
    expected = {s.study_uid: "pneumothorax" if finding[s.accession_number or ""] else "normal"
                for s in c.store.find_studies(modalities=["CR"])
                if finding[s.accession_number or ""] in ("", "pneumothorax")}  # fmt: skip
    labelled = {r.study_uid: r.label for r in c.labels.labels(label_set=DEMO_LABEL_SET["name"])}
    assert labelled == expected and set(expected.values()) == {"normal", "pneumothorax"}

    # the archive's CR studies, stored before the model, scored once they are pending
    assert world.worker.status().pending == len(world.cr)
    assert world.worker.step(now=datetime.now(UTC) + LATER) == len(world.cr)
    page = c.reading.worklist.page(status=None, limit=1000)
    assert {e.study_uid for e in page.entries} == world.cr
    for entry in page.entries:
        assert (entry.model, entry.finding, entry.modality) == (info.ref, "Pneumothorax", "CR")
        assert 0 <= entry.probability <= 1 and entry.priority in (1, 2, 3)
    study = page.entries[0].study_uid
    (risk,) = c.fhir.search_resources(
        resource_type="RiskAssessment",
        params=[("identifier", f"urn:medflow:ai-result|{study}/{info.ref}")], limit=10,
    )  # fmt: skip
    assert risk["prediction"][0]["outcome"]["coding"][0]["code"] == "36118008"


def test_the_archive_is_embedded_for_similar_images(world: World) -> None:
    c = world.container
    models = c.models
    embeddings = EmbeddingStore(c.engine)
    worker = EmbeddingWorker(store=c.store, embeddings=embeddings, embedders=lambda: [
        models.get(m.name, m.version) for m in c.registry.list()
        if m.stage == "production"])  # fmt: skip
    worker.run_once()  # the promoted model's cursor starts at 0: everything stored before
    ref = c.registry.production(name=DEMO_MODEL).ref
    (summary,) = [m for m in embeddings.models() if m.model_ref == ref]
    embedded = embeddings.instances_of(model_ref=ref, study_uids=world.cr)
    cr_images = {r.sop_instance_uid for study in world.cr
                 for r in c.store.find_instances(study_uid=study)
                 if r.rows}  # fmt: skip
    assert embedded == cr_images and summary.embeddings == len(cr_images)


def test_a_second_start_changes_nothing(world: World) -> None:
    before = snapshot(world)
    messages: list[str] = []
    result = step(world, messages)
    assert not result.created and result.model.ref == f"{DEMO_MODEL}:1"
    assert any("already registered" in m for m in messages), messages
    assert not any("queued" in m for m in messages), messages
    world.worker.step(now=datetime.now(UTC) + LATER)
    assert snapshot(world) == before


def test_failures_are_reported_never_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``start_demo_loader``'s thread: a demo model that cannot be made is said, the thread
    ends, nothing is raised (the archive keeps serving)."""
    import medflow.cli.demo as demo

    def loaded(*_args: Any, **_kwargs: Any) -> bool:
        return False

    def too_few(*_args: Any, **_kwargs: Any) -> Any:
        raise InvalidInput("too few patients for a demo model")

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(demo, "ensure_demo", loaded)
    for failure, said in ((too_few, "demo model: not trained: too few patients for a demo model"),
                          (broken, "demo model: failed: RuntimeError: disk on fire")):  # fmt: skip
        monkeypatch.setattr(demo, "demo_model_step", failure)
        messages: list[str] = []
        thread = demo.start_demo_loader(tmp_path, url="http://x", patients=1, seed=0,
                                        say=messages.append, stop=threading.Event(),
                                        container=cast(Container, object()))  # fmt: skip
        thread.join(30)
        assert not thread.is_alive() and messages == [said]
