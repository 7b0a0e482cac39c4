"""The demo model of ``make run`` (issue 11): a small chest X-ray classifier trained and put in
production on the demo hospital's first start, so that a new user finds the worklist, the
scores and the similar images filled in.

:func:`ensure_demo_model`: when no version of :data:`DEMO_MODEL` is registered,

1. define the binary, study-scope label set :data:`DEMO_LABEL_SET` (``normal`` negative,
   ``pneumothorax`` (36118008, SCT));
2. label the archive's chest X-ray (CR) studies from the synthetic hospital's truth
   (:meth:`medflow.labels.service.LabelService.from_truth`: a KOS for each pneumothorax, an
   implied negative for each study without a finding; consolidations are left out);
3. export the set's manifest (``<data_dir>/ml/manifests``) with a split seed that puts both
   classes in every split, as close to the fractions as the first 100 seeds allow
   (:func:`split_seed`);
4. train the ``small`` CNN on the CPU with few torch threads (:class:`DemoModelOptions`),
   register it as :data:`DEMO_MODEL` and promote it to production.

Idempotent: a registered version of :data:`DEMO_MODEL` (in production or not: a user who
demoted it meant it) means there is nothing to do; labels already written are not written
again. It runs in the server's own process (``medflow serve``'s demo thread) rather than as a
``medflow train`` child: it uses the container's services directly (no second writer process
on the embedded SQLite index, no settings to hand over), the server loads torch anyway as soon
as a model is in production (triage, embeddings), and stopping the server cancels training at
the next batch. Torch's intra-op threads are limited while it trains (1 on two cores), and
torch releases the GIL in its kernels, so the server keeps answering.

torch is imported only inside :func:`ensure_demo_model`, never when this module is imported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medflow.core.errors import InvalidInput, MedflowError, NotFound
from medflow.labels import manifest as labels_manifest
from medflow.labels.schemas import LabelSetDefinition
from medflow.labels.service import LabelService
from medflow.ml.registry.service import ModelInfo, ModelRegistry
from medflow.ml.train.source import TrainingData, export_labels, manifests_dir
from medflow.store.service import StoreService

DEMO_MODEL = "demo-pneumothorax"
"""The registry name of the demo model (``/api/models/demo-pneumothorax``)."""
DEMO_LABEL_SET: dict[str, Any] = {
    "name": "demo-pneumothorax",
    "description": "Pneumothorax on the demo hospital's chest X-rays (the demo model's labels)",
    "classes": [
        {"name": "normal"},
        {"name": "pneumothorax",
         "code": {"scheme": "SCT", "value": "36118008", "meaning": "Pneumothorax"}},
    ],
    "negative_class": "normal",
    "scope": "study",
    "kos_title": {"scheme": "DCM", "value": "113000", "meaning": "Of Interest"},
}  # fmt: skip
"""Binary and study-scope: what ``from_truth`` labels and triage ranks by."""
SEEDS = 100
"""Split seeds tried for a split with both classes everywhere."""


class Cancelled(MedflowError):
    """The server stopped while the demo model was being made."""


@dataclass(frozen=True)
class DemoModelOptions:
    """How the demo model is trained: sized for a few minutes on two CPU cores at 200
    patients; tests make it tiny (32 px, one epoch, a few steps)."""

    size: int = 128
    epochs: int = 40
    patience: int = 15
    """Validation has ~16 images at 200 patients: its AUC is noisy, so be patient."""
    batch_size: int = 8
    """~75 labelled images at 200 patients: small batches give enough steps per epoch."""
    lr: float = 3e-4
    """With 1e-3 the small CNN's probabilities collapsed towards 0 on so few images (AUC
    still ~0.88, but nothing urgent on the worklist); 3e-4 gave AUC 0.92-0.96 over 3 seeds
    with pneumothorax medians of 0.86-0.94."""
    arch: str = "small"
    seed: int = 0
    split: str = "0.6,0.2,0.2"
    threads: int = 1
    """torch intra-op threads while training (the server shares the CPU)."""
    bootstrap: int = 1000
    max_steps: int | None = None
    """Batches per epoch at most (tests)."""


@dataclass(frozen=True)
class DemoModelResult:
    model: ModelInfo
    created: bool
    """False: a version was registered already and nothing was done."""
    labels: Mapping[str, int]
    """``from_truth``'s counts (positives, negatives written now)."""
    seconds: float
    """Labelling, export and training, wall clock."""


def existing_demo_model(registry: ModelRegistry) -> ModelInfo | None:
    """The production version of :data:`DEMO_MODEL`, else its latest version, else None."""
    versions = registry.list(name=DEMO_MODEL)
    production = [m for m in versions if m.stage == "production"]
    found = production or versions
    return found[-1] if found else None


def ensure_demo_model(
    *,
    store: StoreService,
    labels: LabelService,
    registry: ModelRegistry,
    data_dir: Path,
    truth: Sequence[Mapping[str, Any]],
    say: Callable[[str], None],
    options: DemoModelOptions | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> DemoModelResult:
    """Make sure :data:`DEMO_MODEL` is registered (trained and promoted to production when it
    was not). ``truth``: the synthetic hospital's ``truth.json``. ``InvalidInput`` when the
    archive's CR studies do not give both classes; :class:`Cancelled` when ``cancelled()``
    turns true while it trains."""
    opts = options or DemoModelOptions()
    found = existing_demo_model(registry)
    if found is not None:
        return DemoModelResult(found, False, {}, 0.0)
    started = time.monotonic()
    definition = LabelSetDefinition.model_validate(DEMO_LABEL_SET)
    labels.sets.save(definition=definition)
    counts = labels.from_truth(truth=[dict(t) for t in truth], label_set=definition.name)
    seed = split_seed(labels, label_set=definition.name, split=opts.split)
    data = _export(labels, definition.name, data_dir, seed, opts.split)
    say(f"demo model: {data.rows} chest X-rays of {data.patients} patients labelled "
        f"normal/pneumothorax from the hospital's truth; training {DEMO_MODEL} "
        f"({opts.arch} CNN, {opts.size} px, at most {opts.epochs} epochs, CPU) ...")  # fmt: skip
    info = _train(store, registry, data.manifest, opts, say, cancelled)
    info = registry.promote(name=info.name, version=info.version, stage="production")
    seconds = time.monotonic() - started
    auc = info.metrics.get("auc")
    say(f"demo model: {info.ref} in production, test AUC "
        f"{'n/a' if auc is None else f'{auc:.3f}'} ({seconds:.0f} s)")  # fmt: skip
    return DemoModelResult(info, True, counts, seconds)


def split_seed(labels: LabelService, *, label_set: str, split: str) -> int:
    """Of the first :data:`SEEDS` split seeds, among those whose patient split puts both
    classes in train, validation and test, the one whose class counts per split are nearest
    the fractions (the lowest on a tie). ``InvalidInput`` when the set lacks a class or no
    seed works."""
    fractions = labels_manifest.parse_split(split)
    by_patient: dict[str, set[str]] = {}
    for row in labels.labels(label_set=label_set):
        by_patient.setdefault(row.patient_id, set()).add(row.label)
    classes = sorted({c for found in by_patient.values() for c in found})
    if len(classes) < 2:
        raise InvalidInput(
            f"the demo's chest X-rays give {', '.join(classes) or 'no'} labels "
            "only: too few patients for a demo model"
        )
    totals = {c: sum(c in found for found in by_patient.values()) for c in classes}
    best: tuple[float, int] | None = None
    for seed in range(SEEDS):
        splits = labels_manifest.assign_splits(by_patient, seed=seed, fractions=fractions)
        per = {(s, c): 0 for s in labels_manifest.SPLITS for c in classes}
        for patient, s in splits.items():
            for c in by_patient[patient]:
                per[s, c] += 1
        if min(per.values()) == 0:
            continue
        off = sum(abs(per[s, c] - f * totals[c]) / totals[c]
                  for s, f in zip(labels_manifest.SPLITS, fractions, strict=True)
                  for c in classes)  # fmt: skip
        if best is None or off < best[0]:
            best = (off, seed)
    if best is None:
        raise InvalidInput(f"no split seed below {SEEDS} puts both classes in every split")
    return best[1]


def _export(
    labels: LabelService, label_set: str, data_dir: Path, seed: int, split: str
) -> TrainingData:
    return export_labels(labels=labels, label_set=label_set, directory=manifests_dir(data_dir),
                         seed=seed, split=split)  # fmt: skip


def _train(
    store: StoreService, registry: ModelRegistry, manifest: Path, opts: DemoModelOptions,
    say: Callable[[str], None], cancelled: Callable[[], bool] | None,
) -> ModelInfo:  # fmt: skip
    """Train and register (stage none) with torch's threads limited; cancellable per batch."""
    import torch  # here only: importing this module never loads torch

    from medflow.ml.train.service import TrainConfig, train_model

    config = TrainConfig(arch=opts.arch, size=opts.size, epochs=opts.epochs, seed=opts.seed,
                         device="cpu", batch_size=opts.batch_size, lr=opts.lr,
                         patience=opts.patience,
                         bootstrap=opts.bootstrap, max_steps=opts.max_steps)  # fmt: skip

    def progress(phase: str, done: int, total: int, values: Mapping[str, float]) -> None:
        if cancelled is not None and cancelled():
            raise Cancelled("the server stopped: the demo model is trained at the next start")
        if phase == "val":
            say(f"demo model: epoch {done}/{total}, loss {values.get('loss', 0):.3f}, "
                f"validation AUC {values.get('val_auc', 0):.3f}")  # fmt: skip

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, opts.threads))
    try:
        result = train_model(store=store, manifest=manifest, config=config, registry=registry,
                             name=DEMO_MODEL, progress=progress)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    if result.model is None:  # pragma: no cover - registry and name are given
        raise NotFound("training registered no model")
    return result.model


__all__ = [
    "DEMO_LABEL_SET",
    "DEMO_MODEL",
    "Cancelled",
    "DemoModelOptions",
    "DemoModelResult",
    "ensure_demo_model",
    "existing_demo_model",
    "split_seed",
]
