"""Cohort export (issue 7): the FHIR data and the DICOM files of a cohort's patients, with a
manifest, into a folder (or a ``.zip`` made from it at the end).

Layout of the folder::

    cohort.json                      the cohort result (``CohortResult.to_dict()``, no timing)
    fhir/<Type>.ndjson               each patient's compartment (``FhirService.everything``),
                                     one file per resource type, each resource once
    dicom/<study>/<series>/<sop>.dcm the stored files, byte for byte (``StoreService.iter_bytes``,
                                     what WADO-RS returns with ``transfer-syntax=*``)
    manifest.parquet, manifest.csv   one row per DICOM file: patient_id, mrn, study_uid,
                                     series_uid, sop_instance_uid, path, sha256, size, labels
    excluded.csv                     (de-identified exports) instances the profile left out
    .medflow-export.jsonl            the journal: what is done (not put in the zip)

With ``deidentify`` (:mod:`medflow.cohort.export_deid`) every part is de-identified with one
key: FHIR by the rules, DICOM by the PS3.15 profile (files under their new UIDs, their SHA-256
in the manifest), and the manifest and ``cohort.json`` hold pseudonyms and new UIDs only.

``level="study"`` exports every instance of the cohort's studies; ``level="series"`` only the
series that match one of the definition's imaging criteria (Modality, Body Part Examined, SOP
Class UID; a definition without such keys exports whole studies).

An export is resumable: every finished file is appended to the journal (path, SHA-256, size)
after it was renamed into place; a re-run over the same folder skips journaled files whose
size still matches (and files found on disk whose SHA-256 matches the index) and writes the
rest. The FHIR files are one journal item. A folder that holds another export (another
cohort result or level) or other files is refused. Files are written to a temporary name,
checked against the index's SHA-256 and renamed, so a crash never leaves a partial file under
its final name.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]

from medflow.cohort.export_deid import Excluded, ExportDeid, write_excluded
from medflow.cohort.results import CohortResult, PatientResult
from medflow.cohort.schema import CohortDefinition, Criterion, ImagingCriterion
from medflow.core.errors import InvalidInput, NotFound, StorageFailure
from medflow.dicom.matching import Match, MatchType, parse_attribute
from medflow.fhir.service import FhirService
from medflow.store.query import Query
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService

if TYPE_CHECKING:
    from medflow.deid.service import Deidentification

log = logging.getLogger(__name__)
Level = Literal["study", "series"]
Phase = Literal["fhir", "dicom", "zip"]
JOURNAL = ".medflow-export.jsonl"
FHIR_ITEM = "fhir/"
EVERYTHING_LIMIT = 1_000_000
"""Resources read per patient compartment (``FhirService.everything``)."""
MANIFEST_COLUMNS = ("patient_id", "mrn", "study_uid", "series_uid", "sop_instance_uid", "path",
                    "sha256", "size", "labels")  # fmt: skip
MANIFEST_SCHEMA = pa.schema([
    ("patient_id", pa.string()), ("mrn", pa.string()), ("study_uid", pa.string()),
    ("series_uid", pa.string()), ("sop_instance_uid", pa.string()), ("path", pa.string()),
    ("sha256", pa.string()), ("size", pa.int64()), ("labels", pa.list_(pa.string())),
])  # fmt: skip
SERIES_PAGE = 100_000


@dataclass(frozen=True)
class ExportProgress:
    """Reported after each step: a patient's compartment read (``fhir``), a DICOM file
    written or skipped (``dicom``), a file added to the zip (``zip``)."""

    phase: Phase
    done: int
    total: int
    item: str
    """The patient id (fhir) or the file's path in the export."""
    skipped: bool = False
    """Already done by an earlier run."""


ProgressCallback = Callable[[ExportProgress], None]


@dataclass(frozen=True)
class ManifestRow:
    patient_id: str
    mrn: str | None
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    path: str
    sha256: str
    size: int
    labels: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ExportSummary:
    folder: Path
    """Where the files are (removed once the zip is written)."""
    archive: Path | None
    """The zip, when one was asked for."""
    patients: int
    resources: dict[str, int]
    """Resource type -> resources written (this run or an earlier one)."""
    studies: int
    instances: int
    written: int
    """DICOM files written by this run."""
    skipped: int
    """DICOM files an earlier run had written."""
    bytes: int
    """Size of the DICOM files."""
    missing_studies: list[str]
    """Studies of the result that the archive no longer has."""
    excluded: int = 0
    """Instances the de-identification profile left out (``excluded.csv``)."""


def export_cohort(
    result: CohortResult,
    *,
    store: StoreService,
    fhir: FhirService,
    out: Path,
    level: Level = "study",
    definition: CohortDefinition | None = None,
    progress: ProgressCallback | None = None,
    deidentify: Deidentification | None = None,
) -> ExportSummary:
    """Write the cohort's FHIR data, DICOM files and manifest to ``out`` (a folder, or a
    ``.zip`` file made from the folder ``<out>.parts`` at the end); see the module's
    docstring. ``definition`` is needed for ``level="series"``. Raises ``InvalidInput`` for
    a folder holding something else, ``StorageFailure`` for a blob that differs from its
    index row (that file is not written). ``deidentify``: write it de-identified (the
    module's docstring; resuming needs the same key and profile)."""
    if level not in ("study", "series"):
        raise InvalidInput(f"level must be study or series, not {level!r}")
    if level == "series" and definition is None:
        raise InvalidInput("a series-level export needs the cohort definition")
    archive = out if out.suffix.lower() == ".zip" else None
    folder = out.with_name(out.name + ".parts") if archive else out
    if archive is not None and archive.exists() and not _ours(archive, folder):
        raise InvalidInput(f"{archive} exists already and is no medflow export: choose another "
                           "output")  # fmt: skip
    deid = ExportDeid(deidentify) if deidentify is not None else None
    if deid is not None:
        deid.learn_patients(fhir, [p.patient_id for p in result.patients])
    run = _Export(result, store, fhir, folder, progress or (lambda _: None), deid)
    run.open_journal(level)
    try:
        resources = run.fhir_files()
        plan, missing = run.plan(level, definition)
        rows = run.dicom_files(plan)
    finally:
        run.close()
    write_manifest(folder, rows)
    if deid is not None:
        write_excluded(folder, run.excluded)
    if archive is not None:
        write_zip(folder, archive, result, run.progress)
        shutil.rmtree(folder)
    return ExportSummary(folder, archive, len(result.patients), resources,
                         len({r.study_uid for r in rows}), len(rows), run.written, run.skipped,
                         sum(r.size for r in rows), missing, len(run.excluded))  # fmt: skip


@dataclass(frozen=True)
class _Item:
    patient: PatientResult
    record: InstanceRecord

    @property
    def path(self) -> str:
        r = self.record
        return f"dicom/{r.study_uid}/{r.series_uid}/{r.sop_instance_uid}.dcm"


class _Export:
    """One run over a folder: the journal read at the start and appended to as files land."""

    def __init__(self, result: CohortResult, store: StoreService, fhir: FhirService,
                 folder: Path, progress: ProgressCallback,
                 deid: ExportDeid | None) -> None:  # fmt: skip
        self.result, self.store, self.fhir = result, store, fhir
        self.folder, self.progress, self.deid = folder, progress, deid
        self.excluded: list[tuple[str, str]] = []
        self.done: dict[str, dict[str, Any]] = {}
        self.journal: IO[str] | None = None
        self.written = self.skipped = 0

    # -- journal ----------------------------------------------------------------------------
    def open_journal(self, level: Level) -> None:
        """Read the journal (or start one in an empty folder); refuse another export's."""
        header = {"kind": "header", "level": level, "fingerprint": _fingerprint(self.result),
                  "deid": self.deid.fingerprint() if self.deid else None}  # fmt: skip
        path = self.folder / JOURNAL
        if path.exists():
            lines = _journal_lines(path)
            if not lines or {k: lines[0].get(k) for k in header} != header:
                raise InvalidInput(f"{self.folder} holds the export of another cohort result "
                                   "or level: choose another output")  # fmt: skip
            self.done = {x["path"]: x for x in lines[1:] if x.get("kind") in ("file", "excluded")}
            self.journal = path.open("a", encoding="utf-8")
            return
        if self.folder.exists() and not self.folder.is_dir():
            raise InvalidInput(f"{self.folder} is a file, not a folder: choose another output")
        if self.folder.exists() and any(self.folder.iterdir()):
            raise InvalidInput(f"{self.folder} is not empty and holds no medflow export")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.journal = path.open("w", encoding="utf-8")
        self._append(header)
        shown = {k: v for k, v in self.result.to_dict().items() if k != "elapsed_s"}
        if self.deid is not None:
            shown = self.deid.result(shown)
        _write_text(self.folder / "cohort.json", json.dumps(shown, indent=1))

    def _append(self, entry: dict[str, Any]) -> None:
        assert self.journal is not None
        self.journal.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self.journal.flush()
        if entry.get("kind") in ("file", "excluded"):
            self.done[str(entry["path"])] = entry

    def close(self) -> None:
        if self.journal is not None:
            os.fsync(self.journal.fileno())
            self.journal.close()
            self.journal = None

    # -- FHIR -------------------------------------------------------------------------------
    def fhir_files(self) -> dict[str, int]:
        """``fhir/<Type>.ndjson`` of the patients' compartments (one journal item)."""
        entry = self.done.get(FHIR_ITEM)
        if entry is not None and all(
            _sha256_of(self.folder / "fhir" / f"{t}.ndjson") == sha
            for t, sha in entry["sha256"].items()
        ):
            total = len(self.result.patients)
            for i, p in enumerate(self.result.patients, 1):
                self.progress(ExportProgress("fhir", i, total, p.patient_id, skipped=True))
            return dict(entry["counts"])
        shutil.rmtree(self.folder / "fhir", ignore_errors=True)
        counts, hashes = self._write_fhir()
        self._append({"kind": "file", "path": FHIR_ITEM, "sha256": hashes, "counts": counts})
        return counts

    def _write_fhir(self) -> tuple[dict[str, int], dict[str, str]]:
        staging = self.folder / "fhir.part"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        files: dict[str, IO[str]] = {}
        counts: dict[str, int] = {}
        seen: set[tuple[str, str]] = set()
        total = len(self.result.patients)
        try:
            for i, patient in enumerate(self.result.patients, 1):
                everything = self.fhir.everything(patient_id=patient.patient_id,
                                                  limit=EVERYTHING_LIMIT)  # fmt: skip
                compartment = [r for r in everything if _key(r) not in seen]
                seen.update(_key(r) for r in compartment)
                if self.deid is not None:
                    compartment = self.deid.compartment(compartment)
                for resource in compartment:
                    rtype = str(resource["resourceType"])
                    if rtype not in files:
                        files[rtype] = (staging / f"{rtype}.ndjson").open("w", encoding="utf-8")
                    files[rtype].write(_ndjson_line(resource))
                    counts[rtype] = counts.get(rtype, 0) + 1
                self.progress(ExportProgress("fhir", i, total, patient.patient_id))
        finally:
            for fp in files.values():
                fp.close()
        staging.rename(self.folder / "fhir")
        hashes = {t: str(_sha256_of(self.folder / "fhir" / f"{t}.ndjson")) for t in sorted(files)}
        return dict(sorted(counts.items())), hashes

    # -- DICOM ------------------------------------------------------------------------------
    def plan(
        self, level: Level, definition: CohortDefinition | None
    ) -> tuple[list[_Item], list[str]]:
        """The instances to write, in patient, study, series and instance order, and the
        studies the archive no longer has."""
        keys = imaging_criteria(definition) if level == "series" and definition else []
        items: list[_Item] = []
        missing: list[str] = []
        seen: set[str] = set()
        for patient in self.result.patients:
            for study in patient.studies:
                try:
                    records = self.store.find_instances(study_uid=study)
                except NotFound:
                    missing.append(study)
                    continue
                wanted = matching_series(self.store, study, keys) if keys else None
                for record in records:
                    if record.sop_instance_uid in seen or (
                        wanted is not None and record.series_uid not in wanted
                    ):
                        continue
                    seen.add(record.sop_instance_uid)
                    items.append(_Item(patient, record))
        if missing:
            log.warning("%d studies of the cohort are no longer in the archive", len(missing))
        return items, missing

    def dicom_files(self, items: Sequence[_Item]) -> list[ManifestRow]:
        if self.deid is not None:
            return self._deidentified_files(items, self.deid)
        rows = []
        for i, item in enumerate(items, 1):
            record, path = item.record, item.path
            skipped = self._already_written(path, record)
            if not skipped:
                write_instance(self.store, record, self.folder / path)
                self._append({"kind": "file", "path": path, "sha256": record.sha256,
                              "size": record.size})  # fmt: skip
                self.written += 1
            else:
                self.skipped += 1
            rows.append(ManifestRow(item.patient.patient_id, item.patient.mrn, record.study_uid,
                                    record.series_uid, record.sop_instance_uid, path,
                                    record.sha256, record.size))  # fmt: skip
            self.progress(ExportProgress("dicom", i, len(items), path, skipped=skipped))
        return rows

    def _deidentified_files(self, items: Sequence[_Item], deid: ExportDeid) -> list[ManifestRow]:
        """The files de-identified: journaled with a keyed mark of the source's SHA-256 (the
        output's is known only once written; the plain hash would link the export to the
        archive), so a resumed run skips what it finished or excluded."""
        rows = []
        for i, item in enumerate(items, 1):
            record, path = item.record, deid.path(item.record)
            source = deid.source_mark(record.sha256)
            entry = self.done.get(path)
            target = self.folder / path
            done = (
                entry is not None
                and entry.get("source") == source
                and (
                    entry["kind"] == "excluded"
                    or (target.is_file() and target.stat().st_size == entry["size"])
                )
            )
            if not done:
                try:
                    written = deid.write_instance(self.store, record, self.folder / path)
                except Excluded as exc:
                    entry = {"kind": "excluded", "path": path, "source": source,
                             "reason": exc.message}  # fmt: skip
                else:
                    entry = {"kind": "file", "path": path, "source": source,
                             "sha256": written.sha256, "size": written.size}  # fmt: skip
                    self.written += 1
                self._append(entry)
            else:
                self.skipped += 1
            assert entry is not None
            self.progress(ExportProgress("dicom", i, len(items), path, skipped=done))
            if entry["kind"] == "excluded":
                self.excluded.append((deid.uid(record.sop_instance_uid), str(entry["reason"])))
                continue
            p = item.patient
            rows.append(ManifestRow(deid.patient_id(p.patient_id), deid.mrn(p.mrn),
                                    deid.uid(record.study_uid), deid.uid(record.series_uid),
                                    deid.uid(record.sop_instance_uid), path, entry["sha256"],
                                    entry["size"]))  # fmt: skip
        return rows

    def _already_written(self, path: str, record: InstanceRecord) -> bool:
        """Journaled with this SHA-256 and size, or on disk with this SHA-256 (a run that
        stopped between the rename and the journal line)."""
        target = self.folder / path
        entry = self.done.get(path)
        if entry is not None and entry["sha256"] == record.sha256:
            return target.is_file() and target.stat().st_size == record.size
        if target.is_file() and _sha256_of(target) == record.sha256:
            self._append({"kind": "file", "path": path, "sha256": record.sha256,
                          "size": record.size})  # fmt: skip
            return True
        return False


# -- pieces ------------------------------------------------------------------------------------
def imaging_criteria(definition: CohortDefinition) -> list[ImagingCriterion]:
    """The definition's imaging criteria that select series (Modality, Body Part Examined or
    SOP Class UID), in criteria, ``and``/``or``, temporal anchors and events, and ``collect``
    (not under ``not``: nothing matched there)."""
    found: list[ImagingCriterion] = []

    def walk(criterion: Criterion) -> None:
        kind, body = criterion.kind, criterion.body
        if kind == "imaging" and (body.modality or body.body_part or body.sop_class):
            found.append(body)
        elif kind in ("and", "or"):
            for child in body:
                walk(child)
        elif kind == "temporal":
            walk(body.anchor)
            walk(body.event)

    for criterion in [*definition.criteria, *definition.collect]:
        walk(criterion)
    return found


def matching_series(
    store: StoreService, study_uid: str, criteria: Sequence[ImagingCriterion]
) -> set[str]:
    """SeriesInstanceUIDs of the study that match one of ``criteria`` (QIDO-RS matching at
    series level, or instance level for SOP classes)."""
    out: set[str] = set()
    for body in criteria:
        pairs = (("Modality", body.modality), ("BodyPartExamined", body.body_part),
                 ("SOPClassUID", body.sop_class))  # fmt: skip
        keys = [_list_key(k, v) for k, v in pairs if v]
        level: Literal["series", "instance"] = "instance" if body.sop_class else "series"
        offset, more = 0, True
        while more:
            page = store.search(Query(level, tuple(keys), study_uid=study_uid,
                                      limit=SERIES_PAGE, offset=offset))  # fmt: skip
            for row in page.rows:
                out.update(str(v) for v in (row.get("0020000E") or {}).get("Value") or [])
            offset, more = offset + SERIES_PAGE, page.more
    return out


def _list_key(keyword: str, values: Sequence[str]) -> Match:
    attribute = parse_attribute(keyword)
    if len(values) == 1:
        return Match(attribute, MatchType.SINGLE, value=values[0])
    return Match(attribute, MatchType.LIST, values=tuple(values))


def write_instance(store: StoreService, record: InstanceRecord, target: Path) -> None:
    """The stored file at ``target`` (through a temporary name), checked against the index's
    SHA-256 and size."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    digest, size = hashlib.sha256(), 0
    with partial.open("wb") as fp:
        for chunk in store.iter_bytes(record):
            fp.write(chunk)
            digest.update(chunk)
            size += len(chunk)
        fp.flush()
        os.fsync(fp.fileno())
    if digest.hexdigest() != record.sha256 or size != record.size:
        partial.unlink()
        raise StorageFailure(f"the stored file of instance {record.sop_instance_uid} differs "
                             "from its index row (medflow verify)", retryable=False)  # fmt: skip
    partial.replace(target)


def write_manifest(folder: Path, rows: Sequence[ManifestRow]) -> None:
    """``manifest.parquet`` and ``manifest.csv`` (labels joined with ``;``)."""
    columns: dict[str, list[Any]] = {name: [] for name in MANIFEST_COLUMNS}
    for row in rows:
        for name, value in asdict(row).items():
            columns[name].append(value)
    table = pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA)
    partial = folder / "manifest.parquet.part"
    pq.write_table(table, partial)
    partial.replace(folder / "manifest.parquet")
    partial = folder / "manifest.csv.part"
    with partial.open("w", encoding="utf-8", newline="") as fp:
        writer = csv.writer(fp)
        writer.writerow(MANIFEST_COLUMNS)
        for row in rows:
            values = asdict(row)
            writer.writerow([*(values[c] if values[c] is not None else ""
                               for c in MANIFEST_COLUMNS[:-1]), ";".join(row.labels)])  # fmt: skip
    partial.replace(folder / "manifest.csv")


def write_zip(
    folder: Path, archive: Path, result: CohortResult, progress: ProgressCallback
) -> None:
    """The folder (less the journal) as a zip: entries sorted and dated on the evaluation
    date, so the same export gives the same bytes; DICOM and Parquet stored, text deflated."""
    files = sorted(p for p in _files(folder) if p.name != JOURNAL)
    stamp = (*result.evaluation_date.timetuple()[:3], 0, 0, 0)
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(archive.name + ".part")
    with zipfile.ZipFile(partial, "w", allowZip64=True) as zf:
        for i, path in enumerate(files, 1):
            name = path.relative_to(folder).as_posix()
            info = zipfile.ZipInfo(name, date_time=stamp)
            text = path.suffix in (".ndjson", ".csv", ".json")
            info.compress_type = zipfile.ZIP_DEFLATED if text else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with path.open("rb") as src, zf.open(info, "w", force_zip64=True) as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            progress(ExportProgress("zip", i, len(files), name))
    partial.replace(archive)


def _ours(archive: Path, folder: Path) -> bool:
    """Whether an existing ``archive`` may be replaced: an export in progress for it, or a
    zip an earlier export wrote (it holds ``cohort.json`` and ``manifest.csv``)."""
    if (folder / JOURNAL).exists():
        return True
    try:
        with zipfile.ZipFile(archive) as zf:
            return {"cohort.json", "manifest.csv"} <= set(zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _journal_lines(path: Path) -> list[dict[str, Any]]:
    """The journal's entries; a last line cut off by a crash mid-write is dropped (that file
    is simply exported again)."""
    lines: list[dict[str, Any]] = []
    for text in path.read_text("utf-8").splitlines():
        try:
            entry = json.loads(text) if text.strip() else None
        except ValueError:
            continue
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


def _files(folder: Path) -> Iterator[Path]:
    for path in folder.rglob("*"):
        if path.is_file():
            yield path


def _fingerprint(result: CohortResult) -> str:
    """What a resumed export must agree on: the patients and their studies."""
    key = [[p.patient_id, p.mrn, p.studies] for p in result.patients]
    return hashlib.sha256(json.dumps([result.name, key]).encode()).hexdigest()


def _key(resource: dict[str, Any]) -> tuple[str, str]:
    return str(resource["resourceType"]), str(resource.get("id"))


def _ndjson_line(resource: dict[str, Any]) -> str:
    return json.dumps(resource, ensure_ascii=False, separators=(",", ":")) + "\n"


def _sha256_of(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as fp:
        while chunk := fp.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _write_text(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".part")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


__all__ = [
    "JOURNAL",
    "MANIFEST_COLUMNS",
    "ExportProgress",
    "ExportSummary",
    "Level",
    "ManifestRow",
    "ProgressCallback",
    "export_cohort",
    "imaging_criteria",
    "matching_series",
    "write_instance",
    "write_manifest",
    "write_zip",
]
