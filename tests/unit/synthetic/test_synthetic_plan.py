"""The synthetic hospital's plan: deterministic per (seed, index), a prefix of a larger run,
plausible (ages, sexes, dates before the hospital's "now"), and with the mix of findings the
later issues need (malignant and benign lesions, chest X-ray findings, normals)."""

from __future__ import annotations

from collections import Counter

from pydicom.uid import UID

from medflow.synthetic.plan import TODAY, plan_hospital, plan_patient


def test_plans_are_deterministic_and_prefixes() -> None:
    assert plan_hospital(7, 30) == plan_hospital(7, 30)
    assert plan_hospital(7, 50)[:30] == plan_hospital(7, 30)
    assert plan_patient(7, 3) != plan_patient(8, 3)


def test_plans_are_plausible() -> None:
    plans = plan_hospital(0, 400)
    assert len({p.mrn for p in plans}) == 400
    studies = [s for p in plans for s in p.studies]
    assert len({s.accession for s in studies}) == len(studies)
    assert len({s.study_uid for s in studies}) == len(studies)
    assert all(UID(s.study_uid).is_valid for s in studies)
    for p in plans:
        assert 8 <= p.age <= 90 and p.sex in "FM"
        assert all(s.day <= TODAY for s in p.studies)
        if p.disease.sex is not None:
            assert p.sex == p.disease.sex
        assert p.age >= p.disease.min_age
        if p.outcome == "death":
            assert p.outcome_day is not None
            assert all(s.day <= p.outcome_day for s in p.studies[1:])
        if p.biopsy is not None:
            assert p.onset is not None and p.onset <= p.biopsy <= TODAY
    findings = Counter(s.finding for s in studies)
    assert {"lesion-malignant", "lesion-benign", "pneumothorax", "consolidation", ""} <= set(
        findings
    )
    chest_xrays = [s for s in studies if s.modality == "CR"]
    positives = sum(1 for s in chest_xrays if s.finding)
    assert 0.4 < positives / len(chest_xrays) < 0.9  # both classes for a classifier
