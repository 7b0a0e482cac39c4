"""Images for training: DICOM frames read through ``StoreService``, decoded by pydicom (modality
LUT, VOI LUT or window, MONOCHROME1 inverted), resized and scaled, once per run.

Each frame becomes a float32 ``size`` x ``size`` array: values after the VOI transform scaled
to [0, 1] by the output range of the transform (min-max of the frame when there is none),
inverted for MONOCHROME1 (so bright is dense), area-resized (antialiased bilinear), then
standardised per image (zero mean, unit variance). ``decode_frames`` keeps every frame of a
run in memory (an ``.npy`` cache when given a folder), so epochs do not decode again."""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
import torch.nn.functional as F  # noqa: N812
from numpy.typing import NDArray
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

from medflow.core.errors import InvalidInput, NotFound
from medflow.store.service import StoreService

log = logging.getLogger(__name__)
FloatArray = NDArray[np.float32]
NORMALIZATION = "voi-scaled-0-1, MONOCHROME1 inverted, per-image z-score"


@dataclass(frozen=True)
class FrameRef:
    sop_instance_uid: str
    frame: int
    """1-based."""


@dataclass
class Decoded:
    images: FloatArray
    """(n, 1, size, size)"""
    study_dates: list[str]
    """DICOM StudyDate of each frame ("" when absent)."""
    modalities: list[str]
    body_parts: list[str]


def frame_to_array(ds: Any, frame: int, size: int) -> FloatArray:
    """One frame of a dataset as a standardised ``size`` x ``size`` float32 image."""
    if "PixelData" not in ds:
        raise InvalidInput("the instance has no pixel data")
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= frame <= n_frames:
        raise InvalidInput(f"frame {frame} out of 1..{n_frames}")
    pixels = ds.pixel_array if n_frames == 1 else ds.pixel_array[frame - 1]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    arr = np.asarray(pixels, dtype=np.float64)
    if arr.ndim == 3:  # colour: luminance-like mean of the samples
        arr = arr.mean(axis=-1)
        lo, hi = float(arr.min()), float(arr.max())
    else:
        arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        lo, hi = _window(ds, arr)
        if "VOILUTSequence" in ds:
            arr = np.asarray(apply_voi_lut(arr, ds, index=0), dtype=np.float64)
            lo, hi = _output_range(ds, arr)
    arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if photometric == "MONOCHROME1":
        arr = 1.0 - arr
    tensor = torch.from_numpy(arr.astype(np.float32))[None, None]
    resized = F.interpolate(tensor, size=(size, size), mode="bilinear", antialias=True,
                            align_corners=False)[0, 0]  # fmt: skip
    out = resized.numpy()
    std = float(out.std())
    return np.asarray((out - out.mean()) / (std if std > 1e-6 else 1.0), dtype=np.float32)


def _first(value: Any) -> float:
    """The first of a multi-valued DS (several windows: the first is the default)."""
    return float(value[0]) if isinstance(value, MultiValue) else float(value)


def _window(ds: Any, arr: NDArray[np.float64]) -> tuple[float, float]:
    """The first window (PS3.3 C.11.2.1.2: centre c, width w) as the bounds of the modality
    LUT's output, ``[c - w/2, c + w/2]``; without one the frame's min and max. Applied to the
    rescaled values directly, so signed and rescaled images (CT's -1024 intercept) keep their
    range (pydicom's windowed output is in the stored values' range instead)."""
    if "WindowWidth" in ds and "WindowCenter" in ds:
        width, centre = _first(ds.WindowWidth), _first(ds.WindowCenter)
        if width > 0:
            return centre - width / 2, centre + width / 2
    return float(arr.min()), float(arr.max())


def _output_range(ds: Any, arr: NDArray[np.float64]) -> tuple[float, float]:
    """The range the VOI transform maps into: a window's [centre - width/2, centre + width/2]
    output is pydicom's unsigned range of BitsStored; otherwise the frame's min and max."""
    if "WindowWidth" in ds or "VOILUTSequence" in ds:
        bits = int(ds.get("BitsStored", 16))
        if "VOILUTSequence" in ds:
            first = ds.VOILUTSequence[0]
            bits = int(first.LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    return float(arr.min()), float(arr.max())


def decode_frames(
    store: StoreService,
    frames: Sequence[FrameRef],
    *,
    size: int,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Decoded:
    """Every frame decoded once, in order (``NotFound`` when an instance is not stored)."""
    key = hashlib.sha256(
        ("|".join(f"{f.sop_instance_uid}:{f.frame}" for f in frames) + f"@{size}").encode()
    ).hexdigest()[:24]
    if cache_dir is not None and (cache_dir / f"{key}.npz").is_file():
        with np.load(cache_dir / f"{key}.npz") as cached:
            return Decoded(cached["images"], [str(s) for s in cached["dates"]],
                           [str(s) for s in cached["modalities"]],
                           [str(s) for s in cached["body_parts"]])  # fmt: skip
    uids = sorted({f.sop_instance_uid for f in frames})
    records: dict[str, Any] = {}
    for start in range(0, len(uids), 500):
        for record in store.select_instances(sop_uids=uids[start : start + 500]):
            records[record.sop_instance_uid] = record
    absent = [u for u in uids if u not in records]
    if absent:
        raise NotFound(f"{len(absent)} manifest instances are not in the archive")
    images = np.empty((len(frames), 1, size, size), dtype=np.float32)
    by_uid: dict[str, list[int]] = {}
    for i, ref in enumerate(frames):
        by_uid.setdefault(ref.sop_instance_uid, []).append(i)
    headers: dict[str, tuple[str, str, str]] = {}
    done = 0
    for uid, rows in by_uid.items():
        ds = pydicom.dcmread(io.BytesIO(b"".join(store.iter_bytes(records[uid]))))
        headers[uid] = (str(ds.get("StudyDate", "")), str(ds.get("Modality", "")),
                        str(ds.get("BodyPartExamined", "")))  # fmt: skip
        for i in rows:
            images[i, 0] = frame_to_array(ds, frames[i].frame, size)
        done += len(rows)
        if progress is not None:
            progress(done, len(frames))
    dates = [headers[f.sop_instance_uid][0] for f in frames]
    modalities = [headers[f.sop_instance_uid][1] for f in frames]
    parts = [headers[f.sop_instance_uid][2] for f in frames]
    out = Decoded(images, dates, modalities, parts)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.savez(cache_dir / f"{key}.npz", images=images, dates=np.array(dates),
                 modalities=np.array(modalities), body_parts=np.array(parts))  # fmt: skip
    return out
