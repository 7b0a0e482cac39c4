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

import contextlib
import itertools
import json
import multiprocessing
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class Cancelled(Exception):
    """``generate`` was cancelled (its ``cancelled`` callback answered True)."""


@dataclass(frozen=True)
class _Job:
    out: Path
    seed: int
    metadata_only: bool
    size: int | None
    slides: bool
    side: int


def generate(
    out: Path,
    *,
    patients: int,
    seed: int = 0,
    metadata_only: bool = False,
    size: int | None = None,
    slides: bool = True,
    slide_size: int | None = None,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Generated:
    """Write ``patients`` patients of the hospital ``seed`` under ``out`` (created).

    ``size``: the DICOM matrix (default per modality); ``slides``: write a slide per biopsied
    patient; ``slide_size``: its base level's side, a power of two from 256 to 16384 (default
    :data:`~medflow.synthetic.pathology.DEFAULT_SIZE`; ``InvalidInput`` otherwise);
    ``workers`` > 1: patients are written by that many processes (started with ``spawn``, so
    a caller with threads is safe); every file is the same as with one. What an earlier run
    wrote under ``out`` is removed first, so the folder holds exactly this hospital.
    ``cancelled`` is asked between patients: when it answers True, the patients not begun are
    dropped and ``Cancelled`` is raised (``hospital.json`` is then absent)."""
    side = pathology.METADATA_ONLY_SIZE if metadata_only else slide_size or pathology.DEFAULT_SIZE
    pathology.check_size(side)
    for name in ("hospital.json", "truth.json"):
        (out / name).unlink(missing_ok=True)
    for folder in ("fhir", "dicom", "pathology"):
        shutil.rmtree(out / folder, ignore_errors=True)
    for folder in ("fhir", "dicom"):
        (out / folder).mkdir(parents=True)
    job = _Job(out, seed, metadata_only, size, slides, side)
    done = Generated()
    truth = []
    pool: ProcessPoolExecutor | None = None
    with contextlib.ExitStack() as stack:
        if workers > 1 and patients > 1:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            # On an error or a cancel, drop the queued patients instead of waiting for them.
            stack.callback(pool.shutdown, wait=False, cancel_futures=True)
            chunk = max(1, min(16, patients // (workers * 8)))
            results = pool.map(_write_patient, itertools.repeat(job), range(patients),
                               chunksize=chunk)  # fmt: skip
        else:
            results = map(_write_patient, itertools.repeat(job), range(patients))
        for index, (counts, record) in enumerate(results):
            if cancelled is not None and cancelled():
                raise Cancelled(f"generation cancelled after {index} patients")
            done.resources += counts.resources
            done.studies += counts.studies
            done.instances += counts.instances
            done.slides += counts.slides
            done.patients += 1
            truth.append(record)
            if progress is not None:
                progress(index + 1)
        if pool is not None:
            pool.shutdown(wait=True)  # every patient is written: let the workers exit
    (out / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    meta = {"generator": "medflow.synthetic", "version": VERSION, "seed": seed,
            "patients": patients, "metadata_only": metadata_only, "slides": done.slides,
            "slide_size": side if slides else None}  # fmt: skip
    (out / "hospital.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return done


def _write_patient(job: _Job, index: int) -> tuple[Generated, dict[str, Any]]:
    """Write one patient's Bundle, studies and slide; its counts and ground truth."""
    done = Generated(patients=1)
    plan = plan_patient(job.seed, index)
    bundle = patient_bundle(plan)
    text = json.dumps(bundle, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    (job.out / "fhir" / f"{plan.mrn}.json").write_text(text + "\n", encoding="utf-8")
    done.resources += len(bundle["entry"])
    for study in plan.studies:
        folder = job.out / "dicom" / study.study_uid
        folder.mkdir(exist_ok=True)
        for ds in study_datasets(plan, study, size=job.size, metadata_only=job.metadata_only):
            name = f"{int(ds.SeriesNumber)}-{int(ds.InstanceNumber)}.dcm"
            ds.save_as(folder / name, enforce_file_format=True)
            done.instances += 1
        done.studies += 1
    record = ground_truth(plan)
    if job.slides and plan.biopsy is not None:
        pathology.write_slide(plan, job.out / "pathology", size=job.side)
        record["slide"] = pathology.slide_truth(plan, job.side)
        done.slides += 1
    return done, record
