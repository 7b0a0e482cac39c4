"""The generator at the sizes later issues need: ≥ 2,000 chest X-rays at ≥ 128 px for training
(distinct images, every finding represented), and a plan that is the same for a patient
whatever the hospital's size (a 100k metadata-only hospital is the big run of the same plan)."""

from __future__ import annotations

import hashlib
import itertools
from collections import Counter

import numpy as np
import pytest

from medflow.synthetic.imaging import chest_xray
from medflow.synthetic.plan import plan_hospital, plan_patient

pytestmark = pytest.mark.slow


def test_two_thousand_chest_xrays_at_128_px() -> None:
    studies = (
        (plan, study)
        for plan in (plan_patient(0, i) for i in itertools.count())
        for study in plan.studies
        if study.modality == "CR"
    )
    digests, findings = set(), Counter[str]()
    for plan, study in itertools.islice(studies, 2000):
        pixels = chest_xray(plan, study, size=128)
        assert pixels.shape == (128, 128) and pixels.dtype == np.uint16
        assert 0 < int(pixels.max()) <= 4095 and float(pixels.std()) > 50
        digests.add(hashlib.sha256(pixels.tobytes()).hexdigest())
        findings[study.finding or "normal"] += 1
    assert len(digests) == 2000  # no two images alike
    assert set(findings) >= {"normal", "pneumothorax", "consolidation"}
    assert all(n >= 50 for n in findings.values()), findings  # enough of each class to train


def test_a_small_hospital_is_a_prefix_of_a_large_one() -> None:
    """Patient i is the same in every hospital of the seed, whatever its size: patient 99,999
    of a 100k hospital is planned alone, and a 300-patient run is the start of a larger one."""
    assert plan_hospital(7, 300) == plan_hospital(7, 500)[:300]
    last = plan_patient(7, 99_999)
    assert last == plan_patient(7, 99_999) and last.mrn.endswith("0099999")
    uids = [s.study_uid for i in (0, 50_000, 99_999) for s in plan_patient(7, i).studies]
    assert len(uids) == len(set(uids))
