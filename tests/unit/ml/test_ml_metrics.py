"""Metric functions against values computed by hand, and the plots."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from medflow.core.errors import InvalidInput
from medflow.ml.train.metrics import (
    binary_report,
    bootstrap_auc_ci,
    brier,
    calibration_png,
    expected_calibration_error,
    operating_point,
    reliability,
    roc_auc,
    roc_png,
    sensitivity_specificity,
)

Y = [0, 0, 1, 1]
S = [0.1, 0.4, 0.35, 0.8]


def test_auc_by_hand() -> None:
    # pairs (pos, neg): (.35,.1) yes, (.35,.4) no, (.8,.1) yes, (.8,.4) yes -> 3/4
    assert roc_auc(Y, S) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts one half
    assert roc_auc([0, 1, 1], [0.2, 0.2, 0.9]) == pytest.approx(0.75)
    assert roc_auc([1, 0], [0.9, 0.1]) == 1.0
    assert roc_auc([1, 0], [0.1, 0.9]) == 0.0
    assert np.isnan(roc_auc([1, 1], [0.1, 0.9]))


def test_auc_matches_pairwise_count() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = np.round(rng.random(60), 1)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    pairs = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)]
    assert roc_auc(y, s) == pytest.approx(sum(pairs) / len(pairs))


def test_bootstrap_interval_is_sane() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = y * 0.8 + rng.normal(0, 0.6, 400)
    auc = roc_auc(y, s)
    lo, hi = bootstrap_auc_ci(y, s, n=300, seed=1)
    assert 0.0 <= lo < auc < hi <= 1.0
    assert hi - lo < 0.15
    small = bootstrap_auc_ci(y[:40], s[:40], n=300, seed=1)
    assert small[1] - small[0] > hi - lo  # fewer cases, wider
    assert bootstrap_auc_ci(y, s, n=300, seed=1) == (lo, hi)  # seeded


def _patients(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One label and one score per patient (ids P000, P001, ... in sorted order)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, count)
    s = y * 0.7 + rng.normal(0, 0.6, count)
    return np.array([f"P{i:03d}" for i in range(count)]), y, s


def test_bootstrap_by_patient_keeps_a_patients_images_together() -> None:
    """With ``groups`` a resample draws whole patients: ten identical images per patient, in
    any order, give exactly the interval of one image per patient resampled image by image
    (AUC is unchanged by repeating every case ten times); resampled image by image they look
    like ten times the evidence and give a much narrower, overconfident interval."""
    ids, y, s = _patients(40, seed=2)
    per_patient = bootstrap_auc_ci(y, s, n=400, seed=9)
    order = np.random.default_rng(5).permutation(400)
    ids10, y10, s10 = (np.repeat(a, 10)[order] for a in (ids, y, s))
    clustered = bootstrap_auc_ci(y10, s10, n=400, seed=9, groups=ids10)
    assert clustered == pytest.approx(per_patient)
    naive = bootstrap_auc_ci(y10, s10, n=400, seed=9)
    assert (clustered[1] - clustered[0]) > 2 * (naive[1] - naive[0])
    assert naive[0] < roc_auc(y10, s10) < naive[1]
    assert bootstrap_auc_ci(y10, s10, n=400, seed=9, groups=ids10) == clustered  # seeded
    assert bootstrap_auc_ci(y10, s10, n=400, seed=10, groups=ids10) != clustered


def test_bootstrap_groups_of_single_images_is_the_plain_bootstrap() -> None:
    ids, y, s = _patients(60, seed=4)
    assert bootstrap_auc_ci(y, s, n=200, seed=1, groups=ids) == bootstrap_auc_ci(
        y, s, n=200, seed=1
    )
    with pytest.raises(InvalidInput, match="groups"):
        bootstrap_auc_ci(y, s, groups=ids[:-1])
    report = binary_report(y, s, threshold=0.35, bootstrap=50, groups=ids)
    assert report["auc_ci_resampled"] == "patient"
    assert binary_report(y, s, threshold=0.35, bootstrap=50)["auc_ci_resampled"] == "image"


def test_operating_points_and_rates() -> None:
    # thresholds: .8 (tpr .5, fpr 0), .4 (.5, .5), .35 (1, .5), .1 (1, 1): Youden's J .5 first
    assert operating_point(Y, S) == pytest.approx(0.8)
    assert operating_point(Y, S, target_sensitivity=1.0) == pytest.approx(0.35)
    assert sensitivity_specificity(Y, S, 0.35) == (1.0, 0.5)
    assert sensitivity_specificity(Y, S, 0.8) == (0.5, 1.0)
    assert sensitivity_specificity(Y, S, 0.9) == (0.0, 1.0)


def test_brier_and_reliability() -> None:
    assert brier([0, 1], [0.2, 0.7]) == pytest.approx((0.04 + 0.09) / 2)
    assert brier([0, 1], [0.0, 1.0]) == 0.0
    bins = reliability([0, 1, 1, 0, 1], [0.05, 0.15, 0.95, 0.92, 1.0], bins=10)
    assert [b.count for b in bins] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 3]
    assert bins[9].mean_predicted == pytest.approx((0.95 + 0.92 + 1.0) / 3)
    assert bins[9].fraction_positive == pytest.approx(2 / 3)
    # ECE: (1*|.05-0| + 1*|.15-1| + 3*|.9567-.6667|) / 5
    expected = (0.05 + 0.85 + 3 * abs((0.95 + 0.92 + 1.0) / 3 - 2 / 3)) / 5
    assert expected_calibration_error(bins) == pytest.approx(expected)


def test_report_and_plots() -> None:
    report = binary_report(Y, S, threshold=0.35, bootstrap=50)
    assert report["auc"] == 0.75
    assert report["sensitivity"] == 1.0
    assert report["specificity"] == 0.5
    assert report["n"] == 4
    assert len(report["reliability"]) == 10
    assert roc_png(Y, S).startswith(b"\x89PNG")
    assert calibration_png(Y, S).startswith(b"\x89PNG")


def test_bad_inputs() -> None:
    with pytest.raises(InvalidInput):
        roc_auc([0, 1], [0.1])
    with pytest.raises(InvalidInput):
        roc_auc([0, 2], [0.1, 0.2])
