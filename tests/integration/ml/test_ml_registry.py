"""The model registry on SQLite and PostgreSQL: versions per name, stages, blobs, lineage."""

from __future__ import annotations

import pytest
import torch

from medflow.bootstrap import Container
from medflow.core.errors import InvalidInput, NotFound, StorageFailure
from medflow.ml.registry.service import ModelRegistry, parse_ref

pytestmark = pytest.mark.integration


def _registry(container: Container) -> ModelRegistry:
    return ModelRegistry(engine=container.engine, blobs=container.blobs,
                         spool_dir=container.settings.spool_dir())  # fmt: skip


def _register(registry: ModelRegistry, name: str, scale: float = 1.0, **kw: object):  # type: ignore[no-untyped-def]
    state = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3) * scale}
    return registry.register(
        name=name, architecture="small", input_spec={"size": 32, "classes": ["a", "b"]},
        metrics={"auc": 0.9}, manifest_sha256="ab" * 32, state_dict=state,
        plots={"roc": b"\x89PNG roc"}, label_set="cxr", label_set_version=3, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_versions_stages_and_blobs(container: Container) -> None:
    registry = _registry(container)
    first = _register(registry, "cxr", cohort_id=7, lineage={"splits": {"train": 3}})
    second = _register(registry, "cxr", scale=2.0)
    other = _register(registry, "ct-lesion")
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert first.label_set == "cxr" and first.label_set_version == 3 and first.cohort_id == 7
    assert first.lineage == {"splits": {"train": 3}}
    assert first.code_version.startswith("0.")
    assert first.stage == "none"
    assert all(key.startswith("models/cxr/") for key in first.blobs.values())
    assert registry.get(name="cxr").version == 2  # the latest
    assert registry.get(name="cxr", version=1).metrics == {"auc": 0.9}
    assert [i.ref for i in registry.list()] == ["ct-lesion:1", "cxr:1", "cxr:2"]
    assert [i.ref for i in registry.list(name="cxr")] == ["cxr:1", "cxr:2"]
    # weights and plots come back
    loaded = registry.load_state_dict(registry.get(name="cxr", version=2))
    assert torch.equal(loaded["w"], torch.arange(6, dtype=torch.float32).reshape(2, 3) * 2)
    assert registry.read_blob(first, "roc") == b"\x89PNG roc"
    # one production version per name
    registry.promote(name="cxr", version=1, stage="production")
    registry.promote(name="cxr", version=2, stage="production")
    assert registry.production(name="cxr").version == 2
    assert registry.get(name="cxr", version=1).stage == "none"
    registry.promote(name="cxr", version=1, stage="staging")
    assert {i.version: i.stage for i in registry.list(name="cxr")} == {
        1: "staging",
        2: "production",
    }
    with pytest.raises(NotFound):
        registry.production(name="ct-lesion")
    with pytest.raises(NotFound):
        registry.get(name="cxr", version=9)
    with pytest.raises(NotFound):
        registry.promote(name="nope", version=1, stage="production")
    with pytest.raises(InvalidInput):
        registry.promote(name="cxr", version=1, stage="archived")


def test_corrupted_weights_are_refused(container: Container) -> None:
    registry = _registry(container)
    info = _register(registry, "cxr")
    path = container.blobs.local_path(info.blobs["weights"])
    assert path is not None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StorageFailure):
        registry.load_state_dict(info)


def test_names_and_refs() -> None:
    assert parse_ref("cxr") == ("cxr", None)
    assert parse_ref("cxr-v2.b:12") == ("cxr-v2.b", 12)
    for bad in ("", "a/b", "../x", "cxr:0", "cxr:x", "-a"):
        with pytest.raises(InvalidInput):
            parse_ref(bad)
