"""The training loop: seeded, augmented with MONAI transforms, class-weighted cross entropy,
AdamW with a cosine schedule, early stopping on the validation AUC (the best epoch's weights
are kept). Inputs are already decoded (``images.decode_frames``), so an epoch is arithmetic."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.data.meta_obj import get_track_meta, set_track_meta
from monai.transforms.compose import Compose
from monai.transforms.intensity.array import RandScaleIntensity, RandShiftIntensity
from monai.transforms.spatial.array import RandFlip, RandRotate
from numpy.typing import NDArray
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medflow.core.errors import InvalidInput
from medflow.ml.train.metrics import roc_auc

Progress = Callable[[str, int, int, Mapping[str, float]], None]
"""(phase, done, total, values): phases ``decode``, ``epoch`` (per batch), ``val``."""


@dataclass(frozen=True)
class FitOptions:
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    patience: int
    augment: bool
    seed: int
    device: str
    workers: int = 0
    max_steps: int | None = None
    """Stop each epoch after this many batches (tests)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def augmentation(seed: int) -> Compose:
    """Flips (left-right), rotations up to 15 degrees, intensity scale and shift by 10 %."""
    transforms = Compose([
        RandFlip(prob=0.5, spatial_axis=1),
        RandRotate(range_x=0.26, prob=0.5, padding_mode="zeros"),
        RandScaleIntensity(factors=0.1, prob=0.5),
        RandShiftIntensity(offsets=0.1, prob=0.5),
    ])  # fmt: skip
    transforms.set_random_state(seed=seed % 2**32)
    return transforms


class ArrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    def __init__(
        self,
        images: NDArray[np.float32],
        features: NDArray[np.float32],
        labels: NDArray[np.int64],
        transform: Compose | None,
    ) -> None:
        self.images = torch.from_numpy(images)
        self.features = torch.from_numpy(features)
        self.labels = torch.from_numpy(labels)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.transform is not None:
            image = torch.as_tensor(self.transform(image)).float()
        return image, self.features[i], self.labels[i]


def _worker_init(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if info is not None and isinstance(info.dataset, ArrayDataset) and info.dataset.transform:
        info.dataset.transform.set_random_state(seed=torch.initial_seed() % 2**32)


def class_weights(labels: NDArray[np.int64], classes: int) -> torch.Tensor:
    """Inverse class frequency, normalised so that the weights average one per example."""
    counts = np.bincount(labels, minlength=classes).astype(np.float64)
    weights = len(labels) / (classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


@torch.no_grad()
def predict_logits(
    net: nn.Module,
    images: NDArray[np.float32],
    features: NDArray[np.float32],
    *,
    device: str,
    batch_size: int = 64,
) -> NDArray[np.float32]:
    net.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(images[start : start + batch_size]).to(device)
        f = torch.from_numpy(features[start : start + batch_size]).to(device)
        out.append(net(x, f).float().cpu().numpy())
    width = int(out[0].shape[1]) if out else 0
    return np.concatenate(out) if out else np.zeros((0, width), dtype=np.float32)


def softmax(logits: NDArray[np.float32], adjustment: NDArray[np.float64]) -> NDArray[np.float64]:
    """Class probabilities with the log class priors added back (the weighted loss trains
    for balanced classes; this undoes it, so probabilities are calibrated to the prevalence)."""
    z = logits.astype(np.float64) + adjustment
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def score_auc(labels: NDArray[np.int64], probs: NDArray[np.float64]) -> float:
    """The AUC of the positive class (binary) or the macro one-vs-rest AUC."""
    if probs.shape[1] == 2:
        return roc_auc(labels, probs[:, 1])
    aucs = [roc_auc(labels == k, probs[:, k]) for k in range(probs.shape[1])]
    good = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(good)) if good else float("nan")


@dataclass
class FitResult:
    state_dict: dict[str, torch.Tensor]
    best_epoch: int
    epochs_run: int
    best_val_auc: float
    history: list[dict[str, float]]
    images_seen: int
    seconds: float


def fit(
    net: nn.Module,
    train: tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]],
    val: tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]],
    *,
    classes: int,
    adjustment: NDArray[np.float64],
    options: FitOptions,
    progress: Progress | None = None,
) -> FitResult:
    """Train ``net`` in place and return the best epoch's weights (by validation AUC);
    ``InvalidInput`` when the validation split lacks a class (its AUC, hence early stopping
    and the operating point, would mean nothing) or no epoch is asked for."""
    import time

    if options.epochs < 1:
        raise InvalidInput("train at least one epoch")
    missing = sorted(set(range(classes)) - {int(v) for v in val[2]})
    if missing:
        raise InvalidInput(f"the validation split has no example of class {missing[0]}: "
                           "label more patients or change the split")  # fmt: skip

    started = time.perf_counter()
    previous_meta = _track_meta(False)
    try:
        loader = _loader(train, options)
        net.to(options.device)
        loss_fn = nn.CrossEntropyLoss(weight=class_weights(train[2], classes).to(options.device))
        optimizer = torch.optim.AdamW(net.parameters(), lr=options.lr,
                                      weight_decay=options.weight_decay)  # fmt: skip
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(options.epochs, 1))
        best: dict[str, Any] = {"auc": -1.0, "epoch": 0, "state": None}
        history: list[dict[str, float]] = []
        seen = 0
        for epoch in range(1, options.epochs + 1):
            loss, n = _epoch(net, loader, loss_fn, optimizer, options, epoch, progress)
            seen += n
            schedule.step()
            probs = softmax(predict_logits(net, val[0], val[1], device=options.device),
                            adjustment)  # fmt: skip
            auc = score_auc(val[2], probs)
            auc = 0.0 if np.isnan(auc) else auc
            history.append({"epoch": epoch, "loss": loss, "val_auc": auc})
            if progress is not None:
                progress("val", epoch, options.epochs, {"loss": loss, "val_auc": auc})
            if auc > best["auc"]:
                best = {"auc": auc, "epoch": epoch, "state": copy.deepcopy(net.state_dict())}
            elif epoch - best["epoch"] >= options.patience:
                break
    finally:
        _track_meta(previous_meta)
    net.load_state_dict(best["state"])
    return FitResult({k: v.detach().cpu() for k, v in best["state"].items()}, best["epoch"],
                     len(history), best["auc"], history, seen,
                     time.perf_counter() - started)  # fmt: skip


def _track_meta(value: bool) -> bool:
    previous = bool(get_track_meta())
    set_track_meta(value)
    return previous


def _loader(
    train: tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]],
    options: FitOptions,
) -> DataLoader[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    transform = augmentation(options.seed) if options.augment else None
    generator = torch.Generator().manual_seed(options.seed)
    return DataLoader(ArrayDataset(*train, transform=transform), batch_size=options.batch_size,
                      shuffle=True, generator=generator, num_workers=options.workers,
                      worker_init_fn=_worker_init, drop_last=len(train[2]) > options.batch_size,
                      persistent_workers=options.workers > 0)  # fmt: skip


def _epoch(
    net: nn.Module,
    loader: DataLoader[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    options: FitOptions,
    epoch: int,
    progress: Progress | None,
) -> tuple[float, int]:
    net.train()
    total, count = 0.0, 0
    steps = len(loader) if options.max_steps is None else min(len(loader), options.max_steps)
    for step, (x, f, y) in enumerate(loader, start=1):
        x, f, y = x.to(options.device), f.to(options.device), y.to(options.device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(net(x, f), y)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(y)
        count += len(y)
        if progress is not None:
            progress("epoch", step, steps, {"epoch": epoch, "loss": total / count})
        if step >= steps:
            break
    return total / max(count, 1), count
