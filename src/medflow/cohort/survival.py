"""Kaplan-Meier survival estimates with Greenwood variances (pure numpy), and their plot as
an SVG document (a string: no plotting library).

The estimator (Kaplan & Meier 1958): at each distinct time ``t_j`` with ``d_j`` events among
``n_j`` subjects still at risk (followed up to at least ``t_j``), ``S(t) = prod_{t_j <= t}
(1 - d_j / n_j)``. Ties: events at ``t_j`` count together, and a subject censored at ``t_j``
is still at risk at ``t_j`` (censoring after the events of the same time). Greenwood's
variance: ``Var S(t) = S(t)^2 * sum_{t_j <= t} d_j / (n_j (n_j - d_j))``. Confidence
intervals on the log(-log) scale (Kalbfleisch & Prentice), which stay inside [0, 1]:
``S(t) ** exp(±z * se)`` with ``se = sqrt(sum d_j / (n_j (n_j - d_j))) / |log S(t)|``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from xml.sax.saxutils import escape

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class KMCurve:
    """The estimate at each distinct observed time (events or censorings), ascending."""

    time: FloatArray
    at_risk: IntArray
    """Subjects followed up to at least this time (before its events)."""
    events: IntArray
    censored: IntArray
    survival: FloatArray
    """S(t) just after this time's events."""
    variance: FloatArray
    """Greenwood's variance of S(t) (0 where S is 0 or 1)."""
    lower: FloatArray
    upper: FloatArray
    """Pointwise confidence interval (log-log), at the level the curve was made with."""
    n: int

    @property
    def last_time(self) -> float:
        """The longest follow-up (0 without subjects)."""
        return float(self.time[-1]) if self.time.size else 0.0

    @property
    def total_events(self) -> int:
        return int(self.events.sum())

    def index_at(self, t: float) -> int:
        """Index of the last time <= ``t`` (-1 before the first)."""
        return int(np.searchsorted(self.time, t, side="right")) - 1

    def at(self, t: float) -> float | None:
        """S(t), right-continuous; None past the longest follow-up unless S already reached 0
        (the estimate is not defined where nobody was followed), and without subjects."""
        if not self.time.size:
            return None
        if t < 0:
            return 1.0
        i = self.index_at(t)
        if i < 0:
            return 1.0
        if t > self.last_time and self.survival[-1] > 0:
            return None
        return float(self.survival[i])

    def interval_at(self, t: float) -> tuple[float, float] | None:
        """The confidence interval at ``t`` (None where :meth:`at` is None)."""
        if self.at(t) is None:
            return None
        i = self.index_at(t)
        return (1.0, 1.0) if i < 0 else (float(self.lower[i]), float(self.upper[i]))

    def counts_at(self, t: float) -> tuple[int, int, int]:
        """(still at risk just after ``t``, events up to ``t``, censored up to ``t``): the
        counts a survival probability at ``t`` rests on."""
        upto = self.time <= t
        events = int(self.events[upto].sum())
        censored = int(self.censored[upto].sum())
        return self.n - events - censored, events, censored


def kaplan_meier(
    durations: Sequence[float] | FloatArray,
    events: Sequence[bool] | npt.NDArray[np.bool_],
    *,
    alpha: float = 0.05,
) -> KMCurve:
    """The Kaplan-Meier estimate of ``durations`` (time to the event or to censoring, >= 0)
    with ``events`` (True: the event happened at that time; False: censored), with a
    ``1 - alpha`` pointwise confidence interval."""
    t = np.asarray(durations, dtype=np.float64)
    e = np.asarray(events, dtype=bool)
    if t.shape != e.shape or t.ndim != 1:
        raise ValueError("durations and events must be 1-d sequences of the same length")
    if t.size and (not np.all(np.isfinite(t)) or float(t.min()) < 0):
        raise ValueError("durations must be finite and >= 0")
    if not 0 < alpha < 1:
        raise ValueError("alpha must be in (0, 1)")
    times, inverse = np.unique(t, return_inverse=True)
    d = np.bincount(inverse, weights=e.astype(np.float64), minlength=times.size).astype(np.int64)
    total = np.bincount(inverse, minlength=times.size).astype(np.int64)
    c = total - d
    n_risk = t.size - np.concatenate(([0], np.cumsum(total)[:-1])).astype(np.int64)
    factor = np.where(n_risk > 0, 1.0 - d / np.maximum(n_risk, 1), 1.0)
    surv = np.cumprod(factor).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(n_risk > d, d / (n_risk * (n_risk - d)).astype(np.float64), 0.0)
    gw = np.cumsum(term)
    var = np.where(surv > 0, surv**2 * gw, 0.0)
    lower, upper = _loglog_interval(surv, gw, NormalDist().inv_cdf(1 - alpha / 2))
    return KMCurve(times, n_risk, d, c, surv, var, lower, upper, int(t.size))


def _loglog_interval(surv: FloatArray, gw: FloatArray, z: float) -> tuple[FloatArray, FloatArray]:
    """``S ** exp(±z se)``, se of log(-log S) = sqrt(gw) / |log S|; S in {0, 1}: [S, S]."""
    inside = (surv > 0) & (surv < 1)
    safe = np.where(inside, surv, 0.5)
    se = np.sqrt(gw) / np.abs(np.log(safe))
    lower = np.where(inside, safe ** np.exp(z * se), surv)
    upper = np.where(inside, safe ** np.exp(-z * se), surv)
    return lower.astype(np.float64), upper.astype(np.float64)


# -- SVG ---------------------------------------------------------------------------------------

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")  # fmt: skip
_MARGIN = (56, 20, 48, 40)  # left, right, bottom, top


def _nice_step(span: float) -> float:
    """A round tick step giving about 5 ticks over ``span``."""
    raw = max(span, 1e-9) / 5
    power = 10.0 ** math.floor(math.log10(raw))
    return float(next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw))


@dataclass(frozen=True)
class _Frame:
    width: int
    height: int
    t_max: float

    @property
    def plot_w(self) -> float:
        return float(self.width - _MARGIN[0] - _MARGIN[1])

    @property
    def plot_h(self) -> float:
        return float(self.height - _MARGIN[2] - _MARGIN[3])

    def x(self, t: float) -> float:
        return round(_MARGIN[0] + min(t, self.t_max) / self.t_max * self.plot_w, 2)

    def y(self, s: float) -> float:
        return round(_MARGIN[3] + (1.0 - s) * self.plot_h, 2)


def _step_points(curve: KMCurve, values: FloatArray, frame: _Frame) -> list[tuple[float, float]]:
    """The corners of the step function through ``values`` from (0, 1) to the last time."""
    points = [(frame.x(0.0), frame.y(1.0))]
    for t, s in zip(curve.time.tolist(), values.tolist(), strict=True):
        points += [(frame.x(t), points[-1][1]), (frame.x(t), frame.y(s))]
    return points


def _curve_svg(label: str, curve: KMCurve, color: str, frame: _Frame, *, ci: bool) -> list[str]:
    out: list[str] = []
    if ci and curve.time.size:
        upper = _step_points(curve, curve.upper, frame)
        lower = _step_points(curve, curve.lower, frame)
        pts = " ".join(f"{x},{y}" for x, y in [*upper, *reversed(lower)])
        out.append(f'<polygon class="km-ci" points="{pts}" fill="{color}" '
                   'fill-opacity="0.12" stroke="none"/>')  # fmt: skip
    corners = _step_points(curve, curve.survival, frame)
    d = "M" + " L".join(f"{x},{y}" for x, y in corners)
    group = escape(label, {'"': "&quot;"})
    out.append(f'<path class="km-curve" d="{d}" fill="none" stroke="{color}" '
               f'stroke-width="2" data-group="{group}"/>')  # fmt: skip
    for t in curve.time[curve.censored > 0].tolist():
        x, y = frame.x(t), frame.y(float(curve.survival[curve.index_at(t)]))
        out.append(f'<line class="km-censor" x1="{x}" y1="{y - 4}" x2="{x}" y2="{y + 4}" '
                   f'stroke="{color}" stroke-width="1.5"/>')  # fmt: skip
    return out


def _axes_svg(frame: _Frame, time_label: str) -> list[str]:
    left, top = _MARGIN[0], _MARGIN[3]
    bottom, right = top + frame.plot_h, left + frame.plot_w
    out = [f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="#333"/>']  # fmt: skip
    for k in range(6):
        s = k / 5
        y = frame.y(s)
        out.append(f'<line x1="{left - 4}" y1="{y}" x2="{right}" y2="{y}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end">{s:.1f}</text>')
    step = _nice_step(frame.t_max)
    for k in range(int(frame.t_max / step + 1e-9) + 1):
        x = frame.x(k * step)
        out.append(f'<line x1="{x}" y1="{bottom}" x2="{x}" y2="{bottom + 4}" stroke="#333"/>')
        out.append(f'<text x="{x}" y="{bottom + 18}" text-anchor="middle">{k * step:g}</text>')
    out.append(f'<text x="{left + frame.plot_w / 2}" y="{frame.height - 8}" '
               f'text-anchor="middle">{escape(time_label)}</text>')  # fmt: skip
    out.append(f'<text x="14" y="{top + frame.plot_h / 2}" text-anchor="middle" '
               f'transform="rotate(-90 14 {top + frame.plot_h / 2})">survival</text>')  # fmt: skip
    return out


def km_svg(
    curves: Mapping[str, KMCurve],
    *,
    width: int = 640,
    height: int = 400,
    title: str | None = None,
    time_label: str = "years since diagnosis",
    max_time: float | None = None,
    ci: bool = True,
) -> str:
    """Kaplan-Meier curves as a standalone SVG document: one ``<path class="km-curve">`` per
    group (in the mapping's order, colours cycling), its confidence band as a ``<polygon>``,
    censorings as ticks, and a legend with each group's size and events."""
    longest = max((c.last_time for c in curves.values()), default=0.0)
    frame = _Frame(width, height, float(max_time or longest or 1.0))
    body = _axes_svg(frame, time_label)
    for k, (label, curve) in enumerate(curves.items()):
        color = PALETTE[k % len(PALETTE)]
        body += _curve_svg(label, curve, color, frame, ci=ci)
        y = _MARGIN[3] + 6 + 16 * k
        x = width - _MARGIN[1] - 8
        text = escape(f"{label} (n={curve.n}, events={curve.total_events})")
        body.append(f'<text class="km-legend" x="{x}" y="{y + 4}" text-anchor="end" '
                    f'fill="{color}">{text}</text>')  # fmt: skip
    if not curves:
        body.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text>')
    if title:
        body.append(f'<text x="{width / 2}" y="16" text-anchor="middle" '
                    f'font-weight="bold">{escape(title)}</text>')  # fmt: skip
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">')  # fmt: skip
    return "\n".join([head, *body, "</svg>"]) + "\n"


__all__ = ["KMCurve", "kaplan_meier", "km_svg"]
