"""Patient timeline benchmark (issue 12): server time of one patient's longitudinal record.

The measured patient has **20 imaging studies and 500 FHIR resources** (Patient excluded):
40 encounters, 8 conditions, 300 vital-sign and laboratory observations, 20 tumour sizes,
20 radiology orders and 20 reports (linked by accession), 40 medication requests, 30
procedures, 2 allergies, and the 20 ImagingStudies the DICOM → FHIR sync makes from the
archive. Around them, ``--background`` other patients (``_fhir_population``: ~100 resources
each) and their studies, so the indexes are not trivially small.

Timed, p50/p95 of ``--reps`` calls after 3 warm-ups, in process:

- ``timeline()``: ``PatientRecords.timeline`` (``Patient/$everything``, the archive's study
  queries, the build), and each part alone;
- ``GET /api/patients/{id}/timeline`` and ``GET /patients/{id}`` (the page, rendered) through
  the ASGI app (``Server-Timing`` and the client's wall time), with ``?study=`` (priors).

Target (issue 12): < 300 ms server time. No peer: the issue names none.

    .venv/bin/python bench/patient_timeline.py
    .venv/bin/python bench/patient_timeline.py --database-url postgresql://postgres@127.0.0.1/bench
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _fhir_population as pop
from _measure import percentile
from medflow.bootstrap import build, create_app, sync_worker
from medflow.core.settings import Settings
from medflow.patients.timeline import build as build_timeline

CACHE = Path(__file__).resolve().parent / ".cache" / "patient-timeline"
MRN = "BENCH-TL-0001"
TARGET_MS = 300.0
STUDIES = 20


def _cc(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def patient_bundle() -> dict[str, Any]:
    """The measured patient: 480 resources in one transaction (the sync adds 20)."""
    loinc, sct = "http://loinc.org", "http://snomed.info/sct"
    cat = "http://terminology.hl7.org/CodeSystem/observation-category"
    acsn = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                        "code": "ACSN"}]}  # fmt: skip
    subject = {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"}
    entries: list[dict[str, Any]] = [{
        "fullUrl": subject["reference"], "request": {"method": "POST", "url": "Patient"},
        "resource": {"resourceType": "Patient", "gender": "female", "birthDate": "1961-03-04",
                     "name": [{"family": "Timeline", "given": ["Bench"]}],
                     "identifier": [{"system": "urn:medflow:mrn", "value": MRN}]}}]  # fmt: skip

    def add(resource: dict[str, Any]) -> None:
        resource = {**resource, "subject": subject}
        entries.append({"request": {"method": "POST", "url": resource["resourceType"]},
                        "resource": resource})  # fmt: skip

    def day(i: int) -> str:
        return f"{2015 + i // 40:04d}-{1 + (i // 4) % 12:02d}-{1 + i % 28:02d}"

    for i in range(40):
        add({"resourceType": "Encounter", "status": "finished",
             "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                       "code": "AMB", "display": "ambulatory"},
             "type": [_cc(sct, "185349003", "Encounter for check up")],
             "period": {"start": day(i * 8), "end": day(i * 8)}})  # fmt: skip
    for i in range(8):
        add({"resourceType": "Condition", "code": _cc(sct, "307576001", f"Condition {i}"),
             "clinicalStatus": _cc("http://terminology.hl7.org/CodeSystem/condition-clinical",
                                   "active" if i % 2 else "resolved", "status"),
             "onsetDateTime": day(i * 40)})  # fmt: skip
    for i in range(300):
        vital = i % 3 != 0
        add({"resourceType": "Observation", "status": "final",
             "category": [_cc(cat, "vital-signs" if vital else "laboratory", "c")],
             "code": _cc(loinc, ("8867-4" if vital else "6768-6"),
                         "Heart rate" if vital else "Alkaline phosphatase"),
             "effectiveDateTime": day(i),
             "valueQuantity": {"value": 60 + i % 40,
                               "unit": "/min" if vital else "U/L"}})  # fmt: skip
    for i in range(STUDIES):
        add({"resourceType": "ServiceRequest", "status": "completed", "intent": "order",
             "identifier": [{"type": acsn, "value": f"BTL{i:04d}"}],
             "code": _cc(loinc, "24627-2", "CT CHEST"), "authoredOn": day(i * 16)})  # fmt: skip
        add({"resourceType": "DiagnosticReport", "status": "final",
             "category": [_cc("http://terminology.hl7.org/CodeSystem/v2-0074", "RAD", "Radiology")],
             "identifier": [{"type": acsn, "value": f"BTL{i:04d}"}],
             "code": _cc(loinc, "24627-2", "CT CHEST"), "effectiveDateTime": day(i * 16),
             "conclusion": f"Lesion measuring {30 + i} mm."})  # fmt: skip
        add({"resourceType": "Observation", "status": "final",
             "category": [_cc(cat, "imaging", "Imaging")],
             "code": _cc(loinc, "21889-1", "Size Tumor"), "effectiveDateTime": day(i * 16),
             "valueQuantity": {"value": 30 + i, "unit": "mm"}})  # fmt: skip
    for i in range(40):
        add({"resourceType": "MedicationRequest", "status": "completed", "intent": "order",
             "medicationCodeableConcept": _cc("http://www.nlm.nih.gov/research/umls/rxnorm",
                                              "6851", "methotrexate"),
             "authoredOn": day(i * 8),
             "dosageInstruction": [{"text": "per protocol"}]})  # fmt: skip
    for i in range(30):
        add({"resourceType": "Procedure", "status": "completed",
             "code": _cc(sct, "367336001", "Chemotherapy"),
             "performedDateTime": day(i * 10)})  # fmt: skip
    for i in range(2):
        add({"resourceType": "AllergyIntolerance", "code": {"text": f"Allergen {i}"},
             "clinicalStatus": _cc(
                 "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                 "active", "Active"), "patient": subject})  # fmt: skip
    for e in entries[1:]:
        if e["resource"]["resourceType"] == "AllergyIntolerance":
            e["resource"].pop("subject")
    assert len(entries) == 481
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def study_files(patient_id: str, accession: str, date: str, seed: int) -> list[bytes]:
    """A small CT study: two series of two 16x16 images."""
    study = generate_uid(entropy_srcs=[f"tl-{seed}-{patient_id}-{accession}"])
    out = []
    for s in range(2):
        series = generate_uid(entropy_srcs=[study, str(s)])
        for n in range(2):
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            ds.SOPInstanceUID = generate_uid(entropy_srcs=[series, str(n)])
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.PatientID, ds.PatientName = patient_id, "Timeline^Bench"
            ds.AccessionNumber, ds.StudyDate, ds.Modality = accession, date, "CT"
            ds.StudyDescription, ds.BodyPartExamined = "CT CHEST", "CHEST"
            ds.SeriesNumber, ds.InstanceNumber = s + 1, n + 1
            ds.Rows = ds.Columns = 16
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
            ds.PixelData = (np.arange(256, dtype=np.uint16) * (n + 1)).tobytes()
            buf = io.BytesIO()
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            out.append(buf.getvalue())
    return out


def stow(client: Any, files: list[bytes]) -> None:
    boundary = "tl-bench-boundary"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + f + b"\r\n" for f in files) + f"--{boundary}--\r\n".encode()  # fmt: skip
    r = client.post(
        "/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'
        },
    )
    assert r.status_code == 200, r.text[:300]


def timed(fn: Callable[[], Any], reps: int) -> list[float]:
    for _ in range(3):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def server_ms(client: Any, url: str, reps: int) -> tuple[list[float], list[float]]:
    wall, server = [], []
    for i in range(reps + 3):
        t = time.perf_counter()
        r = client.get(url)
        elapsed = (time.perf_counter() - t) * 1000
        assert r.status_code == 200, r.text[:300]
        if i >= 3:
            wall.append(elapsed)
            server.append(float(r.headers["server-timing"].split("dur=")[1]))
    return wall, server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--background", type=int, default=300, help="other patients (FHIR)")
    ap.add_argument("--background-studies", type=int, default=300)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    from fastapi.testclient import TestClient

    shutil.rmtree(CACHE, ignore_errors=True)
    settings = Settings(data_dir=CACHE, database_url=args.database_url)
    container = build(settings)
    t0 = time.perf_counter()
    with TestClient(create_app(container)) as client:
        for body, _ in pop.bundles(7, 0, args.background, per_bundle=10):
            r = client.post("/fhir", content=body,
                            headers={"Content-Type": "application/fhir+json"})  # fmt: skip
            assert r.status_code == 200, r.text[:300]
        for i in range(args.background_studies):
            stow(client, study_files(pop.mrn(i % max(1, args.background)), f"BG{i:05d}",
                                     f"{2010 + i % 15}0{1 + i % 9}15", 7))  # fmt: skip
        r = client.post("/fhir", json=patient_bundle(),
                        headers={"Content-Type": "application/fhir+json"})  # fmt: skip
        assert r.status_code == 200, r.text[:300]
        for i in range(STUDIES):
            d = f"{2015 + (i * 16) // 40:04d}{1 + ((i * 16) // 4) % 12:02d}{1 + (i * 16) % 28:02d}"
            stow(client, study_files(MRN, f"BTL{i:04d}", d, 7))
        pid = client.get("/api/patients", params={"identifier": MRN}).json()["patients"][0]["id"]
        sync_worker(container).run_until_idle()  # as `medflow serve`'s sync thread does
        n = client.get(f"/fhir/ImagingStudy?subject=Patient/{pid}&_summary=count").json()
        assert n["total"] == STUDIES, n
        load_s = time.perf_counter() - t0
        records = container.patients
        resources = records.source.compartment(pid)
        counts: dict[str, int] = {}
        for res in resources[1:]:
            counts[res["resourceType"]] = counts.get(res["resourceType"], 0) + 1
        t = records.timeline(pid)
        studies_n = sum(1 for e in t.events if e.kind == "imaging")
        latest = next(e.study_uid for e in t.events if e.kind == "imaging")
        ids = records.dicom_patient_ids(resources[0])
        uids = {u for r in resources if (u := _uid(r))}
        studies = records.source.studies(patient_ids=ids, study_uids=uids)
        from datetime import date

        rows: list[tuple[str, list[float]]] = [
            ("timeline() in process", timed(lambda: records.timeline(pid), args.reps)),
            (
                "  $everything (compartment)",
                timed(lambda: records.source.compartment(pid), args.reps),
            ),
            (
                "  archive study queries",
                timed(lambda: records.source.studies(patient_ids=ids, study_uids=uids), args.reps),
            ),
            (
                "  build (pure)",
                timed(
                    lambda: build_timeline(
                        patient=resources[0],
                        resources=resources[1:],
                        studies=studies,
                        today=date.today(),
                    ),
                    args.reps,
                ),
            ),
        ]
        for label, url in (("GET /api/patients/{id}/timeline", f"/api/patients/{pid}/timeline"),
                           ("GET /patients/{id} (page)", f"/patients/{pid}"),
                           ("GET /patients/{id}?study= (priors)",
                            f"/patients/{pid}?study={latest}")):  # fmt: skip
            wall, server = server_ms(client, url, args.reps)
            rows.append((label + " server", server))
            rows.append((label + " client wall", wall))
    container.close()
    db = "PostgreSQL" if args.database_url else "SQLite"
    print(f"\nPatient timeline ({db}; {len(resources) - 1} resources: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f"; {studies_n} studies in the timeline; {len(t.events)} events; background "
          f"{args.background} patients, {args.background_studies} studies; loaded in "
          f"{load_s:.0f} s)\n")  # fmt: skip
    print(f"{'measure':44} {'p50 ms':>8} {'p95 ms':>8}  target < {TARGET_MS:.0f} ms")
    for label, values in rows:
        p95 = percentile(values, 95)
        ok = "" if "wall" in label or label.startswith("  ") else (
            "  met" if p95 < TARGET_MS else "  MISSED")  # fmt: skip
        print(f"{label:44} {percentile(values, 50):8.1f} {p95:8.1f}{ok}")


def _uid(resource: dict[str, Any]) -> str | None:
    from medflow.patients.timeline import study_uid_of

    return study_uid_of(resource) if resource.get("resourceType") == "ImagingStudy" else None


if __name__ == "__main__":
    main()
