"""Metrics of a binary classifier's scores (pure numpy): ROC AUC with a bootstrap confidence
interval (resampling patients, a cluster bootstrap, when each sample's patient is given), an
operating point chosen on validation (Youden's J or a target sensitivity), sensitivity and
specificity at it, the Brier score and reliability bins; ROC and calibration plots as PNG
(matplotlib's Agg canvas, no pyplot state)."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medflow.core.errors import InvalidInput

Floats = NDArray[np.float64]


def _arrays(y: ArrayLike, s: ArrayLike) -> tuple[NDArray[np.int64], Floats]:
    yt = np.asarray(y).astype(np.int64).ravel()
    st = np.asarray(s, dtype=np.float64).ravel()
    if yt.shape != st.shape:
        raise InvalidInput("labels and scores differ in length")
    if not np.isin(yt, (0, 1)).all():
        raise InvalidInput("labels must be 0 or 1")
    return yt, st


def _ranks(values: Floats) -> Floats:
    """Ranks from 1 with ties given their mean rank."""
    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    mean_rank = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(mean_rank, counts)
    return ranks


def roc_auc(y: ArrayLike, s: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half). NaN with one class."""
    yt, st = _arrays(y, s)
    pos, neg = int(yt.sum()), int(len(yt) - yt.sum())
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = _ranks(st)
    return float((ranks[yt == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def bootstrap_auc_ci(
    y: ArrayLike,
    s: ArrayLike,
    *,
    n: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC (resamples with one class are skipped).

    ``groups`` (one id per sample, e.g. the PatientID of each image): a cluster bootstrap,
    each resample draws whole groups with replacement and takes all their samples, since the
    images of one patient are correlated and resampling them one by one understates the
    variance. None: samples are drawn one by one."""
    yt, st = _arrays(y, s)
    rng = np.random.default_rng(seed)
    members = _group_members(groups, len(yt))
    aucs = []
    for _ in range(n):
        if members is None:
            idx = rng.integers(0, len(yt), len(yt))
        else:
            picked = rng.integers(0, len(members), len(members))
            idx = np.concatenate([members[g] for g in picked])
        value = roc_auc(yt[idx], st[idx])
        if not np.isnan(value):
            aucs.append(value)
    if not aucs:
        return float("nan"), float("nan")
    lo, hi = np.quantile(aucs, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _group_members(groups: ArrayLike | None, size: int) -> list[NDArray[np.intp]] | None:
    """The sample indices of each group, groups in sorted order of their ids (so the draw
    does not depend on the order of the samples' groups); None without groups."""
    if groups is None:
        return None
    ids = np.asarray(groups).ravel()
    if ids.shape != (size,):
        raise InvalidInput("groups and labels differ in length")
    if not size:
        return []
    _, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse))[:-1]
    return list(np.split(order, bounds))


def roc_curve(y: ArrayLike, s: ArrayLike) -> tuple[Floats, Floats, Floats]:
    """False and true positive rates at each distinct score taken as the threshold (positive
    when score >= threshold), from (0, 0) at +inf."""
    yt, st = _arrays(y, s)
    thresholds = np.concatenate([[np.inf], np.unique(st)[::-1]])
    pos, neg = max(int(yt.sum()), 1), max(int(len(yt) - yt.sum()), 1)
    tpr = np.array([((st >= t) & (yt == 1)).sum() / pos for t in thresholds])
    fpr = np.array([((st >= t) & (yt == 0)).sum() / neg for t in thresholds])
    return fpr, tpr, thresholds


def operating_point(
    y: ArrayLike, s: ArrayLike, *, target_sensitivity: float | None = None
) -> float:
    """A threshold: the highest reaching ``target_sensitivity``, or else Youden's J maximum."""
    fpr, tpr, thresholds = roc_curve(y, s)
    if target_sensitivity is not None:
        reached = np.nonzero(tpr >= target_sensitivity)[0]
        return float(thresholds[reached[0]]) if len(reached) else float(thresholds[-1])
    best = int(np.argmax(tpr - fpr))
    return float(thresholds[best]) if np.isfinite(thresholds[best]) else float(thresholds[1])


def sensitivity_specificity(y: ArrayLike, s: ArrayLike, threshold: float) -> tuple[float, float]:
    yt, st = _arrays(y, s)
    predicted = st >= threshold
    pos, neg = yt == 1, yt == 0
    sens = float((predicted & pos).sum() / pos.sum()) if pos.any() else float("nan")
    spec = float((~predicted & neg).sum() / neg.sum()) if neg.any() else float("nan")
    return sens, spec


def brier(y: ArrayLike, p: ArrayLike) -> float:
    yt, pt = _arrays(y, p)
    return float(np.mean((pt - yt) ** 2))


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    count: int
    mean_predicted: float
    fraction_positive: float


def reliability(y: ArrayLike, p: ArrayLike, *, bins: int = 10) -> list[Bin]:
    """Equal-width probability bins (the last closed): count, mean prediction, positives."""
    yt, pt = _arrays(y, p)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(pt, edges[1:-1], right=False), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        count = int(mask.sum())
        out.append(Bin(float(edges[b]), float(edges[b + 1]), count,
                       float(pt[mask].mean()) if count else float("nan"),
                       float(yt[mask].mean()) if count else float("nan")))  # fmt: skip
    return out


def expected_calibration_error(bins: list[Bin]) -> float:
    total = sum(b.count for b in bins)
    if not total:
        return float("nan")
    return float(sum(b.count * abs(b.mean_predicted - b.fraction_positive)
                     for b in bins if b.count) / total)  # fmt: skip


def binary_report(
    y_test: ArrayLike,
    p_test: ArrayLike,
    *,
    threshold: float,
    bootstrap: int = 1000,
    seed: int = 0,
    groups: ArrayLike | None = None,
) -> dict[str, Any]:
    """Every test metric as JSON values (NaN as None). ``groups`` (the patient of each
    sample): the AUC interval resamples patients, not images (:func:`bootstrap_auc_ci`)."""
    yt, pt = _arrays(y_test, p_test)
    lo, hi = bootstrap_auc_ci(yt, pt, n=bootstrap, seed=seed, groups=groups)
    sens, spec = sensitivity_specificity(yt, pt, threshold)
    bins = reliability(yt, pt)
    report = {
        "n": len(yt), "positives": int(yt.sum()), "auc": roc_auc(yt, pt),
        "auc_ci95": [lo, hi], "auc_ci_resampled": "image" if groups is None else "patient",
        "threshold": threshold, "sensitivity": sens,
        "specificity": spec, "brier": brier(yt, pt),
        "ece": expected_calibration_error(bins),
        "reliability": [asdict(b) for b in bins],
    }  # fmt: skip
    safe: dict[str, Any] = _json_safe(report)
    return safe


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return None if np.isnan(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


# -- plots ---------------------------------------------------------------------------------
def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def roc_png(y: ArrayLike, s: ArrayLike, *, title: str = "ROC (test)") -> bytes:
    from matplotlib.figure import Figure

    fpr, tpr, _ = roc_curve(y, s)
    fig = Figure(figsize=(4.5, 4.5), layout="tight")
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, lw=2, label=f"AUC {roc_auc(y, s):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right")
    return _png(fig)


def calibration_png(y: ArrayLike, p: ArrayLike, *, title: str = "Calibration (test)") -> bytes:
    from matplotlib.figure import Figure

    bins = [b for b in reliability(y, p) if b.count]
    fig = Figure(figsize=(4.5, 4.5), layout="tight")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
    ax.plot([b.mean_predicted for b in bins], [b.fraction_positive for b in bins], "o-",
            label=f"Brier {brier(y, p):.3f}")  # fmt: skip
    ax.set(xlabel="mean predicted probability", ylabel="fraction positive", title=title,
           xlim=(0, 1), ylim=(0, 1))  # fmt: skip
    ax.legend(loc="upper left")
    return _png(fig)
