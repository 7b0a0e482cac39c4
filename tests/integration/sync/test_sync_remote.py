"""The standalone sync's HTTP peers against medflow's own DICOMweb and FHIR APIs (in process,
through Starlette's test transport): a FHIR server that answers 500 for a while is retried with
backoff and the study then syncs; one that keeps failing leaves the cursor where it was; the
state file keeps cursor and dead letters across restarts; the CapabilityStatement is checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from medflow.bootstrap import Container, create_app
from medflow.core.errors import StorageFailure, Unsupported
from medflow.core.settings import SyncSettings
from medflow.sync.remote import Http, HttpArchive, HttpFhir
from medflow.sync.state import FileState
from medflow.sync.worker import SyncWorker
from tests.factories import make_instance, store_datasets

pytestmark = pytest.mark.integration


class Flaky(httpx.BaseTransport):
    """Answers 500 to the first ``failures`` FHIR requests, then passes them on."""

    def __init__(self, inner: httpx.BaseTransport, failures: int) -> None:
        self.inner, self.failures, self.seen = inner, failures, 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/fhir") and self.seen < self.failures:
            self.seen += 1
            return httpx.Response(500, json={"resourceType": "OperationOutcome", "issue": []})
        return self.inner.handle_request(request)


def peers(client: TestClient, failures: int, retries: int = 5) -> tuple[Http, Flaky]:
    flaky = Flaky(client._transport, failures)
    sleeps: list[float] = []
    http = Http(httpx.Client(transport=flaky, base_url="http://testserver"), retries=retries,
                sleep=sleeps.append)  # fmt: skip
    return http, flaky


def worker(http: Http, state: Path) -> SyncWorker:
    dicomweb = "http://testserver/dicomweb"
    return SyncWorker(store=HttpArchive(dicomweb, http), settings=SyncSettings(),
                      target=HttpFhir("http://testserver/fhir", http), dicomweb_url=dicomweb,
                      state=FileState(state))  # fmt: skip


def studies(client: TestClient, study_uid: str) -> list[dict[str, Any]]:
    r = client.get(
        "/fhir/ImagingStudy", params={"identifier": f"urn:dicom:uid|urn:oid:{study_uid}"}
    )
    return [e["resource"] for e in r.json().get("entry", [])]


def test_a_failing_fhir_server_is_retried_then_the_study_syncs(
    container: Container, tmp_path: Path
) -> None:
    study = generate_uid()
    store_datasets(container.store, [make_instance(study_uid=study, patient_id="R-1")])
    with TestClient(create_app(container)) as client:
        http, flaky = peers(client, failures=3)
        HttpFhir("http://testserver/fhir", Http(client)).check_capabilities()
        w = worker(http, tmp_path / "state.json")
        w.run_until_idle()
        assert flaky.seen == 3  # three 500s, then success
        assert len(studies(client, study)) == 1
        assert w.cursor() > 0

        other = generate_uid()
        store_datasets(container.store, [make_instance(study_uid=other, patient_id="R-2")])
        down, _ = peers(client, failures=100, retries=2)
        stuck = worker(down, tmp_path / "state.json")  # a restart: the cursor is in the file
        before = stuck.cursor()
        assert before == w.cursor()
        with pytest.raises(StorageFailure):
            stuck.run_until_idle()
        assert stuck.cursor() == before and studies(client, other) == []
        up, _ = peers(client, failures=0)
        worker(up, tmp_path / "state.json").run_until_idle()
        assert len(studies(client, other)) == 1


def test_capabilities_are_checked(container: Container) -> None:
    with TestClient(create_app(container)) as client:
        cap = HttpFhir("http://testserver/fhir", Http(client)).check_capabilities()
        assert cap["fhirVersion"].startswith("4.0")
        with pytest.raises(StorageFailure):  # not a FHIR server at all
            HttpFhir("http://testserver/dicomweb", Http(client, retries=0)).check_capabilities()
    stu3 = {"resourceType": "CapabilityStatement", "fhirVersion": "3.0.2", "rest": []}
    old = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(200, json=stu3)))
    with pytest.raises(Unsupported, match="not R4"):
        HttpFhir("http://stu3.example/fhir", Http(old)).check_capabilities()


def test_standalone_links_a_report_that_arrives_later(container: Container, tmp_path: Path) -> None:
    study = generate_uid()
    store_datasets(container.store, [make_instance(study_uid=study, accession_number="L-1")])
    with TestClient(create_app(container)) as client:
        http, _ = peers(client, failures=0)
        fhir = HttpFhir("http://testserver/fhir", http)
        w = SyncWorker(store=HttpArchive("http://testserver/dicomweb", http), target=fhir,
                       settings=SyncSettings(), dicomweb_url="http://testserver/dicomweb",
                       state=FileState(tmp_path / "s.json"), fhir_changes=fhir.changes)  # fmt: skip
        w.run_until_idle()
        acsn = {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                     "code": "ACSN"}]}, "value": "L-1"}  # fmt: skip
        report = client.post("/fhir/DiagnosticReport", json={
            "resourceType": "DiagnosticReport", "status": "final", "code": {"text": "CT"},
            "identifier": [acsn]}).json()  # fmt: skip
        w.run_until_idle()
        linked = client.get(f"/fhir/DiagnosticReport/{report['id']}").json()
        s = studies(client, study)[0]
        assert linked["imagingStudy"] == [{"reference": f"ImagingStudy/{s['id']}"}]
