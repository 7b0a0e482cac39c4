"""A small clinical world for the FHIR search tests, loaded once per module and database
(SQLite, and PostgreSQL when MEDFLOW_TEST_POSTGRES_URL is set) through ``FhirService``."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from medflow.db.base import Base
from medflow.db.engine import create_engine, upgrade
from medflow.fhir.models import INDEX_TABLES, FhirHistory, FhirResource
from medflow.fhir.service import FhirService
from tests.conftest import PG_URL, need_peer

BASE = "https://medflow.example.org/fhir"
LOINC, SNOMED, UCUM = "http://loinc.org", "http://snomed.info/sct", "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


@dataclass
class World:
    engine: Engine
    fhir: FhirService
    mark: datetime
    """A moment after which only Patient/p4 was written."""
    dialect: str


def _pg_database() -> Iterator[str]:
    need_peer(bool(PG_URL), "MEDFLOW_TEST_POSTGRES_URL is not set")
    assert PG_URL
    name = f"medflow_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(
        PG_URL.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield f"{PG_URL.rpartition('/')[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def search_db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Like the ``db_url`` fixture, but shared by a module's tests (the world loads once)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('fhir') / 'index.sqlite3'}"
        return
    yield from _pg_database()


def make_engine(url: str) -> Engine:
    engine = create_engine(url)
    upgrade(engine)
    if not sa.inspect(engine).has_table("fhir_resource"):  # before the FHIR migration existed
        tables = [FhirResource.__table__, FhirHistory.__table__]
        tables += [t.__table__ for t in INDEX_TABLES]
        Base.metadata.create_all(engine, tables=tables)
    return engine


def put(fhir: FhirService, resource: dict[str, Any]) -> None:
    fhir.update(resource_type=resource["resourceType"], res_id=resource["id"], resource=resource)


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def qty(value: float, code: str | None = None, unit: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"value": value}
    if code:
        out |= {"system": UCUM, "code": code}
    if unit:
        out["unit"] = unit
    return out


def people() -> list[dict[str, Any]]:
    mr = {"coding": [coding(V2_0203, "MR")]}
    return [
        {"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Welby",
         "given": ["Marcus"]}], "identifier": [{"system": "npi", "value": "111"}]},
        {"resourceType": "Practitioner", "id": "pr2", "name": [{"family": "Kildare",
         "given": ["James"]}]},
        {"resourceType": "Organization", "id": "org1", "name": "Acme Hospital"},
        {"resourceType": "Patient", "id": "p1", "meta": {"tag": [coding("urn:tags", "vip")]},
         "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">J</div>'},
         "identifier": [{"system": "urn:mrn", "value": "MRN-1", "type": mr}],
         "active": True, "name": [{"family": "Smith", "given": ["John"]}], "gender": "male",
         "birthDate": "1970-05-01", "telecom": [{"system": "email", "value": "john@example.org"}],
         "address": [{"city": "Boston"}],
         "generalPractitioner": [{"reference": "Practitioner/pr1"}]},
        {"resourceType": "Patient", "id": "p2",
         "meta": {"profile": ["http://acme.org/StructureDefinition/my-patient"]},
         "identifier": [{"system": "urn:mrn", "value": "MRN-2"}], "active": False,
         "name": [{"family": "Smithson", "given": ["Jane"]}], "gender": "female",
         "birthDate": "1985-11-20", "address": [{"city": "Cambridge"}],
         "generalPractitioner": [{"reference": "Practitioner/pr2"}],
         "link": [{"other": {"reference": "Patient/p1"}, "type": "seealso"}]},
        {"resourceType": "Patient", "id": "p3",
         "identifier": [{"system": "urn:other", "value": "X-3"}],
         "name": [{"family": "Müller", "given": ["Zoë"]}], "gender": "female", "birthDate": "1990",
         "generalPractitioner": [{"reference": "Organization/org1"}]},
        {"resourceType": "Patient", "id": "p4", "identifier": [{"value": "NOSYS-4"}],
         "name": [{"family": "Doe_50%", "given": ["John"]}], "birthDate": "2001-02-03"},
    ]  # fmt: skip


def conditions() -> list[dict[str, Any]]:
    def cond(cid: str, subject: dict[str, Any], code: dict[str, Any], **extra: Any) -> Any:
        return {"resourceType": "Condition", "id": cid, "subject": subject, "code": code, **extra}

    htn = {"coding": [coding(SNOMED, "38341003", "Hypertension")], "text": "High blood pressure"}
    return [
        cond("c1", {"reference": "Patient/p1"}, htn, onsetDateTime="2020-03-15",
             recordedDate="2020-03-16"),
        cond("c2", {"reference": "Patient/p2"},
             {"coding": [coding(SNOMED, "44054006", "Diabetes type 2")]},
             onsetPeriod={"start": "2018-01-01", "end": "2019-06-30"}),
        cond("c3", {"reference": "Patient/p1"},
             {"coding": [coding("http://hl7.org/fhir/sid/icd-10", "I10",
                                "Essential hypertension")]},
             onsetDateTime="2021-07-01T10:00:00+02:00"),
        cond("c4", {"reference": "Patient/p3"}, htn, onsetPeriod={"start": "2022-01-01"}),
        cond("c5", {"reference": "Patient/p4"}, {"text": "Chest pain"}),
        cond("c6", {"identifier": {"system": "urn:mrn", "value": "MRN-9"}}, {"text": "Cough"}),
    ]  # fmt: skip


def observations() -> list[dict[str, Any]]:
    def obs(oid: str, patient: str, code: str, **extra: Any) -> dict[str, Any]:
        return {"resourceType": "Observation", "id": oid, "status": extra.pop("status", "final"),
                "code": {"coding": [coding(LOINC, code)]},
                "subject": {"reference": patient}, **extra}  # fmt: skip

    return [
        obs("o1", "Patient/p1", "8480-6", valueQuantity=qty(120, "mm[Hg]", "mmHg"),
            effectiveDateTime="2023-01-10T08:00:00Z", encounter={"reference": "Encounter/e1"}),
        obs("o2", "Patient/p1", "8480-6", valueQuantity=qty(145.5, "mm[Hg]", "mmHg"),
            effectiveDateTime="2023-02-10"),
        obs("o3", "Patient/p2", "85354-9", status="amended", effectiveDateTime="2023-03-01",
            component=[{"code": {"coding": [coding(LOINC, "8480-6")]},
                        "valueQuantity": qty(130, "mm[Hg]")},
                       {"code": {"coding": [coding(LOINC, "8462-4")]},
                        "valueQuantity": qty(85, "mm[Hg]")}]),
        obs("o4", "Patient/p3", "2339-0", status="preliminary",
            valueQuantity=qty(5.4, "mmol/L", "mmol/L")),
        obs("o5", "Patient/p3", "29463-7", valueQuantity=qty(70, unit="kg")),
        obs("o6", "Patient/p4", "8480-6", valueQuantity=qty(100, "mm[Hg]")),
        obs("o7", "http://other.org/fhir/Patient/ext1", "8867-4"),
    ]  # fmt: skip


def others() -> list[dict[str, Any]]:
    rx = "http://www.nlm.nih.gov/research/umls/rxnorm"
    return [
        {"resourceType": "Encounter", "id": "e1", "status": "finished",
         "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB"),
         "subject": {"reference": "Patient/p1"},
         "period": {"start": "2023-01-10T07:00:00Z", "end": "2023-01-10T09:00:00Z"},
         "participant": [{"individual": {"reference": "Practitioner/pr1"}}]},
        {"resourceType": "ImagingStudy", "id": "is1", "status": "available",
         "subject": {"reference": "Patient/p1"}},
        {"resourceType": "DiagnosticReport", "id": "dr1", "status": "final",
         "code": {"coding": [coding(LOINC, "24627-2")]}, "subject": {"reference": "Patient/p1"},
         "imagingStudy": [{"reference": "ImagingStudy/is1"}],
         "result": [{"reference": "Observation/o1"}]},
        {"resourceType": "Medication", "id": "med1", "code": {"coding": [coding(rx, "1191")]}},
        {"resourceType": "MedicationRequest", "id": "mr1", "status": "active", "intent": "order",
         "medicationCodeableConcept": {"coding": [coding(rx, "197361", "Amlodipine")]},
         "subject": {"reference": "Patient/p1"}, "requester": {"reference": "Practitioner/pr1"},
         "authoredOn": "2023-01-10"},
        {"resourceType": "MedicationRequest", "id": "mr2", "status": "stopped", "intent": "order",
         "medicationReference": {"reference": "Medication/med1"},
         "subject": {"reference": "Patient/p2"}, "requester": {"reference": "Practitioner/pr2"}},
        {"resourceType": "RiskAssessment", "id": "ra1", "status": "final",
         "subject": {"reference": "Patient/p1"}, "prediction": [{"probabilityDecimal": 0.8}]},
        {"resourceType": "RiskAssessment", "id": "ra2", "status": "final",
         "subject": {"reference": "Patient/p2"}, "prediction": [{"probabilityDecimal": 0.25}]},
        {"resourceType": "ValueSet", "id": "vs1", "status": "active",
         "url": "http://acme.org/fhir/ValueSet/colors"},
        {"resourceType": "ValueSet", "id": "vs2", "status": "active",
         "url": "http://acme.org/fhir/ValueSet/colors/extended"},
        {"resourceType": "ValueSet", "id": "vs3", "status": "active",
         "url": "http://other.org/vs"},
    ]  # fmt: skip


def load(fhir: FhirService) -> datetime:
    for resource in [*people(), *conditions(), *observations(), *others()]:
        put(fhir, resource)
    # a deleted Patient and a Condition pointing at it: neither shows up
    put(fhir, {"resourceType": "Patient", "id": "gone", "name": [{"family": "Ghost"}]})
    put(fhir, {"resourceType": "Condition", "id": "c9", "subject": {"reference": "Patient/gone"},
               "code": {"coding": [coding(SNOMED, "9999")]}})  # fmt: skip
    fhir.delete(resource_type="Patient", res_id="gone")
    time.sleep(0.01)
    mark = datetime.now(UTC)
    time.sleep(0.01)
    p4 = fhir.read(resource_type="Patient", res_id="p4")
    p4["active"] = True
    put(fhir, p4)
    p4["active"] = False  # written again: index rows stay those of the current version
    put(fhir, p4)
    return mark


@pytest.fixture(scope="module")
def world(search_db_url: str) -> Iterator[World]:
    engine = make_engine(search_db_url)
    fhir = FhirService(engine)
    mark = load(fhir)
    try:
        yield World(engine, fhir, mark, engine.dialect.name)
    finally:
        engine.dispose()
