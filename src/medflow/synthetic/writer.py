"""Write the synthetic hospital to a folder (``medflow demo generate``)::

    OUT/fhir/<MRN>.json        one transaction Bundle per patient (conditional creates)
    OUT/dicom/<StudyUID>/<SeriesNumber>-<InstanceNumber>.dcm
    OUT/pathology/<SlideID>.tiff  one H&E whole-slide image per biopsied patient (Aperio SVS
                               flavoured tiled pyramidal TIFF, JPEG tiles; see ``pathology``)
    OUT/pathology/<SlideID>.json  its identifiers for the DICOM conversion (no diagnosis)
    OUT/truth.json             the ground truth (diagnosis, outcome, finding per accession, the
                               slide's malignancy and tumour boxes)
    OUT/hospital.json          seed, patient count, slide count and size, generator version

Deterministic: the same seed and options give the same bytes. ``medflow demo load`` sends the
FHIR and DICOM folders through the public APIs (FHIR first, then DICOM); the slides are not
loaded: the pathology conversion (wsidicomizer) turns them into DICOM WSI.

``slides=False`` writes no slides; ``metadata_only`` writes one-tile slides
(:data:`~medflow.synthetic.pathology.METADATA_ONLY_SIZE` pixels, one level) with the same
identifiers, as it writes 8 x 8 DICOM pixels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medflow.synthetic import pathology
from medflow.synthetic.clinical import ground_truth, patient_bundle
from medflow.synthetic.imaging import study_datasets
from medflow.synthetic.plan import plan_patient

VERSION = 2


@dataclass
class Generated:
    patients: int = 0
    resources: int = 0
    studies: int = 0
    instances: int = 0
    slides: int = 0


def generate(
    out: Path,
    *,
    patients: int,
    seed: int = 0,
    metadata_only: bool = False,
    size: int | None = None,
    slides: bool = True,
    slide_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Generated:
    """Write ``patients`` patients of the hospital ``seed`` under ``out`` (created).

    ``size``: the DICOM matrix (default per modality); ``slides``: write a slide per biopsied
    patient; ``slide_size``: its base level's side, a power of two from 256 to 16384 (default
    :data:`~medflow.synthetic.pathology.DEFAULT_SIZE`; ``InvalidInput`` otherwise)."""
    side = pathology.METADATA_ONLY_SIZE if metadata_only else slide_size or pathology.DEFAULT_SIZE
    pathology.check_size(side)
    fhir_dir, dicom_dir, slide_dir = out / "fhir", out / "dicom", out / "pathology"
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
        record = ground_truth(plan)
        if slides and plan.biopsy is not None:
            pathology.write_slide(plan, slide_dir, size=side)
            record["slide"] = pathology.slide_truth(plan, side)
            done.slides += 1
        truth.append(record)
        done.patients += 1
        if progress is not None:
            progress(index + 1)
    (out / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    meta = {"generator": "medflow.synthetic", "version": VERSION, "seed": seed,
            "patients": patients, "metadata_only": metadata_only, "slides": done.slides,
            "slide_size": side if slides else None}  # fmt: skip
    (out / "hospital.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return done
