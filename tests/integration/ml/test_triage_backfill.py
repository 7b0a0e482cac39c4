"""Triage backfill (issue 11): the worker follows the change feed from its end, so studies
stored before it (or before a model was promoted) are scored only when put on its pending
list: ``TriageWorker.backfill`` and ``medflow triage backfill``. A tiny chest X-ray model is
trained in the test on a synthetic hospital loaded through the public APIs and promoted."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from medflow.bootstrap import Container, build, create_app, triage_worker
from medflow.cli.main import app
from medflow.core.settings import Settings, TriageSettings
from medflow.ml.train.service import TrainConfig, train_model
from medflow.synthetic.loader import load
from tests.ml_data import chest_hospital, cr_rows, write_manifest

pytestmark = pytest.mark.integration
AI_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@dataclass
class World:
    container: Container
    client: TestClient
    data_dir: Path
    cr: frozenset[str]
    """The CR studies of the archive."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("backfill")
    chest = chest_hospital(tmp_path_factory)
    settings = Settings(data_dir=tmp / "data", triage=TriageSettings(settle_seconds=5))
    container = build(settings)
    try:
        with TestClient(create_app(container)) as client:
            load(chest, url="http://testserver", client=client)
            manifest = write_manifest(cr_rows(chest), tmp / "manifest.parquet")
            config = TrainConfig(arch="small", size=32, epochs=1, batch_size=4, bootstrap=20,
                                 seed=5, max_steps=2)  # fmt: skip
            result = train_model(store=container.store, manifest=manifest, config=config,
                                 registry=container.registry, name="cxr")  # fmt: skip
            assert result.model is not None
            container.registry.promote(name="cxr", version=result.model.version,
                                       stage="production")  # fmt: skip
            cr = frozenset(s.study_uid for s in container.store.find_studies(modalities=["CR"]))
            assert len(cr) > 10
            yield World(container, client, tmp / "data", cr)
    finally:
        container.close()


def ai_results(world: World, study: str) -> list[str]:
    return [r.sop_instance_uid for r in world.container.store.find_instances(study_uid=study)
            if r.sop_class_uid == AI_SR]  # fmt: skip


def risk_assessments(world: World, study: str) -> int:
    return len(world.container.fhir.search_resources(
        resource_type="RiskAssessment",
        params=[("identifier", f"urn:medflow:ai-result|{study}/cxr:1")], limit=10,
    ))  # fmt: skip


def on_worklist(world: World) -> dict[str, float]:
    page = world.container.reading.worklist.page(status=None, limit=1000)
    return {e.study_uid: e.probability for e in page.entries}


def test_backfill_puts_the_archive_on_the_pending_list(world: World) -> None:
    worker = triage_worker(world.container)
    worker.step()  # first run: the cursor starts at the feed's end, the archive is not scored
    assert worker.status().pending == 0 and on_worklist(world) == {}

    assert worker.backfill(since=date(2100, 1, 1)) == 0  # no study that late
    assert worker.backfill(modalities=["XA"]) == 0
    assert worker.backfill() == len(world.cr)  # the modality the model reads: CR
    assert worker.status().pending == len(world.cr)
    assert worker.backfill() == 0  # pending already

    # queued as settled: scored at once, without waiting for the settle time
    assert worker.score_settled() == len(world.cr)
    scores = on_worklist(world)
    assert set(scores) == world.cr and all(0 <= p <= 1 for p in scores.values())
    for study in world.cr:
        assert len(ai_results(world, study)) == 1 and risk_assessments(world, study) == 1
    assert worker.status().pending == 0
    assert worker.backfill() == 0  # scored by the production model: left alone


def test_rescoring_writes_nothing_twice(world: World) -> None:
    worker = triage_worker(world.container)
    before = on_worklist(world)
    assert worker.backfill(rescore=True) == len(world.cr)
    assert worker.score_settled() == len(world.cr)
    assert on_worklist(world) == pytest.approx(before)
    for study in world.cr:  # derived UIDs and the conditional update: one of each still
        assert len(ai_results(world, study)) == 1 and risk_assessments(world, study) == 1


def test_the_cli(world: World) -> None:
    runner = CliRunner()
    common = ["triage", "backfill", "--data-dir", str(world.data_dir)]
    out = runner.invoke(app, common)
    assert out.exit_code == 0, out.output
    assert "0 studies queued" in out.output
    out = runner.invoke(app, [*common, "--since", "2100-01-01", "--rescore", "--now"])
    assert out.exit_code == 0 and "0 studies queued" in out.output, out.output
    out = runner.invoke(app, [*common, "--modality", "CR", "--since", "19000101", "--rescore",
                              "--now"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert f"{len(world.cr)} studies queued, {len(world.cr)} scored" in out.output
    assert triage_worker(world.container).status().pending == 0


def test_without_a_binary_model_in_production_nothing_is_queued(world: World) -> None:
    registry = world.container.registry
    registry.promote(name="cxr", version=1, stage="staging")
    try:
        assert triage_worker(world.container).backfill(rescore=True) == 0
        out = CliRunner().invoke(app, ["triage", "backfill", "--data-dir", str(world.data_dir)])
        assert out.exit_code == 1 and "no binary model is in production" in out.output
    finally:
        registry.promote(name="cxr", version=1, stage="production")
