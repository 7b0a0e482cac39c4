"""The training manifest (Parquet, written by ``medflow labels export``): one row per labelled
frame. The schema and the reader are :mod:`medflow.labels.manifest`'s (one definition); this
module turns its errors into ``InvalidInput`` and adds what training needs to hold: known
splits, and no patient in two of them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from medflow.core.errors import InvalidInput
from medflow.labels.manifest import MANIFEST_SCHEMA, SPLITS
from medflow.labels.manifest import read_manifest as read_table

COLUMNS: dict[str, pa.DataType] = {f.name: f.type for f in MANIFEST_SCHEMA}
"""The manifest's columns and types, in order (:data:`medflow.labels.manifest.MANIFEST_SCHEMA`)."""


def read_manifest(path: Path) -> pa.Table:
    """The manifest's rows, checked (``InvalidInput`` otherwise): exactly the manifest's
    columns, the rows' recorded SHA-256 when there is one, splits among train/val/test and
    disjoint by patient."""
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid) as exc:
        raise InvalidInput(f"cannot read the manifest {path.name}: {exc}") from None
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise InvalidInput(f"the manifest lacks the columns {', '.join(missing)}")
    try:
        table = read_table(path)
    except (OSError, ValueError, pa.ArrowNotImplementedError) as exc:
        raise InvalidInput(f"the manifest {path.name}: {exc}") from None
    seen: dict[str, str] = {}
    for row in table.select(["patient_id", "split"]).to_pylist():
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


__all__ = ["COLUMNS", "SPLITS", "file_sha256", "read_manifest"]
