"""FHIRPath for indexing: the directly compiled subset, node types, the fhirpathpy fallback."""

from __future__ import annotations

from typing import Any

import pytest

from medflow.core.errors import InvalidInput
from medflow.fhir.definitions import default_registry
from medflow.fhir.fhirpath import (
    Node,
    compile_expression,
    infer_type,
    is_a,
    reference_type,
    split_union,
)

OBS: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
    "subject": {"reference": "#p"},
    "contained": [{"resourceType": "Patient", "id": "p"}],
    "performer": [
        {"reference": "Practitioner/pr1"},
        {"reference": "https://other.example/fhir/Patient/x9/_history/3"},
        {"type": "Patient", "identifier": {"system": "s", "value": "v"}},
    ],
    "effectivePeriod": {"start": "2020-01-01"},
    "valueQuantity": {"value": 72, "unit": "/min"},
    "component": [
        {"code": {"text": "a"}, "valueQuantity": {"value": 1}},
        {"code": {"text": "b"}, "valueCodeableConcept": {"text": "c"}},
        {"code": {"text": "d"}, "valueString": "e"},
    ],
}


def _values(expression: str, resource: dict[str, Any] = OBS) -> list[Any]:
    return [n.value for n in compile_expression(expression)(resource)]


def _types(expression: str, resource: dict[str, Any] = OBS) -> list[str | None]:
    return [n.type for n in compile_expression(expression)(resource)]


def test_every_r4_expression_compiles() -> None:
    """All 1,378 SearchParameters: 1,375 have an expression; each compiles per resource type and
    as the original multi-resource union; all but one are compiled directly."""
    reg = default_registry()
    by_url: dict[str, list[str]] = {}
    per_type = 0
    fallback = set()
    for rt in sorted(reg.resource_types()):
        for p in reg.search_params(rt).values():
            if p.url is None or p.custom:
                continue
            by_url.setdefault(p.url, [])
            for expr in [p.expression or ""] + [c.expression for c in p.components]:
                if not expr:
                    continue
                per_type += 1
                if not compile_expression(expr).direct:
                    fallback.add(expr)
            if p.expression:
                by_url[p.url].append(p.expression)
    with_expression = {url: exprs for url, exprs in by_url.items() if exprs}
    assert len(by_url) == 1378
    assert len(with_expression) == 1375
    for exprs in with_expression.values():
        assert compile_expression(" | ".join(dict.fromkeys(exprs))) is not None
    assert per_type > 2500
    assert fallback == {"Patient.deceased.exists() and Patient.deceased != false"}


def test_simple_paths_and_unions() -> None:
    assert _values("Observation.status") == ["final"]
    assert _values("Observation.code.coding.code") == ["8867-4"]
    assert _values("Observation.status | Observation.id") == ["final", "o1"]
    assert _values("Patient.name") == []  # another type's expression selects nothing
    assert _values("Resource.id") == ["o1"]
    assert _types("Observation.code | Observation.status") == ["CodeableConcept", "code"]


def test_choice_elements_are_typed_by_the_key_that_matched() -> None:
    assert _types("Observation.value") == ["Quantity"]
    assert _types("Observation.effective") == ["Period"]
    assert _types("Observation.component.value") == ["Quantity", "CodeableConcept", "string"]
    assert _values("Observation.component.value.as(Quantity)") == [{"value": 1}]
    assert _values("(Observation.component.value as CodeableConcept)") == [{"text": "c"}]
    assert _values("(Observation.component.value as CodeableConcept).text") == ["c"]
    assert _values("Observation.value.ofType(Quantity).unit") == ["/min"]
    assert _values("Observation.effective.as(dateTime)") == []
    assert _types("Observation.component") == ["Observation.component"] * 3


def test_subtypes_match_as() -> None:
    cond = {"resourceType": "Condition", "onsetAge": {"value": 40, "unit": "a"}}
    assert _types("Condition.onset.as(Age)", cond) == ["Age"]
    assert _types("Condition.onset.as(Quantity)", cond) == ["Age"]
    assert _values("Condition.onset.as(Range)", cond) == []
    assert is_a("Age", "Quantity") and is_a("code", "string") and not is_a("string", "code")


def test_where_filters() -> None:
    patient = {
        "resourceType": "Patient",
        "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}],
    }
    assert _values("Patient.telecom.where(system='email')", patient) == [
        {"system": "email", "value": "a@b"}
    ]
    assert _values("Observation.performer.where(resolve() is Practitioner)") == [
        {"reference": "Practitioner/pr1"}
    ]
    assert _values("Observation.performer.where(resolve() is Patient)") == [
        OBS["performer"][1],
        OBS["performer"][2],
    ]
    assert _values("Observation.subject.where(resolve() is Patient)") == [{"reference": "#p"}]


def test_reference_type() -> None:
    assert reference_type({"reference": "Patient/1"}) == "Patient"
    assert reference_type({"reference": "Patient/1/_history/2"}) == "Patient"
    assert reference_type({"reference": "http://x.org/fhir/Group/g-1"}) == "Group"
    assert reference_type({"reference": "urn:uuid:1234"}) is None
    assert reference_type({"reference": "#p"}, OBS) == "Patient"
    assert reference_type({"reference": "#nope"}, OBS) is None
    assert reference_type({"type": "http://hl7.org/fhir/StructureDefinition/Device"}) == "Device"
    assert reference_type("http://hl7.org/fhir/ValueSet/abc|4.0.1") == "ValueSet"


def test_indexer_and_resource_variable() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [
            {"resource": {"resourceType": "Composition", "id": "c1"}},
            {"resource": {"resourceType": "Patient", "id": "p1"}},
        ],
    }
    nodes = compile_expression("Bundle.entry[0].resource")(bundle)
    assert nodes == [Node({"resourceType": "Composition", "id": "c1"}, "Composition")]
    component = compile_expression("Observation.component")(OBS)
    assert compile_expression("%resource.status").from_nodes(component[:1], OBS) == [
        Node("final", "code")
    ]
    assert compile_expression("code.text").from_nodes(component, OBS) == [
        Node("a", "string"),
        Node("b", "string"),
        Node("d", "string"),
    ]


def test_contained_and_nested_resources_are_typed_by_resource_type() -> None:
    assert _types("Observation.contained") == ["Patient"]
    assert _values("Observation.contained.id") == ["p"]


def test_fallback_to_fhirpathpy() -> None:
    extractor = compile_expression("Patient.deceased.exists() and Patient.deceased != false")
    assert not extractor.direct
    assert [n.value for n in extractor({"resourceType": "Patient"})] == [False]
    alive = {"resourceType": "Patient", "deceasedBoolean": False}
    assert [n.value for n in extractor(alive)] == [False]
    dead = {"resourceType": "Patient", "deceasedDateTime": "2020-01-01"}
    assert extractor(dead) == [Node(True, "boolean")]
    counted = compile_expression("Observation.component.count()")
    assert not counted.direct and [n.value for n in counted(OBS)] == [3]


def test_invalid_expression_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        compile_expression("Patient.name.(")


def test_split_union_respects_parentheses_and_quotes() -> None:
    assert split_union("(A.b as X) | A.c.where(d='x|y') | A.e") == [
        "(A.b as X)",
        "A.c.where(d='x|y')",
        "A.e",
    ]


def test_infer_type_for_untyped_values() -> None:
    assert infer_type({"coding": []}) == "CodeableConcept"
    assert infer_type({"reference": "Patient/1"}) == "Reference"
    assert infer_type({"start": "2020"}) == "Period"
    assert infer_type({"value": 1, "unit": "mg"}) == "Quantity"
    assert infer_type({"value": 1, "currency": "EUR"}) == "Money"
    assert infer_type({"system": "phone", "value": "1"}) == "ContactPoint"
    assert infer_type({"system": "urn:x", "value": "1"}) == "Identifier"
    assert infer_type({"system": "urn:x", "code": "1"}) == "Coding"
    assert infer_type(True) == "boolean" and infer_type("x") == "string"


def test_unknown_elements_of_custom_expressions_are_found_by_shape() -> None:
    # An element outside the R4 tables (an extension-like custom property): the JSON key is
    # followed and the choice-style key ``fooQuantity`` is recognized by its type suffix.
    resource = {"resourceType": "Basic", "x": {"fooQuantity": {"value": 1}}}
    assert _types("Basic.x.foo", resource) == ["Quantity"]
