"""Cohort evaluation over stand-in services: attrition in the definition's order, and/or/not,
temporal pairs, restriction to the candidates, collect, MRNs and studies."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, date, datetime
from typing import Any

from medflow.cohort.schema import parse_definition
from medflow.cohort.service import CohortService
from medflow.fhir.search_index import IndexedMatch
from medflow.store.service import StudyMatch

PATIENTS = {f"p{i}": (f"MRN{i}", date(1950 + i, 1, 1)) for i in range(10)}
"""id -> (MRN, birth date): p0 is the oldest."""
CONDITIONS = {
    "c1": ("p1", "C40.2", date(2026, 1, 1)),
    "c2": ("p2", "C41.0", date(2020, 1, 1)),
    "c3": ("p3", "C40.9", date(2026, 6, 1)),
    "c8": ("p8", "J18.9", date(2026, 2, 1)),
}
STUDIES = [StudyMatch("1.1", "MRN1", "20260110", "A1", "MR KNEE", ("MR",), ("KNEE",), 24),
           StudyMatch("1.3", "MRN3", "20261001", "A3", "MR KNEE", ("MR",), ("KNEE",), 24),
           StudyMatch("1.8", "MRN8", "20260201", "A8", "XR", ("CR",), ("CHEST",), 1)]  # fmt: skip


def _at(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class FakeFhir:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, Any]] = []

    def type_counts(self, *, resource_types: Collection[str]) -> dict[str, int]:
        return {"Patient": len(PATIENTS)}

    def codes_with_prefix(self, *, resource_type: str, param: str, system: str,
                          prefixes: Sequence[str]) -> list[str]:  # fmt: skip
        return sorted({c for _, c, _ in CONDITIONS.values() if c.startswith(tuple(prefixes))})

    def search_index(self, *, resource_type: str, params: Sequence[tuple[str, str]],
                     subjects: Collection[str] | None = None, ids: Collection[str] | None = None,
                     **_: Any) -> list[IndexedMatch]:  # fmt: skip
        self.calls.append((resource_type, subjects, ids))
        query = dict(params)
        if resource_type == "Patient":
            born = query.get("birthdate", "le9999-12-31").removeprefix("le")
            return [IndexedMatch(pid, codes=(("urn:medflow:mrn", mrn),))
                    for pid, (mrn, birth) in PATIENTS.items()
                    if birth.isoformat() <= born and (ids is None or pid in ids)]  # fmt: skip
        if resource_type == "Condition":
            codes = {v.split("|")[1] for v in query.get("code", "").split(",") if v}
            low = next((v[2:] for n, v in params if n == "onset-date" and v[:2] == "ge"), "")
            return [IndexedMatch(cid, (pid,), (_at(onset),))
                    for cid, (pid, code, onset) in CONDITIONS.items()
                    if code in codes and onset.isoformat() >= low
                    and (subjects is None or pid in subjects)]  # fmt: skip
        return [IndexedMatch(f"m{pid}", (pid,)) for pid in ("p1", "p2", "p3")
                if subjects is None or pid in subjects]  # fmt: skip


class FakeStore:
    def find_studies(self, *, patient_ids: Collection[str] | None = None,
                     modalities: Sequence[str] = (), **_: Any) -> list[StudyMatch]:  # fmt: skip
        return [s for s in STUDIES if (patient_ids is None or s.patient_id in patient_ids)
                and (not modalities or set(s.modalities) & set(modalities))]  # fmt: skip


def evaluate(*criteria: Any, collect: Any = ()) -> tuple[Any, FakeFhir]:
    fhir = FakeFhir()
    service = CohortService(store=FakeStore(), fhir=fhir)  # type: ignore[arg-type]
    definition = parse_definition(
        {
            "name": "t",
            "evaluation_date": "2026-11-01",
            "criteria": list(criteria),
            "collect": list(collect),
        }
    )
    return service.evaluate(definition), fhir


BONE = {"label": "bone cancer", "condition": {"codes": [{"system": "icd10",
                                                        "prefixes": ["C40", "C41"]}]}}  # fmt: skip
RECENT = {"condition": {"codes": [{"system": "icd10", "prefixes": ["C40"]}],
                        "onset": {"within": "2y"}}}  # fmt: skip
OLD = {"label": "older than 70", "demographics": {"age": {"min": 71}}}
MR = {"imaging": {"modality": ["MR"]}}


def test_attrition_follows_the_definition_order() -> None:
    result, _ = evaluate(OLD, BONE, RECENT)
    # born 1950-1955 are 71+ on 2026-11-01: p0..p5; bone cancer: p1, p2, p3; recent: p1, p3
    assert [(s.criterion, s.patients) for s in result.attrition] == [
        ("all patients", 10), ("older than 70", 6), ("bone cancer", 3),
        ("condition {\"codes\":[{\"system\":\"http://hl7.org/fhir/sid/icd-10-cm\",\"prefixes\":"
         "[\"C40\"]}],\"onset\":{\"within\":\"2y\"}}", 2),
    ]  # fmt: skip
    assert [(p.patient_id, p.mrn) for p in result.patients] == [("p1", "MRN1"), ("p3", "MRN3")]
    assert result.patients[0].resources == {"Condition": ["c1"]}


def test_few_candidates_are_named_in_the_searches() -> None:
    _, fhir = evaluate(OLD, BONE)
    condition_call = next(c for c in fhir.calls if c[0] == "Condition")
    assert condition_call[1] == {f"p{i}" for i in range(6)}


def test_and_or_not() -> None:
    either, _ = evaluate({"or": [RECENT, {"imaging": {"modality": ["CR"]}}]})
    assert [p.patient_id for p in either.patients] == ["p1", "p3", "p8"]
    neither, _ = evaluate({"not": {"or": [BONE, MR]}})
    assert {p.patient_id for p in neither.patients} == {f"p{i}" for i in (0, 4, 5, 6, 7, 8, 9)}
    both, _ = evaluate({"and": [BONE, {"not": MR}]}, OLD)
    assert [p.patient_id for p in both.patients] == ["p2"]
    assert [s.patients for s in both.attrition] == [10, 1, 1]


def test_temporal_pairs_and_collect() -> None:
    after = {"temporal": {"anchor": BONE, "event": MR, "days_after": {"min": 0, "max": 30}}}
    result, _ = evaluate(after, collect=[{"medication": {}}])
    (p1,) = result.patients  # p3's MR is 122 days after onset
    assert p1.patient_id == "p1" and p1.studies == ["1.1"]
    assert p1.resources == {"Condition": ["c1"], "MedicationRequest": ["mp1"]}
