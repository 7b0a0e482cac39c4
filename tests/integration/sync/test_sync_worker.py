"""The sync worker against the embedded FHIR store (SQLite and PostgreSQL): a study stored in
the archive appears as ImagingStudy + Patient + Endpoint with the DICOM header's values;
replays write nothing new; deletes shrink and remove the ImagingStudy; demographics follow the
latest DICOM; reports and orders with the accession number are linked; a study that cannot be
mapped is a dead letter that ``replay`` retries."""

from __future__ import annotations

from typing import Any

import pytest
from pydicom.uid import generate_uid

from medflow.bootstrap import Container
from medflow.core.settings import SyncSettings
from medflow.sync.worker import EmbeddedFhir, SyncWorker
from tests.factories import make_instance, store_datasets

pytestmark = pytest.mark.integration
DICOMWEB = "http://pacs.example.org/dicomweb"
ACSN = "http://terminology.hl7.org/CodeSystem/v2-0203"


def worker(container: Container, **settings: Any) -> SyncWorker:
    def changes(after: int, limit: int) -> Any:
        return container.fhir.changes(after=after, limit=limit)

    return SyncWorker(engine=container.engine, store=container.store,
                      target=EmbeddedFhir(container.fhir), settings=SyncSettings(**settings),
                      dicomweb_url=DICOMWEB, fhir_changes=changes)  # fmt: skip


def search(container: Container, rtype: str, query: str) -> list[dict[str, Any]]:
    return EmbeddedFhir(container.fhir).search(rtype, query)


def study_of(container: Container, study_uid: str) -> dict[str, Any] | None:
    found = search(container, "ImagingStudy", f"identifier=urn:dicom:uid|urn:oid:{study_uid}")
    assert len(found) <= 1
    return found[0] if found else None


def test_a_stored_study_is_reflected_in_fhir(container: Container) -> None:
    study = generate_uid()
    ct, pt = generate_uid(), generate_uid()
    datasets = [
        make_instance(
            study_uid=study,
            series_uid=ct,
            modality="CT",
            series_number=1,
            instance_number=n,
            BodyPartExamined="CHEST",
            TimezoneOffsetFromUTC="+0100",
        )
        for n in (1, 2, 3)
    ]
    datasets.append(make_instance(study_uid=study, series_uid=pt, modality="PT", series_number=2,
                                  instance_number=1, TimezoneOffsetFromUTC="+0100"))  # fmt: skip
    store_datasets(container.store, datasets)
    w = worker(container)
    w.run_until_idle()
    s = study_of(container, study)
    assert s is not None
    assert {c["code"] for c in s["modality"]} == {"CT", "PT"}
    assert s["numberOfSeries"] == 2 and s["numberOfInstances"] == 4
    assert s["status"] == "available" and s["description"] == "CT CHEST"
    assert s["started"].startswith("2024-01-15T10:15:00+01:00")
    acc = [i for i in s["identifier"] if i.get("type")]
    assert acc[0]["value"] == "ACC-001" and acc[0]["type"]["coding"][0]["code"] == "ACSN"
    series = {x["uid"]: x for x in s["series"]}
    assert series[ct]["numberOfInstances"] == 3 and series[ct]["modality"]["code"] == "CT"
    assert [i["number"] for i in series[ct]["instance"]] == [1, 2, 3]
    patients = search(container, "Patient", "identifier=urn:medflow:mrn|PAT-001")
    assert len(patients) == 1
    p = patients[0]
    assert s["subject"]["reference"] == f"Patient/{p['id']}"
    assert p["gender"] == "male" and p["birthDate"] == "1970-01-01"
    assert p["name"][0]["family"] == "Doe" and p["name"][0]["given"] == ["John"]
    endpoints = search(container, "Endpoint", f"identifier=urn:medflow:endpoint|{DICOMWEB}")
    assert len(endpoints) == 1 and endpoints[0]["address"] == DICOMWEB
    assert s["endpoint"][0]["reference"] == f"Endpoint/{endpoints[0]['id']}"
    assert w.status().backlog == 0 and w.status().failures == 0

    version = s["meta"]["versionId"]
    w._set_cursor(0)  # a replay from the start writes nothing new
    w.run_until_idle()
    again = study_of(container, study)
    assert again is not None and again["meta"]["versionId"] == version
    assert len(search(container, "Patient", "identifier=urn:medflow:mrn|PAT-001")) == 1

    container.store.delete(study_uid=study, series_uid=pt)
    w.run_until_idle()
    shrunk = study_of(container, study)
    assert shrunk is not None and shrunk["numberOfSeries"] == 1
    assert [c["code"] for c in shrunk["modality"]] == ["CT"]
    container.store.delete(study_uid=study)
    w.run_until_idle()
    assert study_of(container, study) is None
    assert len(search(container, "Patient", "identifier=urn:medflow:mrn|PAT-001")) == 1


def test_demographics_follow_the_latest_dicom_and_other_fields_stay(container: Container) -> None:
    study = generate_uid()
    store_datasets(container.store, [make_instance(study_uid=study, patient_id="PAT-9")])
    w = worker(container)
    w.run_until_idle()
    p = search(container, "Patient", "identifier=urn:medflow:mrn|PAT-9")[0]
    p["telecom"] = [{"system": "phone", "value": "555-0100"}]  # written by the EHR
    container.fhir.update(resource_type="Patient", res_id=p["id"], resource=p)
    newer = make_instance(study_uid=study, patient_id="PAT-9", patient_name="Doe^Jane",
                          patient_sex="F")  # fmt: skip
    store_datasets(container.store, [newer])
    w.run_until_idle()
    p2 = search(container, "Patient", "identifier=urn:medflow:mrn|PAT-9")[0]
    assert p2["gender"] == "female" and p2["name"][0]["given"] == ["Jane"]
    assert p2["telecom"] == p["telecom"]


def test_reports_and_orders_with_the_accession_are_linked(container: Container) -> None:
    acc_id = {"type": {"coding": [{"system": ACSN, "code": "ACSN"}]}, "value": "ACC-77"}
    order = container.fhir.create(resource={
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/x"}, "identifier": [acc_id]})  # fmt: skip
    report = container.fhir.create(resource={
        "resourceType": "DiagnosticReport", "status": "final", "code": {"text": "CT chest"},
        "identifier": [acc_id]})  # fmt: skip
    study = generate_uid()
    store_datasets(container.store, [make_instance(study_uid=study, accession_number="ACC-77")])
    worker(container).run_until_idle()
    s = study_of(container, study)
    assert s is not None
    assert s["basedOn"] == [{"reference": f"ServiceRequest/{order.res_id}"}]
    dr = container.fhir.read(resource_type="DiagnosticReport", res_id=report.res_id)
    assert dr["imagingStudy"] == [{"reference": f"ImagingStudy/{s['id']}"}]


def test_an_unmappable_study_is_a_dead_letter_and_replays(container: Container) -> None:
    study = generate_uid()
    bad = make_instance(study_uid=study, patient_id="")
    store_datasets(container.store, [bad])
    w = worker(container)
    w.run_until_idle()
    assert study_of(container, study) is None
    failures = w.failures()
    assert [f.study_uid for f in failures] == [study] and "PatientID" in failures[0].reason
    assert w.status().failures == 1 and w.status().backlog == 0  # the worker moved on
    assert w.replay() == (0, 1)
    assert w.failures()[0].attempts == 2
    store_datasets(container.store, [make_instance(study_uid=study, patient_id="PAT-5")])
    w.run_until_idle()  # still one instance without a PatientID in the study
    assert study_of(container, study) is None and w.failures()[0].attempts == 3
    container.store.delete(study_uid=study, series_uid=str(bad.SeriesInstanceUID))
    w.run_until_idle()  # the bad instance is gone: the study syncs
    assert study_of(container, study) is not None
    assert w.failures() == []


def test_a_study_naming_two_patients_is_a_dead_letter(container: Container) -> None:
    study = generate_uid()
    two = [make_instance(study_uid=study, patient_id=f"TWO-{n}") for n in (1, 2)]
    store_datasets(container.store, two)
    w = worker(container)
    w.run_until_idle()
    assert study_of(container, study) is None
    assert "2 different patients" in w.failures()[0].reason
    assert search(container, "Patient", "identifier=urn:medflow:mrn|TWO-1") == []


def test_reports_and_orders_arriving_after_the_images_are_linked(container: Container) -> None:
    study = generate_uid()
    store_datasets(container.store, [make_instance(study_uid=study, accession_number="ACC-88")])
    w = worker(container)
    w.run_until_idle()
    acc_id = {"type": {"coding": [{"system": ACSN, "code": "ACSN"}]}, "value": "ACC-88"}
    report = container.fhir.create(resource={
        "resourceType": "DiagnosticReport", "status": "final", "code": {"text": "CT chest"},
        "identifier": [acc_id]})  # fmt: skip
    order = container.fhir.create(resource={
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/x"}, "identifier": [acc_id]})  # fmt: skip
    w.run_until_idle()
    s = study_of(container, study)
    assert s is not None
    assert s["basedOn"] == [{"reference": f"ServiceRequest/{order.res_id}"}]
    dr = container.fhir.read(resource_type="DiagnosticReport", res_id=report.res_id)
    assert dr["imagingStudy"] == [{"reference": f"ImagingStudy/{s['id']}"}]
    version = dr["meta"]["versionId"]
    w.run_until_idle()  # its own writes come back through the FHIR feed: nothing more to do
    again = container.fhir.read(resource_type="DiagnosticReport", res_id=report.res_id)
    assert again["meta"]["versionId"] == version
