"""A synthetic hospital's FHIR records and studies de-identified together into a second data
dir (``copy_deidentified``, what ``medflow deid copy`` runs), on SQLite and PostgreSQL: the
pseudonymous ImagingStudy points at the pseudonymous Patient and carries the de-identified
study UID, which the second archive holds under the same pseudonymous PatientID; intervals
between a patient's FHIR and DICOM dates are preserved; none of the source's names, MRNs,
birth dates, addresses or UIDs is anywhere in the copy; the same key gives the same copy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from medflow.bootstrap import Container, build, create_app, sync_worker
from medflow.core.settings import DeidSettings, Settings
from medflow.deid.service import Deidentification, copy_deidentified, current_resources
from medflow.fhir.identifiers import MRN_SYSTEM
from medflow.synthetic.writer import generate
from tests.conftest import database_url, loaded_hospital

pytestmark = pytest.mark.integration
KEY = "integration-test-key-0123456789"
PATIENTS, SEED = 8, 21


@dataclass
class Copy:
    source: Container
    source_client: TestClient
    target: Container
    target_client: TestClient
    deid: Deidentification


def synced(container: Container) -> None:
    """What ``medflow serve``'s sync worker does, run to the end of the change feeds."""
    sync_worker(container).run_until_idle()


def qido_studies(client: TestClient) -> list[dict[str, Any]]:
    r = client.get("/dicomweb/studies", params={"limit": "1000", "includefield": "00080020"})
    assert r.status_code == 200, r.text
    return list(r.json())


def deidentification() -> Deidentification:
    return Deidentification.from_settings(Settings(deid=DeidSettings(key=SecretStr(KEY))))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("deid-hospital")
    generate(root, patients=PATIENTS, seed=SEED, size=16, slides=False)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def copied(
    request: pytest.FixtureRequest, generated: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Copy]:
    tmp = tmp_path_factory.mktemp(f"deid-copy-{request.param}")
    with loaded_hospital(generated, request.param, tmp / "source") as (source, client):
        synced(source)
        for url in database_url(request.param, tmp / "target"):
            target = build(Settings(data_dir=tmp / "target" / "data", database_url=url))
            try:
                deid = deidentification()
                copy_deidentified(deid, source_store=source.store, source_fhir=source.fhir,
                                  target_store=target.store, target_fhir=target.fhir)  # fmt: skip
                with TestClient(create_app(target)) as target_client:
                    yield Copy(source, client, target, target_client, deid)
            finally:
                target.close()


def _all(client: TestClient, rtype: str) -> list[dict[str, Any]]:
    bundle = client.get(f"/fhir/{rtype}", params={"_count": "1000"}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def test_imaging_study_points_at_pseudonymous_patient_and_study(copied: Copy) -> None:
    c, keys = copied.target_client, copied.deid.keys
    source_patients = _all(copied.source_client, "Patient")
    mrns = {p["id"]: next(i["value"] for i in p["identifier"] if i["system"] == MRN_SYSTEM)
            for p in source_patients}  # fmt: skip
    patients = {p["id"]: p for p in _all(c, "Patient")}
    assert set(patients) == {keys.patient_pseudonym(MRN_SYSTEM, m) for m in mrns.values()}
    for pid, patient in patients.items():
        assert patient["identifier"] == [{"system": MRN_SYSTEM, "value": pid}]
        assert "name" not in patient and "telecom" not in patient
        for address in patient.get("address", []):  # generalized: nothing below a state
            assert set(address) <= {"use", "type", "state", "country", "period"}

    studies = {s["0020000D"]["Value"][0]: s for s in qido_studies(c)}
    source_studies = qido_studies(copied.source_client)
    assert set(studies) == {keys.uid(s["0020000D"]["Value"][0]) for s in source_studies}
    synced(copied.target)  # the second server's sync, over the copied archive
    imaging = _all(c, "ImagingStudy")
    assert len(imaging) == len(studies)
    for study in imaging:
        uid = next(i["value"] for i in study["identifier"] if i["system"] == "urn:dicom:uid")
        uid = uid.removeprefix("urn:oid:")
        assert uid in studies
        patient_id = study["subject"]["reference"].removeprefix("Patient/")
        assert patient_id in patients
        assert studies[uid]["00100020"]["Value"][0] == patient_id  # DICOM PatientID = pseudonym


def _day(value: str) -> date:
    return date.fromisoformat(value[:10])


def test_intervals_between_fhir_and_dicom_dates_preserved(copied: Copy) -> None:
    keys = copied.deid.keys

    def onsets(client: TestClient) -> dict[str, date]:
        out = {}
        for cond in _all(client, "Condition"):
            if "onsetDateTime" in cond:
                out[cond["subject"]["reference"].removeprefix("Patient/")] = _day(
                    cond["onsetDateTime"])  # fmt: skip
        return out

    def study_days(client: TestClient) -> dict[str, tuple[str, date]]:
        return {s["0020000D"]["Value"][0]: (s["00100020"]["Value"][0],
                                            _day(_da(s["00080020"]["Value"][0])))
                for s in qido_studies(client) if s.get("00080020", {}).get("Value")}  # fmt: skip

    source_ids = {p["id"]: next(i["value"] for i in p["identifier"] if i["system"] == MRN_SYSTEM)
                  for p in _all(copied.source_client, "Patient")}  # fmt: skip
    by_mrn = {mrn: pid for pid, mrn in source_ids.items()}
    src_onset, dst_onset = onsets(copied.source_client), onsets(copied.target_client)
    dst_days = study_days(copied.target_client)
    compared = 0
    for uid, (mrn, day) in study_days(copied.source_client).items():
        pid = by_mrn.get(mrn)
        if pid is None or pid not in src_onset:
            continue
        new_pid = keys.patient_pseudonym(MRN_SYSTEM, mrn)
        new_patient, new_day = dst_days[keys.uid(uid)]
        assert new_patient == new_pid
        assert new_day != day  # shifted
        assert (new_day - dst_onset[new_pid]) == (day - src_onset[pid])
        compared += 1
    assert compared > 0


def _da(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if "-" not in value else value


def test_no_source_phi_in_the_copy(copied: Copy) -> None:
    phi: set[str] = set()
    for p in _all(copied.source_client, "Patient"):
        for name in p.get("name", []):
            phi.update(x for x in [name.get("family", ""), *name.get("given", [])] if len(x) > 3)
        phi.update(i["value"] for i in p.get("identifier", []))
        phi.add(p["birthDate"])
        phi.update(line for a in p.get("address", []) for line in a.get("line", []))
    for s in qido_studies(copied.source_client):
        phi.add(s["0020000D"]["Value"][0])
        phi.update(
            str(v) for tag in ("00100020", "00080050") for v in s.get(tag, {}).get("Value", [])
        )
    phi.update(p["id"] for p in _all(copied.source_client, "Patient"))
    phi = {x for x in phi if len(x) >= 4}
    assert phi
    fhir_text = "\n".join(json.dumps(r) for r in current_resources(copied.target.fhir))
    leaked = {x for x in phi if x in fhir_text}
    assert not leaked, f"{len(leaked)} source values in the FHIR copy"
    blobs = b"".join(
        b"".join(copied.target.store.iter_bytes(r))
        for s in qido_studies(copied.target_client)
        for r in copied.target.store.find_instances(study_uid=s["0020000D"]["Value"][0])
    )
    leaked = {x for x in phi if x.encode() in blobs}
    assert not leaked, f"{len(leaked)} source values in the DICOM copy"


def test_same_key_same_copy(copied: Copy, tmp_path: Path) -> None:
    """A second copy with the same key into a fresh data dir holds the same ids and UIDs;
    running the copy again over the first target adds nothing."""
    again = build(Settings(data_dir=tmp_path / "again"))
    try:
        copy_deidentified(deidentification(), source_store=copied.source.store,
                          source_fhir=copied.source.fhir, target_store=again.store,
                          target_fhir=again.fhir)  # fmt: skip
        first = {(r["resourceType"], r["id"]) for r in current_resources(copied.target.fhir)
                 if r["resourceType"] not in ("ImagingStudy", "Endpoint")}  # fmt: skip
        second = {(r["resourceType"], r["id"]) for r in current_resources(again.fhir)}
        assert first <= second
        assert again.store.counts() == copied.target.store.counts()
    finally:
        again.close()
    before = copied.target.store.counts()
    copy_deidentified(deidentification(), source_store=copied.source.store,
                      source_fhir=copied.source.fhir, target_store=copied.target.store,
                      target_fhir=copied.target.fhir)  # fmt: skip
    assert copied.target.store.counts() == before
