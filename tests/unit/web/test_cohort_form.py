"""The builder's form as data: a saved definition is shown in the form only when the form makes
it back exactly; criteria it has no field for are refused with a reason, never dropped."""

from __future__ import annotations

from typing import Any

import pytest

from medflow.cohort.schema import parse_definition
from medflow.web.cohort_form import FIELDS, form_definition, form_fields


def _def(*criteria: dict[str, Any], collect: list[dict[str, Any]] | None = None) -> Any:
    return parse_definition({
        "name": "c", "evaluation_date": "2026-11-01", "criteria": list(criteria),
        "collect": [{"label": "studies", "imaging": {}}] if collect is None else collect,
    })  # fmt: skip


def _strip(value: Any) -> Any:
    """Without the labels (the form writes its own)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k != "label"}
    return [_strip(v) for v in value] if isinstance(value, list) else value


AGE = {"demographics": {"age": {"min": 45}}}
GENDER = {"demographics": {"gender": ["female"]}}
DX = {"condition": {"codes": [{"system": "icd10", "codes": ["C40.0"], "prefixes": ["C41"]}],
                    "onset": {"within": "2y"}}}  # fmt: skip
DX_DATES = {"condition": {"codes": [{"system": "snomed", "codes": ["254626006"]}],
                          "onset": {"from": "2024-01-01", "to": "2025-12-31"}}}  # fmt: skip
MED = {"medication": {"codes": [{"system": "rxnorm", "codes": ["2555", "3639"]}]}}
IMG = {"imaging": {"modality": ["CT"], "date": {"from": "2025-01-01"}}}


@pytest.mark.parametrize("criteria", [
    [AGE], [AGE, GENDER, DX, MED, IMG], [DX_DATES], [{"or": [AGE, DX, IMG]}], [GENDER, MED],
])  # fmt: skip
def test_round_trip(criteria: list[dict[str, Any]]) -> None:
    saved = _def(*criteria)
    fields, why = form_fields(saved)
    assert why is None and fields is not None and set(fields) == set(FIELDS)
    rebuilt = parse_definition(form_definition(fields))
    assert rebuilt.model_dump(exclude={"criteria"}) == saved.model_dump(exclude={"criteria"})
    assert [_strip(c.model_dump()) for c in rebuilt.criteria] == [
        _strip(c.model_dump()) for c in saved.criteria]  # fmt: skip


def test_fields_of_the_full_form() -> None:
    fields, _ = form_fields(_def({"or": [AGE, DX, MED, IMG]}))
    assert fields is not None
    assert (fields["combine"], fields["age_min"], fields["age_max"]) == ("or", "45", "")
    assert fields["condition_system"] == "icd10" and fields["condition_codes"] == "C40.0"
    assert fields["condition_prefixes"] == "C41" and fields["onset_within"] == "2y"
    assert fields["medication_codes"] == "2555, 3639" and fields["modality"] == "CT"
    assert fields["imaging_from"] == "2025-01-01" and fields["imaging_to"] == ""
    both, _ = form_fields(_def(AGE))
    assert both is not None and both["medication_codes"] == "" and both["combine"] == "and"


@pytest.mark.parametrize(("criteria", "collect"), [
    ([{"condition": {**DX["condition"], "clinical_status": ["active"]}}], None),
    ([{"procedure": {"codes": [{"system": "snomed", "codes": ["1"]}]}}], None),
    ([{"not": AGE}], None),
    ([DX, DX_DATES], None),
    ([{"demographics": {"age": {"min": 45}, "gender": ["male"]}}], None),  # one criterion, two
    ([{"condition": {"codes": [{"system": "loinc", "codes": ["1"]}]}}], None),
    ([{"condition": {"codes": DX["condition"]["codes"], "onset": {"from": "-730d"}}}], None),
    ([{"imaging": {"modality": ["CT", "MR"]}}], None),
    ([{"medication": {"codes": MED["medication"]["codes"], "resource": ["MedicationStatement"]}}],
     None),
    ([IMG, AGE], None),  # the form's order is demographics, diagnosis, medication, imaging
    ([AGE], [{"imaging": {"modality": ["CT"], "with_reports": True}}]),
    ([{"and": [AGE, DX]}], None),
])  # fmt: skip
def test_refused(criteria: list[dict[str, Any]], collect: list[dict[str, Any]] | None) -> None:
    fields, why = form_fields(_def(*criteria, collect=collect))
    assert fields is None and why


def test_empty_form_makes_nothing() -> None:
    assert form_definition(dict.fromkeys(FIELDS, "")) is None
