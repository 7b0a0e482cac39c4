"""Labels on a synthetic hospital loaded through the public APIs, on SQLite and PostgreSQL:
KOS/SR/SEG written for chest X-rays appear over QIDO-RS/WADO-RS in the original study with
references resolving and in the change feed; they and each quirk fixture are read back by
``import`` (skips reported); mapping negatives; ``from-truth``; the manifest deterministic and
patient-disjoint; the ``/api/labels`` edge's problem details; the CLI."""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import pyarrow.parquet as pq
import pydicom
import pytest
import yaml
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from typer.testing import CliRunner

from medflow.bootstrap import Container
from medflow.labels.manifest import read_manifest
from medflow.labels.schemas import Mapping
from medflow.store.spool import SpooledObject
from medflow.synthetic.writer import generate
from tests import labels_fixtures as fx
from tests.conftest import load_data_dir, loaded_hospital

pytestmark = pytest.mark.integration
PNX = {"scheme": "SCT", "value": "36118008", "meaning": "Pneumothorax"}
CXR_SET: dict[str, Any] = {
    "name": "cxr",
    "classes": [
        {"name": "normal"},
        {"name": "pneumothorax", "code": PNX},
        {
            "name": "consolidation",
            "code": {"scheme": "SCT", "value": "95436008", "meaning": "Lung consolidation"},
        },
    ],
    "negative_class": "normal",
    "scope": "study",
    "region_types": ["none", "box", "polygon", "point"],
}


@dataclass
class Hospital:
    client: TestClient
    container: Container
    root: Path

    def cr_studies(self) -> list[str]:
        return [s.study_uid for s in self.container.store.find_studies(modalities=["CR"])]

    def images(self, study: str) -> list[Dataset]:
        out = []
        for record in self.container.store.find_instances(study_uid=study):
            if record.rows is None:
                continue
            with self.container.store.open_instance(record) as fp:
                out.append(pydicom.dcmread(fp))
        return out

    def store(self, ds: Dataset) -> None:
        spool = self.container.store.spool_dir
        with tempfile.NamedTemporaryFile(dir=spool, suffix=".dcm", delete=False) as tmp:
            path = Path(tmp.name)
        ds.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        (outcome,) = self.container.store.store(
            objects=[SpooledObject(path, len(data), hashlib.sha256(data).hexdigest())]
        )
        assert outcome.ok, outcome.message


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("labels-hospital")
    generate(root, patients=10, seed=3, size=16, slides=False)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hospital(
    request: pytest.FixtureRequest, generated: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hospital]:
    tmp = tmp_path_factory.mktemp(f"labels-{request.param}")
    with loaded_hospital(generated, request.param, tmp) as (container, client):
        r = client.post("/api/labels/sets", json=CXR_SET)
        assert r.status_code == 201, r.text
        yield Hospital(client, container, generated)


def metadata(client: TestClient, study: str, series: str, sop: str) -> dict[str, Any]:
    r = client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}/metadata")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()[0]
    return body


def test_written_labels_are_in_the_original_study(hospital: Hospital) -> None:
    client, store = hospital.client, hospital.container.store
    assert client.post("/api/labels/sets", json=CXR_SET).status_code == 200  # unchanged
    kos_study, sr_study, seg_study = hospital.cr_studies()[:3]
    before = store.latest_change()
    written = []
    r = client.post(
        "/api/labels",
        json={
            "label_set": "cxr",
            "label": "pneumothorax",
            "study_uid": kos_study,
            "observer": "Reader^One",
        },
    )
    assert r.status_code == 201, r.text
    written.append(r.json())
    sr_image = hospital.images(sr_study)[0]
    r = client.post(
        "/api/labels",
        json={
            "label_set": "cxr",
            "label": "consolidation",
            "study_uid": sr_study,
            "sop_instance_uid": str(sr_image.SOPInstanceUID),
            "roi": {"type": "box", "points": [[2, 3], [8, 9]]},
        },
    )
    assert r.status_code == 201, r.text
    written.append(r.json())
    seg_image = hospital.images(seg_study)[0]
    mask = [
        [1 if 3 <= x < 7 and 4 <= y < 9 else 0 for x in range(int(seg_image.Columns))]
        for y in range(int(seg_image.Rows))
    ]
    r = client.post(
        "/api/labels",
        json={
            "label_set": "cxr",
            "label": "pneumothorax",
            "study_uid": seg_study,
            "sop_instance_uid": str(seg_image.SOPInstanceUID),
            "mask": mask,
        },
    )
    assert r.status_code == 201, r.text
    written.append(r.json())
    assert [w["kind"] for w in written] == ["KOS", "SR", "SEG"]
    for w, modality in zip(written, ["KO", "SR", "SEG"], strict=True):
        r = client.get(f"/dicomweb/studies/{w['study_uid']}/series", params={"Modality": modality})
        assert r.status_code == 200 and len(r.json()) == 1
        assert r.json()[0]["0020000E"]["Value"] == [w["series_uid"]]
        meta = metadata(client, w["study_uid"], w["series_uid"], w["sop_instance_uid"])
        assert meta["00080070"]["Value"] == ["medflow"]
        ref_series = meta.get("00081115") or meta["0040A375"]["Value"][0]["00081115"]
        for series in ref_series["Value"]:
            for sop in series.get("0008114A", series.get("00081199", {})).get("Value", []):
                uid = sop["00081155"]["Value"][0]
                found = client.get(
                    f"/dicomweb/studies/{w['study_uid']}/instances", params={"SOPInstanceUID": uid}
                )
                assert found.status_code == 200 and len(found.json()) == 1
    decoders = [hd.ko.KeyObjectSelectionDocument, hd.sr.Comprehensive3DSR, hd.seg.Segmentation]
    for w, decoder in zip(written, decoders, strict=True):  # valid highdicom objects, as stored
        (record,) = store.find_instances(study_uid=w["study_uid"], sop_uid=w["sop_instance_uid"])
        with store.open_instance(record) as fp:
            decoder.from_dataset(pydicom.dcmread(fp))
    feed = store.change_feed(offset=before.sequence if before else 0, limit=10)
    assert {e.sop_instance_uid for e in feed} >= {w["sop_instance_uid"] for w in written}
    rows = client.get("/api/labels", params={"set": "cxr", "study": sr_study}).json()
    assert [(r["label"], r["roi"]["type"], r["source_kind"]) for r in rows] == [
        ("consolidation", "box", "SR")
    ]
    kos_rows = client.get("/api/labels", params={"set": "cxr", "study": kos_study}).json()
    assert len(kos_rows) == len(hospital.images(kos_study))


def test_import_reads_back_writes_and_quirks(hospital: Hospital) -> None:
    c = hospital.container
    study = hospital.cr_studies()[3]
    images = hospital.images(study)
    documents = {
        "vendor": fx.vendor_kos(images),
        "no-template": fx.kos_without_template(images),
        "evidence-only": fx.kos_evidence_only(images),
        "no-title": fx.kos_without_title(images),
        "gsps": fx.gsps(images),
        "sr": fx.sr_without_template(images[:1], fx.Roi(type="point", points=[(4, 4)])),
        "dangling": fx.vendor_kos([fx.image(study=study, patient=str(images[0].PatientID))]),
        "bad-frame": fx.vendor_kos(images[:1]),
    }
    for item in fx._image_items(documents["bad-frame"]):  # frame 5 of a one-frame image
        item.ReferencedSOPSequence[0].ReferencedFrameNumber = 5
    for ds in documents.values():
        hospital.store(ds)
    c.labels.sets.save(
        definition=c.labels.sets.get(name="cxr").definition.model_copy(update={"name": "imported"})
    )
    mapping = Mapping.model_validate(
        yaml.safe_load("""
        rules:
          - {label: pneumothorax, concept: {scheme: SCT, value: "36118008"}}
          - {label: consolidation, concept: {scheme: SCT, value: "95436008"}}
          - {label: pneumothorax, title: {scheme: DCM, value: "113000"}}
          - {label: pneumothorax, text: pneumothorax}
    """)
    )
    report = c.labels.import_archive(mapping=mapping, label_set="imported")
    skipped = {s["sop_instance_uid"]: s["reason"] for s in report.skipped}
    assert "no document title" in skipped[str(documents["no-title"].SOPInstanceUID)]
    assert "not in the archive" in skipped[str(documents["dangling"].SOPInstanceUID)]
    assert "frame 5 of an image with 1 frame" in skipped[str(documents["bad-frame"].SOPInstanceUID)]
    imported = {i["sop_instance_uid"]: i for i in report.imported}
    for name in ("vendor", "no-template", "evidence-only", "gsps", "sr"):
        assert str(documents[name].SOPInstanceUID) in imported, name
    assert (
        "no template identifier" in imported[str(documents["no-template"].SOPInstanceUID)]["notes"]
    )
    rows = c.labels.labels(label_set="imported")
    by_kind = {r.source_kind for r in rows}
    assert by_kind == {"KOS", "SR", "SEG", "GSPS"}  # the first test's writes are read too
    gsps_rows = [r for r in rows if r.source_kind == "GSPS"]
    assert {r.roi["type"] for r in gsps_rows if r.roi} == {"box"}
    again = c.labels.import_archive(mapping=mapping, label_set="imported")
    assert again.labels == report.labels and len(c.labels.labels(label_set="imported")) == len(
        rows
    )  # idempotent


def test_mapping_negatives_and_from_truth_manifest(hospital: Hospital, tmp_path: Path) -> None:
    c = hospital.container
    definition = {**CXR_SET, "name": "truth"}
    c.labels.sets.save(
        definition=c.labels.sets.get(name="cxr").definition.model_validate(definition)
    )
    truth = json.loads((hospital.root / "truth.json").read_text())
    first = c.labels.from_truth(truth=truth, label_set="truth")
    assert first["positives"] >= 1 and first["negatives"] >= 1
    assert c.labels.from_truth(truth=truth, label_set="truth") == {"positives": 0, "negatives": 0}
    findings = {acc: f for rec in truth for acc, f in rec["studies"].items()}
    studies = {s.study_uid: s.accession_number for s in c.store.find_studies(modalities=["CR"])}
    for row in c.labels.labels(label_set="truth"):
        expected = findings[studies[row.study_uid]] or "normal"
        assert row.label == expected
        assert (row.source_uid == "") == (row.label == "normal")
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    result = c.labels.export(label_set="truth", out=a, seed=5)
    c.labels.export(label_set="truth", out=b, seed=5)
    assert a.read_bytes() == b.read_bytes()
    table = read_manifest(a)
    assert table.num_rows == result.rows
    splits: dict[str, set[str]] = {}
    for row in table.to_pylist():
        splits.setdefault(row["patient_id"], set()).add(row["split"])
        assert row["value"] == ["normal", "pneumothorax", "consolidation"].index(row["label"])
    assert all(len(s) == 1 for s in splits.values())
    meta = pq.read_schema(a).metadata
    assert meta[b"medflow.label_set"] == b"truth" and meta[b"medflow.seed"] == b"5"

    negatives = Mapping.model_validate(
        {"negatives": {"enabled": True, "modalities": ["CR"]}, "kinds": ["KOS"]}
    )
    c.labels.sets.save(
        definition=c.labels.sets.get(name="cxr").definition.model_copy(update={"name": "neg"})
    )
    report = c.labels.import_archive(mapping=negatives, label_set="neg")
    with_kos = {s.study_uid for s in c.store.find_studies(sop_classes=[fx.KOS])}
    neg_rows = [r for r in c.labels.labels(label_set="neg") if r.source_kind == "NEGATIVE"]
    assert report.negatives == len(neg_rows) > 0
    assert {r.study_uid for r in neg_rows} == set(studies) - with_kos
    assert {r.label for r in neg_rows} == {"normal"} and {r.source_uid for r in neg_rows} == {""}


def test_label_sets_are_versioned(hospital: Hospital) -> None:
    client = hospital.client
    first = client.post("/api/labels/sets", json={**CXR_SET, "name": "versioned"})
    assert first.status_code == 201 and first.json()["version"] == 1
    changed = {**CXR_SET, "name": "versioned", "classes": [*CXR_SET["classes"], {"name": "other"}]}
    second = client.post("/api/labels/sets", json=changed)
    assert second.status_code == 201 and second.json()["version"] == 2
    assert client.post("/api/labels/sets", json=changed).status_code == 200
    v1 = client.get("/api/labels/sets/versioned", params={"version": 1}).json()
    assert len(v1["definition"]["classes"]) == 3
    latest = {s["name"]: s["version"] for s in client.get("/api/labels/sets").json()}
    assert latest["versioned"] == 2 and latest["cxr"] == 1
    assert client.get("/api/labels/sets/versioned", params={"version": 9}).status_code == 404


def test_api_errors_are_problem_details(hospital: Hospital) -> None:
    client = hospital.client
    study = hospital.cr_studies()[0]
    cases = [
        ("get", "/api/labels/sets/nope", None, 404),
        ("post", "/api/labels/sets", {"name": "x", "classes": []}, 400),
        ("post", "/api/labels", {"label_set": "nope", "label": "a", "study_uid": study}, 404),
        ("post", "/api/labels", {"label_set": "cxr", "label": "nope", "study_uid": study}, 400),
        ("post", "/api/labels", {"label_set": "cxr", "label": "normal", "study_uid": "1.2.3"}, 404),
        (
            "post",
            "/api/labels",
            {
                "label_set": "cxr",
                "label": "normal",
                "study_uid": study,
                "roi": {"type": "box", "points": [[1, 1], [2, 2]]},
            },
            400,
        ),
        ("get", "/api/labels?set=nope", None, 404),
    ]
    for method, url, body, status in cases:
        r = client.request(method, url, json=body)
        assert r.status_code == status, (url, body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == status and r.json()["detail"]


def test_cli(generated: Path, tmp_path: Path) -> None:
    from medflow.bootstrap import build
    from medflow.cli.common import load_settings
    from medflow.cli.main import app

    data = load_data_dir(generated, tmp_path / "data")
    definition = tmp_path / "set.yaml"
    definition.write_text(yaml.safe_dump({**CXR_SET, "name": "cli"}))
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, [*args, "--data-dir", str(data)])
        assert result.exit_code == 0, result.output
        return result.output

    assert '"version": 1' in run("labels", "sets", "create", str(definition))
    assert "cli v1" in run("labels", "sets", "list")
    assert "pneumothorax" in run("labels", "sets", "show", "cli")
    assert '"positives"' in run(
        "labels", "from-truth", str(generated / "truth.json"), "--set", "cli"
    )
    container = build(load_settings(data))
    try:
        study = container.store.find_studies(modalities=["CR"])[0].study_uid
    finally:
        container.close()
    written = json.loads(
        run(
            "labels",
            "write",
            "--set",
            "cli",
            "--label",
            "pneumothorax",
            "--study",
            study,
            "--observer",
            "Reader^Two",
        )
    )
    assert written["kind"] == "KOS" and written["study_uid"] == study
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text(
        yaml.safe_dump(
            {
                "rules": [
                    {"label": "pneumothorax", "concept": {"scheme": "SCT", "value": "36118008"}},
                    {"label": "consolidation", "concept": {"scheme": "SCT", "value": "95436008"}},
                ]
            }
        )
    )
    assert "0 skipped" in run(
        "labels", "import", "--from-archive", "--mapping", str(mapping), "--set", "cli"
    )
    out = tmp_path / "m.parquet"
    run("labels", "export", "--set", "cli", "--out", str(out), "--seed", "3")
    assert read_manifest(out).num_rows > 0
    bad = runner.invoke(app, ["labels", "sets", "show", "nope", "--data-dir", str(data)])
    assert bad.exit_code == 1 and "no label set" in bad.output


def test_negatives_never_contradict_positives_and_patients_come_from_the_images(
    hospital: Hospital,
) -> None:
    """A study whose only label document is an SR positive is not also a mapping negative;
    the manifest's patient (the split key) is the image's PatientID, not the document's (a
    PACS may write ``P1^^^HOSP`` into its own objects)."""
    c = hospital.container
    with_kos = {s.study_uid for s in c.store.find_studies(sop_classes=[fx.KOS])}
    study = next(s for s in hospital.cr_studies() if s not in with_kos)
    images = hospital.images(study)
    patient = str(images[0].PatientID)
    sr = fx.sr_without_template(images[:1], fx.Roi(type="point", points=[(2, 2)]))
    sr.PatientID = f"{patient}^^^HOSP"
    hospital.store(sr)
    c.labels.sets.save(
        definition=c.labels.sets.get(name="cxr").definition.model_copy(update={"name": "mixed"})
    )
    mapping = Mapping.model_validate({
        "rules": [{"label": "pneumothorax", "concept": {"scheme": "SCT", "value": "36118008"}}],
        "negatives": {"enabled": True, "modalities": ["CR"]}, "kinds": ["KOS", "SR"],
    })  # fmt: skip
    c.labels.import_archive(mapping=mapping, label_set="mixed")
    rows = [r for r in c.labels.labels(label_set="mixed") if r.study_uid == study]
    assert {r.label for r in rows} == {"pneumothorax"}  # not also "normal"
    assert {r.patient_id for r in rows} == {patient}
