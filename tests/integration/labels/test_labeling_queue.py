"""The labeling queue and the label edits the labeling UI makes, on SQLite and PostgreSQL over a
synthetic hospital: the queue at each scope and filter (modality, cohort, unlabeled), labels
shown on their items, a KOS that ``replaces`` an earlier one (which leaves the archive), taking a
label back, labels of a document deleted over DICOMweb leaving the index, and the pages'
answers (chooser, redirect, workspace, 404, 400)."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from medflow.bootstrap import Container
from medflow.labels.schemas import Mapping
from medflow.store.spool import SpooledObject
from medflow.synthetic.writer import generate
from tests import labels_fixtures as fx
from tests.conftest import loaded_hospital

pytestmark = pytest.mark.integration
PNX = {"scheme": "SCT", "value": "36118008", "meaning": "Pneumothorax"}


def label_set(name: str, scope: str) -> dict[str, Any]:
    return {
        "name": name,
        "classes": [{"name": "normal"}, {"name": "pneumothorax", "code": PNX}],
        "negative_class": "normal",
        "scope": scope,
        "region_types": ["none", "box", "polygon"],
    }


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labeling-hospital")
    generate(root, patients=8, seed=5, size=16, slides=False)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hospital(
    request: pytest.FixtureRequest, generated: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Container, TestClient]]:
    tmp = tmp_path_factory.mktemp(f"labeling-{request.param}")
    with loaded_hospital(generated, request.param, tmp) as (container, client):
        for name, scope in (("img", "instance"), ("ser", "series"), ("stu", "study")):
            r = client.post("/api/labels/sets", json=label_set(name, scope))
            assert r.status_code == 201, r.text
        yield container, client


def cr_images(container: Container) -> list[tuple[str, str, str]]:
    out = []
    for study in container.store.find_studies(modalities=["CR"]):
        for r in container.store.find_instances(study_uid=study.study_uid):
            if r.rows and r.sop_class_uid == "1.2.840.10008.5.1.4.1.1.1":
                out.append((r.study_uid, r.series_uid, r.sop_instance_uid))
    return out


def store_dataset(container: Container, ds: Dataset) -> None:
    with tempfile.NamedTemporaryFile(dir=container.store.spool_dir, suffix=".dcm",
                                     delete=False) as tmp:  # fmt: skip
        path = Path(tmp.name)
    ds.save_as(path, enforce_file_format=True)
    data = path.read_bytes()
    (outcome,) = container.store.store(
        objects=[SpooledObject(path, len(data), hashlib.sha256(data).hexdigest())]
    )
    assert outcome.ok, outcome.message


def queue(client: TestClient, name: str, **params: Any) -> dict[str, Any]:
    r = client.get("/api/labels/queue", params={"set": name, **params})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_queue_per_scope_and_modality(hospital: tuple[Container, TestClient]) -> None:
    container, client = hospital
    images = cr_images(container)
    assert images, "the synthetic hospital has chest X-rays"
    per_instance = queue(client, "img", modality="CR")
    assert per_instance["scope"] == "instance"
    got = [(i["study_uid"], i["series_uid"], i["sop_instance_uid"]) for i in per_instance["items"]]
    assert sorted(got) == sorted(images)  # every CR image once, nothing else
    assert all(i["shown_instance"] == i["sop_instance_uid"] for i in per_instance["items"])
    assert all(i["rows"] == 16 and i["columns"] == 16 for i in per_instance["items"])
    studies = {s for s, _, _ in images}
    per_study = queue(client, "stu", modality="CR")
    assert sorted(i["study_uid"] for i in per_study["items"]) == sorted(studies)
    assert all(i["series_uid"] is None for i in per_study["items"])
    per_series = queue(client, "ser", modality="CR")
    assert {i["series_uid"] for i in per_series["items"]} == {se for _, se, _ in images}
    every = queue(client, "stu")  # no filter: CT/MR studies too, never a label document
    assert len(every["items"]) > len(per_study["items"])
    page = queue(client, "img", modality="CR", start=1, limit=2)
    assert page["total"] == len(images) and page["rank"] == 1 and page["next_start"] == 3
    assert page["items"] == per_instance["items"][1:3] and page["previous_start"] == 0
    assert queue(client, "img", modality="CR", date="19000101-19000102")["items"] == []
    assert queue(client, "img", modality="CR", date="-19000102")["items"] == []
    assert len(queue(client, "img", modality="CR", date="19000101-")["items"]) == len(images)
    for bad in ("202401011234", "2024-01-01", "-"):
        r = client.get("/api/labels/queue", params={"set": "img", "date": bad})
        assert r.status_code == 400, (bad, r.text)


def test_unlabeled_pages_stay_put(
    hospital: tuple[Container, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Labeling the items of one page of the unlabeled queue does not move the next page; the
    item cap counts unlabeled items, so a labelled head never empties the queue."""
    _, client = hospital
    items = queue(client, "ser", modality="CR")["items"]
    assert len(items) >= 4
    first = queue(client, "ser", modality="CR", unlabeled="true", limit=2)
    nxt = first["next_start"]
    for item in first["items"]:
        body = {"label_set": "ser", "label": "normal", "study_uid": item["study_uid"],
                "series_uid": item["series_uid"]}  # fmt: skip
        assert client.post("/api/labels", json=body).status_code == 201
    second = queue(client, "ser", modality="CR", unlabeled="true", start=nxt, limit=2)
    assert [i["series_uid"] for i in second["items"]] == [i["series_uid"] for i in items[2:4]]
    assert second["total"] == len(items) - 2 and second["labeled"] == 2
    monkeypatch.setattr("medflow.labels.queue.MAX_ITEMS", 2)
    monkeypatch.setattr("medflow.labels.queue.STUDY_CHUNK", 1)
    capped = queue(client, "ser", modality="CR", unlabeled="true")
    assert [i["series_uid"] for i in capped["items"]] == [i["series_uid"] for i in items[2:4]]
    assert capped["truncated"] is (len(items) > 4)


def test_labels_on_items_replace_and_take_back(hospital: tuple[Container, TestClient]) -> None:
    container, client = hospital
    study, series, sop = cr_images(container)[0]
    target = {"study_uid": study, "series_uid": series, "sop_instance_uid": sop}
    first = client.post("/api/labels", json={"label_set": "img", "label": "pneumothorax",
                                              **target})  # fmt: skip
    assert first.status_code == 201, first.text
    box = {"type": "box", "points": [[2, 3], [9, 11]]}
    region = client.post("/api/labels", json={"label_set": "img", "label": "pneumothorax",
                                               "roi": box, **target})  # fmt: skip
    assert region.status_code == 201 and region.json()["kind"] == "SR"
    (item,) = [i for i in queue(client, "img", modality="CR")["items"]
               if i["sop_instance_uid"] == sop]  # fmt: skip
    kinds = sorted((lb["kind"], lb["label"], lb["roi"] is not None) for lb in item["labels"])
    assert kinds == [("KOS", "pneumothorax", False), ("SR", "pneumothorax", True)]
    assert sop not in {i["sop_instance_uid"] for i in
                       queue(client, "img", modality="CR", unlabeled="true")["items"]}  # fmt: skip

    # The reader changes the class: the new KOS replaces the old, which leaves the archive.
    old = first.json()
    replace = {"label_set": "img", "label": "normal", "replaces": [old["sop_instance_uid"]]}
    second = client.post("/api/labels", json={**replace, **target})
    assert second.status_code == 201, second.text
    gone = client.get(f"/dicomweb/studies/{study}/series/{old['series_uid']}/instances/"
                      f"{old['sop_instance_uid']}")  # fmt: skip
    assert gone.status_code == 404
    rows = client.get("/api/labels", params={"set": "img", "study": study}).json()
    assert sorted((r["label"], r["source_kind"]) for r in rows) == [
        ("normal", "KOS"), ("pneumothorax", "SR")]  # fmt: skip
    latest = container.store.latest_change()  # the delete is in the change feed, as a
    assert latest is not None  # DICOMweb DELETE's would be
    assert (latest.sop_instance_uid, latest.action) == (old["sop_instance_uid"], "delete")

    # replacing a document of another study, or one that is no label, is refused first
    other = cr_images(container)[1]
    refused = client.post("/api/labels", json={
        "label_set": "img", "label": "normal", "study_uid": other[0], "series_uid": other[1],
        "sop_instance_uid": other[2], "replaces": [second.json()["sop_instance_uid"]]})  # fmt: skip
    assert refused.status_code == 404, refused.text
    sr_only = {
        "label_set": "img",
        "label": "normal",
        "replaces": [region.json()["sop_instance_uid"]],
    }
    assert client.post("/api/labels", json={**sr_only, **target}).status_code == 400
    not_a_label = {"label_set": "img", "label": "normal", "replaces": [sop], **target}
    assert client.post("/api/labels", json=not_a_label).status_code == 404

    # taking the SR back
    sr = region.json()["sop_instance_uid"]
    r = client.delete(f"/api/labels/documents/{sr}", params={"set": "img"})
    assert r.status_code == 200 and r.json()["labels_removed"] == 1
    assert client.delete(f"/api/labels/documents/{sr}", params={"set": "img"}).status_code == 404
    assert client.delete(f"/api/labels/documents/{sop}", params={"set": "img"}).status_code == 404
    rows = client.get("/api/labels", params={"set": "img", "study": study}).json()
    assert [(r["label"], r["source_kind"]) for r in rows] == [("normal", "KOS")]

    # a label document deleted over DICOMweb leaves the index too
    kos = second.json()
    deleted = client.delete(f"/dicomweb/studies/{study}/series/{kos['series_uid']}/instances/"
                            f"{kos['sop_instance_uid']}")  # fmt: skip
    assert deleted.status_code in (200, 202, 204), deleted.text
    assert client.get("/api/labels", params={"set": "img", "study": study}).json() == []


def test_only_medflow_documents_of_one_set_are_taken_back(
    hospital: tuple[Container, TestClient],
) -> None:
    """Another system's KOS, or a document two sets index, is never deleted by the labeling
    UI: DELETE is 409, a ``replaces`` of it stores the new label and reports it kept; a class
    label ends the study's mapping-implied negatives."""
    container, client = hospital
    study, series, sop = cr_images(container)[2]
    images = []
    for record in container.store.find_instances(study_uid=study, series_uid=series):
        with container.store.open_instance(record) as fp:
            images.append(pydicom.dcmread(fp))
    vendor = fx.vendor_kos(images)
    store_dataset(container, vendor)
    of_interest = {"label": "pneumothorax", "title": {"scheme": "DCM", "value": "113000"}}
    negatives = {"enabled": True, "label": "normal"}
    mapping = Mapping.model_validate({"rules": [of_interest], "negatives": negatives})
    container.labels.import_archive(mapping=mapping, label_set="img")
    uid = str(vendor.SOPInstanceUID)
    r = client.delete(f"/api/labels/documents/{uid}", params={"set": "img"})
    assert r.status_code == 409 and "not written by medflow" in r.json()["detail"]
    target = {"study_uid": study, "series_uid": series, "sop_instance_uid": sop}
    r = client.post("/api/labels", json={"label_set": "img", "label": "normal",
                                         "replaces": [uid, uid], **target})  # fmt: skip
    assert r.status_code == 201, r.text
    (kept,) = r.json()["not_removed"]
    assert kept["sop_instance_uid"] == uid and "not written by medflow" in kept["reason"]
    assert container.store.select_instances(sop_uids=[uid])  # still archived
    # a medflow document both sets index: 409
    mine = r.json()["sop_instance_uid"]
    container.labels.import_archive(mapping=Mapping.model_validate(
        {"rules": [{"label": "normal", "concept": {"scheme": "99MEDFLOW", "value": "normal"}}]}),
        label_set="stu")  # fmt: skip
    r = client.delete(f"/api/labels/documents/{mine}", params={"set": "img"})
    assert r.status_code == 409 and "another label set" in r.json()["detail"]
    # negatives: a study without any KOS got one; a class written for it ends it
    implied = [row for row in client.get("/api/labels", params={"set": "img"}).json()
               if row["source_kind"] == "NEGATIVE"]  # fmt: skip
    assert implied
    row = implied[0]
    keys = ("study_uid", "series_uid", "sop_instance_uid")
    body = {"label_set": "img", "label": "pneumothorax", **{k: row[k] for k in keys}}
    assert client.post("/api/labels", json=body).status_code == 201
    left = client.get("/api/labels", params={"set": "img", "study": row["study_uid"]}).json()
    assert "NEGATIVE" not in {x["source_kind"] for x in left}


def test_queue_from_a_cohort(hospital: tuple[Container, TestClient]) -> None:
    container, client = hospital
    definition = {
        "name": "women with imaging",
        "evaluation_date": "2026-11-01",
        "criteria": [{"label": "women", "demographics": {"gender": ["female"]}}],
        "collect": [{"label": "studies", "imaging": {}}],
    }
    r = client.post("/api/cohorts", json=definition)
    assert r.status_code == 201, r.text
    cohort = r.json()["id"]
    result = container.cohorts.evaluate(definition=container.cohorts.definition(ref=cohort))
    mrns = {p.mrn for p in result.patients}
    studies = {s for p in result.patients for s in p.studies}
    assert mrns and studies and len(studies) < len(queue(client, "stu")["items"])
    page = client.get(f"/labeling/stu?cohort={cohort}")
    assert page.status_code == 200, page.text
    data = json.loads(re.search(r'id="labeling-data">(.*?)</script>', page.text, re.S)[1])  # type: ignore[index]
    assert {i["study_uid"] for i in data["items"]} == studies
    assert {i["patient_id"] for i in data["items"]} <= mrns
    assert "cohort women with imaging" in page.text


def test_pages(hospital: tuple[Container, TestClient], monkeypatch: pytest.MonkeyPatch) -> None:
    _, client = hospital
    home = client.get("/labeling")
    assert home.status_code == 200
    assert all(f'data-label-set="{n}"' in home.text for n in ("img", "ser", "stu"))
    monkeypatch.setattr("medflow.web.labeling.PAGE", 2)
    paged = client.get("/labeling/img", params=[("modality", "CR"), ("modality", "DX")])
    assert 'href="?modality=CR&amp;modality=DX&amp;start=2"' in paged.text
    jump = client.get("/labeling", params={"set": "img", "modality": "CR", "date": ""},
                      follow_redirects=False)  # fmt: skip
    assert jump.status_code == 303 and jump.headers["location"] == "/labeling/img?modality=CR"
    space = client.get("/labeling/img", params={"modality": "CR"})
    assert space.status_code == 200 and 'id="label-canvas"' in space.text
    assert 'data-class="pneumothorax"' in space.text and 'id="tool-box"' in space.text
    assert client.get("/labeling/nope").status_code == 404
    assert client.get("/labeling/img", params={"cohort": "9999"}).status_code == 404
    bad = client.get("/labeling/img", params={"date": "yesterday"})
    assert bad.status_code == 400 and "YYYYMMDD" in bad.text
    js = client.get("/static/labeling.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
