"""The triage worker (issue 11): new studies scored by the promoted models as they arrive.

A durable consumer of the archive's change feed, like the sync: its cursor is saved after each
batch, so a restart resumes where it stopped. A "create"/"update" of an instance puts its
study on the pending list (or refreshes its time); a study is scored once ``settle_seconds``
pass without another instance. Objects medflow wrote itself (its label documents, its AI
results: ``origin`` "medflow:..." recorded by the store) never put a study on the list, so
writing a result never re-triggers a scoring.

Scoring a study: every production model whose input spec (modality, body part) fits some of
its images scores those images; the study's probability is the highest over them. For each
model the result is written

1. as a Comprehensive 3D SR in the study (:func:`medflow.ml.triage.results.build_ai_sr`),
   with SOP Instance and Series UIDs derived from (study, model, scored images): scoring the
   same images again (a restart between two writes) rewrites the same object, never a second;
2. as a FHIR RiskAssessment, a conditional update on its identifier (study, model): one per
   study and model, whatever the retries;
3. as the study's worklist row (priority from the probability and thresholds).

A model that throws, or a study that cannot be read, is recorded in ``triage_failure`` and
tried again up to ``max_attempts`` times; the worker goes on with the other studies.

The feed is followed from its end on the first run, so what was stored before is scored only
on request: :meth:`TriageWorker.backfill` puts such studies on the pending list, settled
(``medflow triage backfill``; the demo of ``make run`` after it promotes its model).
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from medflow.core.errors import MedflowError, NotFound, StorageFailure
from medflow.core.settings import TriageSettings
from medflow.db.engine import write_session
from medflow.fhir.identifiers import patient_system
from medflow.fhir.service import FhirService
from medflow.labels.readers import KIND_OF
from medflow.labels.service import LabelService
from medflow.ml.registry.service import ModelInfo, ModelRegistry
from medflow.ml.serving.service import Predictors, dataset_mismatch
from medflow.ml.triage.models import TriageCursor, TriageFailure, TriagePending, WorklistItem
from medflow.ml.triage.results import Finding, build_ai_sr, result_key, risk_assessment, token
from medflow.ml.triage.tasks import cancel_task, write_task
from medflow.ml.triage.worklist import Worklist, priority_of
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService
from medflow.store.spool import SpooledObject

log = logging.getLogger(__name__)
ORIGIN = "medflow:triage"
"""The store's recorded origin of the AI result SRs."""
CURSOR = "dicom"
AI_RESULT_SYSTEM = "urn:medflow:ai-result"


def derived_uid(*parts: str) -> str:
    """A UID derived from ``parts`` (PS3.5 B.2: ``2.25.`` and a 128-bit integer)."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def is_own(record: InstanceRecord) -> bool:
    """An object medflow itself wrote (recorded origin), or a label/result document."""
    origin = getattr(record, "origin", None) or ""
    return origin.startswith("medflow:") or record.sop_class_uid in KIND_OF


@dataclass(frozen=True)
class Scored:
    model: str
    version: int
    probability: float
    sr_uid: str
    risk_assessment_id: str


@dataclass(frozen=True)
class TriageStatus:
    cursor: int
    latest: int
    pending: int
    failures: int


class TriageWorker:
    """Scores settled studies with the production models (keyword-only arguments)."""

    def __init__(
        self,
        *,
        engine: Engine,
        store: StoreService,
        fhir: FhirService,
        registry: ModelRegistry,
        predictors: Predictors,
        labels: LabelService,
        worklist: Worklist,
        settings: TriageSettings,
        patient_id_system: str = "urn:medflow:mrn",
        use_issuer: bool = False,
    ) -> None:
        self.engine = engine
        self.store = store
        self.fhir = fhir
        self.registry = registry
        self.predictors = predictors
        self.labels = labels
        self.worklist = worklist
        self.settings = settings
        self.patient_id_system = patient_id_system
        self.use_issuer = use_issuer
        self._wake = threading.Event()

    # -- the loop ---------------------------------------------------------------------------
    def wake(self, _event: object = None) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: consume the feed, score what settled, sleep a poll interval."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("triage step failed")
            self._wake.wait(self.settings.poll_seconds)
            self._wake.clear()

    def step(self, now: datetime | None = None) -> int:
        """Read the feed to its end, then score every settled study; the number scored."""
        while self.consume():
            pass
        return self.score_settled(now)

    # -- the change feed --------------------------------------------------------------------
    def cursor(self) -> int:
        with Session(self.engine) as s:
            row = s.get(TriageCursor, CURSOR)
            return row.seq if row else 0

    def _start_cursor(self) -> bool:
        """On the very first run, start at the end of the feed: triage scores the studies
        that arrive from now on, not the archive it is switched on over. True when it did."""
        with write_session(self.engine) as s:
            if s.get(TriageCursor, CURSOR) is not None:
                return False
            latest = self.store.latest_change()
            s.add(TriageCursor(name=CURSOR, seq=latest.sequence if latest else 0,
                               updated_at=datetime.now(UTC)))  # fmt: skip
            s.commit()
        return True

    def consume(self) -> int:
        """One batch of the feed: studies with new instances from elsewhere become pending;
        the cursor is saved with them (one transaction). The number of entries read."""
        if self._start_cursor():
            return 0
        start = self.cursor()
        events = self.store.change_feed(offset=start, limit=self.settings.batch)
        if not events:
            return 0
        created = [e for e in events if e.action in ("create", "update")]
        records = {r.sop_instance_uid: r for r in self.store.select_instances(
            sop_uids=[e.sop_instance_uid for e in created])} if created else {}  # fmt: skip
        touched: dict[str, tuple[int, datetime]] = {}
        for e in created:
            record = records.get(e.sop_instance_uid)
            if record is None or is_own(record) or not record.rows:
                continue
            touched[e.study_uid] = (e.sequence, e.timestamp)
        deleted = {e.study_uid for e in events if e.action == "delete"} - set(touched)
        gone = {uid for uid in deleted if not self._exists(uid)}
        with write_session(self.engine) as s:
            listed: list[str] = []
            if gone:  # a deleted study leaves the worklist and the pending list
                on_list = WorklistItem.study_uid.in_(sorted(gone))
                listed = list(s.scalars(select(WorklistItem.study_uid).where(on_list)))
                s.execute(delete(WorklistItem).where(WorklistItem.study_uid.in_(sorted(gone))))
                s.execute(delete(TriagePending).where(TriagePending.study_uid.in_(sorted(gone))))
            for study, (seq, at) in touched.items():
                row = s.get(TriagePending, study)
                if row is None:
                    s.add(TriagePending(study_uid=study, last_change_at=at, seq=seq, attempts=0))
                else:
                    row.last_change_at, row.seq = max(_aware(row.last_change_at), at), seq
            cursor = s.get(TriageCursor, CURSOR)
            stamp = datetime.now(UTC)
            if cursor is None:
                s.add(TriageCursor(name=CURSOR, seq=events[-1].sequence, updated_at=stamp))
            else:
                cursor.seq, cursor.updated_at = events[-1].sequence, stamp
            s.commit()
        for study in listed:  # its Task says the reading will not happen
            cancel_task(self.fhir, study)
        return len(events)

    def _exists(self, study_uid: str) -> bool:
        try:
            return bool(self.store.find_instances(study_uid=study_uid))
        except NotFound:
            return False

    def score_settled(self, now: datetime | None = None) -> int:
        moment = now or datetime.now(UTC)
        settled_before = moment - timedelta(seconds=self.settings.settle_seconds)
        with Session(self.engine) as s:
            studies = [
                (p.study_uid, p.seq)
                for p in s.scalars(select(TriagePending).order_by(TriagePending.last_change_at))
                if _aware(p.last_change_at) <= settled_before
            ]
        done = 0
        for study, seq in studies:
            if self._score_pending(study, seq):
                done += 1
        return done

    def _score_pending(self, study: str, seq: int) -> bool:
        try:
            self.score_study(study)
        except Exception as exc:  # noqa: BLE001  (recorded; the worker goes on)
            reason = (
                exc.message if isinstance(exc, MedflowError) else f"{type(exc).__name__}: {exc}"
            )
            log.warning("triage of a study failed: %s", reason)
            self._failed(study, "*", reason)
            with write_session(self.engine) as s:
                row = s.get(TriagePending, study)
                if row is not None and row.seq == seq:
                    row.attempts += 1
                    if row.attempts >= self.settings.max_attempts:
                        s.delete(row)
                s.commit()
            return False
        with write_session(self.engine) as s:  # a newer instance arrived meanwhile: keep it
            s.execute(delete(TriagePending).where(TriagePending.study_uid == study,
                                                  TriagePending.seq == seq))  # fmt: skip
            s.commit()
        return True

    # -- the archive from before -------------------------------------------------------------
    def backfill(
        self,
        *,
        modalities: Sequence[str] | None = None,
        since: date | None = None,
        rescore: bool = False,
        now: datetime | None = None,
    ) -> int:
        """Put studies already in the archive on the pending list, settled, so the worker
        scores them like new ones (same retries, failures recorded, results written once):
        the archive triage was switched on over, or what arrived before a model was promoted.
        Studies with a series of ``modalities`` (default: those the binary production models
        read), of ``since`` or later (Study Date), not pending already and not on the
        worklist with a result of a production model (unless ``rescore``). Nothing when no
        binary model is in production. The number of studies queued."""
        models = self.production_models()
        if not models:
            return 0
        if modalities is None:
            read = {str(m.input_spec.get("modality") or "").upper() for m in models}
            modalities = () if "" in read else sorted(read)  # a model of any modality
        found = self.store.find_studies(
            modalities=[m.upper() for m in modalities],
            date_from=since.strftime("%Y%m%d") if since is not None else None,
        )
        latest = self.store.latest_change()
        stamp = (now or datetime.now(UTC)) - timedelta(seconds=self.settings.settle_seconds)
        with write_session(self.engine) as s:
            skip = set(s.scalars(select(TriagePending.study_uid)))
            if not rescore:
                refs = sorted(m.ref for m in models)
                skip |= set(s.scalars(select(WorklistItem.study_uid)
                                      .where(WorklistItem.model_ref.in_(refs))))  # fmt: skip
            queued = sorted({f.study_uid for f in found} - skip)
            s.add_all(TriagePending(study_uid=uid, last_change_at=stamp, attempts=0,
                                    seq=latest.sequence if latest else 0)
                      for uid in queued)  # fmt: skip
            s.commit()
        if queued:
            log.info("triage backfill: %d studies queued", len(queued))
            self.wake()
        return len(queued)

    # -- scoring ----------------------------------------------------------------------------
    def production_models(self) -> list[ModelInfo]:
        """The binary classifiers in production: triage ranks by the probability of the
        positive class (``classes[1]``); a model with more classes is not used for it."""
        found = [m for m in self.registry.list() if m.stage == "production"]
        return [m for m in found if len(m.input_spec.get("classes") or []) == 2]

    def score_study(self, study_uid: str) -> list[Scored]:
        """Score the study with every production model that fits some of its images; write
        each result (SR, RiskAssessment, worklist). ``NotFound`` when the study is gone."""
        models = self.production_models()
        if not models:  # nothing reads it: its images are not read either
            return []
        records = [r for r in self.store.find_instances(study_uid=study_uid)
                   if r.rows and not is_own(r)]  # fmt: skip
        if not records:
            return []
        datasets = [_read(self.store, r) for r in records]
        out: list[Scored] = []
        for info in models:
            fitting = [(r, ds) for r, ds in zip(records, datasets, strict=True)
                       if dataset_mismatch(info.input_spec, ds) is None]  # fmt: skip
            if not fitting:
                continue
            try:
                out.append(self._score_with(info, study_uid, fitting))
            except Exception as exc:
                reason = (exc.message if isinstance(exc, MedflowError)
                          else f"{type(exc).__name__}: {exc}")  # fmt: skip
                self._failed(study_uid, info.ref, reason)
                if not isinstance(exc, MedflowError) or getattr(exc, "retryable", False):
                    raise
        return out

    def _score_with(
        self, info: ModelInfo, study_uid: str, fitting: Sequence[tuple[InstanceRecord, Dataset]]
    ) -> Scored:
        predictor = self.predictors.get(info.name, info.version)
        predictions = predictor.predict([ds for _, ds in fitting])
        best = max(predictions, key=lambda p: p.probability)
        finding = self._finding(info, best.probability, best.threshold)
        headers = [ds for _, ds in fitting]
        scored = sorted(r.sop_instance_uid for r, _ in fitting)
        sr_uid = derived_uid("ai-sr", study_uid, info.ref, *scored)
        if not self.store.select_instances(sop_uids=[sr_uid]):  # written before a restart
            sr = build_ai_sr(
                evidence=headers, finding=finding, sop_instance_uid=sr_uid,
                series_instance_uid=derived_uid("ai-series", study_uid, info.ref),
            )  # fmt: skip
            self._store_sr(sr)
        first = headers[0]
        risk_id = self._write_risk(finding, first, study_uid, sr_uid)
        self.worklist.upsert(study_uid=study_uid, values={
            "patient_id": str(first.get("PatientID", "") or ""),
            "patient_name": str(first.get("PatientName", "") or ""),
            "accession": str(first.get("AccessionNumber", "") or ""),
            "study_date": str(first.get("StudyDate", "") or "")[:8],
            "modality": str(first.get("Modality", "") or "").upper(),
            "body_part": str(first.get("BodyPartExamined", "") or "").upper(),
            "description": str(first.get("StudyDescription", "") or "")[:200],
            "model_ref": info.ref, "finding": finding.meaning, "probability": finding.probability,
            "threshold": best.threshold,
            "priority": priority_of(finding.probability, best.threshold,
                                    self.settings.urgent_probability),
            "sr_uid": sr_uid, "risk_assessment_id": risk_id,
            "scored_at": datetime.now(UTC),
        })  # fmt: skip
        write_task(self.fhir, self.worklist.get(study_uid=study_uid))
        return Scored(info.name, info.version, finding.probability, sr_uid, risk_id)

    def _finding(self, info: ModelInfo, probability: float, threshold: float | None) -> Finding:
        """The positive class with its code from the model's label set (a private code
        when the set, or the class in it, is unknown)."""
        classes = list(info.input_spec.get("classes") or ["negative", "positive"])
        positive = str(classes[1] if len(classes) > 1 else classes[0])
        scheme, value, meaning = "99MEDFLOW", positive[:64], positive
        if info.label_set:
            try:
                definition = self.labels.sets.get(
                    name=info.label_set, version=info.label_set_version
                ).definition
                code = definition.label_class(positive).concept()
                scheme, value, meaning = code.scheme, code.value, code.meaning or positive
            except (MedflowError, ValueError):
                pass
        return Finding(scheme=scheme, value=value, meaning=meaning,
                       probability=round(float(probability), 6),
                       threshold=0.5 if threshold is None else float(threshold),
                       model=info.name, version=info.version)  # fmt: skip

    def _store_sr(self, ds: Dataset) -> None:
        spool = self.store.spool_dir
        spool.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=spool, suffix=".dcm", delete=False) as tmp:
            path = Path(tmp.name)
        ds.save_as(path, enforce_file_format=True)
        data = path.read_bytes()
        (outcome,) = self.store.store(
            objects=[SpooledObject(path, len(data), hashlib.sha256(data).hexdigest())],
            origin=ORIGIN,
        )
        if not outcome.ok:
            raise StorageFailure(f"the archive refused the AI result SR: {outcome.message}")

    def _write_risk(self, finding: Finding, first: Dataset, study_uid: str, sr_uid: str) -> str:
        """The RiskAssessment (conditional update on its identifier); its id. Retryable
        ``StorageFailure`` while the sync has not made the Patient yet."""
        pid = str(first.get("PatientID", "") or "")
        issuer = str(first.get("IssuerOfPatientID", "") or "")
        system = patient_system(issuer, default=self.patient_id_system, use_issuer=self.use_issuer)
        patients = self.fhir.search_resources(
            resource_type="Patient", params=[("identifier", f"{system}|{pid}")], limit=2
        )
        if len(patients) != 1:
            raise StorageFailure("the study's Patient is not (uniquely) in FHIR yet")
        studies = self.fhir.search_resources(
            resource_type="ImagingStudy",
            params=[("identifier", f"urn:dicom:uid|urn:oid:{study_uid}")], limit=1,
        )  # fmt: skip
        resource = risk_assessment(
            finding=finding, patient_id=str(patients[0]["id"]),
            imaging_study_id=str(studies[0]["id"]) if studies else None,
            study_uid=study_uid, sr_uid=sr_uid,
        )  # fmt: skip
        written = self.fhir.conditional_update(
            resource_type="RiskAssessment",
            query="identifier="
            + quote(token(AI_RESULT_SYSTEM, result_key(study_uid, finding.model_ref))),
            resource=resource,
        )
        return str(written.res_id)

    def _failed(self, study_uid: str, model_ref: str, reason: str) -> None:
        stamp = datetime.now(UTC)
        with write_session(self.engine) as s:
            which = (TriageFailure.study_uid == study_uid, TriageFailure.model_ref == model_ref)
            row = s.scalar(select(TriageFailure).where(*which))
            if row is None:
                s.add(TriageFailure(study_uid=study_uid, model_ref=model_ref,
                                    reason=reason[:2000], attempts=1, created_at=stamp,
                                    last_attempt_at=stamp))  # fmt: skip
            else:
                row.reason, row.attempts, row.last_attempt_at = (
                    reason[:2000],
                    row.attempts + 1,
                    stamp,
                )
            s.commit()

    # -- status -------------------------------------------------------------------------------
    def failures(self) -> list[dict[str, Any]]:
        return list_failures(self.engine)

    def status(self) -> TriageStatus:
        latest = self.store.latest_change()
        with Session(self.engine) as s:
            pending = len(s.scalars(select(TriagePending.study_uid)).all())
            failures = len(s.scalars(select(TriageFailure.pk)).all())
        return TriageStatus(self.cursor(), latest.sequence if latest else 0, pending, failures)

    def run_until_idle(self, *, max_steps: int = 100, now: datetime | None = None) -> None:
        """Tests and ``medflow triage once``: consume and score until nothing is left."""
        for _ in range(max_steps):
            if not self.step(now) and not self.consume():
                return
            time.sleep(0)


def list_failures(engine: Engine) -> list[dict[str, Any]]:
    """The recorded scoring failures, the latest first."""
    with Session(engine) as s:
        rows = s.scalars(select(TriageFailure).order_by(TriageFailure.last_attempt_at.desc()))
        return [{"study_uid": r.study_uid, "model": r.model_ref, "reason": r.reason,
                 "attempts": r.attempts, "last_attempt_at": r.last_attempt_at.isoformat()}
                for r in rows]  # fmt: skip


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _read(store: StoreService, record: InstanceRecord) -> Dataset:
    return pydicom.dcmread(io.BytesIO(b"".join(store.iter_bytes(record))))


def start_in_thread(worker: TriageWorker) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="medflow-triage", daemon=True)
    thread.start()
    return thread, stop


__all__ = ["ORIGIN", "Scored", "TriageStatus", "TriageWorker", "derived_uid", "is_own",
           "list_failures",
           "start_in_thread"]  # fmt: skip
