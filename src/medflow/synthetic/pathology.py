"""The synthetic hospital's slides: one H&E-like whole-slide image per biopsied patient.

Format: an Aperio SVS-flavoured tiled pyramidal TIFF, the flavour that ``opentile`` (and so
``wsidicomizer``, without OpenSlide or Bio-Formats) reads and converts to DICOM WSI without
re-encoding: page 0 the base level, tiled 256 x 256, JPEG (YCbCr 4:2:0); page 1 a stripped
JPEG thumbnail; pages 2.. the lower levels (each half the one before, down to 1,024 px or
less), tiled like the base; every ImageDescription starts ``Aperio Image Library`` and carries
``AppMag = 20|MPP = 0.5000`` (micrometres per pixel at the base level), the scan ``Date`` and
``Time`` and the slide's identifier; XResolution/YResolution say the same in pixels per cm.
No timestamps of the clock: DateTime is the scan day of the plan, so the same plan gives the
same bytes.

Pixels: glass, then tissue cores (eosin-pink stroma with wavy fibres and spindle nuclei,
glands lined by small regular nuclei around pale lumens, lymphocyte clusters in some slides),
and, on slides of malignant biopsies, tumour regions of crowded, large, pleomorphic and
hyperchromatic nuclei (a few darker still: mitoses). Stain strength, cellularity, gland and
inflammation densities and tumour extent vary per slide, so malignant and benign slides differ
in nuclear size and crowding rather than in any one global statistic. Colours come from a
Beer-Lambert mix of hematoxylin and eosin optical densities.

Tile by tile: a slide is a few coarse fields (every 32 px: tissue, tumour, inflammation,
fibre phase) plus features (glands, nuclei) drawn from a generator seeded by (seed, patient,
block); each 256 x 256 base tile is rendered from them alone and written at once, and only the
lower levels (a third of the base's pixels) are kept in memory to be written after it.

The file says nothing of the diagnosis; identifiers for the DICOM conversion are in a sidecar
JSON (:func:`sidecar`), the ground truth (malignant, tumour boxes) in :func:`slide_truth`.

Other flavours, for the whole-slide import's tests: ``write_slide(associated=True)`` appends
the label and macro pages an Aperio scanner writes (:func:`associated_images`), and
:func:`medflow.synthetic.ome.write_ome_slide` writes the same pixels as an OME-TIFF.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from numpy.typing import NDArray
from PIL import Image

from medflow.core.errors import InvalidInput
from medflow.synthetic.plan import (
    BIOPSY_SITES,
    MRN_SYSTEM,
    SPECIMEN_TYPE,
    TODAY,
    PatientPlan,
    uid,
)

MPP = 0.5
"""Micrometres per pixel at the base level (a 20x scan)."""
APP_MAG = 20
TILE = 256
DEFAULT_SIZE = 2048
"""Base level width and height (pixels) of a demo slide: 1 x 1 mm of glass at 0.5 um/px."""
METADATA_ONLY_SIZE = 256
MAX_SIZE = 16384
"""The largest base level (its lower levels, 200 MB, are held in memory while it is written)."""
SMALLEST_LEVEL = 1024
"""The pyramid halves the base until a level's side is at most this."""
THUMBNAIL = 512
QUALITY = 85
STAIN = "H&E"
INSTITUTION = "Medflow Synthetic Hospital"
SCANNER = "MEDFLOW-SYNTH-1"
SNOMED = "http://snomed.info/sct"
STAINS = (("12710003", "hematoxylin stain"), ("36879007", "water soluble eosin stain"))
BIOPSY = ("86273004", "Biopsy")

_GRID = 32
"""Spacing (base pixels) of the coarse fields; TILE is a multiple of it."""
_H = np.array([0.60, 0.78, 0.28], dtype=np.float32)
"""Optical density of hematoxylin per unit (red, green, blue absorbed): blue-purple."""
_E = np.array([0.08, 0.95, 0.42], dtype=np.float32)
"""Optical density of eosin per unit: pink."""
_GLASS = np.float32(0.035)

Array = NDArray[np.float32]


_PX = 1 / MPP
"""Base pixels per micrometre."""


def _um(micrometres: float) -> float:
    """Base pixels of a length in micrometres."""
    return micrometres * _PX


# --------------------------------------------------------------------------------------------
# The slide's layout: what is where (deterministic for plan and size)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ellipse:
    cx: float
    cy: float
    a: float
    b: float
    angle: float

    def distance(self, x: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
        """Normalised distance from the centre: < 1 inside."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        u = ((x - self.cx) * c + (y - self.cy) * s) / self.a
        v = (-(x - self.cx) * s + (y - self.cy) * c) / self.b
        return np.asarray(np.sqrt(u * u + v * v))


@dataclass(frozen=True)
class _Style:
    """What varies from slide to slide (benign and malignant slides draw from the same ranges;
    the tumour's parameters only matter where there is a tumour)."""

    stain_h: float
    stain_e: float
    stroma_cells: float
    """Spindle nuclei per base pixel of stroma."""
    glands: float
    """Gland centres per base pixel of non-tumour tissue."""
    lymph_cells: float
    tumour_spacing: float
    """Mean distance between tumour nuclei (base pixels)."""
    tumour_radius: float
    pleomorphism: float
    """Standard deviation of log nuclear radius in the tumour."""
    hyperchromasia: float
    epithelial_radius: float
    """Mean radius of the nuclei lining glands (larger: reactive atypia of benign tissue)."""


@dataclass(frozen=True)
class _Layout:
    size: int
    seed: int
    malignant: bool
    cores: tuple[_Ellipse, ...]
    tumours: tuple[_Ellipse, ...]
    style: _Style
    tissue: NDArray[np.float32]
    """Coarse fields at every _GRID px (one node more than cells): > 0 inside."""
    tumour: NDArray[np.float32]
    parts: tuple[NDArray[np.float32], ...]
    """The tumour field of each tumour region (``tumour`` is their maximum)."""
    lymph: NDArray[np.float32]
    phase: NDArray[np.float32]
    fibre_angle: float


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def _smooth(rng: np.random.Generator, nodes: int, cell: int) -> NDArray[np.float64]:
    """Smooth noise (about unit variance) on a nodes x nodes grid, varying every ``cell``."""
    coarse = rng.standard_normal((nodes // cell + 2, nodes // cell + 2))
    return _interpolate(coarse, np.arange(nodes) / cell, np.arange(nodes) / cell)


def _interpolate(grid: NDArray[Any], ys: NDArray[Any], xs: NDArray[Any]) -> NDArray[Any]:
    """Bilinear values of ``grid`` (indexed by node) at the crossings of rows ``ys`` and
    columns ``xs`` (fractional node positions); element-wise, so the same on every machine."""
    iy, ix = ys.astype(np.intp), xs.astype(np.intp)
    fy, fx = (ys - iy)[:, None].astype(grid.dtype), (xs - ix)[None, :].astype(grid.dtype)
    rows = grid[iy] * (1 - fy) + grid[iy + 1] * fy
    return np.asarray(rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx)


def _field(
    shapes: tuple[_Ellipse, ...], xs: NDArray[np.float64], noise: NDArray[np.float64], amp: float
) -> NDArray[np.float64]:
    """1 - (the smallest normalised distance to a shape) + noise: > 0 inside the union."""
    if not shapes:
        return np.full(noise.shape, -1.0)
    d = np.min([s.distance(xs[None, :], xs[:, None]) for s in shapes], axis=0)
    return np.asarray(1 - d + amp * noise)


def _layout(plan: PatientPlan, size: int) -> _Layout:
    if plan.biopsy is None:
        raise InvalidInput(f"patient {plan.index} of seed {plan.seed} has no biopsy")
    rng = np.random.default_rng(_seed("slide", plan.seed, plan.index))
    malignant = plan.disease.malignant
    cores = []
    angle = rng.uniform(-0.5, 0.5)
    for k in range(int(rng.integers(1, 4))):
        cores.append(_Ellipse(
            cx=size * rng.uniform(0.35, 0.65), cy=size * (0.2 + 0.6 * (k + 0.5) / 3),
            a=size * rng.uniform(0.24, 0.36), b=size * rng.uniform(0.07, 0.13),
            angle=angle + rng.uniform(-0.15, 0.15),
        ))  # fmt: skip
    tumours = []
    if malignant:
        for _ in range(int(rng.integers(1, 3))):
            core = cores[int(rng.integers(len(cores)))]
            t = rng.uniform(-0.5, 0.5)
            tumours.append(_Ellipse(
                cx=core.cx + t * core.a * math.cos(core.angle),
                cy=core.cy + t * core.a * math.sin(core.angle),
                a=core.a * rng.uniform(0.12, 0.6), b=core.b * rng.uniform(0.6, 1.4),
                angle=core.angle + rng.uniform(-0.4, 0.4),
            ))  # fmt: skip
    lymph = []
    for _ in range(int(rng.poisson(rng.choice([0.3, 1.5, 4.0])))):
        core = cores[int(rng.integers(len(cores)))]
        t = rng.uniform(-0.8, 0.8)
        r = _um(rng.uniform(40, 110))
        lymph.append(_Ellipse(
            cx=core.cx + t * core.a * math.cos(core.angle) + rng.normal(0, core.b * 0.3),
            cy=core.cy + t * core.a * math.sin(core.angle) + rng.normal(0, core.b * 0.3),
            a=r * rng.uniform(1.0, 1.8), b=r, angle=rng.uniform(0, math.pi),
        ))  # fmt: skip
    style = _Style(
        stain_h=rng.uniform(0.75, 1.25), stain_e=rng.uniform(0.7, 1.3),
        stroma_cells=rng.uniform(0.6, 1.6) / _um(22) ** 2,
        glands=rng.uniform(0.2, 1.0) / _um(120) ** 2,
        lymph_cells=rng.uniform(0.7, 1.0) / _um(7.5) ** 2,
        tumour_spacing=_um(rng.uniform(9.0, 12.5)), tumour_radius=_um(rng.uniform(3.3, 5.2)),
        pleomorphism=rng.uniform(0.1, 0.3), hyperchromasia=rng.uniform(1.0, 1.35),
        epithelial_radius=_um(rng.uniform(2.6, 3.6)),
    )  # fmt: skip
    nodes = size // _GRID + 1
    xs: NDArray[np.float64] = np.arange(nodes, dtype=np.float64) * _GRID
    cell = max(2, min(8, nodes // 4))
    tissue = _field(tuple(cores), xs, _smooth(rng, nodes, cell), 0.18).astype(np.float32)
    noise = _smooth(rng, nodes, cell)
    parts = tuple(_field((t,), xs, noise, 0.25).astype(np.float32) for t in tumours)
    return _Layout(
        size=size, seed=_seed("slide-pixels", plan.seed, plan.index), malignant=malignant,
        cores=tuple(cores), tumours=tuple(tumours), style=style, tissue=tissue, parts=parts,
        tumour=np.max(parts, axis=0) if parts else np.full(tissue.shape, -1, np.float32),
        lymph=_field(tuple(lymph), xs, _smooth(rng, nodes, 2), 0.3).astype(np.float32),
        phase=(4.0 * _smooth(rng, nodes, max(2, cell // 2))).astype(np.float32),
        fibre_angle=angle,
    )  # fmt: skip


def _sample(field: NDArray[np.float32], x: NDArray[np.float64], y: NDArray[np.float64]) -> Any:
    """Bilinear value of a coarse field at base-pixel points."""
    n = field.shape[0] - 1
    fx, fy = np.clip(x / _GRID, 0, n - 1e-6), np.clip(y / _GRID, 0, n - 1e-6)
    i, j = fy.astype(int), fx.astype(int)
    u, v = fx - j, fy - i
    return (field[i, j] * (1 - u) * (1 - v) + field[i, j + 1] * u * (1 - v)
            + field[i + 1, j] * (1 - u) * v + field[i + 1, j + 1] * u * v)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Features of a block (the 256 x 256 base pixels of a tile): glands and nuclei
# --------------------------------------------------------------------------------------------


_SPINDLE, _ROUND = 0.0, 1.0


@dataclass
class _Block:
    glands: NDArray[np.float64]
    """Rows: cx, cy, lumen radius, epithelium radius, axis ratio, angle."""
    nuclei: NDArray[np.float64]
    """Rows: cx, cy, rx, ry, angle, darkness, kind (_SPINDLE or _ROUND)."""


def _inside(field: NDArray[np.float32], pts: NDArray[np.float64], above: float) -> Any:
    """Which points (rows x, y) have the coarse field above ``above``."""
    if len(pts) == 0:
        return np.zeros(0, dtype=bool)
    return _sample(field, pts[:, 0], pts[:, 1]) > above


def _uniform(rng: np.random.Generator, x0: float, y0: float, n: int) -> NDArray[np.float64]:
    return np.column_stack([x0 + rng.uniform(0, TILE, n), y0 + rng.uniform(0, TILE, n)])


def _block(lay: _Layout, bx: int, by: int) -> _Block:
    rng = np.random.default_rng(_seed(lay.seed, "block", bx, by))
    st = lay.style
    x0, y0 = float(bx * TILE), float(by * TILE)
    nuclei: list[NDArray[np.float64]] = []
    # glands (outside the tumour) and the nuclei lining them
    pts = _uniform(rng, x0, y0, int(rng.poisson(st.glands * TILE * TILE)))
    pts = pts[_inside(lay.tissue, pts, 0.12) & ~_inside(lay.tumour, pts, -0.15)]
    glands = []
    for cx, cy in pts:
        lumen = _um(rng.uniform(7, 22))
        ratio, angle = rng.uniform(1.0, 1.7), rng.uniform(0, math.pi)
        epi = lumen + _um(rng.uniform(7, 10))
        glands.append((cx, cy, lumen, epi, ratio, angle))
        ring = (lumen + epi) / 2
        count = max(6, int(2 * math.pi * ring * (1 + ratio) / 2 / _um(6.5)))
        t = np.linspace(0, 2 * math.pi, count, endpoint=False) + rng.uniform(0, 1)
        r = ring + rng.normal(0, _um(0.6), count)
        u, v = r * np.cos(t) * ratio, r * np.sin(t)
        c, s = math.cos(angle), math.sin(angle)
        rad = st.epithelial_radius * rng.normal(1.0, 0.07, count)
        nuclei.append(np.column_stack([
            cx + u * c - v * s, cy + u * s + v * c, rad * rng.uniform(1.1, 1.4, count), rad,
            np.arctan2(u * s + v * c, u * c - v * s), rng.normal(1.0, 0.06, count),
            np.full(count, _ROUND),
        ]))  # fmt: skip
    # spindle nuclei of the stroma
    pts = _uniform(rng, x0, y0, int(rng.poisson(st.stroma_cells * TILE * TILE)))
    pts = pts[_inside(lay.tissue, pts, 0.0) & ~_inside(lay.tumour, pts, 0.0)]
    n = len(pts)
    nuclei.append(np.column_stack([
        pts, _PX * rng.uniform(4.0, 6.5, n), _PX * rng.uniform(1.1, 1.8, n),
        lay.fibre_angle + rng.normal(0, 0.35, n), rng.normal(0.95, 0.08, n), np.full(n, _SPINDLE),
    ]))  # fmt: skip
    # lymphocytes: small, round, dark
    pts = _uniform(rng, x0, y0, int(rng.poisson(st.lymph_cells * TILE * TILE)))
    pts = pts[_inside(lay.tissue, pts, 0.0) & _inside(lay.lymph, pts, 0.0)]
    n = len(pts)
    rad = _PX * rng.normal(2.6, 0.25, n)
    nuclei.append(np.column_stack([
        pts, rad * rng.uniform(1.0, 1.15, n), rad, rng.uniform(0, math.pi, n),
        rng.normal(1.45, 0.08, n), np.full(n, _ROUND),
    ]))  # fmt: skip
    # tumour cells: a jittered lattice, large pleomorphic hyperchromatic nuclei
    if lay.tumours:
        step = st.tumour_spacing
        g = np.arange(0, TILE, step)
        gx, gy = np.meshgrid(x0 + g, y0 + g)
        pts = np.column_stack([gx.ravel(), gy.ravel()]) + rng.normal(0, step * 0.3, (gx.size, 2))
        pts = pts[_inside(lay.tumour, pts, 0.0) & _inside(lay.tissue, pts, 0.0)]
        n = len(pts)
        rad = st.tumour_radius * np.exp(rng.normal(0, st.pleomorphism, n))
        dark = st.hyperchromasia * rng.normal(1.3, 0.12, n)
        dark[rng.random(n) < 0.02] *= 1.4  # mitoses
        nuclei.append(np.column_stack([
            pts, rad * rng.uniform(1.0, 1.6, n), rad, rng.uniform(0, math.pi, n), dark,
            np.full(n, _ROUND),
        ]))  # fmt: skip
    return _Block(
        glands=np.array(glands, dtype=np.float64).reshape(-1, 6),
        nuclei=np.concatenate(nuclei) if nuclei else np.zeros((0, 7)),
    )


# --------------------------------------------------------------------------------------------
# Rendering a base tile
# --------------------------------------------------------------------------------------------


_STEPS = (np.arange(TILE) / _GRID).astype(np.float32)


def _upsample(field: NDArray[np.float32], tx: int, ty: int) -> Array:
    """The tile's pixels of a coarse field."""
    k = TILE // _GRID
    return _interpolate(field, ty * k + _STEPS, tx * k + _STEPS)


_BUCKETS = np.array([4, 6, 8, 10, 12, 14, 17, 20, 24, 28, 34, 40, 48, 64, 84, 112, 144, 192])
"""Half-widths of the stencils ellipses are drawn with (each on the smallest that holds it)."""


def _ellipses(canvas: Array, shapes: NDArray[np.float64]) -> None:
    """``canvas = max(canvas, value)`` inside each ellipse, with a soft one-pixel edge; rows of
    ``shapes``: cx, cy (tile pixels), rx, ry, angle, value. Vectorised per stencil size."""
    if len(shapes) == 0:
        return
    need = np.ceil(np.maximum(shapes[:, 2], shapes[:, 3])) + 2
    which = np.minimum(np.searchsorted(_BUCKETS, need), len(_BUCKETS) - 1)
    flat = canvas.reshape(-1)
    for bucket in np.unique(which):
        sel = shapes[which == bucket].astype(np.float32)
        r = int(_BUCKETS[bucket])
        steps = np.arange(-r, r + 1, dtype=np.int32)
        cx, cy, rx, ry, angle, value = (sel[:, k, None, None] for k in range(6))
        ix, iy = np.floor(cx).astype(np.int32), np.floor(cy).astype(np.int32)
        xs, ys = ix + steps[None, None, :], iy + steps[None, :, None]
        dx, dy = xs - cx, ys - cy
        c, s = np.cos(angle), np.sin(angle)
        u, v = (dx * c + dy * s) / rx, (dy * c - dx * s) / ry
        inside = np.clip((1 - np.sqrt(u * u + v * v)) * np.minimum(rx, ry) + 0.5, 0, 1) * value
        ok = (xs >= 0) & (xs < TILE) & (ys >= 0) & (ys < TILE) & (inside > 0)
        np.maximum.at(flat, (ys * TILE + xs)[ok], inside[ok])


class _Renderer:
    def __init__(self, lay: _Layout) -> None:
        self.lay = lay
        self.blocks: dict[tuple[int, int], _Block] = {}
        c, s = math.cos(lay.fibre_angle), math.sin(lay.fibre_angle)
        g = np.arange(TILE, dtype=np.float32)
        self.along = g[None, :] * np.float32(-s) + g[:, None] * np.float32(c)
        rng = np.random.default_rng(_seed(lay.seed, "noise"))
        self.noise = rng.standard_normal((4, TILE, TILE), dtype=np.float32)
        """Texture: each tile takes one of these (generating it per tile costs more)."""
        zero = np.zeros((TILE, TILE), np.float32)
        self.glass = self._rgb(zero, zero, 0.006 * self.noise[0])
        self.glass_half = _halve(self.glass)

    def _block(self, bx: int, by: int) -> _Block:
        key = (bx, by)
        if key not in self.blocks:
            if len(self.blocks) > 4 * (self.lay.size // TILE + 2):
                self.blocks.pop(next(iter(self.blocks)))
            self.blocks[key] = _block(self.lay, bx, by)
        return self.blocks[key]

    def _rgb(self, h: Array, e: Array, extra: Array) -> NDArray[np.uint8]:
        """Beer-Lambert: 255 * exp(-(optical density of hematoxylin, eosin and glass))."""
        st = self.lay.style
        hv, ev = _H * np.float32(st.stain_h), _E * np.float32(st.stain_e)
        out = np.empty((TILE, TILE, 3), np.uint8)
        base = extra + _GLASS
        for ch in range(3):
            od = h * -hv[ch] - ev[ch] * e - base
            np.exp(od, out=od)
            od *= 255
            od += 0.5
            out[..., ch] = np.minimum(od, 255)
        return out

    def tile(self, tx: int, ty: int) -> NDArray[np.uint8]:
        lay = self.lay
        tissue = _upsample(lay.tissue, tx, ty)
        if float(tissue.max()) < -0.05:
            return self.glass
        noise = self.noise[(tx + 2 * ty) % 4]
        tis = np.clip(tissue * 60 + 0.5, 0, 1)
        tum = np.clip(_upsample(lay.tumour, tx, ty) * 60 + 0.5, 0, 1) * tis
        phase = _upsample(lay.phase, tx, ty)
        x0, y0 = tx * TILE, ty * TILE
        off = np.float32(x0 * -math.sin(lay.fibre_angle) + y0 * math.cos(lay.fibre_angle))
        fibres = np.sin((self.along + off) * np.float32(2 * math.pi / _um(9)) + phase)
        stroma = 0.46 + 0.08 * fibres
        gland = np.zeros((TILE, TILE), np.float32)
        lumen = np.zeros((TILE, TILE), np.float32)
        spindles = np.zeros((TILE, TILE), np.float32)
        nuc = np.zeros((TILE, TILE), np.float32)
        near = [self._block(tx + i, ty + j) for j in (-1, 0, 1) for i in (-1, 0, 1)]
        glands = np.concatenate([b.glands for b in near]) - [x0, y0, 0, 0, 0, 0]
        rl, re, ratio, angle = glands[:, 2], glands[:, 3], glands[:, 4], glands[:, 5]
        _ellipses(gland, np.column_stack([glands[:, :2], re * ratio, re, angle, np.ones_like(re)]))
        _ellipses(lumen, np.column_stack([glands[:, :2], rl * ratio, rl, angle, np.ones_like(rl)]))
        nb = np.concatenate([b.nuclei for b in near]) - [x0, y0, 0, 0, 0, 0, 0]
        reach = np.maximum(nb[:, 2], nb[:, 3])
        nb = nb[(nb[:, 0] > -reach) & (nb[:, 0] < TILE + reach)
                & (nb[:, 1] > -reach) & (nb[:, 1] < TILE + reach)]  # fmt: skip
        _ellipses(spindles, nb[nb[:, 6] == _SPINDLE, :6])
        _ellipses(nuc, nb[nb[:, 6] != _SPINDLE, :6])
        epi = gland - lumen
        nuc = np.maximum(nuc * (1 - lumen), spindles * (1 - gland))
        open_ = 1 - 0.93 * lumen
        e = tis * open_ * ((1 - tum) * (stroma * (1 - epi) + 0.36 * epi) + tum * 0.32)
        e = e * (1 + 0.07 * noise) + 0.22 * tis * np.minimum(nuc, 1)
        h = tis * open_ * (0.04 + 0.12 * epi + 0.15 * tum)
        h = np.maximum(h, tis * nuc * (0.88 + 0.1 * noise))
        return self._rgb(h, e, 0.006 * noise)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def levels(size: int) -> list[int]:
    """The side of each pyramid level of a ``size`` slide, base first."""
    sides = [size]
    while sides[-1] > SMALLEST_LEVEL:
        sides.append(sides[-1] // 2)
    return sides


def check_size(size: int) -> None:
    """Raise ``InvalidInput`` unless ``size`` is a slide size this module writes: a power of
    two from one tile to :data:`MAX_SIZE`."""
    if size < TILE or size > MAX_SIZE or size & (size - 1):
        raise InvalidInput(
            f"slide size must be a power of two from {TILE} to {MAX_SIZE}, not {size}"
        )


def _scan_day(plan: PatientPlan) -> date:
    assert plan.biopsy is not None
    return min(plan.biopsy + timedelta(days=2), TODAY)


def label_text(plan: PatientPlan) -> str:
    """What the slide's label says (no diagnosis): case, block and slide, stain, patient."""
    return f"{plan.slide_id}\n{STAIN}\n{plan.family.upper()}, {plan.given}\n{plan.mrn}"


def sidecar(plan: PatientPlan, size: int = DEFAULT_SIZE) -> dict[str, Any]:
    """The slide's identifiers for the DICOM conversion (DICOM keywords where one applies):
    patient, case accession, specimen and slide, body site, stain, label; no diagnosis."""
    if plan.biopsy is None or plan.slide_id is None:
        raise InvalidInput(f"patient {plan.index} of seed {plan.seed} has no biopsy")
    site = BIOPSY_SITES.get(plan.disease.body_part, ("123037004", "Body structure"))
    scanned = _scan_day(plan)
    return {
        "file": f"{plan.slide_id}.tiff",
        "format": "aperio-svs",
        "PatientID": plan.mrn,
        "IssuerOfPatientID": MRN_SYSTEM,
        "PatientName": f"{plan.family}^{plan.given}",
        "PatientBirthDate": plan.birth_date.strftime("%Y%m%d"),
        "PatientSex": plan.sex,
        "AccessionNumber": plan.pathology_accession,
        "StudyInstanceUID": uid(plan.seed, "slide-study", plan.index),
        "StudyDate": scanned.strftime("%Y%m%d"),
        "InstitutionName": INSTITUTION,
        "ContainerIdentifier": plan.slide_id,
        "SpecimenIdentifier": plan.specimen_id,
        "specimen_type": {"system": SNOMED, "code": SPECIMEN_TYPE[0], "display": SPECIMEN_TYPE[1]},
        "collection": {"procedure": {"system": SNOMED, "code": BIOPSY[0], "display": BIOPSY[1]},
                       "date": plan.biopsy.isoformat()},
        "body_site": {"system": SNOMED, "code": site[0], "display": site[1]},
        "stain": STAIN,
        "stain_substances": [{"system": SNOMED, "code": c, "display": d} for c, d in STAINS],
        "label_text": label_text(plan),
        "scanned": scanned.isoformat(),
        "mpp": MPP,
        "magnification": APP_MAG,
        "levels": levels(size),
        "tile_size": TILE,
    }  # fmt: skip


def slide_truth(plan: PatientPlan, size: int = DEFAULT_SIZE) -> dict[str, Any]:
    """The slide's ground truth: malignant or not, and a box ``[x0, y0, x1, y1]`` (base
    pixels, x1 and y1 exclusive) around each tumour region (none for benign slides)."""
    check_size(size)
    lay = _layout(plan, size)
    boxes = []
    for part in lay.parts:
        # the rendered region lies in the cells around the nodes where the field is positive
        ys, xs = np.nonzero((part > -0.02) & (lay.tissue > -0.02))
        if len(xs):
            box = [(xs.min() - 1) * _GRID, (ys.min() - 1) * _GRID,
                   (xs.max() + 1) * _GRID, (ys.max() + 1) * _GRID]  # fmt: skip
            boxes.append([int(min(max(v, 0), size)) for v in box])
    return {"slide_id": plan.slide_id, "malignant": lay.malignant, "tumor_boxes": boxes,
            "size": size, "mpp": MPP}  # fmt: skip


def _description(plan: PatientPlan, size: int, side: int | None, kind: str) -> str:
    scanned = _scan_day(plan)
    if kind == "thumbnail":
        head = f"{size}x{size} -> {side}x{side} - "
    else:
        head = f"{size}x{size} [0,0 {size}x{size}] ({TILE}x{TILE})"
        head += f" -> {side}x{side}" if side is not None else ""
        head += f" JPEG/YCC Q={QUALITY}"
    fields = [f"AppMag = {APP_MAG}", f"MPP = {MPP:.4f}", f"Date = {scanned:%m/%d/%y}",
              "Time = 12:00:00", f"ScanScope ID = {SCANNER}", f"Filename = {plan.slide_id}",
              f"ImageID = {plan.slide_id}"]  # fmt: skip
    return "Aperio Image Library medflow synthetic\r\n" + head + "|" + "|".join(fields)


def _halve(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Half the size: the mean of each 2 x 2 block (Pillow's box reduction)."""
    return np.asarray(Image.fromarray(image).reduce(2))


class BaseTiles:
    """The base level of ``plan``'s slide, tile by tile (:meth:`tiles`, row-major), keeping the
    level below it in :attr:`kept` as the tiles go by (for a one-level slide, a copy of the
    base, for the thumbnail): what every flavour of the slide writes first."""

    def __init__(self, plan: PatientPlan, size: int) -> None:
        self.size = size
        self.render = _Renderer(_layout(plan, size))
        self.shrink = 2 if len(levels(size)) > 1 else 1
        self.kept = np.empty((size // self.shrink, size // self.shrink, 3), np.uint8)

    def tiles(self) -> Iterator[NDArray[np.uint8]]:
        render, part = self.render, TILE // self.shrink
        for ty in range(self.size // TILE):
            for tx in range(self.size // TILE):
                tile = render.tile(tx, ty)
                if self.shrink == 1:
                    small = tile
                else:
                    small = render.glass_half if tile is render.glass else _halve(tile)
                self.kept[ty * part : (ty + 1) * part, tx * part : (tx + 1) * part] = small
                yield tile


def write_slide(
    plan: PatientPlan, folder: Path, *, size: int = DEFAULT_SIZE, associated: bool = False
) -> Path:
    """Write the slide of ``plan``'s biopsy as ``folder/<slide id>.tiff`` (see the module's
    docstring) and its identifiers as ``folder/<slide id>.json``; returns the TIFF's path.
    ``associated`` appends the label (LZW strips, NewSubfileType 1) and macro (JPEG strips,
    NewSubfileType 9) pages an Aperio scanner writes (:func:`associated_images`); without it
    the file is what it always was, byte for byte."""
    check_size(size)
    meta = sidecar(plan, size)
    sides = levels(size)
    source = BaseTiles(plan, size)
    shrink, kept, base = source.shrink, source.kept, source.tiles

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{plan.slide_id}.tiff"
    common: dict[str, Any] = {
        "photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": QUALITY},
        "subsampling": (2, 2), "software": "medflow synthetic", "metadata": None,
        "datetime": f"{_scan_day(plan):%Y:%m:%d} 12:00:00",
        "resolutionunit": "CENTIMETER",
    }  # fmt: skip

    def per_cm(side: int) -> tuple[float, float]:
        """Pixels per centimetre of a page ``side`` pixels wide (Aperio's MPP stays the base's)."""
        return (1e4 / MPP * side / size,) * 2

    with tifffile.TiffWriter(path) as tif:
        tif.write(base(), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE),
                  resolution=per_cm(size), description=_description(plan, size, None, "base"),
                  **common)  # fmt: skip
        pyramid = [kept] if shrink == 2 else []
        while len(pyramid) < len(sides) - 1:
            pyramid.append(_halve(pyramid[-1]))
        thumbnail = kept if not pyramid else pyramid[-1]
        while thumbnail.shape[0] > THUMBNAIL:
            thumbnail = _halve(thumbnail)
        tif.write(
            thumbnail,
            rowsperstrip=16,
            resolution=per_cm(thumbnail.shape[0]),
            **common,
            description=_description(plan, size, thumbnail.shape[0], "thumbnail"),
        )
        for image in pyramid:
            tif.write(
                image,
                tile=(TILE, TILE),
                resolution=per_cm(image.shape[0]),
                **common,
                description=_description(plan, size, image.shape[0], "level"),
            )
        if associated:
            label, macro = associated_images(plan, thumbnail)
            lzw = {**common, "compression": "lzw", "compressionargs": None, "subsampling": None}
            tif.write(label, rowsperstrip=label.shape[0], subfiletype=1,
                      description=f"Aperio Image Library medflow synthetic\r\nlabel "
                                  f"{label.shape[1]}x{label.shape[0]}", **lzw)  # fmt: skip
            tif.write(macro, rowsperstrip=16, subfiletype=9,
                      description=f"Aperio Image Library medflow synthetic\r\nmacro "
                                  f"{macro.shape[1]}x{macro.shape[0]}", **common)  # fmt: skip
    write_sidecar(meta, folder)
    return path


def write_sidecar(meta: dict[str, Any], folder: Path) -> None:
    text = json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    (folder / f"{meta['ContainerIdentifier']}.json").write_text(text, encoding="utf-8")


LABEL_SIZE = (256, 320)
"""(height, width) of the label image: the slide's end, 25 mm across."""
MACRO_SIZE = (320, 960)
"""(height, width) of the macro (overview) image: the whole 25 x 75 mm slide."""


def associated_images(
    plan: PatientPlan, thumbnail: NDArray[np.uint8]
) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """The label (its text, :func:`label_text`, in black on white) and the macro image (the
    glass slide: the label at its left end, the tissue ``thumbnail`` in the middle), as RGB."""
    from PIL import ImageDraw

    label = Image.new("RGB", LABEL_SIZE[::-1], (250, 250, 246))
    draw = ImageDraw.Draw(label)
    draw.rectangle((8, 8, LABEL_SIZE[1] - 9, LABEL_SIZE[0] - 9), outline=(30, 30, 30), width=2)
    for i, line in enumerate(label_text(plan).splitlines()):
        draw.text((20, 24 + 28 * i), line, fill=(10, 10, 10))
    height, width = MACRO_SIZE
    macro = Image.new("RGB", (width, height), (236, 238, 240))
    macro.paste(label.resize((height * LABEL_SIZE[1] // LABEL_SIZE[0], height)), (0, 0))
    tissue = Image.fromarray(thumbnail)
    side = min(height - 32, width // 2)
    tissue = tissue.resize((side, side))
    macro.paste(tissue, ((width + height) // 2 - side // 2, (height - side) // 2))
    return np.asarray(label), np.asarray(macro)
