"""The training manifest (Parquet, written by ``medflow.labels``): one row per labelled frame.

``read_manifest`` is the one place that reads it; it will be replaced by
``medflow.labels.manifest.read_manifest`` once that exists (same schema)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from medflow.core.errors import InvalidInput

COLUMNS: dict[str, pa.DataType] = {
    "sop_instance_uid": pa.string(),
    "frame": pa.int64(),
    "study_uid": pa.string(),
    "series_uid": pa.string(),
    "patient_id": pa.string(),
    "label": pa.string(),
    "value": pa.int64(),
    "roi": pa.string(),
    "source_uid": pa.string(),
    "label_set": pa.string(),
    "label_set_version": pa.int64(),
    "split": pa.string(),
}
SPLITS = ("train", "val", "test")


def read_manifest(path: Path) -> pa.Table:
    """The manifest's rows with the columns checked (``InvalidInput`` otherwise): every column
    present (integers widened to int64), splits among train/val/test and disjoint by patient."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise InvalidInput(f"cannot read the manifest {path.name}: {exc}") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise InvalidInput(f"the manifest lacks the columns {', '.join(missing)}")
    try:
        table = table.select(list(COLUMNS)).cast(pa.schema(list(COLUMNS.items())))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise InvalidInput(f"manifest column types: {exc}") from None
    rows = table.select(["patient_id", "split"]).to_pylist()
    seen: dict[str, str] = {}
    for row in rows:
        if row["split"] not in SPLITS:
            raise InvalidInput(f"unknown split {row['split']!r}")
        if seen.setdefault(row["patient_id"], row["split"]) != row["split"]:
            raise InvalidInput("a patient is in more than one split")
    return table


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        while chunk := fp.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
