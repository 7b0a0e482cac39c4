"""Similar images end to end, on SQLite and PostgreSQL: the embedding worker on the archive's
change feed (images a real network embeds: a small medflow ``Classifier`` with fixed seed
weights, its pooled backbone features, frames by ``frame_to_array``), resumable after a crash
without duplicates, deletions followed, a failing image recorded and skipped, medflow's own
documents and images the model does not read left alone; ``GET /api/similar`` on a synthetic
hospital: ranking, exclusions, models, cohorts, thumbnails and problem details."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from medflow.bootstrap import Container, build, create_app
from medflow.cohort.schema import parse_definition
from medflow.core.errors import Unsupported
from medflow.core.settings import Settings, StoreSettings
from medflow.ml.similar.models import Embedding
from medflow.ml.similar.service import NotEmbedded, SimilarService
from medflow.ml.similar.store import EmbeddingStore, NewEmbedding, cursor_name
from medflow.ml.similar.worker import EmbeddingWorker, WorkerOptions, start_in_thread
from medflow.ml.train.images import frame_to_array
from medflow.ml.train.nets import build_network
from medflow.synthetic.writer import generate
from tests.conftest import loaded_hospital
from tests.factories import make_instance, store_datasets

pytestmark = pytest.mark.integration
PROBLEM = "application/problem+json"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"


class Killed(BaseException):
    """The process dies (as SIGKILL would: nothing of the worker's own runs after it)."""


class NetEmbedder:
    """The penultimate layer of a small medflow CNN with fixed (seed 0) weights: 128 pooled
    features of each image at 32 px. ``embed`` raises ``Unsupported`` for other modalities
    than ``modalities`` (as a served model does), a ``RuntimeError`` for ``fail_on`` UIDs,
    and dies (``Killed``) at call ``die_at``."""

    def __init__(self, ref: str = "tiny:1", modalities: Sequence[str] = ("CT",)) -> None:
        torch.manual_seed(0)
        self.net = build_network("small", in_channels=1, classes=2).eval()
        self.ref, self.dim, self.modalities = ref, 128, tuple(modalities)
        self.calls: list[list[str]] = []
        self.fail_on: set[str] = set()
        self.die_at: int | None = None
        self.per_frame = False

    def embed(self, datasets: Sequence[Dataset]) -> np.ndarray[Any, Any]:
        self.calls.append([str(ds.SOPInstanceUID) for ds in datasets])
        if self.die_at is not None and len(self.calls) >= self.die_at:
            raise Killed()
        for ds in datasets:
            if str(ds.Modality) not in self.modalities:
                raise Unsupported(f"the model reads {self.modalities}, not {ds.Modality}")
            if str(ds.SOPInstanceUID) in self.fail_on:
                raise RuntimeError("the model exploded on this image")
        counts = [int(ds.get("NumberOfFrames", 1)) if self.per_frame else 1 for ds in datasets]
        frames = [(ds, f) for ds, n in zip(datasets, counts, strict=True)
                  for f in range(1, n + 1)]  # fmt: skip
        images = np.stack([frame_to_array(ds, f, 32) for ds, f in frames])[:, None]
        with torch.no_grad():
            features: torch.Tensor = self.net.backbone(torch.from_numpy(images))
        return features.numpy()

    def embedded(self) -> list[str]:
        return [uid for call in self.calls for uid in call]


class ScreeningEmbedder(NetEmbedder):
    """The same network, telling from the header which images it reads."""

    def accepts(self, dataset: Dataset) -> bool:
        return str(dataset.get("Modality", "")) in self.modalities


def rows_of(container: Container, ref: str = "tiny:1") -> list[tuple[str, int]]:
    with Session(container.engine) as s:
        q = select(Embedding.sop_instance_uid, Embedding.frame).where(Embedding.model_ref == ref)
        return sorted((r[0], r[1]) for r in s.execute(q))


def worker_for(container: Container, *embedders: NetEmbedder, **options: Any) -> EmbeddingWorker:
    return EmbeddingWorker(store=container.store, embeddings=EmbeddingStore(container.engine),
                           embedders=list(embedders), options=WorkerOptions(**options))  # fmt: skip


def cts(n: int, **kw: Any) -> list[Dataset]:
    return [make_instance(seed=i, **kw) for i in range(n)]


# -- the worker ---------------------------------------------------------------------------------
def test_worker_embeds_new_images_only_those_the_model_reads(container: Container) -> None:
    images = cts(3, patient_id="P1")
    others = [
        make_instance(modality="MR", sop_class_uid="1.2.840.10008.5.1.4.1.1.4", seed=9),
        make_instance(modality="CT", sop_class_uid=SC_IMAGE, Manufacturer="medflow", seed=8),
    ]
    kos = make_instance(sop_class_uid=KOS, modality="KO", seed=7)
    del kos.PixelData
    assert all(o.ok for o in store_datasets(container.store, [*images, *others, kos]))
    screening, plain = ScreeningEmbedder("screen:1"), NetEmbedder("plain:1")
    worker = worker_for(container, screening, plain, batch=4, embed_batch=2)
    assert worker.run_once() == 2 * 6
    expected = sorted((str(ds.SOPInstanceUID), 1) for ds in images)
    assert rows_of(container, "screen:1") == expected == rows_of(container, "plain:1")
    # the screening model read no MR pixels; the other was told Unsupported: not a failure
    assert sorted(screening.embedded()) == sorted(u for u, _ in expected)
    assert str(others[0].SOPInstanceUID) in plain.embedded()
    store = EmbeddingStore(container.engine)
    assert store.failures() == []
    latest = container.store.latest_change()
    assert latest is not None
    for status in worker.status():
        assert (status.cursor, status.backlog, status.embedded) == (latest.sequence, 0, 3)
        assert status.failures == 0
    # the stored vector is the network's
    stored = store.of_instance(sop_uid=str(images[0].SOPInstanceUID), model_ref="screen:1")
    assert stored[0].vector is not None and stored[0].vector.shape == (128,)
    assert (stored[0].study_uid, stored[0].patient_id) == (str(images[0].StudyInstanceUID), "P1")
    direct = NetEmbedder().embed([images[0]])[0]
    assert np.allclose(stored[0].vector, direct, atol=1e-5)
    calls = len(screening.calls)
    assert worker.run_once() == 0 and len(screening.calls) == calls


def test_worker_resumes_after_a_kill_without_duplicates(container: Container) -> None:
    images = cts(10)
    store_datasets(container.store, images)
    dying = NetEmbedder()
    dying.die_at = 3
    first = worker_for(container, dying, batch=100, embed_batch=3)
    with pytest.raises(Killed):
        first.run_once()
    assert len(rows_of(container)) == 6  # two batches of 3 committed, the cursor not moved
    assert EmbeddingStore(container.engine).cursor(cursor_name("tiny:1")) == 0
    again = NetEmbedder()
    restarted = worker_for(container, again, batch=100, embed_batch=3)
    restarted.run_once()
    assert rows_of(container) == sorted((str(ds.SOPInstanceUID), 1) for ds in images)
    done = {u for call in dying.calls[:2] for u in call}
    assert not done & set(again.embedded())  # what was stored is not embedded again
    assert len(again.embedded()) == 4


def test_deleted_instances_lose_their_embeddings(container: Container) -> None:
    keep, gone = cts(3, patient_id="A"), cts(2, patient_id="B", study_uid=generate_uid())
    store_datasets(container.store, keep + gone)
    worker = worker_for(container, NetEmbedder())
    worker.run_once()
    service = SimilarService(engine=container.engine, data_dir=container.settings.data_dir)
    query = str(keep[0].SOPInstanceUID)
    before = service.similar(instance=query, k=10, same_study=True, same_patient=True)
    assert {n.sop_instance_uid for n in before.results} == {
        str(ds.SOPInstanceUID) for ds in keep[1:] + gone}  # fmt: skip
    container.store.delete(study_uid=str(gone[0].StudyInstanceUID))
    worker.run_once()
    assert rows_of(container) == sorted((str(ds.SOPInstanceUID), 1) for ds in keep)
    after = service.similar(instance=query, k=10, same_study=True, same_patient=True)
    assert {n.sop_instance_uid for n in after.results} == {
        str(ds.SOPInstanceUID) for ds in keep[1:]
    }
    with pytest.raises(NotEmbedded):
        service.similar(instance=str(gone[0].SOPInstanceUID))


def test_a_failing_image_is_recorded_and_skipped(container: Container) -> None:
    images = cts(5)
    store_datasets(container.store, images)
    bad = str(images[2].SOPInstanceUID)
    embedder = NetEmbedder()
    embedder.fail_on = {bad}
    worker = worker_for(container, embedder, embed_batch=5)
    worker.run_once()
    assert [u for u, _ in rows_of(container)] == sorted(
        str(ds.SOPInstanceUID) for ds in images if str(ds.SOPInstanceUID) != bad)  # fmt: skip
    (failure,) = EmbeddingStore(container.engine).failures(model_ref="tiny:1")
    assert failure.sop_instance_uid == bad and failure.attempts == 1
    assert failure.reason == "RuntimeError: the model exploded on this image"
    (status,) = worker.status()
    assert status.backlog == 0 and status.failures == 1 and status.last_error == "RuntimeError"
    service = SimilarService(engine=container.engine, data_dir=container.settings.data_dir)
    with pytest.raises(NotEmbedded, match="could not be embedded by tiny:1: RuntimeError"):
        service.similar(instance=bad, model="tiny")
    # the image stored again (a new version) and read this time: the failure is resolved
    embedder.fail_on = set()
    container.store.settings.overwrite = True
    changed = images[2].copy()
    changed.PixelData = np.full((16, 16), 100, dtype=np.uint16).tobytes()
    store_datasets(container.store, [changed])
    worker.run_once()
    assert bad in [u for u, _ in rows_of(container)]
    assert EmbeddingStore(container.engine).failures() == []


def test_an_updated_image_is_embedded_again(tmp_path: Path, db_url: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=db_url,
                        store=StoreSettings(overwrite=True))  # fmt: skip
    container = build(settings)
    try:
        image = make_instance(seed=1)
        store_datasets(container.store, [image])
        embeddings = EmbeddingStore(container.engine)
        worker = worker_for(container, NetEmbedder())
        worker.run_once()
        (old,) = embeddings.of_instance(sop_uid=str(image.SOPInstanceUID))
        image.PixelData = np.arange(256, dtype=np.uint16).reshape(16, 16).tobytes()
        store_datasets(container.store, [image])
        worker.run_once()
        (new,) = embeddings.of_instance(sop_uid=str(image.SOPInstanceUID))
        assert new.key != old.key and old.vector is not None and new.vector is not None
        assert not np.allclose(new.vector, old.vector)
    finally:
        container.close()


def test_multi_frame_images_get_one_embedding_per_frame(container: Container) -> None:
    """A served model embeds every frame: frames 1..n stored, an instance answered once."""
    multi, single = make_instance(frames=3, seed=4), make_instance(seed=5, patient_id="P9")
    store_datasets(container.store, [multi, single])
    embedder = NetEmbedder()
    embedder.per_frame = True
    worker_for(container, embedder).run_once()
    uid = str(multi.SOPInstanceUID)
    assert rows_of(container) == sorted([(uid, 1), (uid, 2), (uid, 3),
                                         (str(single.SOPInstanceUID), 1)])  # fmt: skip
    service = SimilarService(engine=container.engine, data_dir=container.settings.data_dir)
    found = service.similar(instance=str(single.SOPInstanceUID), k=10)
    assert [n.sop_instance_uid for n in found.results] == [uid]
    assert found.results[0].frame in (1, 2, 3)
    query = service.similar(instance=uid, k=10).query
    assert query.frame == 1


def test_the_worker_thread_follows_new_images(container: Container) -> None:
    worker = worker_for(container, NetEmbedder(), poll_seconds=30)
    thread, stop = start_in_thread(worker)
    try:
        image = make_instance(seed=3)
        store_datasets(container.store, [image])
        worker.wake()
        deadline = time.monotonic() + 20
        while not rows_of(container) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rows_of(container) == [(str(image.SOPInstanceUID), 1)]
    finally:
        stop.set()
        worker.wake()
        thread.join(10)
    assert not thread.is_alive()


# -- the API on a synthetic hospital ------------------------------------------------------------
@dataclass
class World:
    container: Container
    client: TestClient
    hospital: Path
    service: SimilarService


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("similar-hospital")
    generate(root, patients=30, seed=3, size=32, slides=False)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, generated: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:  # fmt: skip
    tmp = tmp_path_factory.mktemp(f"similar-{request.param}")
    with loaded_hospital(generated, request.param, tmp) as (container, _):
        worker_for(container, ScreeningEmbedder("tiny:1", ("CR", "MR")),
                   ScreeningEmbedder("tiny:2", ("CR",))).run_once()  # fmt: skip
        service = SimilarService(engine=container.engine, data_dir=container.settings.data_dir,
                                 cohorts=container.cohorts,
                                 default_model=lambda: "tiny:1")  # fmt: skip
        app = create_app(container)
        app.state.similar = service
        with TestClient(app) as client:
            yield World(container, client, generated, service)
        service.close()


def instances(world: World, modality: str) -> list[Dataset]:
    found = [pydicom.dcmread(p, stop_before_pixels=True)
             for p in sorted((world.hospital / "dicom").glob("*/*.dcm"))]  # fmt: skip
    return [ds for ds in found if ds.Modality == modality]


def test_similar_answers_other_patients_best_first(world: World) -> None:
    query = instances(world, "CR")[0]
    r = world.client.get("/api/similar", params={"instance": query.SOPInstanceUID, "k": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny:1" and body["k"] == 5 and len(body["results"]) == 5
    assert body["query"]["sop_instance_uid"] == query.SOPInstanceUID
    assert body["query"]["patient_id"] == query.PatientID and "score" not in body["query"]
    scores = [n["score"] for n in body["results"]]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1.000001 for s in scores)
    for n in body["results"]:
        assert n["patient_id"] != query.PatientID and n["study_uid"] != query.StudyInstanceUID
        assert n["thumbnail"] == (f"/dicomweb/studies/{n['study_uid']}/series/{n['series_uid']}"
                                  f"/instances/{n['sop_instance_uid']}/thumbnail")  # fmt: skip
    thumb = world.client.get(body["results"][0]["thumbnail"], headers={"Accept": "image/jpeg"})
    assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/jpeg")
    # the same answer from the service, in process
    again = world.service.similar(instance=query.SOPInstanceUID, k=5)
    assert [n.sop_instance_uid for n in again.results] == [
        n["sop_instance_uid"] for n in body["results"]]  # fmt: skip


def test_the_same_image_elsewhere_is_the_nearest(world: World) -> None:
    """A copy of an image's pixels in another patient's new study scores ~1 and comes first."""
    source = next(p for p in sorted((world.hospital / "dicom").glob("*/*.dcm"))
                  if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CR")  # fmt: skip
    ds = pydicom.dcmread(source)
    original = str(ds.SOPInstanceUID)
    ds.PatientID, ds.AccessionNumber = "SIMILAR-COPY", "SIMCOPY1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    store_datasets(world.container.store, [pydicom.dcmread(io.BytesIO(buf.getvalue()))])
    worker_for(world.container, ScreeningEmbedder("tiny:1", ("CR", "MR"))).run_once()
    r = world.client.get("/api/similar", params={"instance": original, "k": 3})
    top = r.json()["results"][0]
    assert top["sop_instance_uid"] == str(ds.SOPInstanceUID)
    assert top["score"] == pytest.approx(1.0, abs=1e-4)
    assert top["patient_id"] == "SIMILAR-COPY"


def test_same_study_and_same_patient_let_them_in(world: World) -> None:
    mrs = instances(world, "MR")
    query = mrs[0]
    siblings = {str(m.SOPInstanceUID) for m in mrs if m.StudyInstanceUID == query.StudyInstanceUID}
    assert len(siblings) > 1
    r = world.client.get("/api/similar", params={"instance": query.SOPInstanceUID, "k": 100,
                                                 "same_study": "true"})  # fmt: skip
    results = r.json()["results"]
    found = {n["sop_instance_uid"] for n in results}
    assert found & siblings and str(query.SOPInstanceUID) not in found
    assert all(n["study_uid"] == query.StudyInstanceUID or n["patient_id"] != query.PatientID
               for n in results)  # fmt: skip
    r = world.client.get("/api/similar", params={"instance": query.SOPInstanceUID, "k": 100,
                                                 "same_patient": "true"})  # fmt: skip
    body = r.json()
    assert all(n["study_uid"] != query.StudyInstanceUID for n in body["results"])
    assert body["same_patient"] is True and body["same_study"] is False


def test_models_by_name_version_and_default(world: World) -> None:
    cr = instances(world, "CR")[0].SOPInstanceUID
    mr = instances(world, "MR")[0].SOPInstanceUID
    get = world.client.get
    assert get("/api/similar", params={"instance": cr}).json()["model"] == "tiny:1"  # default
    assert get("/api/similar", params={"instance": cr, "model": "tiny"}).json()["model"] == "tiny:2"
    assert (
        get("/api/similar", params={"instance": cr, "model": "tiny:1"}).json()["model"] == "tiny:1"
    )
    crs = get("/api/similar", params={"instance": cr, "model": "tiny:2", "k": 100}).json()
    cr_uids = {str(d.SOPInstanceUID) for d in instances(world, "CR")}
    assert crs["results"] and all(n["sop_instance_uid"] in cr_uids for n in crs["results"])
    # the MR image has no embedding by tiny:2 (it reads CR only)
    r = get("/api/similar", params={"instance": mr, "model": "tiny:2"})
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert "has no embedding by model 'tiny:2' yet" in r.json()["detail"]
    r = get("/api/similar", params={"instance": cr, "model": "other"})
    assert r.status_code == 404 and r.json()["detail"] == "model 'other' has no embeddings"
    r = get("/api/similar", params={"instance": "1.2.3.4.5.6"})
    assert r.status_code == 404 and r.json()["title"] == "Not found"
    assert "has no embedding yet" in r.json()["detail"]
    status = get("/api/similar/status").json()
    assert {m["model"] for m in status["models"]} >= {"tiny:1", "tiny:2"}


def test_invalid_parameters_are_problems(world: World) -> None:
    cr = instances(world, "CR")[0].SOPInstanceUID
    for params in ({"instance": cr, "k": 0}, {"instance": cr, "k": 101}, {"k": 5},
                   {"instance": cr, "same_study": "maybe"}):  # fmt: skip
        r = world.client.get("/api/similar", params=params)
        assert r.status_code == 400 and r.headers["content-type"] == PROBLEM, params
        assert r.json()["title"] == "Bad request"


def test_a_cohort_restricts_the_answers(world: World) -> None:
    definition = parse_definition({"name": "similar-cr", "evaluation_date": "2030-01-01",
                                   "criteria": [{"imaging": {"modality": ["CR"]}}]})  # fmt: skip
    saved = world.container.cohorts.save(definition=definition)
    result = world.container.cohorts.evaluate(definition=definition)
    mrns = {p.mrn for p in result.patients}
    assert 0 < len(mrns) < 30
    query = next(m for m in instances(world, "MR") if m.PatientID not in mrns)
    r = world.client.get("/api/similar", params={"instance": query.SOPInstanceUID, "k": 100,
                                                 "cohort": "similar-cr"})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cohort"]["id"] == saved.id and body["cohort"]["patients"] == len(mrns)
    assert body["results"] and all(n["patient_id"] in mrns for n in body["results"])
    assert len(body["results"]) == min(100, body["cohort"]["instances"])
    unrestricted = world.client.get("/api/similar", params={
        "instance": query.SOPInstanceUID, "k": 100}).json()  # fmt: skip
    assert any(n["patient_id"] not in mrns for n in unrestricted["results"])
    r = world.client.get("/api/similar", params={"instance": query.SOPInstanceUID,
                                                 "cohort": "no-such-cohort"})  # fmt: skip
    assert r.status_code == 404 and r.json()["detail"] == "no cohort 'no-such-cohort'"


def test_index_is_persisted_and_rebuilt(world: World, tmp_path: Path) -> None:
    """A new service (a restart) loads the saved index; a missing one is rebuilt; a large
    one is built in a thread while the API answers 503 with Retry-After."""
    query = instances(world, "CR")[0].SOPInstanceUID
    expected = world.service.similar(instance=query, k=5)
    world.service.save()
    path = world.service.index_path("tiny:1")
    assert path.is_file()
    fresh = SimilarService(
        engine=world.container.engine, data_dir=world.container.settings.data_dir
    )
    loaded = fresh.similar(instance=query, k=5, model="tiny:1").results
    assert [(n.sop_instance_uid, n.score) for n in loaded] == [
        (n.sop_instance_uid, pytest.approx(n.score, abs=1e-6)) for n in expected.results
    ]
    # the saved files fall behind the table (another process deletes): a restart catches up
    gone = loaded[0].sop_instance_uid
    store = EmbeddingStore(world.container.engine)
    (row,) = store.of_instance(sop_uid=gone, model_ref="tiny:1")
    store.delete_instances(sop_uids={gone}, now=datetime.now(UTC))
    restarted = SimilarService(
        engine=world.container.engine, data_dir=world.container.settings.data_dir
    )
    after = restarted.similar(instance=query, k=5, model="tiny:1").results
    assert gone not in {n.sop_instance_uid for n in after} and len(after) == 5
    assert [n.sop_instance_uid for n in after[:4]] == [
        n.sop_instance_uid for n in loaded if n.sop_instance_uid != gone
    ]
    live = world.service.similar(instance=query, k=5)  # the live service caught up too
    assert [n.sop_instance_uid for n in live.results] == [n.sop_instance_uid for n in after]
    assert row.vector is not None  # put back for the tests after this one
    back = NewEmbedding(row.sop_instance_uid, row.study_uid, row.series_uid, row.patient_id,
                        row.frame, row.vector)  # fmt: skip
    store.replace(model_ref="tiny:1", now=datetime.now(UTC), rows=[back])
    other = SimilarService(engine=world.container.engine, data_dir=tmp_path,
                           inline_build_limit=1)  # fmt: skip
    app = create_app(world.container)
    app.state.similar = other
    with TestClient(app) as client:
        r = client.get("/api/similar", params={"instance": query, "model": "tiny:1"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert "is being built" in r.json()["detail"]
        deadline = time.monotonic() + 30
        while client.get("/api/similar", params={"instance": query, "model": "tiny:1"}
                         ).status_code == 503 and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.1)
        r = client.get("/api/similar", params={"instance": query, "model": "tiny:1", "k": 5})
        assert r.status_code == 200
        assert [n["sop_instance_uid"] for n in r.json()["results"]] == [
            n.sop_instance_uid for n in expected.results]  # fmt: skip
    assert other.index_path("tiny:1").is_file()


def test_concurrent_queries(world: World) -> None:
    uids = [d.SOPInstanceUID for d in instances(world, "CR")]
    errors: list[BaseException] = []

    def ask() -> None:
        try:
            for uid in uids:
                assert world.service.similar(instance=uid, k=3).results
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_without_the_service_the_api_says_so(tmp_path: Path) -> None:
    container = build(Settings(data_dir=tmp_path / "data"))
    try:
        app = create_app(container)
        del app.state.similar  # a server built without it (bootstrap wires it)
        with TestClient(app) as client:
            r = client.get("/api/similar", params={"instance": "1.2.3"})
        assert r.status_code == 503 and r.headers["content-type"] == PROBLEM
        assert r.json()["detail"] == "similar images are not enabled on this server"
    finally:
        container.close()


def test_embeddings_are_unique_per_model_instance_and_frame(world: World) -> None:
    with Session(world.container.engine) as s:
        q = (select(Embedding.model_ref, Embedding.sop_instance_uid, Embedding.frame, func.count())
             .group_by(Embedding.model_ref, Embedding.sop_instance_uid, Embedding.frame)
             .having(func.count() > 1))  # fmt: skip
        assert s.execute(q).all() == []
