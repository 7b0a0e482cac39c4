"""``medflow train --retrain NAME`` (issue 11, feedback loop): champion and challenger.

1. The champion is NAME's production version; it must have been trained on one label set.
2. Outcomes become labels first (by default; :meth:`medflow.ml.feedback.service.Feedback.
   outcome_labels`, provenance "outcome"), so the set has grown.
3. The set is exported again with the champion's split seed and fractions (read from its
   manifest under ``<data_dir>/ml/manifests`` when it is there, else its training seed and
   the default fractions). Splits
   are a function of (seed, patient) only, so every patient the champion was trained or
   validated on stays in train/val: the test split is fixed, grown only by new patients.
   When the champion's manifest is on disk this is checked (no test patient was in its
   train or val split), else the retraining stops.
4. The challenger is trained with the champion's configuration on the new manifest and
   registered (stage ``none``).
5. Both are evaluated on exactly the same test rows: the AUC of each, the difference and its
   95% CI (paired bootstrap over patients).
6. **Rule**: the challenger is promoted to production when its test AUC exceeds the
   champion's by more than ``min_gain`` (default 0: strictly better); a tie, a worse
   challenger, or a test split without both classes keeps the champion. The comparison is
   recorded in the challenger's lineage (``retrain``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medflow.core.errors import InvalidInput, NotFound
from medflow.fhir.service import FhirService
from medflow.labels import manifest as labels_manifest
from medflow.labels.service import LabelService
from medflow.ml.registry.service import ModelInfo, ModelRegistry
from medflow.ml.train import features as feats
from medflow.ml.train.images import FrameRef, decode_frames
from medflow.ml.train.loop import Progress
from medflow.ml.train.manifest import read_manifest
from medflow.ml.train.metrics import roc_auc
from medflow.ml.train.service import TrainConfig, load_model, predict, train_model
from medflow.ml.train.source import DEFAULT_SPLIT, export_labels, manifests_dir
from medflow.store.service import StoreService

RULE = ("promote the challenger when its test AUC exceeds the champion's by more than "
        "min_gain on the same fixed test set; otherwise keep the champion")  # fmt: skip


@dataclass(frozen=True)
class RetrainResult:
    champion: ModelInfo
    challenger: ModelInfo
    promoted: bool
    reason: str
    comparison: dict[str, Any]
    outcome_labels: dict[str, Any] | None
    manifest: Path

    def as_json(self) -> dict[str, Any]:
        return {"champion": self.champion.ref, "challenger": self.challenger.ref,
                "promoted": self.promoted, "reason": self.reason, "rule": RULE,
                "comparison": self.comparison, "outcome_labels": self.outcome_labels,
                "manifest": str(self.manifest)}  # fmt: skip


def champion_config(info: ModelInfo, *, device: str = "auto") -> TrainConfig:
    """The champion's training configuration (its lineage), on ``device``."""
    saved = dict(info.lineage.get("config") or {})
    known = {f.name for f in fields(TrainConfig)}
    values = {k: v for k, v in saved.items() if k in known}
    values["features"] = tuple(values.get("features") or ())
    values["device"] = device
    return TrainConfig(**values)


def _champion_split(info: ModelInfo, data_dir: Path, seed: int) -> tuple[str, int, Path | None]:
    """The champion's split fractions and split seed (from its manifest's metadata, which
    may differ from its training seed: the demo model's does) and that manifest; the
    defaults and ``seed`` without it."""
    name = str(info.lineage.get("manifest") or "")
    path = manifests_dir(data_dir) / name if name else None
    if path is None or not path.is_file():
        return DEFAULT_SPLIT, seed, None
    meta = labels_manifest.manifest_metadata(path)
    recorded = meta.get("seed", "")
    return (meta.get("split") or DEFAULT_SPLIT,
            int(recorded) if recorded.isdigit() else seed, path)  # fmt: skip


def paired_auc_difference(
    y: NDArray[np.int64], a: NDArray[np.float64], b: NDArray[np.float64], groups: list[str],
    *, n: int = 1000, seed: int = 0,
) -> tuple[float, float]:  # fmt: skip
    """95% percentile interval of AUC(b) - AUC(a), resampling patients (both models on the
    same resample)."""
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    ids = [np.asarray(v) for v in members.values()]
    deltas = []
    for _ in range(n):
        idx = np.concatenate([ids[k] for k in rng.integers(0, len(ids), len(ids))])
        da, db = roc_auc(y[idx], a[idx]), roc_auc(y[idx], b[idx])
        if not (np.isnan(da) or np.isnan(db)):
            deltas.append(db - da)
    if not deltas:
        return float("nan"), float("nan")
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return float(lo), float(hi)


def retrain(
    *,
    store: StoreService,
    labels: LabelService,
    registry: ModelRegistry,
    data_dir: Path,
    name: str,
    fhir: FhirService | None = None,
    min_gain: float = 0.0,
    device: str = "auto",
    outcome_labels: Callable[[], dict[str, Any]] | None = None,
    overrides: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> RetrainResult:
    """Train a challenger to NAME's production version and promote it by :data:`RULE`."""
    try:
        champion = registry.production(name=name)
    except NotFound:
        raise InvalidInput(f"model {name} has no production version to challenge") from None
    label_set = champion.label_set
    if not label_set or "," in label_set:
        raise InvalidInput(f"{champion.ref} was not trained on one label set: cannot retrain")
    config = champion_config(champion, device=device)
    if overrides:
        config = TrainConfig(**{**config.__dict__, **overrides})
    split, split_seed, champion_manifest = _champion_split(champion, data_dir, config.seed)
    written = outcome_labels() if outcome_labels is not None else None
    data = export_labels(labels=labels, label_set=label_set, directory=manifests_dir(data_dir),
                         seed=split_seed, split=split)  # fmt: skip
    rows = read_manifest(data.manifest).to_pylist()
    test = [r for r in rows if r["split"] == "test"]
    if champion_manifest is not None:
        seen = {r["patient_id"] for r in read_manifest(champion_manifest).to_pylist()
                if r["split"] != "test"}  # fmt: skip
        leaked = seen & {r["patient_id"] for r in test}
        if leaked:
            raise InvalidInput(f"{len(leaked)} test patient(s) were in {champion.ref}'s "
                               "train or val split: the test set is not fixed")  # fmt: skip
    result = train_model(store=store, manifest=data.manifest, config=config, fhir=fhir,
                         registry=registry, name=name, cohort_id=champion.cohort_id,
                         progress=progress)  # fmt: skip
    challenger = result.model
    assert challenger is not None
    classes = list(challenger.input_spec.get("classes") or [])
    if classes != list(champion.input_spec.get("classes") or []) or len(classes) != 2:
        raise InvalidInput(f"{challenger.ref} and {champion.ref} have other classes: "
                           "retraining compares two binary models of one label set")  # fmt: skip
    y = result.test_labels.astype(np.int64)
    b = result.test_probabilities[:, 1].astype(np.float64)
    a = _champion_probabilities(store, fhir, registry, champion, test, device=config.device)
    groups = [str(r["patient_id"]) for r in test]
    auc_a, auc_b = roc_auc(y, a), roc_auc(y, b)
    lo, hi = paired_auc_difference(y, a, b, groups, seed=config.seed)
    comparable = not (np.isnan(auc_a) or np.isnan(auc_b))
    promoted = comparable and (auc_b - auc_a) > min_gain
    reason = (
        "the test split lacks a class: no comparison, the champion stays" if not comparable
        else f"challenger AUC {auc_b:.4f} vs champion {auc_a:.4f}: "
        + ("better by more than" if promoted else "not better by more than")
        + f" {min_gain:g}"
    )  # fmt: skip
    comparison = {
        "test": {"images": len(test), "patients": len(set(groups)), "positives": int(y.sum())},
        "champion_auc": _num(auc_a), "challenger_auc": _num(auc_b),
        "delta": _num(auc_b - auc_a) if comparable else None,
        "delta_ci95": [_num(lo), _num(hi)], "min_gain": min_gain, "rule": RULE,
        "champion": champion.ref, "promoted": promoted,
        "manifest_sha256": challenger.manifest_sha256,
    }  # fmt: skip
    challenger = registry.annotate(name=name, version=challenger.version, key="retrain",
                                   value={**comparison, "outcome_labels": written})  # fmt: skip
    if promoted:
        challenger = registry.promote(name=name, version=challenger.version, stage="production")
    return RetrainResult(champion, challenger, promoted, reason, comparison, written,
                         data.manifest)  # fmt: skip


def _champion_probabilities(
    store: StoreService, fhir: FhirService | None, registry: ModelRegistry, info: ModelInfo,
    rows: list[dict[str, Any]], *, device: str,
) -> NDArray[np.float64]:  # fmt: skip
    spec = info.input_spec
    frames = [FrameRef(r["sop_instance_uid"], r["frame"]) for r in rows]
    decoded = decode_frames(store, frames, size=int(spec["size"]))
    tabular = None
    names = list(spec.get("features") or [])
    if names:
        if fhir is None:
            raise InvalidInput(f"{info.ref} reads tabular features: the FHIR store is needed")
        records = feats.fetch_patients(fhir, [r["patient_id"] for r in rows])
        tabular = feats.feature_matrix(names, [records[r["patient_id"]] for r in rows],
                                       decoded.study_dates,
                                       list(spec.get("history_vocabulary") or []))  # fmt: skip
    device = "cuda" if device == "auto" and _cuda() else "cpu" if device == "auto" else device
    net = load_model(registry, info, device=device)
    probs = predict(net, info, decoded.images, tabular, device=device)
    return np.asarray(probs[:, 1], dtype=np.float64)


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _num(value: float) -> float | None:
    return None if np.isnan(value) else round(float(value), 6)


__all__ = ["RULE", "RetrainResult", "champion_config", "paired_auc_difference", "retrain"]
