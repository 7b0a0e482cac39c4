"""Rendering DICOM images to consumer formats (PS3.18 §8.3.5 rendering query parameters,
§8.7.4 rendered media types, §10.4.1.1.3 rendered and thumbnail resources).

Pipeline for one frame (PS3.4 N.2 grayscale/color pipelines, simplified):
grayscale: Modality LUT (Rescale Slope/Intercept, or Modality LUT Sequence) -> VOI (the
``window`` parameter, else the first Window Center/Width of the object or of its functional
groups with VOI LUT Function, else a VOI LUT Sequence, else the frame's min/max) -> 8 bits ->
MONOCHROME1 / INVERSE presentation inverted. Color: YCbCr is converted to RGB, PALETTE COLOR
through its LUTs, more than 8 bits scaled down. Then the source region and the viewport
(``viewport=vw,vh[,sx,sy,sw,sh]``, the region scaled to fit the viewport keeping its aspect
ratio), then JPEG (``quality``), PNG or GIF. Pixel aspect ratio is not corrected.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi

from medflow.core.errors import InvalidInput, Unsupported
from medflow.dicom.pixels import decode_array

RENDERED_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif")
"""Rendered media types for images (PS3.18 Table 8.7.4-1): JPEG is the default."""
MAX_VIEWPORT = 4096
DEFAULT_QUALITY = 90
THUMBNAIL_SIDE = 128
WINDOW_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "sigmoid": "SIGMOID"}

Array = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Window:
    """VOI window (PS3.3 C.11.2.1.2): center, width and function in modality units."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 §8.3.5.1.3): the size of the returned image and
    an optional source region (negative ``sw``/``sh`` flip the region)."""

    width: int
    height: int
    sx: int = 0
    sy: int = 0
    sw: int | None = None
    sh: int | None = None


@dataclass(frozen=True)
class RenderOptions:
    media_type: str = "image/jpeg"
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = DEFAULT_QUALITY
    max_side: int | None = None
    """When no viewport is given, fit the image in a square of this side (thumbnails)."""


# ------------------------------------------------------------------------------------------
# Query parameters
# ------------------------------------------------------------------------------------------
def _float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f"window {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InvalidInput(f"window {what} must be finite")
    return value


def parse_window(text: str | None) -> Window | None:
    """``window=center,width[,function]`` (PS3.18 §8.3.5.1.4); function is ``linear``
    (default), ``linear-exact`` or ``sigmoid``."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 3):
        raise InvalidInput("window must be center,width[,function]")
    center, width = _float(parts[0], "center"), _float(parts[1], "width")
    name = (parts[2] if len(parts) == 3 and parts[2] else "linear").lower().replace("_", "-")
    if name not in WINDOW_FUNCTIONS:
        raise InvalidInput(
            f"window function {parts[2]!r} is not one of " + ", ".join(WINDOW_FUNCTIONS)
        )
    function = WINDOW_FUNCTIONS[name]
    if (function == "LINEAR" and width < 1) or width <= 0:
        raise InvalidInput("window width must be >= 1 for linear and > 0 otherwise")
    return Window(center, width, function)


def _int(text: str, what: str, *, default: int | None = None) -> int | None:
    if text == "" and default is not None:
        return default
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise InvalidInput(f"viewport {what} {text!r} is not an integer") from None


def parse_viewport(text: str | None) -> Viewport | None:
    """``viewport=vw,vh`` or ``vw,vh,sx,sy,sw,sh`` (PS3.18 §8.3.5.1.3); empty region values
    take their defaults."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (2, 6):
        raise InvalidInput("viewport must be vw,vh or vw,vh,sx,sy,sw,sh")
    vw, vh = _int(parts[0], "vw"), _int(parts[1], "vh")
    if vw is None or vh is None or not (0 < vw <= MAX_VIEWPORT and 0 < vh <= MAX_VIEWPORT):
        raise InvalidInput(f"viewport vw and vh must be integers from 1 to {MAX_VIEWPORT}")
    if len(parts) == 2:
        return Viewport(vw, vh)
    sx, sy = _int(parts[2], "sx", default=0), _int(parts[3], "sy", default=0)
    sw, sh = _int(parts[4], "sw"), _int(parts[5], "sh")
    if sx is None or sy is None or sx < 0 or sy < 0 or sw == 0 or sh == 0:
        raise InvalidInput("viewport sx, sy must be >= 0 and sw, sh non-zero")
    return Viewport(vw, vh, sx, sy, sw, sh)


def parse_quality(text: str | None) -> int:
    """``quality=1..100`` (PS3.18 §8.3.5.1.5), for lossy media types."""
    if text is None:
        return DEFAULT_QUALITY
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"quality {text!r} is not an integer") from None
    if not 1 <= value <= 100:
        raise InvalidInput("quality must be an integer from 1 to 100")
    return value


# ------------------------------------------------------------------------------------------
# Grayscale pipeline
# ------------------------------------------------------------------------------------------
def _first(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        seq = (
            list(value)
            if not isinstance(value, str | bytes) and hasattr(value, "__iter__")
            else [value]
        )
        return float(seq[0]) if seq else None
    except (TypeError, ValueError):
        return None


def _functional_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The first item of ``sequence`` in the per-frame, else shared, functional groups."""
    for groups, i in (
        ("PerFrameFunctionalGroupsSequence", index),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        fg = ds.get(groups)
        if fg and len(fg) > i and sequence in fg[i] and fg[i][sequence].value:
            item: Dataset = fg[i][sequence].value[0]
            return item
    return None


def _modality(arr: Array, ds: Dataset, index: int) -> Array:
    if "RescaleSlope" in ds or "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    item = _functional_item(ds, index, "PixelValueTransformationSequence")
    out = arr.astype(np.float64)
    if item is not None:
        slope = _first(item.get("RescaleSlope")) or 1.0
        intercept = _first(item.get("RescaleIntercept")) or 0.0
        out = out * slope + intercept
    return out


def default_window(ds: Dataset, index: int) -> Window | None:
    """The first Window Center/Width of the object (or of its functional groups)."""
    for source in (ds, _functional_item(ds, index, "FrameVOILUTSequence")):
        if source is None:
            continue
        center, width = _first(source.get("WindowCenter")), _first(source.get("WindowWidth"))
        if center is not None and width is not None and width > 0:
            function = str(source.get("VOILUTFunction") or "LINEAR").upper()
            if function not in WINDOW_FUNCTIONS.values():
                function = "LINEAR"
            if function == "LINEAR" and width < 1:
                width = 1.0
            return Window(center, width, function)
    return None


def apply_window(x: Array, window: Window) -> Array:
    """Window to 0..255 per PS3.3 C.11.2.1.2.1 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT) and
    C.11.2.1.3.1 (SIGMOID)."""
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(np.clip(-4.0 * (x - c) / w, -700.0, 700.0)))
    if window.function == "LINEAR_EXACT":
        y = ((x - c) / w + 0.5) * 255.0
        y = np.where(x <= c - w / 2, 0.0, y)
        return np.where(x > c + w / 2, 255.0, y)
    if w <= 1:
        return np.where(x <= c - 0.5, 0.0, 255.0)
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, y)
    return np.where(x > c - 0.5 + (w - 1) / 2, 255.0, y)


def _min_max(x: Array) -> Array:
    lo, hi = float(np.min(x)), float(np.max(x))
    if hi <= lo:
        return np.zeros_like(x) if hi <= 0 else np.full_like(x, 255.0)
    return (x - lo) * (255.0 / (hi - lo))


def grayscale_to_8bit(arr: Array, ds: Dataset, index: int, window: Window | None) -> Array:
    """Stored values of one grayscale frame -> 8-bit display values."""
    x = _modality(arr, ds, index)
    window = window or default_window(ds, index)
    if window is not None:
        y = apply_window(x, window)
    elif "VOILUTSequence" in ds:
        y = _min_max(np.asarray(apply_voi(x, ds), dtype=np.float64))
    else:
        y = _min_max(x)
    inverse = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    if str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE":
        inverse = not inverse
    if inverse:
        y = 255.0 - y
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def color_to_8bit(arr: Array, ds: Dataset) -> Array:
    """RGB (after YCbCr conversion by the decoder) or PALETTE COLOR -> 8-bit RGB."""
    if str(ds.get("PhotometricInterpretation", "")) == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        return (arr >> 8).astype(np.uint8) if arr.dtype.itemsize > 1 else arr.astype(np.uint8)
    if arr.dtype.itemsize > 1:
        stored = int(ds.get("BitsStored") or 8 * arr.dtype.itemsize)
        arr = arr >> max(stored - 8, 0)
    return np.clip(arr, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------
# Geometry and encoding
# ------------------------------------------------------------------------------------------
def _region(img: Array, vp: Viewport) -> Array:
    rows, cols = img.shape[:2]
    sw = vp.sw if vp.sw is not None else cols - vp.sx
    sh = vp.sh if vp.sh is not None else rows - vp.sy
    x0, x1 = sorted((vp.sx, vp.sx + sw))
    y0, y1 = sorted((vp.sy, vp.sy + sh))
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, cols), min(y1, rows)
    if x1 <= x0 or y1 <= y0:
        raise InvalidInput("viewport source region lies outside the image")
    out = img[y0:y1, x0:x1]
    if sw < 0:
        out = out[:, ::-1]
    if sh < 0:
        out = out[::-1]
    return np.ascontiguousarray(out)


def fit_size(width: int, height: int, box_w: int, box_h: int) -> tuple[int, int]:
    """The largest size with the aspect ratio of ``width`` x ``height`` inside the box."""
    scale = min(box_w / width, box_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _geometry(img: Array, opts: RenderOptions) -> Image.Image:
    vp = opts.viewport
    if vp is not None and (vp.sx or vp.sy or vp.sw is not None or vp.sh is not None):
        img = _region(img, vp)
    pil = Image.fromarray(img, "RGB" if img.ndim == 3 else "L")
    box = (
        (vp.width, vp.height)
        if vp is not None
        else ((opts.max_side, opts.max_side) if opts.max_side else None)
    )
    if box is not None:
        size = fit_size(pil.width, pil.height, *box)
        if size != pil.size:
            pil = pil.resize(size, Image.Resampling.LANCZOS)
    return pil


def encode(pil: Image.Image, media_type: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if media_type == "image/png":
        pil.save(buf, format="PNG")
    elif media_type == "image/gif":
        pil.save(buf, format="GIF")
    else:
        pil.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def render_frame(fp: BinaryIO, header: Dataset, number: int, opts: RenderOptions) -> bytes:
    """Frame ``number`` (1-based) of the stored object in ``fp`` rendered per ``opts``."""
    arr = decode_array(fp, number, str(header.file_meta.TransferSyntaxUID))
    return render_array(arr, header, number - 1, opts)


def render_array(
    arr: Array,
    header: Dataset,
    index: int,
    opts: RenderOptions,
    *,
    crop: bool = True,
    flip: tuple[bool, bool] = (False, False),
) -> bytes:
    """Decoded pixels (frame ``index``, 0-based, for per-frame attributes) rendered per
    ``opts``; with ``crop=False`` they are already the viewport's source region (a region
    composed from tiles), flipped per ``flip`` (horizontally, vertically)."""
    try:
        samples = int(header.get("SamplesPerPixel") or 1)
        photometric = str(header.get("PhotometricInterpretation", ""))
        if samples > 1 or photometric == "PALETTE COLOR" or arr.ndim == 3:
            img = color_to_8bit(arr, header)
        else:
            img = grayscale_to_8bit(arr, header, index, opts.window)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
        raise Unsupported(f"the image cannot be rendered: {type(exc).__name__}") from exc
    if img.ndim == 3 and img.shape[2] != 3:
        raise Unsupported("only grayscale and 3-sample color images can be rendered")
    if flip[0]:
        img = img[:, ::-1]
    if flip[1]:
        img = img[::-1]
    if not crop and opts.viewport is not None:
        vp = opts.viewport
        opts = replace(opts, viewport=Viewport(vp.width, vp.height))
    return encode(_geometry(np.ascontiguousarray(img), opts), opts.media_type, opts.quality)


__all__ = [
    "RENDERED_MEDIA_TYPES",
    "THUMBNAIL_SIDE",
    "RenderOptions",
    "Viewport",
    "Window",
    "apply_window",
    "default_window",
    "fit_size",
    "parse_quality",
    "parse_viewport",
    "parse_window",
    "render_array",
    "render_frame",
]
