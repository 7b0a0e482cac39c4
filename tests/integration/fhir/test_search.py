"""FHIR R4 search criteria (search.html §3.1.1.4) on a real index, SQLite and PostgreSQL: every
parameter type with its modifiers and prefixes, token/quantity/reference forms, composites,
``_id``/``_lastUpdated``/``_tag``/``_profile``, chains of two levels and more, nested ``_has``,
and the errors of malformed or unsupported searches. Golden lists are in ``pk`` order (the
default order: the order the world was loaded in, see conftest.py)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from medflow.core.errors import InvalidInput
from medflow.fhir.search import parse_query, search_bundle, search_statement
from tests.integration.fhir.conftest import BASE, World

pytestmark = pytest.mark.integration


def match_ids(world: World, resource_type: str | None, query: Any, **kw: Any) -> list[str]:
    bundle = search_bundle(world.engine, resource_type, query, base_url=BASE, **kw)
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


CASES: list[tuple[str, str, list[str]]] = [
    # string (§3.1.1.4.3): starts-with, case and accent insensitive; :exact; :contains
    ("Patient", "family=smi", ["p1", "p2"]),
    ("Patient", "family=SMITH", ["p1", "p2"]),
    ("Patient", "family=muller", ["p3"]),
    ("Patient", "given=zoe", ["p3"]),
    ("Patient", "name=john", ["p1", "p4"]),
    ("Patient", "family:exact=Smith", ["p1"]),
    ("Patient", "family:exact=smith", []),
    ("Patient", "family:exact=Müller", ["p3"]),
    ("Patient", "family:contains=ith", ["p1", "p2"]),
    ("Patient", "family:contains=_", ["p4"]),  # LIKE wild cards are escaped
    ("Patient", "family:contains=%25", ["p4"]),
    ("Patient", "family:contains=e_5", ["p4"]),
    ("Patient", "address-city=bost", ["p1"]),
    ("Patient", "family=smithson,muller", ["p2", "p3"]),  # OR
    ("Patient", "family=smi&given=jane", ["p2"]),  # AND
    ("Patient", "family:missing=true", []),
    ("Patient", "address-city:missing=true", ["p3", "p4"]),
    ("Organization", "name=acme", ["org1"]),
    # token (§3.1.1.4.5): code, system|code, |code, system|, :text, :not, :of-type, :missing
    ("Patient", "identifier=urn:mrn|MRN-1", ["p1"]),
    ("Patient", "identifier=MRN-2", ["p2"]),
    ("Patient", "identifier=urn:mrn|", ["p1", "p2"]),
    ("Patient", "identifier=|NOSYS-4", ["p4"]),
    ("Patient", "identifier=|MRN-1", []),
    ("Patient", "identifier=urn:mrn|NOSYS-4", []),
    ("Patient", f"identifier:of-type={'http://terminology.hl7.org/CodeSystem/v2-0203'}|MR|MRN-1",
     ["p1"]),
    ("Patient", "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-2", []),
    ("Patient", "gender=female", ["p2", "p3"]),
    ("Patient", "gender:not=female", ["p1", "p4"]),  # includes p4, which has no gender
    ("Patient", "gender:missing=true", ["p4"]),
    ("Patient", "gender:missing=false", ["p1", "p2", "p3"]),
    ("Patient", "active=true", ["p1"]),
    ("Patient", "active=false", ["p2", "p4"]),
    ("Patient", "email=john@example.org", ["p1"]),
    ("Patient", "_tag=urn:tags|vip", ["p1"]),
    ("Condition", "code=http://snomed.info/sct|38341003", ["c1", "c4"]),
    ("Condition", "code=38341003,I10", ["c1", "c3", "c4"]),
    ("Condition", "code:text=hypert", ["c1", "c3", "c4"]),  # display, any word
    ("Condition", "code:text=essential", ["c3"]),
    ("Condition", "code:text=chest", ["c5"]),  # CodeableConcept.text
    ("Condition", "code:text=high blood", ["c1", "c4"]),
    ("Condition", "code:not=http://snomed.info/sct|38341003", ["c2", "c3", "c5", "c6", "c9"]),
    ("Observation", "status=final,amended", ["o1", "o2", "o3", "o5", "o6", "o7"]),
    # date (§3.1.1.4.2): every prefix, precision, time zones, Periods (open ones too)
    ("Patient", "birthdate=1970-05-01", ["p1"]),
    ("Patient", "birthdate=1970-05", ["p1"]),
    ("Patient", "birthdate=1970", ["p1"]),
    ("Patient", "birthdate=eq1990", ["p3"]),
    ("Patient", "birthdate=1990-06-01", []),  # p3's whole year is not within the day
    ("Patient", "birthdate=ne1970-05-01", ["p2", "p3", "p4"]),
    ("Patient", "birthdate=lt1980", ["p1"]),
    ("Patient", "birthdate=gt1985-11-20", ["p3", "p4"]),
    ("Patient", "birthdate=ge1985-11-20", ["p2", "p3", "p4"]),
    ("Patient", "birthdate=le1985-11-20", ["p1", "p2"]),
    ("Patient", "birthdate=sa1985-11-20", ["p3", "p4"]),
    ("Patient", "birthdate=eb1985-11-20", ["p1"]),
    ("Patient", "birthdate=ap1970-05-01", ["p1"]),
    ("Patient", "birthdate=ge1980&birthdate=lt1995", ["p2", "p3"]),
    ("Condition", "onset-date=2020-03-15", ["c1"]),
    ("Condition", "onset-date=ge2020-01-01", ["c1", "c3", "c4"]),
    ("Condition", "onset-date=lt2019-01-01", ["c2"]),
    ("Condition", "onset-date=2019", []),  # 2018-01..2019-06 is not within 2019
    ("Condition", "onset-date=ge2030", ["c4"]),  # open Period end
    ("Condition", "onset-date=2021-07-01T08:00:00Z", ["c3"]),  # 10:00+02:00
    ("Condition", "onset-date=2021-07-01T10:00:00%2B02:00", ["c3"]),
    ("Condition", "onset-date=2021-07-01T10:00:00+02:00", ["c3"]),  # '+' decoded as a space
    ("Condition", "onset-date=gt2021-07-01T09:00:00Z", ["c4"]),
    ("Condition", "code=http://snomed.info/sct|38341003&onset-date=ge2020&onset-date=lt2021",
     ["c1"]),
    ("Encounter", "date=2023-01-10", ["e1"]),
    ("Encounter", "date=2023-01-10T08:00", []),
    ("Encounter", "date=ap2023-01-10T08:00", ["e1"]),
    ("Condition", "onset-date:missing=true", ["c5", "c6", "c9"]),
    # number (§3.1.1.4.1): precision of eq/ne, exact comparisons, ap
    ("RiskAssessment", "probability=0.8", ["ra1"]),
    ("RiskAssessment", "probability=0.3", ["ra2"]),  # [0.25, 0.35)
    ("RiskAssessment", "probability=0.30", []),  # [0.295, 0.305)
    ("RiskAssessment", "probability=gt0.5", ["ra1"]),
    ("RiskAssessment", "probability=lt0.5", ["ra2"]),
    ("RiskAssessment", "probability=ge0.8", ["ra1"]),
    ("RiskAssessment", "probability=le0.25", ["ra2"]),
    ("RiskAssessment", "probability=ne0.8", ["ra2"]),
    ("RiskAssessment", "probability=ap0.75", ["ra1"]),
    ("RiskAssessment", "probability=sa0.25", ["ra1"]),
    ("RiskAssessment", "probability=eb0.8", ["ra2"]),
    # quantity (§3.1.1.4.6): number|system|code, number||code (code or unit), prefixes
    ("Observation", "value-quantity=120", ["o1"]),
    ("Observation", "value-quantity=1e2", ["o1", "o2", "o5", "o6"]),  # [50, 150)
    ("Observation", "value-quantity=gt130", ["o2"]),
    ("Observation", "value-quantity=120|http://unitsofmeasure.org|mm[Hg]", ["o1"]),
    ("Observation", "value-quantity=120|http://unitsofmeasure.org|mmol/L", []),
    ("Observation", "value-quantity=5.4|http://unitsofmeasure.org|mmol/L", ["o4"]),
    ("Observation", "value-quantity=70||kg", ["o5"]),  # unit only
    ("Observation", "value-quantity=le100||mm[Hg]", ["o6"]),
    ("Observation", "value-quantity=lt100||mm[Hg]", []),
    ("Observation", "code=http://loinc.org|8480-6&value-quantity=gt110|http://unitsofmeasure.org|"
     "mm[Hg]", ["o1", "o2"]),
    ("Observation", "component-value-quantity=85", ["o3"]),
    ("Observation", "combo-value-quantity=130", ["o3"]),
    ("Observation", "value-quantity:missing=true", ["o3", "o7"]),
    # reference (§3.1.1.4.7): Type/id, id, :[type], own and foreign absolute URLs,
    # :identifier (logical reference and the target's identifier), :missing
    ("Condition", "subject=Patient/p1", ["c1", "c3"]),
    ("Condition", "subject=p1", ["c1", "c3"]),
    ("Condition", "subject:Patient=p1", ["c1", "c3"]),
    ("Condition", "patient=p1", ["c1", "c3"]),
    ("Condition", f"subject={BASE}/Patient/p1", ["c1", "c3"]),
    ("Condition", "subject=Patient/p1,Patient/p3", ["c1", "c3", "c4"]),
    ("Observation", "subject=http://other.org/fhir/Patient/ext1", ["o7"]),
    ("Condition", "subject:identifier=urn:mrn|MRN-9", ["c6"]),
    ("Condition", "subject:identifier=urn:mrn|MRN-1", ["c1", "c3"]),
    ("Patient", "general-practitioner:Organization=org1", ["p3"]),
    ("Patient", "general-practitioner=Practitioner/pr2", ["p2"]),
    ("Patient", "general-practitioner:missing=true", ["p4"]),
    ("Condition", "subject:missing=true", []),  # c6's logical reference counts
    ("Condition", "subject:missing=false", ["c1", "c2", "c3", "c4", "c5", "c6", "c9"]),
    ("Observation", "encounter=Encounter/e1", ["o1"]),
    ("DiagnosticReport", "imaging-study=ImagingStudy/is1", ["dr1"]),
    ("MedicationRequest", "medication=Medication/med1", ["mr2"]),
    ("MedicationRequest", "code=197361", ["mr1"]),
    # uri (§3.1.1.4.4): exact, :below, :above
    ("ValueSet", "url=http://acme.org/fhir/ValueSet/colors", ["vs1"]),
    ("ValueSet", "url=http://acme.org/fhir/ValueSet", []),
    ("ValueSet", "url:below=http://acme.org/fhir/ValueSet", ["vs1", "vs2"]),
    ("ValueSet", "url:above=http://acme.org/fhir/ValueSet/colors/extended/v2", ["vs1", "vs2"]),
    ("ValueSet", "url:above=http://acme.org/fhir/ValueSet/colors", ["vs1"]),
    ("Patient", "_profile=http://acme.org/StructureDefinition/my-patient", ["p2"]),
    # composite (§3.1.1.4.8)
    ("Observation", "code-value-quantity=http://loinc.org|8480-6$gt130", ["o2"]),
    ("Observation", "code-value-quantity=8480-6$120", ["o1"]),
    ("Observation", "component-code-value-quantity=http://loinc.org|8462-4$85", ["o3"]),
    ("Observation", "component-code-value-quantity=8462-4$gt90", []),
    ("Observation", "combo-code-value-quantity=8480-6$ge130", ["o2", "o3"]),
    # _id, _lastUpdated (answered from fhir_resource)
    ("Patient", "_id=p1,p3", ["p1", "p3"]),
    ("Patient", "_id=gone", []),  # deleted
    ("Patient", "_id=p2&family=smi", ["p2"]),
    # chains (§3.1.1.4.9), two levels and more, ambiguous targets ORed
    ("Condition", "subject:Patient.birthdate=lt1980", ["c1", "c3"]),
    ("Condition", "subject.name=smith", ["c1", "c2", "c3"]),
    ("Condition", "subject.name=ghost", []),  # the target was deleted
    ("Condition", "patient.general-practitioner.name=welby", ["c1", "c3"]),
    ("Condition", "patient.general-practitioner.name=acme", ["c4"]),  # Organization branch
    ("Condition", "patient.general-practitioner:Organization.name=welby", []),
    ("Observation", "subject:Patient.general-practitioner.identifier=npi|111", ["o1", "o2"]),
    ("Observation", "patient.gender=female&code=2339-0", ["o4"]),
    ("Observation", "encounter.participant.family=welby", ["o1"]),
    ("DiagnosticReport", "result.value-quantity=gt100", ["dr1"]),
    ("DiagnosticReport", "result.patient.birthdate:missing=false", ["dr1"]),
    # reverse chains (§3.1.1.4.10), nested, and with a chain inside
    ("Patient", "_has:Observation:patient:code=http://loinc.org|8480-6", ["p1", "p4"]),
    ("Patient", "_has:Condition:subject:code=I10", ["p1"]),
    ("Patient", "_has:Observation:patient:value-quantity=gt140", ["p1"]),
    ("Patient", "_has:Observation:patient:status=preliminary&gender=female", ["p3"]),
    ("Practitioner", "_has:Patient:general-practitioner:_has:Condition:patient:code=44054006",
     ["pr2"]),
    ("Practitioner", "_has:Patient:general-practitioner:gender=female", ["pr2"]),
    ("Patient", "_has:Observation:patient:encounter.status=finished", ["p1"]),
    ("Encounter", "patient._has:Condition:subject:code=I10", ["e1"]),
]  # fmt: skip


@pytest.mark.parametrize(("resource_type", "query", "expected"), CASES)
def test_criteria(world: World, resource_type: str, query: str, expected: list[str]) -> None:
    assert match_ids(world, resource_type, query, strict=True) == expected


def test_last_updated(world: World) -> None:
    stamp = world.mark.isoformat().replace("+00:00", "Z")
    assert match_ids(world, "Patient", [("_lastUpdated", f"ge{stamp}")]) == ["p4"]
    assert match_ids(world, "Patient", [("_lastUpdated", f"lt{stamp}")]) == ["p1", "p2", "p3"]
    assert match_ids(world, "Patient", [("_lastUpdated", f"gt{world.mark.year - 1}")]) == [
        "p1", "p2", "p3", "p4",
    ]  # fmt: skip


def test_index_follows_the_current_version(world: World) -> None:
    """p4 was written active=true and then active=false: only the current version counts."""
    assert "p4" not in match_ids(world, "Patient", "active=true")


def test_system_search(world: World) -> None:
    assert match_ids(world, None, "_id=p1,c1,o1") == ["p1", "c1", "o1"]
    assert match_ids(world, None, "_type=Patient,Condition&_id=p1,c1,o1") == ["p1", "c1"]
    assert match_ids(world, None, "_tag=urn:tags|vip") == ["p1"]


@pytest.mark.parametrize(
    ("resource_type", "query", "error"),
    [
        ("Patient", "birthdate=notadate", InvalidInput),
        ("Patient", "birthdate=2020-13-01", InvalidInput),
        ("RiskAssessment", "probability=abc", InvalidInput),
        ("Observation", "value-quantity=1|2", InvalidInput),
        ("Patient", "family:foo=x", InvalidInput),
        ("Patient", "family:not=x", InvalidInput),
        ("Condition", "code:in=http://acme.org/ValueSet/x", InvalidInput),
        ("Condition", "code:below=http://snomed.info/sct|38341003", InvalidInput),
        ("Condition", "subject:Device=p1", InvalidInput),
        ("Condition", "subject=Observation/o1/x/y", InvalidInput),
        ("Patient", "gender:missing=maybe", InvalidInput),
        ("Patient", "identifier:of-type=MR|MRN-1", InvalidInput),
        ("Observation", "code-value-quantity=8480-6", InvalidInput),
        ("Patient", "gender.name=x", InvalidInput),
        ("Patient", "_count=-1", InvalidInput),
        ("Patient", "_summary=maybe", InvalidInput),
        ("Patient", "_total=some", InvalidInput),
        ("Patient", "_has:Observation:code:code=1", InvalidInput),
        ("Observation", "_has:Condition:subject:code=x", InvalidInput),
        ("Condition", "_include=Condition:subject:Device", InvalidInput),
        ("Nope", "name=x", InvalidInput),
        ("Observation", "encounter.part-of.part-of.part-of.part-of.part-of.status=x", InvalidInput),
    ],
)
def test_invalid_searches(
    world: World, resource_type: str, query: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        search_bundle(world.engine, resource_type, query, base_url=BASE)


@pytest.mark.parametrize(
    "query",
    [
        "foo=bar",
        "_has:Nope:subject:code=x",
        "_has:Observation:nope:code=x",
        "_has:Observation:patient:nope=x",
        "general-practitioner.nope=x",
        "_text=smith",
        "_content=smith",
        "_list=x",
        "_sort=nope",
        "_include=Patient:nope",
        "_revinclude=Nope:subject",
        "_contained=true",
    ],
)
def test_unknown_parameters_lenient_and_strict(world: World, query: str) -> None:
    """Lenient (the default): ignored, reported in an OperationOutcome entry and left out of
    the self link; strict: 400 (§3.1.1.4 ``#errors``)."""
    bundle = search_bundle(world.engine, "Patient", f"{query}&family=smi", base_url=BASE)
    assert [e["resource"]["id"] for e in bundle["entry"][:2]] == ["p1", "p2"]
    outcome = bundle["entry"][-1]
    assert outcome["search"]["mode"] == "outcome"
    issue = outcome["resource"]["issue"][0]
    assert issue["severity"] == "warning" and "ignored" in issue["diagnostics"]
    assert bundle["link"][0]["url"] == f"{BASE}/Patient?family=smi&_count=20"
    with pytest.raises(InvalidInput, match="strict"):
        search_bundle(world.engine, "Patient", f"{query}&family=smi", base_url=BASE, strict=True)


def test_empty_values_are_ignored(world: World) -> None:
    assert match_ids(world, "Patient", "family=&gender=male&_sort=", strict=True) == ["p1"]


PLANNED = [
    ("Patient", "identifier=urn:mrn|MRN-1"),
    ("Condition", "code=http://snomed.info/sct|38341003&onset-date=ge2020&onset-date=lt2021"),
    ("Observation", "code=http://loinc.org|8480-6&value-quantity=gt110||mm[Hg]"),
    ("Condition", "subject:Patient.birthdate=lt1980"),
    ("Condition", "patient.general-practitioner.name=welby"),
    ("Patient", "_has:Observation:patient:code=8480-6&gender=female"),
    ("Patient", "gender=female&birthdate=1990&_sort=-birthdate,family"),
    ("Patient", "_lastUpdated=gt2000&_sort=family"),
    ("Observation", "subject.identifier=urn:mrn|MRN-1"),
    ("Condition", "subject:identifier=urn:mrn|MRN-1"),
    ("Patient", "_id=p1&_lastUpdated=gt2000"),
    (None, "_tag=urn:tags|vip"),
]


@pytest.mark.parametrize(("resource_type", "query"), PLANNED)
def test_sqlite_plans_are_index_driven(world: World, resource_type: str | None, query: str) -> None:
    """Without statistics SQLite's plan follows the SQL text alone: no table is read whole
    (``SCAN``) nor every row of a type or parameter; the benchmark shapes must stay
    index-driven at a million resources."""
    if world.dialect != "sqlite":
        pytest.skip("PostgreSQL plans by statistics (checked at scale in the benchmark)")
    compiled = search_statement(parse_query(resource_type, query)).compile(
        dialect=world.engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    params = tuple(compiled.params[k] for k in compiled.positiontup or ())
    with world.engine.connect() as conn:
        plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", params)]
    assert not [step for step in plan if WALK.search(step)], plan


WALK = re.compile(r"^SCAN |\((resource_type=\?|resource_type=\? AND param=\?|target_type=\?)\)$")
"""A plan step that reads a whole table, or every row of a type or parameter."""
