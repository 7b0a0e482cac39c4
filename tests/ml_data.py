"""Training manifests for tests: the synthetic hospital's chest X-rays (CR) labelled from its
``truth.json`` (``finding`` 1 when the accession's finding is not empty, ``normal`` 0), split
by patient and stratified by class so that every split has both classes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom

from medflow.ml.train.manifest import COLUMNS


def write_manifest(rows: list[dict[str, Any]], path: Path) -> Path:
    table = pa.Table.from_pylist(rows, schema=pa.schema(list(COLUMNS.items())))
    pq.write_table(table, path)
    return path


def cr_rows(folder: Path, *, fractions: tuple[float, float, float] = (0.5, 0.25, 0.25),
            seed: int = 0) -> list[dict[str, Any]]:  # fmt: skip
    findings = {acc: f for rec in json.loads((folder / "truth.json").read_text())
                for acc, f in rec["studies"].items()}  # fmt: skip
    rows = []
    for path in sorted((folder / "dicom").glob("*/*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality != "CR":
            continue
        positive = bool(findings[ds.AccessionNumber])
        rows.append({
            "sop_instance_uid": ds.SOPInstanceUID, "frame": 1, "study_uid": ds.StudyInstanceUID,
            "series_uid": ds.SeriesInstanceUID, "patient_id": ds.PatientID,
            "label": "finding" if positive else "normal", "value": int(positive), "roi": None,
            "source_uid": "", "label_set": "cxr-finding", "label_set_version": 1, "split": "",
        })  # fmt: skip
    # patient-disjoint, stratified by the patient's (first) label
    by_class: dict[int, list[str]] = {}
    first: dict[str, int] = {}
    for r in rows:
        first.setdefault(r["patient_id"], r["value"])
    for pid, value in first.items():
        by_class.setdefault(value, []).append(pid)
    split_of: dict[str, str] = {}
    for pids in by_class.values():
        pids.sort(key=lambda p: hashlib.sha256(f"{seed}:{p}".encode()).hexdigest())
        n_train = round(len(pids) * fractions[0])
        n_val = round(len(pids) * fractions[1])
        for i, pid in enumerate(pids):
            split_of[pid] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    for r in rows:
        r["split"] = split_of[r["patient_id"]]
    return rows


_HOSPITALS: dict[tuple[int, int, int], Path] = {}


def chest_hospital(tmp_path_factory: Any, patients: int = 40, seed: int = 3,
                   size: int = 32) -> Path:  # fmt: skip
    """The synthetic hospital the ML tests share (no slides), generated once per test process
    (per xdist worker): modules only read it (they load it into their own data dirs)."""
    from medflow.synthetic.writer import generate

    key = (patients, seed, size)
    if key not in _HOSPITALS:
        folder = tmp_path_factory.getbasetemp() / f"chest-hospital-{patients}-{seed}-{size}"
        generate(folder, patients=patients, seed=seed, size=size, slides=False)
        _HOSPITALS[key] = folder
    return _HOSPITALS[key]
