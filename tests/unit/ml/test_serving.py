"""The predictor (issue 11, Serving): preprocessing parity with training, the input-spec check,
embeddings, FHIR features, the cache of loaded models, the JSON body's references."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medflow.core.errors import InvalidInput, NotFound, Unsupported
from medflow.ml.registry.service import ModelInfo
from medflow.ml.serving.api import parse_refs
from medflow.ml.serving.predictor import Predictor
from medflow.ml.serving.service import Predictors, spec_mismatch
from medflow.ml.train.features import MRN_SYSTEM
from medflow.ml.train.images import NORMALIZATION, frame_to_array
from medflow.ml.train.loop import predict_logits, softmax
from medflow.ml.train.nets import build_network

SIZE = 32
SPEC: dict[str, Any] = {
    "modality": "CR", "body_part": "CHEST", "size": SIZE, "channels": 1,
    "normalization": NORMALIZATION, "classes": ["normal", "finding"], "features": [],
    "history_vocabulary": [], "tabular_width": 0, "logit_adjustment": [-0.2, -1.7],
}  # fmt: skip


def _info(spec: dict[str, Any] = SPEC, *, name: str = "cxr", version: int = 1,
          stage: str = "none", sha: str = "a" * 64) -> ModelInfo:  # fmt: skip
    return ModelInfo(
        name=name, version=version, architecture="small", input_spec=spec,
        metrics={"threshold": 0.3, "auc": 0.9}, label_set="s", label_set_version=1,
        manifest_sha256="0" * 64, cohort_id=None, lineage={}, code_version="0",
        stage=stage, weights_sha256=sha, blobs={}, created_at=datetime.now(UTC),
    )  # fmt: skip


class FakeRegistry:
    """``load_state_dict`` (seeded random weights per width) and the read methods."""

    def __init__(self, infos: list[ModelInfo] | None = None) -> None:
        self.infos = infos or []

    def load_state_dict(self, info: ModelInfo) -> dict[str, torch.Tensor]:
        torch.manual_seed(7)
        net = build_network("small", in_channels=1, classes=len(info.input_spec["classes"]),
                            tabular=int(info.input_spec["tabular_width"]))  # fmt: skip
        return net.state_dict()

    def list(self, *, name: str | None = None) -> list[ModelInfo]:
        return [i for i in self.infos if name is None or i.name == name]

    def get(self, *, name: str, version: int | None = None) -> ModelInfo:
        for i in self.infos:
            if i.name == name and i.version == version:
                return i
        raise NotFound(f"no model {name}:{version}")

    def production(self, *, name: str) -> ModelInfo:
        for i in self.infos:
            if i.name == name and i.stage == "production":
                return i
        raise NotFound(f"model {name} has no production version")


def _predictor(spec: dict[str, Any] = SPEC, fhir: Any = None) -> Predictor:
    return Predictor(registry=FakeRegistry(), info=_info(spec), fhir=fhir)  # type: ignore[arg-type]


def _image(seed: int, *, frames: int = 1, modality: str = "CR", photometric: str = "MONOCHROME2",
           **attrs: Any) -> Dataset:  # fmt: skip
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (generate_uid() for _ in "abc")
    ds.Modality, ds.BodyPartExamined = modality, "CHEST"
    ds.PatientID, ds.StudyDate = "MRN1", "20240105"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 48, 40, 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = rng.integers(0, 4096, (frames, 48, 40)).astype(np.uint16).tobytes()
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def test_probabilities_equal_trainings_on_the_same_frames() -> None:
    predictor = _predictor()
    datasets = [_image(1), _image(2, photometric="MONOCHROME1"),
                _image(3, WindowCenter=1500, WindowWidth=2000, RescaleIntercept=-10,
                       RescaleSlope=1)]  # fmt: skip
    got = predictor.predict(datasets)
    images = np.stack([frame_to_array(ds, 1, SIZE)[None] for ds in datasets])
    net = build_network("small", in_channels=1, classes=2)
    net.load_state_dict(FakeRegistry().load_state_dict(_info()))
    logits = predict_logits(net.eval(), images, np.zeros((3, 0), np.float32), device="cpu")
    want = softmax(logits, np.asarray(SPEC["logit_adjustment"]))
    np.testing.assert_allclose([[p.probabilities["normal"], p.probabilities["finding"]]
                                for p in got], want, rtol=1e-6, atol=1e-7)  # fmt: skip
    first = got[0]
    assert first.probability == pytest.approx(want[0, 1])
    assert first.label == ("finding" if want[0, 1] > want[0, 0] else "normal")
    assert (first.threshold, first.positive) == (0.3, want[0, 1] >= 0.3)
    assert (first.model, first.version, first.frame) == ("cxr", 1, 1)
    assert first.sop_instance_uid == datasets[0].SOPInstanceUID
    assert first.study_uid == datasets[0].StudyInstanceUID
    assert first.elapsed_ms > 0
    assert predictor.ref == "cxr:1"
    assert predictor.predict([]) == []


def test_a_prediction_per_frame() -> None:
    predictor = _predictor()
    got = predictor.predict([_image(4, frames=3), _image(5)])
    assert [(p.frame, p.sop_instance_uid == got[0].sop_instance_uid) for p in got] == [
        (1, True), (2, True), (3, True), (1, False)]  # fmt: skip
    assert predictor.embed([_image(4, frames=3)]).shape == (3, predictor.dim)


def test_images_the_model_does_not_read_are_refused() -> None:
    predictor = _predictor()
    with pytest.raises(Unsupported, match="reads CR CHEST images, not CT"):
        predictor.predict([_image(1, modality="CT")])
    with pytest.raises(Unsupported, match=r"instance 2: .*Body Part Examined is HAND"):
        predictor.predict([_image(1), _image(2, BodyPartExamined="HAND")])
    no_part = _image(1)
    del no_part.BodyPartExamined
    with pytest.raises(Unsupported, match="absent"):
        predictor.predict([no_part])
    no_pixels = _image(1)
    del no_pixels.PixelData
    with pytest.raises(Unsupported, match="no pixel data"):
        predictor.embed([no_pixels])
    broken = _image(1)
    broken.PixelData = b"\0" * 10
    with pytest.raises(Unsupported, match="cannot be decoded"):
        predictor.predict([broken])
    # a spec without a body part accepts any
    assert _predictor({**SPEC, "body_part": ""}).predict([_image(1, BodyPartExamined="HAND")])
    with pytest.raises(Unsupported, match="another preprocessing"):
        _predictor({**SPEC, "normalization": "something else"})


def test_spec_mismatch_reasons() -> None:
    assert spec_mismatch(SPEC, modality="CR", body_part="CHEST", has_pixels=True) is None
    assert spec_mismatch(SPEC, modality="cr", body_part="chest ", has_pixels=True) is None
    assert "no pixel data" in str(spec_mismatch(SPEC, modality="CR", body_part="CHEST",
                                                has_pixels=False))  # fmt: skip
    assert "not SR" in str(spec_mismatch(SPEC, modality="SR", body_part="", has_pixels=True))


def test_embed_is_the_backbones_pooled_features_and_deterministic() -> None:
    predictor = _predictor()
    datasets = [_image(1), _image(2)]
    first = predictor.embed(datasets)
    assert first.shape == (2, 128) and predictor.dim == 128 and first.dtype == np.float32
    np.testing.assert_array_equal(first, predictor.embed(datasets))
    np.testing.assert_allclose(first[1:], predictor.embed(datasets[1:]), rtol=1e-5, atol=1e-7)
    images = torch.from_numpy(np.stack([frame_to_array(ds, 1, SIZE)[None] for ds in datasets]))
    with torch.no_grad():
        want = predictor.net.backbone(images).numpy()
    np.testing.assert_allclose(first, want, rtol=1e-6)
    assert predictor.embed([]).shape == (0, 128)


class FakeFhir:
    def search_resources(self, *, resource_type: str, params: list[tuple[str, str]],
                         limit: int) -> list[dict[str, Any]]:  # fmt: skip
        if resource_type == "Patient":
            assert params == [("identifier", f"{MRN_SYSTEM}|MRN1")]
            return [{"resourceType": "Patient", "id": "p1", "birthDate": "1964-01-05",
                     "gender": "female"}]  # fmt: skip
        return [
            {
                "resourceType": "Condition",
                "onsetDateTime": "2020-02-01",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
            }
        ]


def test_fhir_features_are_built_as_in_training() -> None:
    vocabulary = ["http://snomed.info/sct|38341003", "http://snomed.info/sct|44054006"]
    spec = {**SPEC, "features": ["age", "sex", "history"], "history_vocabulary": vocabulary,
            "tabular_width": 4}  # fmt: skip
    with pytest.raises(Unsupported, match="needs features from FHIR"):
        _predictor(spec).predict([_image(1)])
    predictor = _predictor(spec, FakeFhir())
    got = predictor.predict([_image(1)])
    net = build_network("small", in_channels=1, classes=2, tabular=4)
    net.load_state_dict(FakeRegistry().load_state_dict(_info(spec)))
    tabular = np.array([[0.6, 1.0, 1.0, 0.0]], np.float32)  # 60 years, female, prior condition
    logits = predict_logits(net.eval(), frame_to_array(_image(1), 1, SIZE)[None, None], tabular,
                            device="cpu")  # fmt: skip
    want = softmax(logits, np.asarray(SPEC["logit_adjustment"]))
    assert got[0].probability == pytest.approx(float(want[0, 1]), abs=1e-4)
    assert predictor.dim == 128  # the image features only


def test_predictors_cache_resolves_production_and_evicts() -> None:
    infos = [_info(version=1), _info(version=2, stage="production", sha="b" * 64),
             _info(name="other", version=1)]  # fmt: skip
    registry = FakeRegistry(infos)
    loads: list[str] = []

    def factory(info: ModelInfo) -> Any:
        loads.append(info.ref)
        return type("P", (), {"info": info, "ref": info.ref})()

    cache = Predictors(registry=registry, capacity=2, factory=factory)  # type: ignore[arg-type]
    assert cache.get("cxr").ref == "cxr:2"
    assert cache.get("cxr").ref == "cxr:2" and loads == ["cxr:2"]  # cached
    assert cache.get("cxr", 1).ref == "cxr:1"
    cache.get("cxr")  # most recently used again
    cache.get("other", 1)  # evicts cxr:1 (capacity 2)
    assert cache.loaded() == ["cxr:2", "other:1"]
    cache.get("cxr", 1)
    assert loads == ["cxr:2", "cxr:1", "other:1", "cxr:1"]
    with pytest.raises(NotFound, match="no production version"):
        cache.get("other")
    with pytest.raises(NotFound, match="no model nope"):
        cache.get("nope")
    with pytest.raises(NotFound):
        cache.get("cxr", 0)
    # the same version re-created with other weights is loaded again
    registry.infos[1] = _info(version=2, stage="production", sha="c" * 64)
    cache.get("cxr")
    assert loads[-1] == "cxr:2"


def test_json_references() -> None:
    refs = parse_refs(b'{"study": "1.2.3"}')
    assert (refs[0].study, refs[0].series, refs[0].instances) == ("1.2.3", None, ())
    batch = parse_refs(b'[{"study": "1.2", "series": "1.3", "instances": ["1.4"]}, {"study": "9"}]')
    assert [r.study for r in batch] == ["1.2", "9"] and batch[0].instances == ("1.4",)
    for bad in (b"{", b"[]", b'"x"', b'{"study": "1.2", "frames": [1]}', b'{"study": "a.b"}',
                b'{"series": "1.2"}', b'{"study": "1.2", "instances": []}'):  # fmt: skip
        with pytest.raises(InvalidInput):
            parse_refs(bad)
    with pytest.raises(InvalidInput, match="1 to 100"):
        parse_refs(b"[" + b",".join([b'{"study": "1"}'] * 101) + b"]")


def test_a_model_asked_for_by_several_threads_is_loaded_once() -> None:
    import threading
    import time

    registry = FakeRegistry([_info(stage="production")])
    loads: list[str] = []

    def slow(info: ModelInfo) -> Any:
        loads.append(info.ref)
        time.sleep(0.05)
        return type("P", (), {"info": info, "ref": info.ref})()

    cache = Predictors(registry=registry, factory=slow)  # type: ignore[arg-type]
    threads = [threading.Thread(target=cache.get, args=("cxr",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert loads == ["cxr:1"]
