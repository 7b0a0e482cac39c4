"""Golden index rows per search parameter type (FHIR R4 search §3.1.1.4) on hand-built resources."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest

from medflow.fhir.definitions import default_registry
from medflow.fhir.indexing import (
    DATETIME_MAX,
    DATETIME_MIN,
    CompositeRow,
    DateRow,
    NumberRow,
    QuantityRow,
    ReferenceRow,
    Row,
    StringRow,
    TokenRow,
    UriRow,
    date_range,
    index_resource,
    normalize_string,
    parse_reference,
)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"


def _dt(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def _rows(resource: dict[str, Any], *params: str) -> list[Row]:
    return [r for r in index_resource(resource) if r.param in params]


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {
        "lastUpdated": "2024-01-01T00:00:00Z",
        "profile": ["http://example.org/StructureDefinition/patient"],
        "security": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
        ],
        "tag": [{"system": "http://example.org/tags", "code": "vip", "display": "V.I.P."}],
    },
    "identifier": [
        {
            "system": "urn:oid:1.2.36.146.595.217.0.1",
            "value": "12345",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                ],
                "text": "Medical record number",
            },
        },
        {"value": "no-system"},
    ],
    "active": True,
    "name": [
        {
            "family": "Müller",
            "given": ["José", "Ann  Marie"],
            "prefix": ["Dr."],
            "text": "Dr. José Müller",
        }
    ],
    "telecom": [
        {"system": "phone", "value": "+1 555 0100"},
        {"system": "email", "value": "jose@example.org"},
    ],
    "gender": "male",
    "birthDate": "1974-12",
    "address": [
        {
            "use": "home",
            "line": ["534 Erewhon St"],
            "city": "PleasantVille",
            "postalCode": "3999",
            "country": "AU",
        }
    ],
    "deceasedBoolean": False,
    "generalPractitioner": [{"reference": "Practitioner/pr1"}, {"reference": "#gp"}],
    "managingOrganization": {"reference": "http://example.org/fhir/Organization/o1/_history/2"},
    "link": [{"other": {"reference": "urn:uuid:2b8d3c7e-0000-4000-8000-000000000001"}}],
}


def test_patient_tokens() -> None:
    assert _rows(PATIENT, "identifier", "gender", "active", "deceased") == [
        TokenRow("active", None, "true", None),
        TokenRow("deceased", None, "false", None),
        TokenRow("gender", None, "male", None),
        TokenRow(
            "identifier",
            "urn:oid:1.2.36.146.595.217.0.1",
            "12345",
            "medical record number",
            "http://terminology.hl7.org/CodeSystem/v2-0203",
            "MR",
        ),
        TokenRow("identifier", None, "no-system", None),
    ]
    assert _rows(PATIENT, "telecom", "phone", "email") == [
        TokenRow("email", "email", "jose@example.org", None),
        TokenRow("phone", "phone", "+1 555 0100", None),
        TokenRow("telecom", "phone", "+1 555 0100", None),
        TokenRow("telecom", "email", "jose@example.org", None),
    ]


def test_patient_deceased_datetime_is_true_and_a_death_date() -> None:
    dead = {"resourceType": "Patient", "deceasedDateTime": "2021-03-04"}
    assert _rows(dead, "deceased", "death-date") == [
        DateRow("death-date", _dt(2021, 3, 4), _dt(2021, 3, 4, 23, 59, 59, 999999)),
        TokenRow("deceased", None, "true", None),
    ]


def test_patient_strings_are_normalized() -> None:
    assert _rows(PATIENT, "family", "given", "name") == [
        StringRow("family", "Müller", "muller"),
        StringRow("given", "José", "jose"),
        StringRow("given", "Ann  Marie", "ann marie"),
        StringRow("name", "Müller", "muller"),
        StringRow("name", "José", "jose"),
        StringRow("name", "Ann  Marie", "ann marie"),
        StringRow("name", "Dr.", "dr."),
        StringRow("name", "Dr. José Müller", "dr. jose muller"),
    ]
    assert _rows(PATIENT, "address", "address-city", "address-use") == [
        StringRow("address", "534 Erewhon St", "534 erewhon st"),
        StringRow("address", "PleasantVille", "pleasantville"),
        StringRow("address", "3999", "3999"),
        StringRow("address", "AU", "au"),
        StringRow("address-city", "PleasantVille", "pleasantville"),
        TokenRow("address-use", None, "home", None),
    ]


def test_normalize_string() -> None:
    assert normalize_string("  Ça\tVA  Straße ") == "ca va strasse"
    fullwidth = "\uff26\uff55\uff4c\uff4c"  # FULLWIDTH "Full": NFKD folds compatibility forms
    assert normalize_string(fullwidth) == "full"


def test_patient_dates_references_and_meta() -> None:
    assert _rows(PATIENT, "birthdate") == [
        DateRow("birthdate", _dt(1974, 12, 1), _dt(1974, 12, 31, 23, 59, 59, 999999))
    ]
    assert _rows(PATIENT, "general-practitioner", "organization", "link") == [
        ReferenceRow("general-practitioner", "Practitioner", "pr1", None),  # #gp: not indexed
        ReferenceRow("link", None, None, "urn:uuid:2b8d3c7e-0000-4000-8000-000000000001"),
        ReferenceRow(
            "organization",
            "Organization",
            "o1",
            "http://example.org/fhir/Organization/o1/_history/2",
        ),
    ]
    assert _rows(PATIENT, "_profile", "_security", "_tag", "_id", "_lastUpdated") == [
        UriRow("_profile", "http://example.org/StructureDefinition/patient"),
        TokenRow(
            "_security", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R", None
        ),
        TokenRow("_tag", "http://example.org/tags", "vip", "v.i.p."),
    ]


BP: dict[str, Any] = {
    "resourceType": "Observation",
    "id": "bp",
    "status": "final",
    "code": {
        "coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure"}],
        "text": "BP",
    },
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-03-01T10:00:00+01:00",
    "valueQuantity": {"value": 120.5, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
    "component": [
        {
            "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
            "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
            "valueQuantity": {"value": 80, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        },
    ],
}
SYS = TokenRow("component-code", LOINC, "8480-6", None)
DIA = TokenRow("component-code", LOINC, "8462-4", None)


def _mmhg(param: str, value: str) -> QuantityRow:
    return QuantityRow(param, Decimal(value), UCUM, "mm[Hg]", "mmHg")


def test_observation_code_value_date_subject() -> None:
    assert _rows(BP, "code", "value-quantity", "date", "subject", "patient", "status") == [
        TokenRow("code", LOINC, "85354-9", "blood pressure"),
        TokenRow("code", None, None, "bp"),
        DateRow("date", _dt(2024, 3, 1, 9), _dt(2024, 3, 1, 9, 0, 0, 999999)),
        ReferenceRow("patient", "Patient", "p1", None),
        TokenRow("status", None, "final", None),
        ReferenceRow("subject", "Patient", "p1", None),
        _mmhg("value-quantity", "120.5"),
    ]


def test_observation_composites() -> None:
    assert _rows(BP, "code-value-quantity", "component-code-value-quantity") == [
        CompositeRow(
            "code-value-quantity",
            (
                TokenRow("code", LOINC, "85354-9", "blood pressure"),
                _mmhg("value-quantity", "120.5"),
            ),
        ),
        CompositeRow(
            "component-code-value-quantity", (SYS, _mmhg("component-value-quantity", "120"))
        ),
        CompositeRow(
            "component-code-value-quantity", (DIA, _mmhg("component-value-quantity", "80"))
        ),
    ]
    combos = _rows(BP, "combo-code-value-quantity")
    assert [(c.components[0].code, c.components[1].value) for c in combos] == [  # type: ignore[attr-defined]
        ("85354-9", Decimal("120.5")),
        ("8480-6", Decimal("120")),
        ("8462-4", Decimal("80")),
    ]
    assert _rows(BP, "code-value-concept", "code-value-date", "code-value-string") == []


def test_observation_value_concept_and_string() -> None:
    obs = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": LOINC, "code": "X"}]},
        "valueCodeableConcept": {
            "coding": [{"system": SNOMED, "code": "260385009"}],
            "text": "Negative",
        },
    }
    assert _rows(obs, "value-concept", "code-value-concept") == [
        CompositeRow(
            "code-value-concept",
            (
                TokenRow("code", LOINC, "X", None),
                TokenRow("value-concept", SNOMED, "260385009", None),
            ),
        ),
        TokenRow("value-concept", SNOMED, "260385009", None),
        TokenRow("value-concept", None, None, "negative"),
    ]
    text = {"resourceType": "Observation", "valueString": "Große Zahl"}
    assert _rows(text, "value-string") == [StringRow("value-string", "Große Zahl", "grosse zahl")]


@pytest.mark.parametrize(
    ("onset", "rows"),
    [
        (
            {"onsetDateTime": "2019-06"},
            [DateRow("onset-date", _dt(2019, 6, 1), _dt(2019, 6, 30, 23, 59, 59, 999999))],
        ),
        (
            {"onsetPeriod": {"start": "2019-06-02T08:30:00Z"}},
            [DateRow("onset-date", _dt(2019, 6, 2, 8, 30), DATETIME_MAX)],
        ),
        (
            {"onsetAge": {"value": 52, "unit": "yr", "system": UCUM, "code": "a"}},
            [QuantityRow("onset-age", Decimal(52), UCUM, "a", "yr")],
        ),
        (
            {"onsetRange": {"low": {"value": 40, "code": "a"}, "high": {"value": 50, "code": "a"}}},
            [QuantityRow("onset-age", Decimal(40), None, "a", None, 50.0)],  # one interval
        ),
        (
            {"onsetRange": {"high": {"value": 50, "code": "a"}}},  # open below
            [QuantityRow("onset-age", Decimal("-Infinity"), None, "a", None, 50.0)],
        ),
        (
            {"onsetString": "in childhood"},
            [StringRow("onset-info", "in childhood", "in childhood")],
        ),
    ],
)
def test_condition_onset_choices(onset: dict[str, Any], rows: list[Row]) -> None:
    condition = {"resourceType": "Condition", **onset}
    assert _rows(condition, "onset-date", "onset-age", "onset-info") == rows


def test_condition_code() -> None:
    condition = {
        "resourceType": "Condition",
        "code": {
            "coding": [
                {"system": SNOMED, "code": "254637007", "display": "NSCLC"},
                {"system": "http://hl7.org/fhir/sid/icd-10", "code": "C34.9"},
            ]
        },
        "subject": {"reference": "Group/g1"},
    }
    assert _rows(condition, "code", "subject", "patient") == [
        TokenRow("code", SNOMED, "254637007", "nsclc"),
        TokenRow("code", "http://hl7.org/fhir/sid/icd-10", "C34.9", None),
        ReferenceRow("subject", "Group", "g1", None),  # not a Patient: no ``patient`` row
    ]


def test_medication_request_codeable_concept_or_reference() -> None:
    by_code = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "582620"}]
        },
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2024-05-06",
        "dosageInstruction": [{"timing": {"event": ["2024-05-07T08:00:00Z", "2024-05-08"]}}],
    }
    assert _rows(by_code, "code", "medication", "intent", "authoredon", "date") == [
        DateRow("authoredon", _dt(2024, 5, 6), _dt(2024, 5, 6, 23, 59, 59, 999999)),
        TokenRow("code", "http://www.nlm.nih.gov/research/umls/rxnorm", "582620", None),
        DateRow("date", _dt(2024, 5, 7, 8), _dt(2024, 5, 7, 8, 0, 0, 999999)),
        DateRow("date", _dt(2024, 5, 8), _dt(2024, 5, 8, 23, 59, 59, 999999)),
        TokenRow("intent", None, "order", None),
    ]
    by_ref = {
        "resourceType": "MedicationRequest",
        "medicationReference": {"reference": "Medication/m1"},
    }
    assert _rows(by_ref, "code", "medication") == [
        ReferenceRow("medication", "Medication", "m1", None)
    ]


def test_reference_identifier_becomes_a_token_of_the_parameter() -> None:
    obs = {
        "resourceType": "Observation",
        "subject": {"identifier": {"system": "urn:mrn", "value": "42"}, "type": "Patient"},
    }
    assert _rows(obs, "subject", "patient") == [
        TokenRow("patient", "urn:mrn", "42", None),
        TokenRow("subject", "urn:mrn", "42", None),
    ]


def test_diagnostic_report_imaging_study_custom_parameter() -> None:
    report = {
        "resourceType": "DiagnosticReport",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "24627-2"}]},
        "imagingStudy": [{"reference": "ImagingStudy/s1"}, {"reference": "ImagingStudy/s2"}],
        "effectivePeriod": {"start": "2024-01-01T10:00:00Z", "end": "2024-01-01T10:30:00Z"},
    }
    assert _rows(report, "imaging-study", "date") == [
        DateRow("date", _dt(2024, 1, 1, 10), _dt(2024, 1, 1, 10, 30, 0, 999999)),
        ReferenceRow("imaging-study", "ImagingStudy", "s1", None),
        ReferenceRow("imaging-study", "ImagingStudy", "s2", None),
    ]


def test_encounter_period_open_start() -> None:
    encounter = {"resourceType": "Encounter", "period": {"end": "2024-02-03"}}
    assert _rows(encounter, "date") == [
        DateRow("date", DATETIME_MIN, _dt(2024, 2, 3, 23, 59, 59, 999999))
    ]


def test_timing_covers_events_and_bounds() -> None:
    plan = {
        "resourceType": "CarePlan",
        "activity": [
            {
                "detail": {
                    "status": "scheduled",
                    "scheduledTiming": {
                        "event": ["2024-03-10T09:00:00Z"],
                        "repeat": {"boundsPeriod": {"start": "2024-03-01", "end": "2024-03-31"}},
                    },
                }
            }
        ],
    }
    assert _rows(plan, "activity-date") == [
        DateRow("activity-date", _dt(2024, 3, 1), _dt(2024, 3, 31, 23, 59, 59, 999999))
    ]


def test_money_range_and_numbers() -> None:
    charge = {"resourceType": "ChargeItem", "priceOverride": {"value": 12.30, "currency": "EUR"}}
    assert _rows(charge, "price-override") == [
        QuantityRow("price-override", Decimal("12.3"), "urn:iso:std:iso:4217", "EUR", None)
    ]
    risk = {
        "resourceType": "RiskAssessment",
        "prediction": [
            {"probabilityDecimal": 0.25},
            {"probabilityRange": {"low": {"value": 0.1}, "high": {"value": 0.4}}},
        ],
    }
    assert _rows(risk, "probability") == [
        NumberRow("probability", Decimal("0.25")),
        NumberRow("probability", Decimal("0.1"), 0.4),  # a Range: one row, both bounds
    ]
    risk["prediction"] = [{"probabilityRange": {"low": {"value": 0.5}}}]
    assert _rows(risk, "probability") == [NumberRow("probability", Decimal("0.5"), math.inf)]


def test_decimal_precision_is_kept_when_parsed_as_decimal() -> None:
    text = '{"resourceType": "Observation", "valueQuantity": {"value": 1.50, "code": "mg"}}'
    obs = json.loads(text, parse_float=Decimal)
    assert _rows(obs, "value-quantity") == [
        QuantityRow("value-quantity", Decimal("1.50"), None, "mg", None)
    ]


def test_uri_canonical_and_use_context() -> None:
    vs = {
        "resourceType": "ValueSet",
        "url": "http://example.org/fhir/ValueSet/vs1",
        "useContext": [
            {
                "code": {
                    "system": "http://terminology.hl7.org/CodeSystem/usage-context-type",
                    "code": "age",
                },
                "valueRange": {
                    "low": {"value": 18, "code": "a"},
                    "high": {"value": 65, "code": "a"},
                },
            }
        ],
    }
    age = TokenRow(
        "context-type", "http://terminology.hl7.org/CodeSystem/usage-context-type", "age", None
    )
    assert _rows(vs, "url", "context-quantity", "context-type-quantity") == [
        QuantityRow("context-quantity", Decimal(18), None, "a", None, 65.0),
        CompositeRow(  # a composite slot holds one number: a Range's bounds, each a value
            "context-type-quantity",
            (age, QuantityRow("context-quantity", Decimal(18), None, "a", None)),
        ),
        CompositeRow(
            "context-type-quantity",
            (age, QuantityRow("context-quantity", Decimal(65), None, "a", None)),
        ),
        UriRow("url", "http://example.org/fhir/ValueSet/vs1"),
    ]
    plan = {
        "resourceType": "PlanDefinition",
        "library": ["http://example.org/fhir/Library/lib1|2.0"],
        "relatedArtifact": [
            {"type": "depends-on", "resource": "urn:uuid:11111111-2222-3333-4444-555555555555"},
            {"type": "citation", "resource": "http://example.org/fhir/Library/not-this"},
        ],
    }
    assert _rows(plan, "depends-on") == [
        ReferenceRow("depends-on", None, None, "urn:uuid:11111111-2222-3333-4444-555555555555"),
        ReferenceRow("depends-on", "Library", "lib1", "http://example.org/fhir/Library/lib1|2.0"),
    ]


def test_bundle_first_entry_by_target_type() -> None:
    document = {
        "resourceType": "Bundle",
        "type": "document",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0c3151bd"},
        "timestamp": "2024-01-01T12:00:00Z",
        "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}}],
    }
    assert _rows(document, "composition", "message", "identifier", "type") == [
        ReferenceRow("composition", "Composition", "c1", None),
        TokenRow("identifier", "urn:ietf:rfc:3986", "urn:uuid:0c3151bd", None),
        TokenRow("type", None, "document", None),
    ]


def test_special_and_unknown() -> None:
    assert index_resource({"resourceType": "Nope", "id": "x"}) == []
    rows = index_resource({"resourceType": "Patient", "id": "x", "meta": {"lastUpdated": "2024"}})
    # _id and _lastUpdated come from the resource table; ``deceased`` is an expression that is
    # false when Patient.deceased is absent, so every Patient gets that token.
    assert rows == [TokenRow("deceased", None, "false", None)]


def test_custom_registered_parameter_is_indexed() -> None:
    reg = default_registry().copy()
    reg.register(
        "Patient",
        {
            "url": "http://example.org/SearchParameter/patient-nickname",
            "code": "nickname",
            "base": ["Patient"],
            "type": "string",
            "expression": "Patient.name.where(use='nickname').given",
        },
    )
    patient = {
        "resourceType": "Patient",
        "name": [{"use": "official", "given": ["Robert"]}, {"use": "nickname", "given": ["Bob"]}],
    }
    rows = [r for r in index_resource(patient, registry=reg) if r.param == "nickname"]
    assert rows == [StringRow("nickname", "Bob", "bob")]
    assert not [r for r in index_resource(patient) if r.param == "nickname"]


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2020", _dt(2020, 1, 1), _dt(2020, 12, 31, 23, 59, 59, 999999)),
        ("2024-02", _dt(2024, 2, 1), _dt(2024, 2, 29, 23, 59, 59, 999999)),
        ("2023-02-03", _dt(2023, 2, 3), _dt(2023, 2, 3, 23, 59, 59, 999999)),
        ("2023-02-03T04:05:06Z", _dt(2023, 2, 3, 4, 5, 6), _dt(2023, 2, 3, 4, 5, 6, 999999)),
        ("2023-02-03T04:05:06", _dt(2023, 2, 3, 4, 5, 6), _dt(2023, 2, 3, 4, 5, 6, 999999)),
        ("2023-02-03T04:05", _dt(2023, 2, 3, 4, 5), _dt(2023, 2, 3, 4, 5, 59, 999999)),
        (
            "2023-02-03T04:05:06.5Z",
            _dt(2023, 2, 3, 4, 5, 6, 500000),
            _dt(2023, 2, 3, 4, 5, 6, 599999),
        ),
        (
            "2023-02-03T04:05:06.123456789Z",
            _dt(2023, 2, 3, 4, 5, 6, 123456),
            _dt(2023, 2, 3, 4, 5, 6, 123456),
        ),
        ("2023-02-03T01:00:00-05:00", _dt(2023, 2, 3, 6), _dt(2023, 2, 3, 6, 0, 0, 999999)),
        (
            "2023-01-01T00:30:00+01:00",
            _dt(2022, 12, 31, 23, 30),
            _dt(2022, 12, 31, 23, 30, 0, 999999),
        ),
    ],
)
def test_date_range_precision_and_time_zones(text: str, low: datetime, high: datetime) -> None:
    assert date_range(text) == (low, high)


@pytest.mark.parametrize("text", ["", "20", "2023-13", "2023-02-30", "yesterday", "10:00:00"])
def test_date_range_rejects_non_dates(text: str) -> None:
    assert date_range(text) is None


def test_date_range_is_aware_utc() -> None:
    rng = date_range("2023-06-01T12:00:00+05:30")
    assert rng is not None
    assert rng[0].tzinfo is UTC and rng[0] == datetime(
        2023, 6, 1, 12, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )


@pytest.mark.parametrize(
    ("text", "row"),
    [
        ("Patient/123", ReferenceRow("", "Patient", "123", None)),
        ("Patient/123/_history/4", ReferenceRow("", "Patient", "123", None)),
        (
            "https://x.org/fhir/Patient/123",
            ReferenceRow("", "Patient", "123", "https://x.org/fhir/Patient/123"),
        ),
        ("urn:uuid:abc", ReferenceRow("", None, None, "urn:uuid:abc")),
        ("http://x.org/no/type/here/", ReferenceRow("", None, None, "http://x.org/no/type/here/")),
        ("#contained", None),
    ],
)
def test_parse_reference(text: str, row: ReferenceRow | None) -> None:
    assert parse_reference(text) == row


def test_custom_expression_failing_on_the_data_is_skipped(caplog: pytest.LogCaptureFixture) -> None:
    reg = default_registry().copy()
    reg.register(
        "Observation",
        {
            "code": "first-letter",
            "type": "string",
            "expression": "Observation.component.value.upper()",
        },
    )
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "component": [{"valueString": "a"}, {"valueString": "b"}],
    }
    rows = index_resource(obs, registry=reg)
    assert TokenRow("status", None, "final", None) in rows
    assert not [r for r in rows if r.param == "first-letter"]
    assert "'first-letter' not indexed" in caplog.text
    single = {"resourceType": "Observation", "component": [{"valueString": "a"}]}
    assert [r for r in index_resource(single, registry=reg) if r.param == "first-letter"] == [
        StringRow("first-letter", "A", "a")
    ]
