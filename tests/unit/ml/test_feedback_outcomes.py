"""How an outcome is decided for a study (issue 11, feedback loop): the order of the sources,
the time window, abatement, follow-up, and the readers' majority."""

from __future__ import annotations

from datetime import date, timedelta

from medflow.ml.feedback.outcomes import Fact, Read, Rules, decide
from medflow.ml.feedback.service import confusion, period

DAY = date(2026, 3, 10)
RULES = Rules(before_days=7, after_days=90, followup_days=90, as_of=date(2026, 11, 1))


def fact(
    source: str, positive: bool, days: int, until: int | None = None, ref: str = "X/1"
) -> Fact:
    return Fact("p1", source, positive, DAY + timedelta(days=days),
                None if until is None else DAY + timedelta(days=until), ref)  # fmt: skip


def read(positive: bool, reader: str = "Doe^Jane", days: int = 0) -> Read:
    return Read(
        "1.2.3", "p1", reader, positive, DAY + timedelta(days=days), f"Observation/{reader}"
    )


def test_pathology_comes_first_and_a_positive_report_wins() -> None:
    facts = [fact("condition", False, 2), fact("pathology", False, 5, ref="DiagnosticReport/1"),
             fact("pathology", True, 30, ref="DiagnosticReport/2")]  # fmt: skip
    outcome = decide(study_day=DAY, facts=facts, reads=[read(False)], rules=RULES)
    assert outcome is not None and outcome.positive and outcome.source == "pathology"
    assert outcome.reference == "DiagnosticReport/2"


def test_a_pathology_report_without_the_finding_is_negative() -> None:
    outcome = decide(study_day=DAY, facts=[fact("pathology", False, 10)], reads=(), rules=RULES)
    assert outcome is not None and not outcome.positive and outcome.source == "pathology"


def test_a_confirmed_condition_in_the_window_is_positive_unless_abated_before() -> None:
    assert decide(study_day=DAY, facts=[fact("condition", True, 0)], reads=(),
                  rules=RULES).positive  # type: ignore[union-attr]  # fmt: skip
    # onset a year before, resolved a month before the study: this study does not show it
    old = fact("condition", True, -365, until=-30)
    outcome = decide(study_day=DAY, facts=[old], reads=(), rules=RULES)
    assert outcome is not None and not outcome.positive and outcome.source == "follow-up"
    # outside the window (diagnosed 200 days after): not this study's outcome, and it is
    # after the follow-up interval, so the study counts negative
    late = decide(study_day=DAY, facts=[fact("condition", True, 200)], reads=(), rules=RULES)
    assert late is not None and late.source == "follow-up" and not late.positive


def test_a_refuted_condition_is_negative() -> None:
    outcome = decide(study_day=DAY, facts=[fact("condition", False, 3)], reads=(), rules=RULES)
    assert outcome is not None and not outcome.positive and outcome.source == "condition"


def test_readers_majority_then_the_latest_on_a_tie() -> None:
    votes = [read(True, "A"), read(True, "B"), read(False, "C")]
    outcome = decide(study_day=DAY, facts=(), reads=votes, rules=RULES)
    assert outcome is not None and outcome.positive and outcome.source == "reader"
    tie = [read(True, "A", days=0), read(False, "B", days=1)]
    assert not decide(study_day=DAY, facts=(), reads=tie, rules=RULES).positive  # type: ignore[union-attr]
    # a reader is never judged against readings
    alone = decide(study_day=DAY, facts=(), reads=votes, rules=RULES, use_reads=False)
    assert alone is not None and alone.source == "follow-up"


def test_follow_up_needs_the_interval_to_have_passed() -> None:
    recent = Rules(followup_days=90, as_of=DAY + timedelta(days=30))
    assert decide(study_day=DAY, facts=(), reads=(), rules=recent) is None
    never = Rules(followup_days=None, as_of=date(2030, 1, 1))
    assert decide(study_day=DAY, facts=(), reads=(), rules=never) is None
    # a positive fact within the follow-up interval but after the window: no negative
    facts = [fact("condition", True, 95)]
    assert decide(study_day=DAY, facts=facts,
                  reads=(), rules=Rules(after_days=90, followup_days=120, as_of=date(2030, 1, 1))
                  ) is None  # fmt: skip


def test_confusion_counts_rates_and_auc() -> None:
    truth = [True, True, False, False, False]
    called = [True, False, True, False, False]
    scores = [0.9, 0.4, 0.6, 0.2, 0.1]
    out = confusion(truth, called, scores, ["a", "b", "c", "d", "e"])
    assert (out["tp"], out["fn"], out["fp"], out["tn"]) == (1, 1, 1, 2)
    assert out["sensitivity"] == 0.5 and out["specificity"] == round(2 / 3, 6)
    assert out["ppv"] == 0.5 and out["npv"] == round(2 / 3, 6)
    assert out["auc"] == round(5 / 6, 6) and len(out["auc_ci95"]) == 2
    assert confusion([], [], [])["auc"] is None


def test_periods() -> None:
    assert period(date(2026, 5, 3), "month") == "2026-05"
    assert period(date(2026, 5, 3), "quarter") == "2026-Q2"
    assert period(date(2026, 5, 3), "year") == "2026"
    assert period(None, "month") == "unknown"
