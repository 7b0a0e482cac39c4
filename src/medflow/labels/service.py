"""``LabelService``: labels written as DICOM objects into the archive, read back from it, and
exported as training manifests (issue 10; docs/labels.md).

Writing builds a KOS, a TID 1500 SR or a SEG with highdicom (:mod:`medflow.labels.builders`)
and stores it into the original study as a new series through :meth:`StoreService.store`, so it
is on DICOMweb and DIMSE and in the change feed; the label index (``label`` table) gets a row
per referenced instance frame. Importing scans the archive's KOS/SR/SEG/GSPS
(:mod:`medflow.labels.readers`), maps their codes to a set's classes by a mapping and rebuilds
those documents' rows; studies without any KOS may count as negatives. The archive is the
record, the index can always be rebuilt from it.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from medflow.core.errors import Conflict, InvalidInput, MedflowError, NotFound, StorageFailure
from medflow.db.engine import write_session
from medflow.labels import builders, manifest
from medflow.labels.models import Label
from medflow.labels.readers import KIND_OF, KOS, Document, Unreadable, classify, read_document
from medflow.labels.results import ExportResult, ImportReport, LabelRow, Written
from medflow.labels.schemas import CodeMatch, LabelRequest, Mapping, MappingRule, Negatives
from medflow.labels.sets import LabelSetInfo, LabelSets
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService
from medflow.store.spool import SpooledObject

log = logging.getLogger(__name__)
NEGATIVE = "NEGATIVE"


def _is_image(record: InstanceRecord) -> bool:
    return record.rows is not None and record.sop_class_uid not in KIND_OF


def _frames(record: InstanceRecord, frame: int | None) -> list[int]:
    return [frame] if frame is not None else list(range(1, (record.number_of_frames or 1) + 1))


class LabelService:
    """Label sets, writing, importing and exporting labels (keyword-only arguments)."""

    def __init__(self, *, engine: Engine, store: StoreService) -> None:
        self._engine = engine
        self._store = store
        self.sets = LabelSets(engine=engine)

    # -- reading the archive --------------------------------------------------------------
    def _header(self, record: InstanceRecord, *, pixels: bool = False) -> Dataset:
        with self._store.open_instance(record) as fp:
            return pydicom.dcmread(fp, stop_before_pixels=not pixels)

    def _targets(self, request: LabelRequest) -> list[InstanceRecord]:
        records = self._store.find_instances(
            study_uid=request.study_uid,
            series_uid=request.series_uid,
            sop_uid=request.sop_instance_uid,
        )
        images = [r for r in records if _is_image(r)]
        if not images:
            raise InvalidInput("the target has no image instance to label")
        return images

    # -- writing ----------------------------------------------------------------------------
    def _check(self, info: LabelSetInfo, request: LabelRequest) -> None:
        definition = info.definition
        if request.label not in [c.name for c in definition.classes]:
            raise InvalidInput(f"{request.label!r} is not a class of label set {info.name!r}")
        if request.resolved_kind() == "seg" and request.mask is None:
            raise InvalidInput("a SEG needs a mask")
        if (request.roi is not None or request.mask is not None) and not request.sop_instance_uid:
            raise InvalidInput("a region or a mask needs sop_instance_uid")
        if request.roi is not None and request.roi.type not in definition.region_types:
            raise InvalidInput(f"label set {info.name!r} has no {request.roi.type} regions")
        level = {"study": 0, "series": 1, "instance": 2}
        given = 2 if request.sop_instance_uid else 1 if request.series_uid else 0
        if given < level[definition.scope]:
            raise InvalidInput(
                f"label set {info.name!r} labels each {definition.scope}: give its UID"
            )

    def write(self, *, request: LabelRequest) -> Written:
        """Build the label's document, store it into the study, index its labels (a class
        label also ends the study's mapping-implied negatives); then remove the KOS it
        ``replaces``. Each must be a KOS indexed for the set in the same study (checked
        first: 404/400). Removing happens after the new document is stored and never fails
        the request: what could not be removed (another system's document, one another set
        indexes, a storage error) is listed in ``Written.not_removed`` with the reason."""
        info = self.sets.get(name=request.label_set)
        self._check(info, request)
        replaces = list(dict.fromkeys(request.replaces))
        for uid in replaces:
            if self._kinds(info, uid, study_uid=request.study_uid) != {"KOS"}:
                raise InvalidInput(f"{uid} is no Key Object Selection: only a KOS is replaced")
        targets = self._targets(request)
        kind = request.resolved_kind()
        if request.provenance is not None and (kind != "kos" or request.observer):
            raise InvalidInput("a label of provenance 'outcome' is a KOS without a reader")
        cls = info.definition.label_class(request.label)
        concept = cls.concept()
        headers = [self._header(r, pixels=kind == "seg") for r in targets]
        roi = request.roi.model_dump(mode="json") if request.roi is not None else None
        frame = request.frame if roi is not None or kind == "seg" else None
        try:
            if kind == "kos":
                ds = builders.build_kos(
                    evidence=headers,
                    title=info.definition.kos_title,
                    concept=concept,
                    description=f"{info.name}: {cls.name}",
                    observer=request.observer,
                    device_name=builders.OUTCOME_DEVICE
                    if request.provenance == "outcome"
                    else builders.MODEL,
                )
            elif kind == "sr":
                ds = builders.build_sr(
                    evidence=headers,
                    concept=concept,
                    label=cls.name,
                    roi=request.roi,
                    frame=frame,
                    observer=request.observer,
                )
            else:
                mask = np.asarray(request.mask, dtype=np.uint8)
                ds = builders.build_seg(
                    source=headers[0],
                    mask=mask,
                    concept=concept,
                    label=cls.name,
                    frame=request.frame,
                )
        except (ValueError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"cannot build the {kind.upper()}: {exc}") from None
        self._store_dataset(ds)
        rows = [
            self._row(
                info,
                cls.name,
                r,
                f,
                str(h.get("PatientID", "")),
                roi,
                str(ds.SOPInstanceUID),
                kind.upper(),
            )
            for r, h in zip(targets, headers, strict=True)
            for f in _frames(r, frame)
        ]
        self._replace(info, str(ds.SOPInstanceUID), rows)
        if kind == "kos":
            self._forget_negatives(info.id, {r.study_uid for r in targets})
        not_removed: list[dict[str, str]] = []
        for uid in replaces:
            try:
                self.remove(label_set=info.name, sop_instance_uid=uid)
            except MedflowError as exc:
                log.warning("label document %s not removed: %s", uid, exc.message)
                not_removed.append({"sop_instance_uid": uid, "reason": exc.message})
        return Written(
            kind=kind.upper(),
            sop_instance_uid=str(ds.SOPInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            study_uid=str(ds.StudyInstanceUID),
            series_uid=str(ds.SeriesInstanceUID),
            label_set=info.name,
            label_set_version=info.version,
            label=cls.name,
            instances=len(targets),
            not_removed=not_removed,
        )

    def _store_dataset(self, ds: Dataset) -> None:
        spool = self._store.spool_dir
        spool.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=spool, suffix=".dcm", delete=False) as tmp:
            path = Path(tmp.name)
        try:
            ds.save_as(path, enforce_file_format=True)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise StorageFailure(f"cannot spool the label document: {exc}") from None
        size, sha256 = _sha256(path)
        (outcome,) = self._store.store(
            objects=[SpooledObject(path, size, sha256)], origin="medflow:labels"
        )
        if not outcome.ok:
            raise StorageFailure(
                f"the archive refused the label document "
                f"(0x{outcome.failure_reason or 0x0110:04X}): {outcome.message}",
                retryable=False,
            )

    @staticmethod
    def _row(
        info: LabelSetInfo,
        label: str,
        record: InstanceRecord,
        frame: int,
        patient_id: str,
        roi: dict[str, Any] | None,
        source_uid: str,
        kind: str,
    ) -> Label:
        return Label(
            set_id=info.id,
            set_version=info.version,
            class_name=label,
            study_uid=record.study_uid,
            series_uid=record.series_uid,
            sop_instance_uid=record.sop_instance_uid,
            frame=frame,
            patient_id=patient_id,
            roi=json.dumps(roi, separators=(",", ":")) if roi is not None else None,
            source_uid=source_uid,
            source_kind=kind,
            created_at=datetime.now(UTC),
        )

    def _replace(
        self,
        info: LabelSetInfo,
        source_uid: str | None,
        rows: Sequence[Label],
        *,
        kind: str | None = None,
    ) -> None:
        """Replace the rows of ``source_uid`` (or every row of ``kind``) with ``rows``."""
        with write_session(self._engine) as session:
            stmt = delete(Label).where(Label.set_id == info.id)
            stmt = (
                stmt.where(Label.source_kind == kind)
                if kind
                else stmt.where(Label.source_uid == source_uid)
            )
            session.execute(stmt)
            session.add_all(rows)
            session.commit()

    def _kinds(
        self, info: LabelSetInfo, sop_instance_uid: str, *, study_uid: str | None = None
    ) -> set[str]:
        """The document kinds the set's index has for ``sop_instance_uid`` (in ``study_uid``
        when given); ``NotFound`` when it has none."""
        q = select(Label.source_kind, Label.study_uid).where(
            Label.set_id == info.id,
            Label.source_uid == sop_instance_uid,
            Label.source_kind.in_(("KOS", "SR", "SEG", "GSPS")),
        )
        with Session(self._engine) as session:
            found = session.execute(q).all()
        if study_uid is not None:
            found = [f for f in found if f[1] == study_uid]
        if not found:
            raise NotFound(f"label set {info.name!r} has no label document {sop_instance_uid}")
        return {str(f[0]) for f in found}

    def remove(self, *, label_set: str, sop_instance_uid: str) -> int:
        """Delete a label document of the set from the archive (a "delete" change feed entry,
        as a DICOMweb DELETE gives) and its rows from the index; the number of rows removed.

        Only medflow's own documents (Manufacturer "medflow") that no other label set indexes
        are deleted: another system's KOS or SR, or one shared by several sets, is a
        ``Conflict`` (delete it over DICOMweb if that is really meant)."""
        info = self.sets.get(name=label_set)
        self._kinds(info, sop_instance_uid)
        with Session(self._engine) as session:
            others = session.scalar(
                select(func.count()).where(
                    Label.source_uid == sop_instance_uid, Label.set_id != info.id
                )
            )
        if others:
            raise Conflict(f"{sop_instance_uid} is also a label document of another label set")
        found = self._store.select_instances(sop_uids=[sop_instance_uid])
        if found:
            record = found[0]
            if str(self._header(record).get("Manufacturer", "")) != builders.MANUFACTURER:
                raise Conflict(f"{sop_instance_uid} was not written by medflow: not deleted")
            self._store.delete(
                study_uid=record.study_uid,
                series_uid=record.series_uid,
                sop_uid=record.sop_instance_uid,
            )
        return self._forget(info.id, [sop_instance_uid])

    def _forget_negatives(self, set_id: int, studies: set[str]) -> None:
        """A class written for a study ends the negatives a mapping implied for it."""
        with write_session(self._engine) as session:
            session.execute(
                delete(Label).where(
                    Label.set_id == set_id,
                    Label.source_kind == NEGATIVE,
                    Label.study_uid.in_(sorted(studies)),
                )
            )
            session.commit()

    def _forget(self, set_id: int, sources: Sequence[str]) -> int:
        with write_session(self._engine) as session:
            done = session.execute(
                delete(Label).where(Label.set_id == set_id, Label.source_uid.in_(sources))
            )
            session.commit()
        return int(getattr(done, "rowcount", 0) or 0)

    def _prune(self, set_id: int, rows: Sequence[Label]) -> set[str]:
        """Sources of ``rows`` whose document the archive no longer holds (deleted over
        DICOMweb or DIMSE after it was indexed): their rows are dropped from the index."""
        sources = sorted({r.source_uid for r in rows if r.source_uid})
        kept: set[str] = set()
        for i in range(0, len(sources), 500):
            chunk = sources[i : i + 500]
            kept |= {r.sop_instance_uid for r in self._store.select_instances(sop_uids=chunk)}
        gone = set(sources) - kept
        if gone:
            try:
                self._forget(set_id, sorted(gone))
                log.info("dropped the labels of %d deleted label documents", len(gone))
            except MedflowError as exc:  # a read still answers; the next read prunes
                log.warning("could not prune labels of deleted documents: %s", exc.message)
        return gone

    # -- querying ---------------------------------------------------------------------------
    def labels(
        self,
        *,
        label_set: str,
        study_uid: str | None = None,
        study_uids: Collection[str] | None = None,
    ) -> list[LabelRow]:
        """The indexed labels of a set (of one study, or of any of ``study_uids``), in a
        stable order. Labels whose document has left the archive are dropped on the way."""
        info = self.sets.get(name=label_set)
        q = select(Label).where(Label.set_id == info.id)
        if study_uid is not None:
            q = q.where(Label.study_uid == study_uid)
        if study_uids is not None:
            q = q.where(Label.study_uid.in_(sorted(set(study_uids))))
        q = q.order_by(
            Label.patient_id,
            Label.study_uid,
            Label.series_uid,
            Label.sop_instance_uid,
            Label.frame,
            Label.class_name,
            Label.source_uid,
        )
        with Session(self._engine) as session:
            found = list(session.scalars(q))
        gone = self._prune(info.id, found)
        return [
            LabelRow(
                info.name,
                r.set_version,
                r.class_name,
                r.study_uid,
                r.series_uid,
                r.sop_instance_uid,
                r.frame,
                r.patient_id,
                json.loads(r.roi) if r.roi else None,
                r.source_uid,
                r.source_kind,
            )
            for r in found
            if r.source_uid not in gone
        ]

    # -- importing --------------------------------------------------------------------------
    def default_mapping(self, *, label_set: str) -> Mapping:
        """Each class's code (any scheme-matching concept) means the class."""
        info = self.sets.get(name=label_set)
        rules = [
            MappingRule(
                label=c.name, concept=CodeMatch(scheme=c.concept().scheme, value=c.concept().value)
            )
            for c in info.definition.classes
        ]
        return Mapping(label_set=label_set, rules=rules, negatives=Negatives())

    def import_archive(self, *, mapping: Mapping, label_set: str | None = None) -> ImportReport:
        """Read every KOS/SR/SEG/GSPS of the archive the mapping's kinds name, index what they
        say for the set, and (``negatives.enabled``) the negatives of studies without a KOS."""
        name = label_set or mapping.label_set
        if not name:
            raise InvalidInput("no label set: give one or set label_set in the mapping")
        info = self.sets.get(name=name)
        classes = {c.name for c in info.definition.classes}
        unknown = sorted({r.label for r in mapping.rules} - classes)
        if unknown:
            raise InvalidInput(f"mapping labels {unknown} are not classes of {name!r}")
        report = ImportReport(label_set=name, label_set_version=info.version)
        wanted = [uid for uid, kind in KIND_OF.items() if kind in mapping.kinds]
        for record in self._documents(wanted):
            self._import_one(info, mapping, record, report)
        if mapping.negatives.enabled:
            report.negatives = self._negatives(info, mapping.negatives)
        return report

    def _documents(self, sop_classes: Sequence[str]) -> list[InstanceRecord]:
        studies = [s.study_uid for s in self._store.find_studies(sop_classes=sop_classes)]
        records: list[InstanceRecord] = []
        for i in range(0, len(studies), 500):
            records += [
                r
                for r in self._store.select_instances(study_uids=studies[i : i + 500])
                if r.sop_class_uid in sop_classes
            ]
        return records

    def _import_one(
        self, info: LabelSetInfo, mapping: Mapping, record: InstanceRecord, report: ImportReport
    ) -> None:
        kind = KIND_OF[record.sop_class_uid]
        uid = record.sop_instance_uid
        try:
            ds = self._header(record)
            document = read_document(ds)
        except Unreadable as exc:
            report.skipped.append({"sop_instance_uid": uid, "kind": kind, "reason": exc.reason})
            return
        except (
            MedflowError,
            pydicom.errors.InvalidDicomError,
            AttributeError,
            KeyError,
            IndexError,
            TypeError,
            ValueError,
        ) as exc:  # a malformed document: reported
            report.skipped.append(
                {
                    "sop_instance_uid": uid,
                    "kind": kind,
                    "reason": f"unreadable: {type(exc).__name__}",
                }
            )
            return
        report.documents += 1
        report.skipped += [
            {"sop_instance_uid": uid, "kind": kind, "reason": r} for r in document.skipped
        ]
        rows = self._document_rows(info, mapping, document, str(ds.get("PatientID", "")), report)
        self._replace(info, uid, rows)
        if rows:
            report.labels += len(rows)
            report.imported.append(
                {
                    "sop_instance_uid": uid,
                    "kind": kind,
                    "labels": len(rows),
                    "notes": document.notes,
                }
            )

    def _document_rows(
        self,
        info: LabelSetInfo,
        mapping: Mapping,
        document: Document,
        patient_id: str,
        report: ImportReport,
    ) -> list[Label]:
        rows: list[Label] = []
        for finding in document.findings:
            label = classify(document, finding, mapping)
            if label is None:
                codes = sorted(finding.concepts | document.concepts)[:6]
                report.skipped.append(
                    {
                        "sop_instance_uid": document.sop_uid,
                        "kind": document.kind,
                        "reason": f"no mapping rule matches (title "
                        f"{document.title}, codes {codes})",
                    }
                )
                continue
            uids = [r.sop_uid for r in finding.references]
            found = {r.sop_instance_uid: r for r in self._store.select_instances(sop_uids=uids)}
            missing = sorted(set(uids) - set(found))
            if missing:
                report.skipped.append(
                    {
                        "sop_instance_uid": document.sop_uid,
                        "kind": document.kind,
                        "reason": f"{len(missing)} referenced instance(s) not in the archive",
                    }
                )
            for ref in finding.references:
                record = found.get(ref.sop_uid)
                if record is None or not _is_image(record):
                    continue
                if ref.frame is not None and ref.frame > (record.number_of_frames or 1):
                    report.skipped.append(
                        {
                            "sop_instance_uid": document.sop_uid,
                            "kind": document.kind,
                            "reason": f"frame {ref.frame} of an image with "
                            f"{record.number_of_frames or 1} frame(s)",
                        }
                    )
                    continue
                # the image's own PatientID (the split key), not the document's: a PACS may
                # write another form of it (an issuer suffix) into its KOS
                patient = str(self._header(record).get("PatientID", "")) or patient_id
                rows += [
                    self._row(
                        info,
                        label,
                        record,
                        f,
                        patient,
                        finding.roi,
                        document.sop_uid,
                        document.kind,
                    )
                    for f in _frames(record, ref.frame)
                ]
        return rows

    def _negatives(self, info: LabelSetInfo, negatives: Negatives) -> int:
        label = negatives.label or info.definition.negative_class
        if label is None or label not in [c.name for c in info.definition.classes]:
            raise InvalidInput(
                "negatives need a label: the mapping's negatives.label or the set's negative_class"
            )
        with_kos = {s.study_uid for s in self._store.find_studies(sop_classes=[KOS])}
        positive = select(Label.study_uid).where(
            Label.set_id == info.id, Label.source_kind != NEGATIVE
        )
        with Session(self._engine) as session:  # labelled by any document of this set
            labelled = set(session.scalars(positive.distinct()))
        studies = [
            s
            for s in self._store.find_studies(modalities=negatives.modalities)
            if s.study_uid not in with_kos and s.study_uid not in labelled
        ]
        rows = self._study_rows(info, label, [(s.study_uid, s.patient_id or "") for s in studies])
        self._replace(info, None, rows, kind=NEGATIVE)
        return len(rows)

    def _study_rows(
        self, info: LabelSetInfo, label: str, studies: Iterable[tuple[str, str]]
    ) -> list[Label]:
        patients = dict(studies)
        uids = sorted(patients)
        rows: list[Label] = []
        for i in range(0, len(uids), 500):
            for record in self._store.select_instances(study_uids=uids[i : i + 500]):
                if _is_image(record):
                    rows += [
                        self._row(
                            info, label, record, f, patients[record.study_uid], None, "", NEGATIVE
                        )
                        for f in _frames(record, None)
                    ]
        return rows

    # -- the synthetic hospital's truth ----------------------------------------------------
    def from_truth(self, *, truth: Sequence[dict[str, Any]], label_set: str) -> dict[str, int]:
        """For the synthetic hospital only: a KOS positive for each chest X-ray (CR) whose
        truth finding is a class of the set, and the negative class for each CR study without
        a finding (indexed as mapping-implied negatives, source ""). Studies already labelled
        in the set are left alone, so running it again writes nothing new."""
        info = self.sets.get(name=label_set)
        findings = {acc: f for record in truth for acc, f in record.get("studies", {}).items()}
        positives = {c.name for c in info.definition.classes} - {info.definition.negative_class}
        done = {r.study_uid for r in self.labels(label_set=label_set)}
        written = negatives = 0
        empty: list[tuple[str, str]] = []
        for study in self._store.find_studies(modalities=["CR"]):
            finding = findings.get(study.accession_number or "")
            if finding is None or study.study_uid in done:
                continue
            if finding in positives:
                self.write(
                    request=LabelRequest(
                        label_set=label_set, label=finding, study_uid=study.study_uid, kind="kos"
                    )
                )
                written += 1
            elif finding == "" and info.definition.negative_class is not None:
                empty.append((study.study_uid, study.patient_id or ""))
        if empty:
            assert info.definition.negative_class is not None
            rows = self._study_rows(info, info.definition.negative_class, empty)
            with write_session(self._engine) as session:
                session.add_all(rows)
                session.commit()
            negatives = len(empty)
        return {"positives": written, "negatives": negatives}

    # -- exporting --------------------------------------------------------------------------
    def export(
        self,
        *,
        label_set: str,
        out: Path,
        seed: int = 0,
        split: str = "0.7,0.15,0.15",
        version: int | None = None,
        patients: Collection[str] | None = None,
    ) -> ExportResult:
        """Write the set's training manifest (Parquet, :data:`manifest.MANIFEST_SCHEMA`);
        ``patients`` (PatientIDs, e.g. a cohort's MRNs) keeps only their labels."""
        try:
            fractions = manifest.parse_split(split)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
        info = self.sets.get(name=label_set, version=version)
        index = {c.name: i for i, c in enumerate(info.definition.classes)}
        wanted = set(patients) if patients is not None else None
        rows, dropped = [], 0
        for r in self.labels(label_set=label_set):
            if version is not None and r.set_version > info.version:
                dropped += 1  # written under a later version than the one asked for
                continue
            if r.label not in index:
                dropped += 1
                continue
            if wanted is not None and r.patient_id not in wanted:
                continue
            roi = json.dumps(r.roi, sort_keys=True, separators=(",", ":")) if r.roi else None
            rows.append(
                manifest.ManifestRow(
                    r.patient_id,
                    r.study_uid,
                    r.series_uid,
                    r.sop_instance_uid,
                    r.frame,
                    r.label,
                    index[r.label],
                    roi,
                    r.source_uid,
                )
            )
        if not rows:
            raise NotFound(f"label set {label_set!r} has no labels to export")
        table = manifest.build_table(
            rows, label_set=info.name, version=info.version, seed=seed, fractions=fractions
        )
        manifest.write_manifest(table, out)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        splits = table.column("split").to_pylist()
        return ExportResult(
            path=str(out),
            label_set=info.name,
            label_set_version=info.version,
            rows=table.num_rows,
            patients=len(set(table.column("patient_id").to_pylist())),
            splits={s: splits.count(s) for s in manifest.SPLITS},
            rows_sha256=meta[manifest.META_PREFIX + "rows_sha256"],
            dropped=dropped,
        )


def _sha256(path: Path) -> tuple[int, str]:
    import hashlib

    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fp:
        while block := fp.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
