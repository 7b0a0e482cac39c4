"""Kaplan-Meier estimates against a hand-computed example (ties, censoring, Greenwood's
variance, log-log intervals), the SVG plot, and the pure parts of the outcome table."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from datetime import date
from statistics import NormalDist
from typing import Any

import pytest

from medflow.cohort.outcomes import (
    PatientOutcome,
    disease_status,
    fhir_day,
    group_label,
    ingredient,
    main_condition,
    outcome_table,
    procedure_kind,
)
from medflow.cohort.schema import parse_definition
from medflow.cohort.survival import kaplan_meier, km_svg

SVG = "{http://www.w3.org/2000/svg}"
# 8 subjects: an event at 1; two events and a censoring tied at 2; an event at 3; an event
# and a censoring tied at 4; a censoring at 5.
DURATIONS = [2.0, 1.0, 2.0, 4.0, 3.0, 2.0, 4.0, 5.0]
EVENTS = [True, True, False, True, True, True, False, False]
# by hand: t, at risk, events, censored, S(t), Greenwood sum d / (n (n - d))
HAND = [
    (1.0, 8, 1, 0, 7 / 8, 1 / 56),
    (2.0, 7, 2, 1, 7 / 8 * 5 / 7, 1 / 56 + 2 / 35),
    (3.0, 4, 1, 0, 5 / 8 * 3 / 4, 1 / 56 + 2 / 35 + 1 / 12),
    (4.0, 3, 1, 1, 15 / 32 * 2 / 3, 1 / 56 + 2 / 35 + 1 / 12 + 1 / 6),
    (5.0, 1, 0, 1, 5 / 16, 1 / 56 + 2 / 35 + 1 / 12 + 1 / 6),
]


def test_estimate_by_hand_with_ties_and_censoring() -> None:
    curve = kaplan_meier(DURATIONS, EVENTS)
    assert curve.n == 8 and curve.total_events == 5
    assert curve.time.tolist() == [t for t, *_ in HAND]
    assert curve.at_risk.tolist() == [n for _, n, *_ in HAND]
    assert curve.events.tolist() == [d for _, _, d, *_ in HAND]
    assert curve.censored.tolist() == [c for *_, c, _, _ in HAND]
    assert curve.survival.tolist() == pytest.approx([s for *_, s, _ in HAND])
    # Greenwood: Var S(t) = S(t)^2 * sum d / (n (n - d)); at 2 years 25/64 * 3/40
    assert curve.variance.tolist() == pytest.approx([s * s * g for *_, s, g in HAND])
    assert curve.variance[1] == pytest.approx(75 / 2560)


def test_loglog_interval() -> None:
    curve = kaplan_meier(DURATIONS, EVENTS, alpha=0.05)
    z = NormalDist().inv_cdf(0.975)
    for k, (*_, s, g) in enumerate(HAND):
        se = math.sqrt(g) / abs(math.log(s))
        assert curve.lower[k] == pytest.approx(s ** math.exp(z * se))
        assert curve.upper[k] == pytest.approx(s ** math.exp(-z * se))
        assert 0 <= curve.lower[k] <= s <= curve.upper[k] <= 1
    wider = kaplan_meier(DURATIONS, EVENTS, alpha=0.01)
    assert all(wider.lower <= curve.lower) and all(wider.upper >= curve.upper)


def test_reading_the_curve() -> None:
    curve = kaplan_meier(DURATIONS, EVENTS)
    assert curve.at(0.5) == 1.0 and curve.at(-1) == 1.0
    assert curve.at(1.0) == pytest.approx(7 / 8)  # right-continuous
    assert curve.at(3.99) == pytest.approx(15 / 32)
    assert curve.at(5.0) == pytest.approx(5 / 16)
    assert curve.at(5.01) is None  # nobody followed that long
    assert curve.interval_at(0.5) == (1.0, 1.0) and curve.interval_at(6) is None
    assert curve.counts_at(2.0) == (4, 3, 1)  # at risk after 2, events, censored
    assert curve.counts_at(10.0) == (0, 5, 3)


def test_edge_cases() -> None:
    everyone = kaplan_meier([1, 2, 2], [True, True, True])
    assert everyone.survival.tolist() == pytest.approx([2 / 3, 0.0])
    assert everyone.variance[-1] == 0 and everyone.lower[-1] == everyone.upper[-1] == 0
    assert everyone.at(10) == 0.0  # past the last time, S stays 0
    nobody = kaplan_meier([1, 3], [False, False])
    assert nobody.survival.tolist() == [1.0, 1.0] and nobody.variance.tolist() == [0.0, 0.0]
    empty = kaplan_meier([], [])
    assert empty.n == 0 and empty.at(1) is None and empty.last_time == 0
    zero = kaplan_meier([0, 0, 1], [True, False, False])
    assert zero.survival.tolist() == pytest.approx([2 / 3, 2 / 3])
    for bad in (([-1.0], [True]), ([1.0, 2.0], [True]), ([math.nan], [True])):
        with pytest.raises(ValueError):
            kaplan_meier(*bad)


def test_svg_is_xml_with_one_path_per_group() -> None:
    curves = {
        "surgery <& chemo>": kaplan_meier(DURATIONS, EVENTS),
        "none": kaplan_meier([0.5, 3.0], [False, True]),
        "all": kaplan_meier([1, 2], [True, True]),
    }
    text = km_svg(curves, title='Overall "survival"')
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    paths = root.findall(f".//{SVG}path")
    assert len(paths) == 3
    assert [p.get("data-group") for p in paths] == list(curves)
    assert all(p.get("d", "").startswith("M") for p in paths)
    legend = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "km-legend"]
    assert legend[0] == "surgery <& chemo> (n=8, events=5)"
    assert len(root.findall(f".//{SVG}polygon")) == 3  # confidence bands
    censored = [x for x in root.iter(f"{SVG}line") if x.get("class") == "km-censor"]
    assert len(censored) == 3 + 1  # at 2, 4, 5 for the first curve; at 0.5 for the second
    assert len(ET.fromstring(km_svg(curves, ci=False)).findall(f".//{SVG}polygon")) == 0


def test_svg_without_curves() -> None:
    root = ET.fromstring(km_svg({}))
    assert not root.findall(f".//{SVG}path")
    assert any(t.text == "no data" for t in root.iter(f"{SVG}text"))


# -- the pure parts of the outcome table -------------------------------------------------------
SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"


def concept(system: str, code: str, display: str = "", text: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [{"system": system, "code": code, "display": display}]}
    return {**out, "text": text} if text else out


def test_procedure_kinds_ingredients_statuses() -> None:
    assert procedure_kind({"code": concept(SNOMED, "367336001", "Chemotherapy")}) == "chemotherapy"
    assert procedure_kind({"code": concept(SNOMED, "173171007", "Lobectomy")}) == "surgery"
    assert procedure_kind({"code": concept(SNOMED, "86273004", "Biopsy")}) is None
    assert procedure_kind({"code": concept("urn:x", "1", "Total mastectomy")}) == "surgery"
    assert procedure_kind({"code": {"text": "Stereotactic radiation"}}) == "radiotherapy"
    assert (
        procedure_kind({"code": concept(SNOMED, "264957007", "Pleural drain")}) == "pleural drain"
    )
    rx = "http://www.nlm.nih.gov/research/umls/rxnorm"
    assert ingredient(concept(rx, "2555", "Cisplatin")) == "cisplatin"
    assert ingredient({"text": "Tamoxifen 20 mg"}) == "tamoxifen 20 mg"
    assert ingredient({}) is None
    status = {"valueCodeableConcept": concept(SNOMED, "271299001", "worsened")}
    assert disease_status(status) == "progression"
    assert disease_status({"valueCodeableConcept": {"text": "?"}}) == "unknown"
    assert fhir_day("2024-03-05T12:00:00Z") == date(2024, 3, 5)
    assert fhir_day("2024-03") == date(2024, 3, 1) and fhir_day("x") is None


def test_main_condition_prefers_a_current_neoplasm() -> None:
    pneumonia = {"code": concept(ICD10, "J18.9"), "onsetDateTime": "2026-01-01"}
    cancer = {"code": concept(ICD10, "C34.90"), "onsetDateTime": "2024-01-01",
              "clinicalStatus": concept("x", "active")}  # fmt: skip
    refuted = {"code": concept(ICD10, "C50.919"),
               "verificationStatus": concept("x", "refuted")}  # fmt: skip
    assert main_condition([pneumonia, refuted, cancer]) is cancer
    assert main_condition([pneumonia]) is pneumonia
    assert main_condition([refuted, {"code": {"text": "no code"}}]) is None


def outcome(pid: str, procs: tuple[str, ...], regimen: tuple[str, ...], status: str,
            years: float | None, died: bool) -> PatientOutcome:  # fmt: skip
    day = date(2020, 1, 1)
    return PatientOutcome(pid, None, day, procs, regimen, status, None, day if died else None,
                          died, day, years)  # fmt: skip


def test_outcome_table_groups_and_counts() -> None:
    definition = parse_definition({"name": "t", "evaluation_date": "2026-11-01", "criteria": [
        {"demographics": {"age": {"min": 1}}}]})  # fmt: skip
    map_ = (("surgery", "chemotherapy"), ("cisplatin", "doxorubicin", "methotrexate"))
    patients = [
        outcome("a", *map_, "remission", 3.0, False),
        outcome("b", *map_, "progression", 0.5, True),
        outcome("c", *map_, "stable", 1.5, False),
        outcome("d", (), (), "unknown", None, False),
    ]
    table = outcome_table(definition, "index", patients)
    label = "surgery + chemotherapy with cisplatin + doxorubicin + methotrexate"
    assert [r.group for r in table.rows] == [label, "no recorded treatment"]
    row = table.rows[0]
    assert row.n == 3 and row.deaths == 1
    assert row.statuses["remission"] == row.statuses["progression"] == row.statuses["stable"] == 1
    one, two, five = row.survival
    assert one.survival == pytest.approx(2 / 3) and (one.at_risk, one.events) == (2, 1)
    assert two.survival == pytest.approx(2 / 3) and two.censored == 1
    assert five.survival is None  # follow-up too short
    assert set(table.curves) == {label}  # no diagnosis date: no curve
    assert table.overall.n == 4 and table.overall.statuses["unknown"] == 1
    data = table.to_dict()
    assert data["index_patient"] == "index" and data["rows"][0]["survival"][2]["survival"] is None
    assert data["curves"][label]["survival"] == pytest.approx([2 / 3] * 3, abs=1e-4)
    assert group_label((), ("amoxicillin",)) == "amoxicillin"
