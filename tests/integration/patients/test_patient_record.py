"""The longitudinal patient record (issue 12) on a small synthetic hospital (FHIR, DICOM and a
whole-slide image imported, the sync making the ImagingStudies), on
SQLite and PostgreSQL: patient search; the timeline of a patient with osteosarcoma (biopsy,
pathology report, slide, knee MRs and the staging chest CT with their reports, chemotherapy
before surgery, disease status, tumour size trend); filters; a study's priors; AI results and
reader findings; the same timeline read over FHIR REST and QIDO-RS as from an external server;
the pages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medflow.bootstrap import Container, sync_worker
from medflow.ml.triage.results import Finding, risk_assessment
from medflow.ml.triage.worklist import reader_observation
from medflow.patients.service import PatientRecords
from medflow.patients.sources import RestSource
from medflow.synthetic.writer import generate
from tests.conftest import loaded_hospital

pytestmark = pytest.mark.integration
SEED, PATIENTS = 6, 8
"""Patient 0 of this hospital has osteosarcoma: biopsy, three knee MR studies and a staging
chest CT, MAP chemotherapy."""


@dataclass
class World:
    container: Container
    client: TestClient
    truth: list[dict[str, Any]]
    osteo: dict[str, Any]
    """The truth of the osteosarcoma patient."""
    pid: str
    """Their FHIR Patient id."""


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("patients-hospital")
    generate(root, patients=PATIENTS, seed=SEED, size=16, slides=True)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, hospital: Path,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:  # fmt: skip
    tmp = tmp_path_factory.mktemp(f"patients-{request.param}")
    truth = json.loads((hospital / "truth.json").read_text())
    osteo = next(t for t in truth if t["disease"] == "osteosarcoma")
    with loaded_hospital(hospital, request.param, tmp) as (container, client):
        slide = hospital / "pathology" / f"{osteo['slide']['slide_id']}.tiff"
        container.pathology.import_slide(path=slide)  # with its sidecar: the biopsy's case
        sync_worker(container).run_until_idle()  # as `medflow serve`'s sync thread does
        studies = client.get("/fhir/ImagingStudy", params={"_summary": "count"}).json()
        assert studies["total"] == len(container.store.find_studies())
        found = client.get("/api/patients", params={"identifier": osteo["mrn"]}).json()
        assert len(found["patients"]) == 1
        yield World(container, client, truth, osteo, found["patients"][0]["id"])


def timeline(world: World, **params: Any) -> dict[str, Any]:
    r = world.client.get(f"/api/patients/{world.pid}/timeline", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["server-timing"].startswith("timeline;dur=")
    body: dict[str, Any] = r.json()
    return body


def of_kind(body: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e for e in body["events"] if e["kind"] == kind]


def test_search_by_name_identifier_and_birth_date(world: World) -> None:
    patient = world.container.fhir.read(resource_type="Patient", res_id=world.pid)
    family, birth = patient["name"][0]["family"], patient["birthDate"]
    by_name = world.client.get("/api/patients", params={"name": family[:3].lower()}).json()
    assert world.pid in [p["id"] for p in by_name["patients"]]
    assert all(p["name"] for p in by_name["patients"])
    by_birth = world.client.get("/api/patients", params={"birthdate": birth}).json()
    assert world.pid in [p["id"] for p in by_birth["patients"]]
    both = world.client.get("/api/patients", params={"name": family, "birthdate": "1800"})
    assert both.json() == {"patients": []}  # every field must match
    hit = world.client.get(
        "/api/patients", params={"identifier": f"urn:medflow:mrn|{world.osteo['mrn']}"}
    ).json()
    assert [p["id"] for p in hit["patients"]] == [world.pid]
    assert hit["patients"][0]["identifiers"] == [{"system": "urn:medflow:mrn",
                                                  "value": world.osteo["mrn"]}]  # fmt: skip
    assert world.client.get("/api/patients").json() == {"patients": []}
    bad = world.client.get("/api/patients", params={"birthdate": "soon"})
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"


def test_the_osteosarcoma_history(world: World) -> None:
    body = timeline(world)
    header = body["header"]
    assert header["id"] == world.pid and header["identifiers"][0][1] == world.osteo["mrn"]
    assert header["age"] is not None and header["birth_date"]
    problem_list = " ".join(header["problems"])
    if world.osteo["outcome"] != "remission":
        assert "Osteosarcoma" in problem_list
    whens = [e["when"] for e in body["events"]]
    assert whens == sorted(whens, reverse=True)  # newest first

    biopsy = [e for e in of_kind(body, "procedure") if e["title"] == "Biopsy"]
    assert [e["when"][:10] for e in biopsy] == [world.osteo["biopsy"]]
    pathology = of_kind(body, "pathology")
    assert len(pathology) == 1 and "osteosarcoma" in pathology[0]["detail"].lower()
    assert pathology[0]["when"][:10] == world.osteo["biopsy"]
    slides = of_kind(body, "slide")
    assert len(slides) == 1 and slides[0]["thumbnail"] and slides[0]["study_uid"]

    studies = of_kind(body, "imaging")
    assert len(studies) == len(world.osteo["studies"]) == 4
    assert sorted(e["title"][:2] for e in studies) == ["CT", "MR", "MR", "MR"]  # knee, staging
    assert all(e["thumbnail"] for e in studies)
    assert all(any(n.startswith("Report: ") for n in e["notes"]) for e in studies)
    assert all("2 series" in e["detail"] for e in studies)
    staging = next(e for e in studies if e["title"].startswith("CT"))
    assert any("metasta" in n for n in staging["notes"])
    reports = of_kind(body, "report")
    assert {r["study_uid"] for r in reports} == {e["study_uid"] for e in studies}

    chemo = [e for e in of_kind(body, "medication")]
    assert {e["title"] for e in chemo} == {"methotrexate", "cisplatin", "doxorubicin"}
    surgery = next(e for e in of_kind(body, "procedure") if e["title"] == "Surgical procedure")
    assert all(world.osteo["biopsy"] < e["when"][:10] < surgery["when"][:10] for e in chemo)
    assert of_kind(body, "outcome") and of_kind(body, "encounter")
    grouped = [e for e in of_kind(body, "observation") if e["title"] == "Vital signs"]
    assert grouped and all(e["notes"] for e in grouped)

    size = next(t for t in body["trends"] if t["code"] == "http://loinc.org|21889-1")
    assert len(size["points"]) == 3 and size["unit"] == "mm"
    assert [p["date"] for p in size["points"]] == sorted(p["date"] for p in size["points"])
    assert body["trends"][0] is not None and body["trends"][0]["code"] == size["code"]
    assert sum(body["counts"].values()) == len(body["events"])


def test_filters(world: World) -> None:
    full = timeline(world)
    meds = timeline(world, kind=["medication", "procedure"])
    assert {e["kind"] for e in meds["events"]} == {"medication", "procedure"}
    assert len(meds["events"]) == full["counts"]["medication"] + full["counts"]["procedure"]
    assert meds["counts"] == full["counts"] and meds["kinds"] == ["medication", "procedure"]
    assert timeline(world, kind="imaging,pathology")["kinds"] == ["imaging", "pathology"]
    day = world.osteo["biopsy"]
    that_day = timeline(world, **{"from": day, "to": day})
    assert that_day["events"] and all(e["when"][:10] == day for e in that_day["events"])
    assert {"procedure", "pathology"} <= {e["kind"] for e in that_day["events"]}
    later = timeline(world, **{"from": day})
    assert all(e["when"][:10] >= day for e in later["events"])

    for params, word in (({"kind": "x-ray"}, "unknown kind"), ({"from": "2020-13-01"}, "from"),
                         ({"from": "2024-01-02", "to": "2024-01-01"}, "after")):  # fmt: skip
        bad = world.client.get(f"/api/patients/{world.pid}/timeline", params=params)
        assert bad.status_code == 400 and word in bad.json()["detail"], bad.text
    missing = world.client.get("/api/patients/no-such-patient/timeline")
    assert missing.status_code == 404 and missing.json()["title"] == "Not found"
    assert world.client.get("/api/patients/bad$id/timeline").status_code == 400


def test_priors_of_the_latest_study(world: World) -> None:
    full = timeline(world)
    knees = [e for e in of_kind(full, "imaging") if e["title"].startswith("MR")]
    chest = next(e for e in of_kind(full, "imaging") if e["title"].startswith("CT"))
    latest, *earlier = knees
    body = timeline(world, study=latest["study_uid"])
    assert body["study"]["uid"] == latest["study_uid"]
    priors = body["priors"]
    # the earlier knee MRs first (newest first), then the staging chest CT and the slide
    assert [p["study"]["uid"] for p in priors[:2]] == [e["study_uid"] for e in earlier]
    assert all(p["match"] == "modality+body part" for p in priors[:2])
    assert all(p["report"] and p["report_ref"].startswith("DiagnosticReport/") for p in priors[:2])
    assert latest["study_uid"] not in [p["study"]["uid"] for p in priors]
    staging = next(p for p in priors[2:] if p["study"]["uid"] == chest["study_uid"])
    assert staging["match"] == "other" and "metastatic" in staging["report"]
    assert all(p["match"] == "other" for p in priors[2:])
    assert timeline(world, study="1.2.3")["priors"] == []


def test_ai_results_and_reader_findings(world: World) -> None:
    study = of_kind(timeline(world), "imaging")[0]["study_uid"]
    finding = Finding(scheme="SCT", value="lesion", meaning="Bone lesion", probability=0.91,
                      threshold=0.5, model="knee", version=3)  # fmt: skip
    fhir = world.container.fhir
    fhir.create(resource=risk_assessment(finding=finding, patient_id=world.pid,
                                         imaging_study_id=None, study_uid=study))  # fmt: skip
    finding_resource = reader_observation(study_uid=study, patient_id=world.pid,
                                          imaging_study_id=None, reader="Reader^One",
                                          finding="lesion", code=None, positive=True)  # fmt: skip
    fhir.create(resource=finding_resource)
    body = timeline(world)
    ai, read = of_kind(body, "ai-result"), of_kind(body, "finding")
    assert len(ai) == 1 and ai[0]["study_uid"] == study and "0.91" in ai[0]["detail"]
    assert ai[0]["title"] == "medflow model knee:3"
    assert len(read) == 1 and read[0]["study_uid"] == study and "Reader^One" in read[0]["detail"]
    shown = next(e for e in body["events"] if e["kind"] == "imaging" and e["study_uid"] == study)
    assert any("knee:3" in n and "0.91" in n for n in shown["notes"])
    assert any("Reader finding" in n for n in shown["notes"])


def test_an_external_fhir_server_and_dicomweb_give_the_same_timeline(world: World) -> None:
    """RestSource over this server's FHIR REST ($everything, paged) and QIDO-RS, as over
    any external FHIR R4 server and DICOMweb service."""
    rest = PatientRecords(RestSource(fhir_url="http://testserver/fhir",
                                     dicomweb_url="http://testserver/dicomweb",
                                     client=world.client),
                          patient_system="urn:medflow:mrn")  # fmt: skip
    mine = world.container.patients.timeline(world.pid)
    theirs = rest.timeline(world.pid)
    assert theirs.header == mine.header
    assert [(e.kind, e.when, e.title, e.study_uid) for e in theirs.events] == [
        (e.kind, e.when, e.title, e.study_uid) for e in mine.events]  # fmt: skip
    assert theirs.trends == mine.trends
    assert [h.id for h in rest.search(identifier=world.osteo["mrn"])] == [world.pid]
    with pytest.raises(Exception, match=r"not found|no such"):
        rest.timeline("no-such-patient")


def test_the_pages(world: World) -> None:
    page = world.client.get(f"/patients/{world.pid}")
    assert page.status_code == 200 and page.headers["server-timing"].startswith("page;dur=")
    html = page.text
    assert 'id="timeline"' in html and "Biopsy" in html and "methotrexate" in html
    assert f"/dicomweb/studies/{of_kind(timeline(world), 'imaging')[0]['study_uid']}/thumbnail" \
        in html and 'loading="lazy"' in html  # fmt: skip
    filtered = world.client.get(f"/patients/{world.pid}", params={"kind": "medication"}).text
    assert "methotrexate" in filtered and "Biopsy" not in filtered
    bad = world.client.get(f"/patients/{world.pid}", params={"from": "later"}).text
    assert "not an ISO date" in bad and "Biopsy" in bad  # unfiltered, with the error
    assert world.client.get("/patients/nobody").status_code == 404

    search = world.client.get("/patients", params={"identifier": world.osteo["mrn"]})
    assert search.status_code == 200 and f"/patients/{world.pid}" in search.text
    study = of_kind(timeline(world), "imaging")[0]["study_uid"]
    go = world.client.get("/patients", params={"identifier": world.osteo["mrn"], "study": study},
                          follow_redirects=False)  # fmt: skip
    assert go.status_code == 303
    assert go.headers["location"] == f"/patients/{world.pid}?study={study}#priors"
    reading = world.client.get(f"/patients/{world.pid}", params={"study": study}).text
    assert 'id="priors-table"' in reading
    assert "No patient matches" in world.client.get("/patients", params={"name": "zzzz"}).text
    # the study page links to the patient's history
    assert f"/patients/{world.pid}?study={study}" in world.client.get(f"/studies/{study}").text
