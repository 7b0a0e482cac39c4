"""Training (what other code calls): a manifest's frames read through the archive, optional
FHIR features, a MONAI network trained and evaluated on the test split, and the result
registered as a new model version.

``train_model`` runs: manifest -> decode every frame once -> tabular features -> fit with
early stopping on validation AUC -> probabilities on validation and test (log class priors
restored) -> operating point on validation -> test metrics and plots -> registry."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from medflow.core.errors import InvalidInput
from medflow.fhir.service import FhirService
from medflow.ml.registry.service import ModelInfo, ModelRegistry
from medflow.ml.train import features as feats
from medflow.ml.train.images import NORMALIZATION, Decoded, FrameRef, decode_frames
from medflow.ml.train.loop import (
    FitOptions,
    Progress,
    fit,
    predict_logits,
    seed_everything,
    softmax,
)
from medflow.ml.train.manifest import SPLITS, file_sha256, read_manifest
from medflow.ml.train.metrics import binary_report, calibration_png, operating_point, roc_png
from medflow.ml.train.nets import ARCHITECTURES, Classifier, build_network
from medflow.store.service import StoreService


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "small"
    size: int = 128
    epochs: int = 20
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 5
    features: tuple[str, ...] = ()
    augment: bool = True
    target_sensitivity: float | None = None
    """Operating point: the highest threshold reaching it on validation (None: Youden's J)."""
    bootstrap: int = 1000
    workers: int = 0
    max_steps: int | None = None


@dataclass
class TrainResult:
    model: ModelInfo | None
    metrics: dict[str, Any]
    input_spec: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    test_probabilities: NDArray[np.float64]
    test_labels: NDArray[np.int64]
    plots: dict[str, bytes] = field(default_factory=dict)


@dataclass
class _Split:
    images: NDArray[np.float32]
    features: NDArray[np.float32]
    labels: NDArray[np.int64]
    patients: int
    groups: list[str]
    """The PatientID of each image (the bootstrap resamples patients)."""


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda`` (``InvalidInput`` when absent) or ``auto`` (CUDA when present)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise InvalidInput(f"unknown device {device!r} (cpu, cuda or auto)")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidInput("CUDA is not available here")
    return device


def _classes(rows: Sequence[dict[str, Any]]) -> list[str]:
    names: dict[int, str] = {}
    for row in rows:
        if names.setdefault(row["value"], row["label"]) != row["label"]:
            raise InvalidInput(f"class index {row['value']} has two labels")
    if sorted(names) != list(range(len(names))) or len(names) < 2:
        raise InvalidInput("class indices must be 0..k-1 with k >= 2")
    return [names[i] for i in range(len(names))]


def _features(
    fhir: FhirService | None, config: TrainConfig, rows: Sequence[dict[str, Any]],
    decoded: Decoded,
) -> tuple[NDArray[np.float32], list[str]]:  # fmt: skip
    if not config.features:
        return np.zeros((len(rows), 0), dtype=np.float32), []
    if fhir is None:
        raise InvalidInput("tabular features need the FHIR store")
    records = feats.fetch_patients(fhir, [r["patient_id"] for r in rows])
    per_row = [records[r["patient_id"]] for r in rows]
    train_patients = {r["patient_id"] for r in rows if r["split"] == "train"}
    vocabulary = (feats.history_vocabulary([records[p] for p in sorted(train_patients)])
                  if "history" in config.features else [])  # fmt: skip
    matrix = feats.feature_matrix(config.features, per_row, decoded.study_dates, vocabulary)
    return matrix, vocabulary


def _splits(rows: Sequence[dict[str, Any]], decoded: Decoded,
            tabular: NDArray[np.float32]) -> dict[str, _Split]:  # fmt: skip
    out = {}
    for split in SPLITS:
        idx = np.array([i for i, r in enumerate(rows) if r["split"] == split], dtype=np.int64)
        if not len(idx):
            raise InvalidInput(f"the manifest has no {split} rows")
        labels = np.array([rows[i]["value"] for i in idx], dtype=np.int64)
        groups = [str(rows[i]["patient_id"]) for i in idx]
        out[split] = _Split(decoded.images[idx], tabular[idx], labels, len(set(groups)), groups)
    return out


def train_model(
    *,
    store: StoreService,
    manifest: Path,
    config: TrainConfig,
    fhir: FhirService | None = None,
    registry: ModelRegistry | None = None,
    name: str | None = None,
    cohort_id: int | None = None,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train, evaluate on the test split and (with ``registry`` and ``name``) register."""
    if config.arch not in ARCHITECTURES:
        raise InvalidInput(f"unknown architecture {config.arch!r}")
    device = resolve_device(config.device)
    table = read_manifest(manifest)
    rows = table.to_pylist()
    classes = _classes(rows)
    frames = [FrameRef(r["sop_instance_uid"], r["frame"]) for r in rows]
    decoded = decode_frames(store, frames, size=config.size, cache_dir=cache_dir,
                            progress=None if progress is None else
                            lambda d, t: progress("decode", d, t, {}))  # fmt: skip
    tabular, vocabulary = _features(fhir, config, rows, decoded)
    splits = _splits(rows, decoded, tabular)
    train_labels = splits["train"].labels
    prior = np.bincount(train_labels, minlength=len(classes)) / len(train_labels)
    adjustment = np.log(np.maximum(prior, 1e-6))
    seed_everything(config.seed)
    net = build_network(config.arch, in_channels=1, classes=len(classes), tabular=tabular.shape[1])
    options = FitOptions(epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
                         weight_decay=config.weight_decay, patience=config.patience,
                         augment=config.augment, seed=config.seed, device=device,
                         workers=config.workers, max_steps=config.max_steps)  # fmt: skip
    started = time.perf_counter()
    fitted = fit(net, _triple(splits["train"]), _triple(splits["val"]), classes=len(classes),
                 adjustment=adjustment, options=options, progress=progress)  # fmt: skip
    spec = {
        "modality": _most_common(decoded.modalities), "body_part": _most_common(decoded.body_parts),
        "size": config.size, "channels": 1, "normalization": NORMALIZATION, "classes": classes,
        "features": list(config.features), "history_vocabulary": vocabulary,
        "tabular_width": int(tabular.shape[1]), "logit_adjustment": adjustment.tolist(),
    }  # fmt: skip
    probs = {s: softmax(predict_logits(net, splits[s].images, splits[s].features, device=device),
                        adjustment) for s in ("val", "test")}  # fmt: skip
    metrics, plots = _evaluate(splits, probs, config, classes)
    metrics["training"] = {
        "best_epoch": fitted.best_epoch, "epochs_run": fitted.epochs_run,
        "best_val_auc": round(fitted.best_val_auc, 6), "seconds": round(fitted.seconds, 2),
        "images_per_s": round(fitted.images_seen / max(fitted.seconds, 1e-9), 1),
        "total_seconds": round(time.perf_counter() - started, 2), "device": device,
        "history": fitted.history,
    }  # fmt: skip
    info = None
    if registry is not None and name is not None:
        info = registry.register(
            name=name, architecture=config.arch, input_spec=spec, metrics=metrics,
            manifest_sha256=file_sha256(manifest), state_dict=fitted.state_dict, plots=plots,
            label_set=_joined(rows, "label_set"), label_set_version=_version(rows),
            cohort_id=cohort_id, lineage=_lineage(manifest, splits, config),
        )  # fmt: skip
    return TrainResult(info, metrics, spec, fitted.state_dict, probs["test"],
                       splits["test"].labels, plots)  # fmt: skip


def _triple(split: _Split) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
    return split.images, split.features, split.labels


def _evaluate(
    splits: dict[str, _Split], probs: dict[str, NDArray[np.float64]], config: TrainConfig,
    classes: list[str],
) -> tuple[dict[str, Any], dict[str, bytes]]:  # fmt: skip
    """Binary: the operating point on validation, every metric on test, ROC and calibration
    PNGs. More classes: one-vs-rest test AUCs with intervals (no operating point)."""
    if len(classes) == 2:
        threshold = operating_point(splits["val"].labels, probs["val"][:, 1],
                                    target_sensitivity=config.target_sensitivity)  # fmt: skip
        report = binary_report(splits["test"].labels, probs["test"][:, 1], threshold=threshold,
                               bootstrap=config.bootstrap, seed=config.seed,
                               groups=splits["test"].groups)  # fmt: skip
        method = ("youden" if config.target_sensitivity is None
                  else f"sensitivity>={config.target_sensitivity}")  # fmt: skip
        report["operating_point"] = {"method": method, "chosen_on": "val"}
        report["positive_class"] = classes[1]
        plots = {
            "roc": roc_png(splits["test"].labels, probs["test"][:, 1]),
            "calibration": calibration_png(splits["test"].labels, probs["test"][:, 1]),
        }
        return report, plots
    per_class = {}
    for k, label in enumerate(classes):
        y = (splits["test"].labels == k).astype(np.int64)
        per_class[label] = binary_report(
            y,
            probs["test"][:, k],
            threshold=0.5,
            bootstrap=config.bootstrap,
            seed=config.seed,
            groups=splits["test"].groups,
        )["auc"]
    values = [v for v in per_class.values() if v is not None]
    return {"auc_macro": float(np.mean(values)) if values else None,
            "auc_per_class": per_class, "n": len(splits["test"].labels)}, {}  # fmt: skip


def _most_common(values: Sequence[str]) -> str:
    return Counter(values).most_common(1)[0][0] if values else ""


def _joined(rows: Sequence[dict[str, Any]], column: str) -> str | None:
    values = sorted({str(r[column]) for r in rows if r[column] is not None})
    return ",".join(values)[:200] if values else None


def _version(rows: Sequence[dict[str, Any]]) -> int | None:
    versions = {r["label_set_version"] for r in rows if r["label_set_version"] is not None}
    return versions.pop() if len(versions) == 1 else None


def _lineage(manifest: Path, splits: dict[str, _Split], config: TrainConfig) -> dict[str, Any]:
    return {
        "manifest": manifest.name,
        "splits": {s: {"images": len(v.labels), "patients": v.patients,
                       "per_class": np.bincount(v.labels).tolist()}
                   for s, v in splits.items()},
        "config": {k: v for k, v in config.__dict__.items() if k not in ("device", "workers")},
    }  # fmt: skip


def load_model(registry: ModelRegistry, info: ModelInfo, *, device: str = "cpu") -> Classifier:
    """The registered network with its weights, in eval mode."""
    spec = info.input_spec
    net = build_network(
        info.architecture,
        in_channels=int(spec["channels"]),
        classes=len(spec["classes"]),
        tabular=int(spec["tabular_width"]),
    )
    net.load_state_dict(registry.load_state_dict(info))
    return net.to(device).eval()


def predict(
    net: Classifier, info: ModelInfo, images: NDArray[np.float32],
    features: NDArray[np.float32] | None = None, *, device: str = "cpu",
) -> NDArray[np.float64]:  # fmt: skip
    """Class probabilities of decoded images (``images.frame_to_array`` at the spec's size)."""
    if features is None:
        features = np.zeros((len(images), int(info.input_spec["tabular_width"])), np.float32)
    adjustment = np.asarray(info.input_spec["logit_adjustment"], dtype=np.float64)
    return softmax(predict_logits(net, images, features, device=device), adjustment)
