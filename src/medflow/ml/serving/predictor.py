"""A registered model version loaded for inference (issue 11, Serving).

The network is rebuilt from the registry entry (``train.service.load_model``: architecture and
input spec, ``state_dict`` checked against its SHA-256), in eval mode on the CPU. Every frame
is preprocessed exactly as in training, by the same code: ``train.images.frame_to_array``
(modality LUT, VOI LUT or first window, scaled to [0, 1], MONOCHROME1 inverted, resized to the
spec's size, standardised per image); models trained with FHIR features get them as training
built them (``train.features``: the DICOM PatientID's Patient and Conditions, the study date,
the spec's history vocabulary). Probabilities are ``train.service.predict``'s: softmax of the
logits plus the spec's ``logit_adjustment`` (the log training priors), as the test split was
evaluated, so a served probability equals the one the metrics were computed from.

``embed`` gives the backbone's pooled image features (the layer before the tabular features,
dropout and the linear head): ``dim`` floats per frame, for the similar-images index."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from medflow.core.errors import InvalidInput, Unsupported
from medflow.fhir.service import FhirService
from medflow.ml.registry.service import ModelInfo, ModelRegistry
from medflow.ml.serving.service import Prediction, dataset_mismatch
from medflow.ml.train import features as feats
from medflow.ml.train.images import NORMALIZATION, frame_to_array
from medflow.ml.train.service import load_model, predict


@dataclass
class _Batch:
    images: NDArray[np.float32]
    """(n, 1, size, size), one per frame."""
    frames: list[tuple[int, int]]
    """(index of the dataset, 1-based frame) of each image."""
    decode_ms: list[float]
    """Decoding time of each image."""
    study_dates: list[str]


def frame_count(ds: Any) -> int:
    """Frames of a dataset (``NumberOfFrames``, 1 when absent)."""
    return max(1, int(ds.get("NumberOfFrames", 1) or 1))


class Predictor:
    """One model version ready to score DICOM datasets: ``predict`` (a :class:`Prediction`
    per frame), ``embed`` (the penultimate layer), ``ref`` (``name:version``), ``dim`` (the
    embedding width), ``info`` (the registry entry)."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        info: ModelInfo,
        fhir: FhirService | None = None,
        device: str = "cpu",
    ) -> None:
        spec = info.input_spec
        if spec.get("normalization") != NORMALIZATION or int(spec.get("channels", 0)) != 1:
            raise Unsupported(f"model {info.ref} was trained with another preprocessing "
                              f"({spec.get('normalization')!r}, {spec.get('channels')} channels) "
                              "than this medflow applies")  # fmt: skip
        self.info = info
        self.ref = info.ref
        self.spec = spec
        self.size = int(spec["size"])
        self.classes = [str(c) for c in spec["classes"]]
        self.features = tuple(str(f) for f in spec.get("features", ()))
        self.fhir = fhir
        self.device = device
        self.net = load_model(registry, info, device=device)
        self.dim = int(self.net.head.in_features) - int(spec.get("tabular_width", 0))
        threshold = info.metrics.get("threshold") if len(self.classes) == 2 else None
        self.threshold = float(threshold) if isinstance(threshold, int | float) else None

    # -- input ------------------------------------------------------------------------------
    def check(self, datasets: Sequence[Any]) -> None:
        """``Unsupported`` naming the first dataset that does not fit the input spec."""
        for n, ds in enumerate(datasets, start=1):
            reason = dataset_mismatch(self.spec, ds)
            if reason is not None:
                where = f"instance {n}: " if len(datasets) > 1 else ""
                raise Unsupported(f"model {self.ref} cannot read {where}{reason}")

    def _decode(self, datasets: Sequence[Any]) -> _Batch:
        self.check(datasets)
        frames = [(i, f) for i, ds in enumerate(datasets) for f in range(1, frame_count(ds) + 1)]
        images = np.empty((len(frames), 1, self.size, self.size), dtype=np.float32)
        spent: list[float] = []
        for row, (i, frame) in enumerate(frames):
            started = time.perf_counter()
            try:
                images[row, 0] = frame_to_array(datasets[i], frame, self.size)
            except (InvalidInput, ValueError, NotImplementedError, RuntimeError) as exc:
                where = f"instance {i + 1}, " if len(datasets) > 1 else ""
                raise Unsupported(f"{where}frame {frame}: the pixel data cannot be decoded "
                                  f"({exc})") from None  # fmt: skip
            spent.append((time.perf_counter() - started) * 1000)
        dates = [str(datasets[i].get("StudyDate", "") or "") for i, _ in frames]
        return _Batch(images, frames, spent, dates)

    def _tabular(self, datasets: Sequence[Any], batch: _Batch) -> NDArray[np.float32] | None:
        """The FHIR features training used (None for an image-only model)."""
        if not self.features:
            return None
        if self.fhir is None:
            names = ", ".join(self.features)
            raise Unsupported(f"model {self.ref} needs features from FHIR ({names})")
        patients = [str(datasets[i].get("PatientID", "") or "") for i, _ in batch.frames]
        records = feats.fetch_patients(self.fhir, patients)
        return feats.feature_matrix(self.features, [records[p] for p in patients],
                                    batch.study_dates, self.spec["history_vocabulary"])  # fmt: skip

    # -- output -----------------------------------------------------------------------------
    def predict(self, datasets: Sequence[Any]) -> list[Prediction]:
        """A prediction per frame of each dataset, in order (``Unsupported`` when one does not
        fit the input spec or cannot be decoded)."""
        if not datasets:
            return []
        batch = self._decode(datasets)
        started = time.perf_counter()
        tabular = self._tabular(datasets, batch)
        probs = predict(self.net, self.info, batch.images, tabular, device=self.device)
        share = (time.perf_counter() - started) * 1000 / len(batch.frames)
        out = []
        for row, (i, frame) in enumerate(batch.frames):
            ds, p = datasets[i], probs[row]
            k = int(np.argmax(p))
            probability = float(p[1]) if len(self.classes) == 2 else float(p[k])
            out.append(Prediction(
                sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
                study_uid=str(ds.get("StudyInstanceUID", "")),
                series_uid=str(ds.get("SeriesInstanceUID", "")), frame=frame,
                probability=probability,
                probabilities={c: float(v) for c, v in zip(self.classes, p, strict=True)},
                label=self.classes[k], threshold=self.threshold,
                positive=None if self.threshold is None else probability >= self.threshold,
                model=self.info.name, version=self.info.version,
                elapsed_ms=round(batch.decode_ms[row] + share, 3),
            ))  # fmt: skip
        return out

    def accepts(self, ds: Any) -> bool:
        """Whether the model reads this image (its header suffices: Modality, Body Part
        Examined, pixel data present), so a worker skips what it cannot read unread."""
        return dataset_mismatch(self.spec, ds) is None

    @torch.inference_mode()
    def embed(self, datasets: Sequence[Any], *, batch_size: int = 64) -> NDArray[np.float32]:
        """(n, ``dim``) float32: the backbone's pooled features of every frame of each dataset,
        in order (one row per dataset for single-frame images); deterministic (eval mode)."""
        if not datasets:
            return np.zeros((0, self.dim), dtype=np.float32)
        images = self._decode(datasets).images
        self.net.eval()
        out = []
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start : start + batch_size]).to(self.device)
            out.append(self.net.backbone(x).float().cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)
