"""Cohort definitions: validation errors (path + message), windows, offsets, queries."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from medflow.cohort.queries import demographics_params, fhir_queries, imaging_keys, value_params
from medflow.cohort.schema import (
    CodeSet,
    DefinitionError,
    Window,
    load_definition,
    parse_definition,
    shift,
)

TODAY = date(2026, 11, 1)
EXAMPLE = Path(__file__).parents[3] / "docs" / "examples" / "osteosarcoma.yaml"


def definition(*criteria: Any, **more: Any) -> dict[str, Any]:
    return {"name": "t", "evaluation_date": "2026-11-01", "criteria": list(criteria), **more}


def errors(data: Any) -> list[tuple[str, str]]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(data)
    return info.value.errors


def test_the_shipped_example_is_valid() -> None:
    d = load_definition(EXAMPLE)
    assert d.evaluation_date == TODAY
    assert [c.kind for c in d.criteria] == ["demographics", "condition"]
    assert [c.kind for c in d.collect] == ["medication", "imaging"]
    assert d.criteria[1].condition is not None
    assert d.criteria[1].condition.codes[0].system == "http://hl7.org/fhir/sid/icd-10-cm"


@pytest.mark.parametrize(
    ("criterion", "path", "words"),
    [
        ({"condition": {"codes": [{"system": "foo", "codes": ["x"]}]}},
         "criteria.0.condition.codes.0.system", "unknown code system 'foo'"),
        ({"condition": {"codes": [{"system": "icd10"}]}},
         "criteria.0.condition.codes.0", "needs codes or prefixes"),
        ({"condition": {"codes": []}}, "criteria.0.condition.codes", "at least 1"),
        ({"condition": {"codes": [{"system": "snomed", "codes": ["1"]}],
                        "onset": {"within": "2 years"}}},
         "criteria.0.condition.onset.within", "not an offset"),
        ({"condition": {"codes": [{"system": "snomed", "codes": ["1"]}],
                        "onset": {"within": "2y", "to": "0d"}}},
         "criteria.0.condition.onset", "either within or from/to"),
        ({"demographics": {"age": {"min": 50, "max": 40}}},
         "criteria.0.demographics.age", "min is greater than max"),
        ({"demographics": {"gender": ["robot"]}}, "criteria.0.demographics.gender.0", "male"),
        ({"imaging": {"sop_class": ["1.2.x"]}}, "criteria.0.imaging.sop_class", "not a UID"),
        ({"imaging": {}, "medication": {}}, "criteria.0", "exactly one of"),
        ({}, "criteria.0", "(found none)"),
        ({"imaging": {"modalty": ["CT"]}}, "criteria.0.imaging.modalty", "Extra inputs"),
        ({"temporal": {"anchor": {"demographics": {"gender": ["male"]}},
                       "event": {"imaging": {}}, "days_after": {"max": 30}}},
         "criteria.0.temporal", "anchor must be a dated criterion"),
        ({"and": [{"not": {"observation": {"codes": [{"system": "loinc", "codes": ["1"]}],
                                           "value": {}}}}]},
         "criteria.0.and.0.not.observation.value", "needs min or max"),
    ],
)  # fmt: skip
def test_validation_errors_name_the_path(criterion: Any, path: str, words: str) -> None:
    found = errors(definition(criterion))
    assert any(p == path and words in m for p, m in found), found


def test_top_level_errors() -> None:
    found = dict(errors({"name": "", "evaluation_date": "soon", "criteria": []}))
    assert set(found) == {"name", "evaluation_date", "criteria"}
    found = dict(errors(definition({"imaging": {}}, collect=[{"not": {"imaging": {}}}])))
    assert "collect" in found and "not is not allowed" in found["collect"]


def test_yaml_errors_are_definition_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(DefinitionError, match="not valid JSON/YAML"):
        load_definition(bad)


def test_offsets_and_windows() -> None:
    assert shift(date(2024, 2, 29), "-1y") == date(2023, 2, 28)
    assert shift(date(2026, 3, 31), "-1m") == date(2026, 2, 28)
    assert shift(TODAY, "-730d") == date(2024, 11, 1)
    assert shift(TODAY, "+2w") == date(2026, 11, 15)
    within = Window.model_validate({"within": "2y"})
    assert within.resolve(TODAY) == (date(2024, 11, 1), TODAY)
    both = Window.model_validate({"from": "-730d", "to": "0d"})
    assert both.resolve(TODAY) == (date(2024, 11, 1), TODAY)
    fixed = Window.model_validate({"from": "2020-01-01"})
    assert fixed.resolve(TODAY) == (date(2020, 1, 1), None)


def test_age_bounds_are_completed_years() -> None:
    d = parse_definition(definition({"demographics": {"age": {"min": 46, "max": 60},
                                                      "gender": ["female"]}}))  # fmt: skip
    assert d.criteria[0].demographics is not None
    params = demographics_params(d.criteria[0].demographics, TODAY)
    # 46 on the evaluation date: born on or before 1980-11-01; at most 60: born after
    # 1965-11-01 (61 that day).
    assert params == [("birthdate", "le1980-11-01"), ("birthdate", "ge1965-11-02"),
                      ("gender", "female")]  # fmt: skip


def resolve(rtype: str, param: str, code_set: CodeSet) -> list[str]:
    return [
        f"{code_set.system}|{c}" for c in [*code_set.codes, *(p + ".0" for p in code_set.prefixes)]
    ]


def test_fhir_queries() -> None:
    d = parse_definition(definition(
        {"condition": {"codes": [{"system": "icd10", "prefixes": ["C40"]}],
                       "onset": {"within": "2y"}, "clinical_status": ["active", "remission"]}},
        {"medication": {"resource": ["MedicationRequest", "MedicationStatement"],
                        "codes": [{"system": "rxnorm", "codes": ["6851"]}]}},
        {"observation": {"codes": [{"system": "loinc", "codes": ["21889-1"]}],
                         "value": {"min": 30, "max": 50.5, "unit": "mm"}}},
        {"diagnostic_report": {"category": ["RAD"], "date": {"from": "-1y"}}},
    ))  # fmt: skip
    cond, meds, obs, report = (fhir_queries(c.body, TODAY, resolve) for c in d.criteria)
    assert cond[0].params == (
        ("code", "http://hl7.org/fhir/sid/icd-10-cm|C40.0"),
        ("onset-date", "ge2024-11-01"), ("onset-date", "le2026-11-01"),
        ("clinical-status", "active,remission"),
    )  # fmt: skip
    assert cond[0].date_param == "onset-date"
    assert [(q.resource_type, q.date_param) for q in meds] == [
        ("MedicationRequest", "authoredon"), ("MedicationStatement", "effective")]  # fmt: skip
    assert obs[0].params[1:] == (("value-quantity", "ge30||mm"), ("value-quantity", "le50.5||mm"))
    assert report[0].params == (("date", "ge2025-11-01"), ("category", "RAD"))
    assert value_params(d.criteria[2].body) == list(obs[0].params[1:])


def test_unresolved_code_sets_match_nothing() -> None:
    d = parse_definition(definition(
        {"condition": {"codes": [{"system": "icd10", "prefixes": ["Z99"]}]}}))  # fmt: skip
    (query,) = fhir_queries(d.criteria[0].body, TODAY, lambda *_: [])
    assert query.empty


def test_imaging_keys() -> None:
    d = parse_definition(
        definition(
            {
                "imaging": {
                    "modality": ["ct"],
                    "body_part": ["chest"],
                    "date": {"within": "1y"},
                    "description_contains": "contrast",
                }
            }
        )
    )
    assert imaging_keys(d.criteria[0].body, TODAY) == {
        "modalities": ["CT"], "body_parts": ["CHEST"], "date_from": "20251101",
        "date_to": "20261101", "description_contains": "contrast", "sop_classes": [],
    }  # fmt: skip
