"""Generated FHIR R4 instances: one minimal-but-rich resource of any type, for indexing tests.

Built from the element table medflow vendors (``medflow/fhir/data/search_elements.json.gz``,
derived from the R4 StructureDefinitions), so the tests need nothing outside the package: every
element of the resource and of its backbone elements is filled (to a depth limit), repeating
elements as JSON arrays, a choice element ``value[x]`` with one of its types (rotating through
them, so that a run covers them all), and the common data types with hand-built values that the
search parameters can use (references to ``Patient/p1``, codings, quantities, periods, ...).
"""

from __future__ import annotations

import itertools
from functools import cache
from typing import Any

from medflow.fhir.fhirpath import element_paths, element_spec

_SKIP = frozenset({"extension", "modifierExtension", "contained", "id", "implicitRules"})
MAX_DEPTH = 5

_PRIMITIVES: dict[str, Any] = {
    "boolean": True,
    "integer": 7,
    "unsignedInt": 3,
    "positiveInt": 2,
    "decimal": 1.5,
    "string": "Sample Text",
    "markdown": "Some *markdown*",
    "code": "active",
    "id": "abc-1",
    "uri": "http://example.org/fhir/ValueSet/sample",
    "url": "http://example.org/endpoint",
    "canonical": "http://example.org/fhir/Questionnaire/q1|1.0",
    "oid": "urn:oid:1.2.3.4",
    "uuid": "urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66",
    "date": "2020-02-03",
    "dateTime": "2020-02-03T04:05:06+01:00",
    "instant": "2020-02-03T04:05:06.789Z",
    "time": "10:30:00",
    "base64Binary": "AAEC",
    "xhtml": '<div xmlns="http://www.w3.org/1999/xhtml">Sample</div>',
}

_CODING = {"system": "http://example.org/codes", "code": "c1", "display": "Code One"}
_QUANTITY = {"value": 5.4, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}
_COMPLEX: dict[str, Any] = {
    "Coding": _CODING,
    "CodeableConcept": {"coding": [_CODING], "text": "Code one"},
    "Identifier": {
        "system": "http://example.org/ids",
        "value": "ID-1",
        "type": {"coding": [{"system": "http://example.org/id-types", "code": "MR"}]},
    },
    "Quantity": _QUANTITY,
    "Age": {**_QUANTITY, "unit": "a", "code": "a", "value": 42},
    "Duration": {**_QUANTITY, "unit": "min", "code": "min"},
    "Distance": {**_QUANTITY, "unit": "km", "code": "km"},
    "Count": {"value": 3, "system": "http://unitsofmeasure.org", "code": "1"},
    "Money": {"value": 12.5, "currency": "EUR"},
    "Range": {"low": {**_QUANTITY, "value": 1}, "high": {**_QUANTITY, "value": 9}},
    "Ratio": {"numerator": _QUANTITY, "denominator": {**_QUANTITY, "value": 1}},
    "Period": {"start": "2020-01-01", "end": "2020-12-31T10:00:00Z"},
    "Timing": {"event": ["2021-05-01T08:00:00Z"], "repeat": {"frequency": 1, "period": 1}},
    "HumanName": {"family": "Müller", "given": ["Anna", "Maria"], "prefix": ["Dr."]},
    "Address": {
        "use": "home",
        "text": "1 Main St, Springfield",
        "line": ["1 Main St"],
        "city": "Springfield",
        "district": "North",
        "state": "IL",
        "postalCode": "12345",
        "country": "US",
    },
    "Attachment": {
        "contentType": "text/plain",
        "language": "en",
        "url": "http://example.org/a.txt",
        "title": "A",
    },
    "Annotation": {"text": "A note", "time": "2020-01-01"},
    "Meta": {
        "lastUpdated": "2020-01-01T00:00:00Z",
        "profile": ["http://example.org/fhir/StructureDefinition/p"],
        "security": [{"system": "http://example.org/sec", "code": "R"}],
        "tag": [{"system": "http://example.org/tags", "code": "t1"}],
        "source": "http://example.org/source",
    },
    "Narrative": {"status": "generated", "div": _PRIMITIVES["xhtml"]},
    "SampledData": {"origin": _QUANTITY, "period": 1, "dimensions": 1, "data": "1 2 3"},
    "Extension": None,
}


# Rotated through (with the choice types) so that where(resolve() is T) and where(system=...)
# filters find something in one of the rotations.
_REFERENCE_TYPES = ("Patient", "Practitioner", "RelatedPerson", "Location", "Organization", "Group")
_CONTACT_SYSTEMS = ("phone", "email")
_ARTIFACT_TYPES = ("composed-of", "depends-on", "derived-from", "predecessor", "successor")
_RESOURCES = ("Composition", "MessageHeader", "Patient")  # Bundle.entry.resource and the like


def _rotated(type_name: str, turn: int) -> Any:
    if type_name == "Reference":
        target = _REFERENCE_TYPES[turn % len(_REFERENCE_TYPES)]
        return {"reference": f"{target}/r{turn}", "display": f"A {target}"}
    if type_name == "ContactPoint":
        system = _CONTACT_SYSTEMS[turn % len(_CONTACT_SYSTEMS)]
        return {"system": system, "value": f"{system}-{turn}@example.org", "use": "work"}
    if type_name == "Resource":
        return {"resourceType": _RESOURCES[turn % len(_RESOURCES)], "id": f"r{turn}"}
    if type_name == "RelatedArtifact":
        return {
            "type": _ARTIFACT_TYPES[turn % len(_ARTIFACT_TYPES)],
            "resource": "http://example.org/fhir/Library/lib1",
        }
    return None


@cache
def _children(type_key: str) -> tuple[str, ...]:
    prefix = type_key + "."
    return tuple(
        path[len(prefix) :]
        for path in element_paths()
        if path.startswith(prefix) and "." not in path[len(prefix) :]
    )


def make_resource(resource_type: str, *, rotation: int = 0) -> dict[str, Any]:
    """One instance of ``resource_type`` with every element filled (see the module docstring).

    ``rotation`` shifts which type each choice element takes.
    """
    counter = itertools.count(rotation)
    body = _fill(resource_type, 0, counter)
    return {"resourceType": resource_type, "id": "ex-1", **body}


def _fill(type_key: str, depth: int, counter: itertools.count[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _children(type_key):
        if name in _SKIP:
            continue
        spec = element_spec(f"{type_key}.{name}")
        if spec is None:
            continue
        types, many, ref = spec
        if name.endswith("[x]"):
            chosen = types[next(counter) % len(types)]
            key = name[:-3] + chosen[0].upper() + chosen[1:]
            value = _value(chosen, depth, counter)
        else:
            key = name
            target = ref if ref is not None else types[0]
            if ref is None and target in ("BackboneElement", "Element"):
                target = f"{type_key}.{name}"
            value = _value(target, depth, counter)
        if value is None or value == {}:
            continue
        out[key] = [value] if many else value
    return out


def _value(type_name: str, depth: int, counter: itertools.count[int]) -> Any:
    rotated = _rotated(type_name, next(counter))
    if rotated is not None:
        return rotated
    if type_name in _PRIMITIVES:
        return _PRIMITIVES[type_name]
    if type_name in _COMPLEX:
        return _COMPLEX[type_name]
    if depth >= MAX_DEPTH:
        return None
    return _fill(type_name, depth + 1, counter)
