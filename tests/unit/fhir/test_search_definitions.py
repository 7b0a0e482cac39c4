"""The vendored R4 search parameter table (FHIR R4 search §3.1.1, SearchParameter resources)."""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

import pytest

from medflow.core.errors import InvalidInput
from medflow.fhir import definitions
from medflow.fhir.definitions import (
    PARAM_TYPES,
    SearchParam,
    default_registry,
    patient_compartment,
    resource_types,
    search_params,
)


def test_every_r4_parameter_is_there_once() -> None:
    reg = default_registry()
    urls = {
        p.url
        for rt in reg.resource_types()
        for p in reg.search_params(rt).values()
        if p.url is not None and not p.custom
    }
    assert reg.standard_count == 1378
    assert len(urls) == 1378
    assert reg.fhir_version == "4.0.1"


def test_resource_types_are_the_concrete_r4_ones() -> None:
    types = resource_types()
    assert len(types) == 146
    assert {"Patient", "Observation", "Bundle", "Binary", "Parameters"} <= types
    assert not {"Resource", "DomainResource", "SubscriptionStatus"} & types


def test_every_parameter_is_well_formed() -> None:
    untargeted = set()
    for rt in resource_types():
        for code, p in search_params(rt).items():
            assert p.code == code and p.type in PARAM_TYPES
            if p.indexed:
                assert p.expression is not None
            if p.type == "composite":
                assert len(p.components) >= 2 and all(c.type in PARAM_TYPES for c in p.components)
            if p.type == "reference" and not p.targets:
                untargeted.add((rt, code))
    assert untargeted == {("RequestGroup", "instantiates-canonical")}  # R4 lists no target


def test_multi_resource_expressions_are_split_by_type() -> None:
    assert search_params("Condition")["code"].expression == "Condition.code"
    assert search_params("AllergyIntolerance")["code"].expression == (
        "AllergyIntolerance.code | AllergyIntolerance.reaction.substance"
    )
    assert search_params("MedicationRequest")["code"].expression == (
        "(MedicationRequest.medication as CodeableConcept)"
    )
    assert search_params("Consent")["patient"].expression == "Consent.patient"
    patient = search_params("Observation")["patient"]
    assert patient.expression == "Observation.subject.where(resolve() is Patient)"
    assert patient.targets == ("Patient",)


def test_base_parameters_are_expanded_and_special_ones_marked() -> None:
    obs = search_params("Observation")
    assert obs["_tag"].expression == "Observation.meta.tag" and obs["_tag"].indexed
    assert obs["_profile"].type == "uri" and obs["_source"].type == "uri"
    assert obs["_id"].special and obs["_lastUpdated"].special
    assert obs["_id"].expression == "Observation.id"
    for code in ("_text", "_content", "_query", "_has", "_list"):
        assert obs[code].special and not obs[code].indexed
    assert search_params("Location")["near"].special
    assert "_text" not in search_params("Bundle")  # Bundle is a Resource, not a DomainResource
    assert "_id" in search_params("Bundle")


def test_composites_carry_their_components() -> None:
    p = search_params("Observation")["code-value-quantity"]
    assert p.expression == "Observation"
    assert [(c.code, c.type, c.expression) for c in p.components] == [
        ("code", "token", "code"),
        ("value-quantity", "quantity", "value.as(Quantity)"),
    ]
    rel = search_params("DocumentReference")["relationship"]  # erratum fixed by the generator
    assert [(c.code, c.type, c.expression) for c in rel.components] == [
        ("relation", "token", "code"),
        ("relatesto", "reference", "target"),
    ]


def test_comparators_and_multiple_or() -> None:
    birthdate = search_params("Patient")["birthdate"]
    assert "ge" in birthdate.comparators and "sa" in birthdate.comparators
    assert search_params("Observation")["code-value-quantity"].multiple_or is False


def test_custom_imaging_study_parameter_ships() -> None:
    p = search_params("DiagnosticReport")["imaging-study"]
    assert p.custom and p.type == "reference" and p.indexed
    assert p.expression == "DiagnosticReport.imagingStudy"
    assert p.targets == ("ImagingStudy",)


def test_patient_compartment() -> None:
    assert patient_compartment("Observation") == ("subject", "performer")
    assert patient_compartment("Patient") == ("link",)
    assert patient_compartment("AllergyIntolerance") == ("patient", "recorder", "asserter")
    assert patient_compartment("Organization") == ()


def test_register_a_search_parameter_resource() -> None:
    reg = default_registry().copy()
    resource = {
        "resourceType": "SearchParameter",
        "url": "http://example.org/SearchParameter/patient-nickname",
        "code": "nickname",
        "base": ["Patient"],
        "type": "string",
        "expression": "Patient.name.where(use='nickname').given",
    }
    p = reg.register("Patient", resource)
    assert isinstance(p, SearchParam) and p.custom and p.indexed
    assert reg.search_params("Patient")["nickname"] is p
    assert reg.by_url(resource["url"]) is p
    assert "nickname" not in search_params("Patient")  # the default registry is untouched


def test_register_a_composite_resolves_component_types() -> None:
    reg = default_registry().copy()
    p = reg.from_resource(
        {
            "code": "code-status",
            "base": ["Observation"],
            "type": "composite",
            "expression": "Observation",
            "component": [
                {
                    "definition": "http://hl7.org/fhir/SearchParameter/clinical-code",
                    "expression": "code",
                },
                {
                    "definition": "http://hl7.org/fhir/SearchParameter/Observation-status",
                    "expression": "status",
                },
            ],
        },
        "Observation",
    )
    assert [(c.code, c.type) for c in p.components] == [("code", "token"), ("status", "token")]


@pytest.mark.parametrize(
    ("resource", "resource_type"),
    [
        ({"code": "x", "type": "nonsense", "base": ["Patient"]}, "Patient"),
        ({"type": "token", "base": ["Patient"]}, "Patient"),
        ({"code": "x", "type": "token", "base": ["Observation"]}, "Patient"),
        (
            {"code": "x", "type": "composite", "base": ["Patient"], "expression": "Patient"},
            "Patient",
        ),
        ({"code": "x", "type": "token", "base": ["Nope"], "expression": "Nope.x"}, "Nope"),
    ],
)
def test_register_rejects_bad_definitions(resource: dict[str, object], resource_type: str) -> None:
    with pytest.raises(InvalidInput):
        default_registry().copy().register(resource_type, resource)


def test_register_search_parameter_on_resource_splits_per_type(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reg = default_registry().copy()
    monkeypatch.setattr(definitions, "default_registry", lambda: reg)
    out = definitions.register_search_parameter(
        {
            "url": "http://example.org/SearchParameter/x-note",
            "code": "x-note",
            "base": ["Condition", "Procedure"],
            "type": "string",
            "expression": "Condition.note.text | Procedure.note.text",
        }
    )
    assert [p.expression for p in out] == ["Condition.note.text", "Procedure.note.text"]
    assert reg.search_params("Procedure")["x-note"].expression == "Procedure.note.text"


ROOT = Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "data" / "fhir-r4"


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared FHIR R4 definitions not present")
def test_package_data_is_regenerated_byte_for_byte() -> None:
    """``scripts/gen_fhir_search_params.py`` reproduces the vendored files exactly."""
    spec = importlib.util.spec_from_file_location(
        "gen_fhir_search_params", ROOT / "scripts" / "gen_fhir_search_params.py"
    )
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    data, elements, _ = gen.build(SHARED)
    packaged = resources.files("medflow.fhir.data")
    params_bytes, gzipped = gen.encode(data, gzip_over=gen.GZIP_OVER)
    name = "search_parameters.json" + (".gz" if gzipped else "")
    assert packaged.joinpath(name).read_bytes() == params_bytes
    elements_bytes, _ = gen.encode(elements, gzip_over=None)
    assert packaged.joinpath("search_elements.json.gz").read_bytes() == elements_bytes


def test_register_rejects_an_expression_that_is_not_fhirpath() -> None:
    with pytest.raises(InvalidInput):
        default_registry().copy().register(
            "Patient", {"code": "x", "type": "string", "expression": "Patient.name.("}
        )
