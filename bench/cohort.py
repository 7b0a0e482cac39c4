"""Cohort benchmark (issue 7): the reference query ("all the medications prescribed, with all the
CT studies and their associated radiology reports, for any patient older than 45 who had a
diagnosis of osteosarcoma over the last 2 years", docs/examples/osteosarcoma.yaml) on a
synthetic hospital of ``--patients`` patients.

1. FHIR: each patient's transaction Bundle (``medflow.synthetic.clinical``) written in-process
   through the FHIR service into a data dir under ``bench/.cache/cohort-<N>`` (kept: a later
   run with the same N reuses it; ``--fresh`` rebuilds). 10k patients ~ 1M resources take
   ~17 min on 2 cores.
2. DICOM: the metadata-only studies (8x8 pixels) of the first ``--dicom-patients`` patients
   stored through the store service (the archive part of the query reads the final patients'
   studies only, so this is not on the query's critical path).
3. The reference query, ``--reps`` times after one warm-up: p50/p95/max, the attrition and the
   number of patients, medications, studies and reports found.

    .venv/bin/python bench/cohort.py --patients 1000            # quick
    .venv/bin/python bench/cohort.py                            # 10,000 patients (target < 1 s)

Target (issue 7): < 1 s at 10k patients. No peer runs here; run by hand, never by tests.
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from medflow.bootstrap import Container, build  # noqa: E402
from medflow.cohort.schema import load_definition  # noqa: E402
from medflow.cohort.service import CohortService  # noqa: E402
from medflow.core.settings import Settings  # noqa: E402
from medflow.fhir.bundles import transaction  # noqa: E402
from medflow.store.spool import spool_stream  # noqa: E402
from medflow.synthetic.clinical import patient_bundle  # noqa: E402
from medflow.synthetic.imaging import study_datasets  # noqa: E402
from medflow.synthetic.plan import plan_patient  # noqa: E402

SEED = 8


def fill(container: Container, patients: int, dicom_patients: int) -> None:
    start = time.perf_counter()
    for i in range(patients):
        transaction(container.fhir, patient_bundle(plan_patient(SEED, i)))
        if i % 1000 == 999:
            print(f"  fhir: {i + 1} patients, {time.perf_counter() - start:.0f} s", flush=True)
    store = container.store
    for i in range(min(patients, dicom_patients)):
        plan = plan_patient(SEED, i)
        for study in plan.studies:
            objects = []
            for ds in study_datasets(plan, study, metadata_only=True):
                buf = io.BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                buf.seek(0)
                objects.append(spool_stream(buf, store.spool_dir))
            store.store(objects=objects)
    print(f"  loaded in {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--dicom-patients", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--fresh", action="store_true")
    args = ap.parse_args()
    data = REPO / "bench" / ".cache" / f"cohort-{args.patients}"
    if args.fresh:
        shutil.rmtree(data, ignore_errors=True)
    ready = (data / "ready").exists()
    container = build(Settings(data_dir=data))
    try:
        if not ready:
            fill(container, args.patients, args.dicom_patients)
            (data / "ready").write_text("1\n")
        service = CohortService(store=container.store, fhir=container.fhir)
        definition = load_definition(REPO / "docs" / "examples" / "osteosarcoma.yaml")
        result = service.evaluate(definition)  # warm-up
        times = []
        for _ in range(args.reps):
            t = time.perf_counter()
            result = service.evaluate(definition)
            times.append(time.perf_counter() - t)
    finally:
        container.close()
    times.sort()
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    found = result.to_dict()
    print(f"\ncohort: reference query, {args.patients} patients (seed {SEED}), SQLite")
    for step in found.get("attrition", []):
        print(f"  {step['criterion']:<40} {step['patients']}")
    print(f"{'p50':<6} {statistics.median(times) * 1000:8.1f} ms")
    print(f"{'p95':<6} {p95 * 1000:8.1f} ms   target < 1000 ms: {'met' if p95 < 1 else 'MISSED'}")
    print(f"{'max':<6} {times[-1] * 1000:8.1f} ms")
    found_patients = found["patients"]
    counts = {k: sum(len(p["resources"].get(k, [])) for p in found_patients)
              for k in ("MedicationRequest", "DiagnosticReport")}  # fmt: skip
    studies = sum(len(p["studies"]) for p in found_patients)
    print(f"found: {len(found_patients)} patients, {counts['MedicationRequest']} medications, "
          f"{studies} CT studies, {counts['DiagnosticReport']} reports")  # fmt: skip


if __name__ == "__main__":
    main()
