"""The training manifest (``medflow labels export``): one Parquet row per labelled instance
frame, the schema the training code reads (:data:`MANIFEST_SCHEMA`), split by patient.

Deterministic and stable: rows are sorted, and each patient's split depends only on the seed,
the PatientID and the split fractions (SHA-256 of ``"<seed>:<PatientID>"`` read as a number
in [0, 1) and compared with the cumulative fractions), so the same labels, seed and split give
byte-identical Parquet, and adding or removing patients never moves another patient between
train, val and test. The file's key-value metadata carries the set, its version, the seed,
the split and a SHA-256 over the rows (:func:`rows_digest`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("sop_instance_uid", pa.string(), nullable=False),
        pa.field("frame", pa.int64(), nullable=False),
        pa.field("study_uid", pa.string(), nullable=False),
        pa.field("series_uid", pa.string(), nullable=False),
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),
        pa.field("value", pa.int64(), nullable=False),
        pa.field("roi", pa.string(), nullable=True),
        pa.field("source_uid", pa.string(), nullable=False),
        pa.field("label_set", pa.string(), nullable=False),
        pa.field("label_set_version", pa.int64(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)
"""Columns exactly: ``roi`` is JSON text ``{"type": "box"|"polygon"|"point", "points":
[[x, y], ...]}`` in pixel coordinates (column, row) or null; ``frame`` is 1-based;
``source_uid`` the KOS/SR/SEG SOP Instance UID ("" for a mapping-implied negative);
``split`` "train", "val" or "test"."""
COLUMNS = tuple(MANIFEST_SCHEMA.names)
SPLITS = ("train", "val", "test")
META_PREFIX = "medflow."


@dataclass(frozen=True, order=True)
class ManifestRow:
    patient_id: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    frame: int
    label: str
    value: int
    roi: str | None
    source_uid: str

    def as_dict(self, label_set: str, version: int, split: str) -> dict[str, Any]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "frame": self.frame,
            "study_uid": self.study_uid,
            "series_uid": self.series_uid,
            "patient_id": self.patient_id,
            "label": self.label,
            "value": self.value,
            "roi": self.roi,
            "source_uid": self.source_uid,
            "label_set": label_set,
            "label_set_version": version,
            "split": split,
        }


def parse_split(text: str) -> tuple[float, float, float]:
    """``"0.7,0.15,0.15"`` -> fractions (three, non-negative, summing to 1)."""
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise ValueError(f"split {text!r}: three comma-separated numbers expected") from None
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6:
        raise ValueError(f"split {text!r}: three non-negative fractions summing to 1 expected")
    return parts[0], parts[1], parts[2]


def split_point(patient: str, *, seed: int) -> float:
    """The patient's point in [0, 1): the first 8 bytes of SHA-256 of ``"<seed>:<id>"`` as a
    big-endian integer, divided by 2**64."""
    digest = hashlib.sha256(f"{seed}:{patient}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(
    patients: Iterable[str], *, seed: int, fractions: tuple[float, float, float]
) -> dict[str, str]:
    """Each patient's split, a function of (seed, patient, fractions) only: with ``u`` its
    :func:`split_point`, train when ``u < train``, val when ``u < train + val``, else test.

    A patient keeps its split whoever else is exported, so a later export with more patients
    never moves an earlier test patient into train. The fractions are honoured in expectation
    (a binomial draw per patient), not exactly: a small export may have an empty split."""
    # a zero fraction never gets a patient, whatever the rounding of the cumulative sums
    train = fractions[0] if fractions[1] + fractions[2] > 0 else 2.0
    val = fractions[0] + fractions[1] if fractions[2] > 0 else 2.0
    out = {}
    for p in sorted(set(patients)):
        u = split_point(p, seed=seed)
        out[p] = SPLITS[0] if u < train else SPLITS[1] if u < val else SPLITS[2]
    return out


def rows_digest(rows: Sequence[dict[str, Any]]) -> str:
    """SHA-256 over the rows as canonical JSON lines (keys sorted, in row order)."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    return digest.hexdigest()


def build_table(
    rows: Iterable[ManifestRow],
    *,
    label_set: str,
    version: int,
    seed: int,
    fractions: tuple[float, float, float],
) -> pa.Table:
    """The manifest table: rows deduplicated and sorted, split by patient, metadata set."""
    ordered = sorted(set(rows))
    splits = assign_splits((r.patient_id for r in ordered), seed=seed, fractions=fractions)
    dicts = [r.as_dict(label_set, version, splits[r.patient_id]) for r in ordered]
    table = pa.Table.from_pylist(dicts, schema=MANIFEST_SCHEMA)
    metadata = {
        "label_set": label_set,
        "label_set_version": str(version),
        "seed": str(seed),
        "split": ",".join(f"{f:g}" for f in fractions),
        "rows": str(len(dicts)),
        "rows_sha256": rows_digest(dicts),
    }
    return table.replace_schema_metadata({META_PREFIX + k: v for k, v in metadata.items()})


def write_manifest(table: pa.Table, path: Path) -> None:
    """Write the table as Parquet (no statistics or timestamps that could vary), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", write_statistics=False)
    tmp.replace(path)


def manifest_metadata(path: Path) -> dict[str, str]:
    """The manifest's ``medflow.*`` file metadata, prefix removed."""
    raw = pq.read_schema(path).metadata or {}
    return {
        k.decode()[len(META_PREFIX) :]: v.decode()
        for k, v in raw.items()
        if k.decode().startswith(META_PREFIX)
    }


def read_manifest(path: Path | str) -> pa.Table:
    """Read a manifest, checking its columns are exactly :data:`MANIFEST_SCHEMA`'s and its
    rows match the recorded SHA-256. ``ValueError`` otherwise."""
    table = pq.read_table(path)
    if tuple(table.column_names) != COLUMNS:
        raise ValueError(f"{path}: columns {table.column_names} are not {list(COLUMNS)}")
    table = table.cast(MANIFEST_SCHEMA.with_metadata(table.schema.metadata))
    recorded = manifest_metadata(Path(path)).get("rows_sha256")
    if recorded is not None and recorded != rows_digest(table.to_pylist()):
        raise ValueError(f"{path}: rows do not match the recorded SHA-256")
    return table
