"""Write the synthetic hospital to a folder (``medflow demo generate``)::

    OUT/fhir/<MRN>.json        one transaction Bundle per patient (conditional creates)
    OUT/dicom/<StudyUID>/<SeriesNumber>-<InstanceNumber>.dcm
    OUT/truth.json             the ground truth (diagnosis, outcome, finding per accession)
    OUT/hospital.json          seed, patient count, generator version

Deterministic: the same seed and count give the same bytes. ``medflow demo load`` sends the
folder through the public APIs (FHIR first, then DICOM).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medflow.synthetic.clinical import ground_truth, patient_bundle
from medflow.synthetic.imaging import study_datasets
from medflow.synthetic.plan import plan_patient

VERSION = 1


@dataclass
class Generated:
    patients: int = 0
    resources: int = 0
    studies: int = 0
    instances: int = 0


def generate(
    out: Path,
    *,
    patients: int,
    seed: int = 0,
    metadata_only: bool = False,
    size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Generated:
    """Write ``patients`` patients of the hospital ``seed`` under ``out`` (created)."""
    fhir_dir, dicom_dir = out / "fhir", out / "dicom"
    fhir_dir.mkdir(parents=True, exist_ok=True)
    dicom_dir.mkdir(parents=True, exist_ok=True)
    done = Generated()
    truth = []
    for index in range(patients):
        plan = plan_patient(seed, index)
        bundle = patient_bundle(plan)
        text = json.dumps(bundle, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        (fhir_dir / f"{plan.mrn}.json").write_text(text + "\n", encoding="utf-8")
        done.resources += len(bundle["entry"])
        for study in plan.studies:
            folder = dicom_dir / study.study_uid
            folder.mkdir(exist_ok=True)
            for ds in study_datasets(plan, study, size=size, metadata_only=metadata_only):
                name = f"{int(ds.SeriesNumber)}-{int(ds.InstanceNumber)}.dcm"
                ds.save_as(folder / name, enforce_file_format=True)
                done.instances += 1
            done.studies += 1
        truth.append(ground_truth(plan))
        done.patients += 1
        if progress is not None:
            progress(index + 1)
    (out / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    meta = {"generator": "medflow.synthetic", "version": VERSION, "seed": seed,
            "patients": patients, "metadata_only": metadata_only}  # fmt: skip
    (out / "hospital.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return done
