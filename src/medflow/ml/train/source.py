"""Where ``medflow train`` gets its manifest: a file given as is, a label set exported on the
spot (``--labels``), either one restricted to a saved cohort's patients (``--cohort``).

Manifests made here are kept, as lineage, under ``<data_dir>/ml/manifests/``:
``<set>-v<version>-<rows_sha256[:12]>.parquet`` for an export and
``<stem>-cohort<id>-<rows_sha256[:12]>.parquet`` for a given manifest filtered to a cohort. The
names are derived from the rows, so the same labels, cohort, seed and split give the same file
(written again, byte-identical). Pure functions over the services passed in (keyword-only);
nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from medflow.core.errors import InvalidInput
from medflow.labels import manifest as labels_manifest
from medflow.ml.train.manifest import file_sha256, read_manifest

if TYPE_CHECKING:
    from medflow.cohort.tracking import CohortTracker
    from medflow.labels.service import LabelService

DEFAULT_SPLIT = "0.7,0.15,0.15"
"""Train, val and test fractions of an export (as ``medflow labels export``)."""


class NoTrainingData(InvalidInput):
    """The selection (a cohort's patients) leaves no labelled row to train on."""


class EmptySplit(InvalidInput):
    """The manifest made has no rows in train, val or test (training needs all three)."""


@dataclass(frozen=True)
class CohortPatients:
    id: int
    name: str
    version: int
    mrns: frozenset[str]
    """The MRNs (DICOM PatientIDs) of the patients the latest version finds."""


@dataclass(frozen=True)
class TrainingData:
    manifest: Path
    rows: int
    patients: int
    label_set: str | None
    cohort: CohortPatients | None


def manifests_dir(data_dir: Path) -> Path:
    """Where the manifests training made are kept."""
    return (data_dir / "ml" / "manifests").resolve()


def cohort_patients(*, cohorts: CohortTracker, ref: int | str) -> CohortPatients:
    """Evaluate the saved cohort ``ref`` (id or name)'s latest version, as of its evaluation
    date, without storing a run; ``NotFound`` for an unknown cohort."""
    info = cohorts.show(ref=ref)
    result = cohorts.evaluate(definition=cohorts.definition(ref=info.id))
    mrns = frozenset(p.mrn for p in result.patients if p.mrn)
    return CohortPatients(id=info.id, name=info.name, version=info.version, mrns=mrns)


def export_labels(
    *,
    labels: LabelService,
    label_set: str,
    directory: Path,
    seed: int = 0,
    split: str = DEFAULT_SPLIT,
    version: int | None = None,
    patients: Collection[str] | None = None,
) -> TrainingData:
    """The set's manifest (only ``patients``' labels when given), exported into ``directory``
    as ``<set>-v<version>-<rows_sha256[:12]>.parquet``. ``NoTrainingData`` when none of
    ``patients`` has a label in the set."""
    if patients is not None:
        labelled = {r.patient_id for r in labels.labels(label_set=label_set)}
        if not labelled & set(patients):
            raise NoTrainingData(
                f"none of the {len(set(patients))} patients has a label in {label_set!r}"
            )
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".export-{uuid.uuid4().hex}.parquet"
    try:
        result = labels.export(label_set=label_set, out=tmp, seed=seed, split=split,
                               version=version, patients=patients)  # fmt: skip
        _check_splits(result.splits, hint="; another seed or split may fill it")
        name = f"{_safe(result.label_set)}-v{result.label_set_version}-{result.rows_sha256[:12]}"
        path = directory / f"{name}.parquet"
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return TrainingData(manifest=path, rows=result.rows, patients=result.patients,
                        label_set=result.label_set, cohort=None)  # fmt: skip


def filter_manifest(
    *, manifest: Path, patients: Collection[str], directory: Path, tag: str
) -> TrainingData:
    """``manifest``'s rows of ``patients`` only, written into ``directory`` as
    ``<stem>-<tag>-<rows_sha256[:12]>.parquet``: the columns of the manifest schema, its
    ``medflow.*`` metadata kept with ``rows`` and ``rows_sha256`` recomputed (and
    ``filtered_from``: the source file's SHA-256). ``NoTrainingData`` when no row is left."""
    table = read_manifest(manifest)  # checked; InvalidInput otherwise
    wanted = pa.array(sorted(set(patients)), type=pa.string())
    kept = table.filter(pc.is_in(table.column("patient_id"), value_set=wanted))
    if kept.num_rows == 0:
        raise NoTrainingData(
            f"none of the {len(set(patients))} patients has a row in {manifest.name}"
        )
    rows = kept.to_pylist()
    splits = [r["split"] for r in rows]
    _check_splits({s: splits.count(s) for s in labels_manifest.SPLITS}, hint="")
    digest = labels_manifest.rows_digest(rows)
    prefix = labels_manifest.META_PREFIX
    metadata = {k: v for k, v in (pq.read_schema(manifest).metadata or {}).items()
                if k.decode().startswith(prefix)}  # fmt: skip
    metadata.update({
        f"{prefix}rows".encode(): str(len(rows)).encode(),
        f"{prefix}rows_sha256".encode(): digest.encode(),
        f"{prefix}filtered_from".encode(): file_sha256(manifest).encode(),
    })  # fmt: skip
    path = directory / f"{_safe(manifest.stem)}-{_safe(tag)}-{digest[:12]}.parquet"
    labels_manifest.write_manifest(kept.replace_schema_metadata(metadata), path)
    sets = sorted({str(r["label_set"]) for r in rows if r["label_set"] is not None})
    return TrainingData(manifest=path, rows=len(rows),
                        patients=len({r["patient_id"] for r in rows}),
                        label_set=",".join(sets) or None, cohort=None)  # fmt: skip


def training_data(
    *,
    labels: LabelService,
    cohorts: CohortTracker,
    data_dir: Path,
    manifest: Path | None = None,
    label_set: str | None = None,
    cohort: int | str | None = None,
    seed: int = 0,
    split: str = DEFAULT_SPLIT,
    version: int | None = None,
) -> TrainingData:
    """The manifest to train on: ``manifest`` or an export of ``label_set`` (exactly one),
    restricted to the patients of ``cohort`` when given."""
    if (manifest is None) == (label_set is None):
        raise InvalidInput("give exactly one of a manifest and a label set")
    if cohort is None:
        if manifest is not None:
            return _as_given(manifest)
        assert label_set is not None
        return export_labels(labels=labels, label_set=label_set, directory=manifests_dir(data_dir),
                             seed=seed, split=split, version=version)  # fmt: skip
    selected = cohort_patients(cohorts=cohorts, ref=cohort)
    what = f"cohort {selected.id} ({selected.name})"
    if not selected.mrns:
        raise NoTrainingData(f"{what} has no patients")
    try:
        if label_set is not None:
            data = export_labels(labels=labels, label_set=label_set,
                                 directory=manifests_dir(data_dir), seed=seed, split=split,
                                 version=version, patients=selected.mrns)  # fmt: skip
        else:
            assert manifest is not None
            data = filter_manifest(manifest=manifest, patients=selected.mrns,
                                   directory=manifests_dir(data_dir),
                                   tag=f"cohort{selected.id}")  # fmt: skip
    except NoTrainingData as exc:
        raise NoTrainingData(f"{what}: {exc.message}") from None
    return TrainingData(data.manifest, data.rows, data.patients, data.label_set, selected)


def _check_splits(counts: dict[str, int], *, hint: str) -> None:
    empty = [s for s in labels_manifest.SPLITS if not counts.get(s)]
    if empty:
        raise EmptySplit(f"the manifest would have no {' or '.join(empty)} rows{hint}")


def _as_given(manifest: Path) -> TrainingData:
    table = read_manifest(manifest)
    rows = table.select(["patient_id", "label_set"]).to_pylist()
    sets = sorted({str(r["label_set"]) for r in rows if r["label_set"] is not None})
    return TrainingData(manifest=manifest, rows=len(rows),
                        patients=len({r["patient_id"] for r in rows}),
                        label_set=",".join(sets) or None, cohort=None)  # fmt: skip


def _safe(text: str) -> str:
    """``text`` as a file name part (letters, digits, ``.``, ``_``, ``-``; a hash if empty)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:80]
    return cleaned or hashlib.sha256(text.encode()).hexdigest()[:12]
