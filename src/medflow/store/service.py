"""The archive's service: store, read, delete, change feed, verify (what other code may call).

Edges (DICOMweb, DIMSE, CLI) call only this module. Errors are ``medflow.core.errors`` types;
nothing here knows HTTP or DIMSE. Write path (DESIGN.md, Storage): parse the spooled object,
make its blob durable under a content-derived key, then commit the index row; a crash between
the two leaves an orphan blob (reported by ``verify``), never a row without its blob.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import shutil
import tempfile
import threading
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from sqlalchemy import Select, bindparam, delete, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from medflow.core.errors import InvalidInput, MedflowError, NotFound, StorageFailure
from medflow.core.events import EventBus, InstancesChanged
from medflow.core.settings import StoreSettings
from medflow.db.engine import write_session
from medflow.dicom.attributes import ParsedInstance, is_valid_uid, read_part10
from medflow.dicom.matching import Match, MatchType, parse_attribute
from medflow.store.blobs import BlobStore
from medflow.store.indexer import (
    Pending,
    append_feed,
    index_batch,
    lock_change_feed,
    prune_empty,
    refresh_counts,
)
from medflow.store.models import ChangeFeedEntry, Instance, Series, Study
from medflow.store.query import Level, Query, QueryResult, execute_query
from medflow.store.records import (
    ArchiveOverview,
    ChangeEvent,
    InstanceRecord,
    StoreOutcome,
    VerifyReport,
)
from medflow.store.spool import SpooledObject

log = logging.getLogger(__name__)


def blob_key_for(parsed: ParsedInstance, sha256: str) -> str:
    """Content-derived key: a replaced instance never overwrites the blob its old row names."""
    return f"{parsed.study_uid}/{parsed.series_uid}/{parsed.sop_instance_uid}.{sha256[:16]}.dcm"


def _check_uids(*uids: str | None) -> None:
    for uid in uids:
        if uid is not None and not is_valid_uid(uid):
            raise InvalidInput("invalid UID in request")


@functools.cache
def _one_instance() -> Select[Any]:
    """The statement of ``StoreService.find_instance`` (built once, compiled once)."""
    return (
        select(*InstanceRecord.index_columns())
        .join(Series, Instance.series_pk == Series.pk)
        .join(Study, Instance.study_pk == Study.pk)
        .where(
            Study.study_uid == bindparam("study_uid"),
            Series.series_uid == bindparam("series_uid"),
            Instance.sop_instance_uid == bindparam("sop_uid"),
        )
    )


FOREIGN_PREFIXES = ("models/",)
"""Blob keys that other contexts keep in the blob store (the model registry's weights and
plots): not instances, so never orphans of the index."""


class StoreService:
    def __init__(
        self,
        *,
        engine: Engine,
        blobs: BlobStore,
        spool_dir: Path,
        settings: StoreSettings | None = None,
        events: EventBus | None = None,
    ) -> None:
        self.engine = engine
        self.blobs = blobs
        self.spool_dir = spool_dir
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings or StoreSettings()
        self.events = events
        self._sessions = sessionmaker(bind=engine, expire_on_commit=False)
        self._cpu = threading.Lock()

    # -- sessions ---------------------------------------------------------------------------
    def _write_session(self) -> contextlib.AbstractContextManager[Session]:
        return write_session(self.engine)

    def read_session(self) -> Session:
        """A session for read-only queries (used by the query module)."""
        return self._sessions()

    # -- store ------------------------------------------------------------------------------
    def store(
        self,
        *,
        objects: Sequence[SpooledObject],
        expected_study_uid: str | None = None,
        origin: str | None = None,
    ) -> list[StoreOutcome]:
        """Store spooled Part 10 objects; one outcome per object, in order. Never raises for a
        bad object: its outcome carries the FailureReason. Spool files are consumed.
        ``origin``: recorded with each instance when medflow stores what it wrote itself
        ("medflow:<writer>"), so change feed consumers can leave their own output alone."""
        with self._cpu:
            return self._store(objects, expected_study_uid, origin)

    def _store(
        self,
        objects: Sequence[SpooledObject],
        expected_study_uid: str | None,
        origin: str | None = None,
    ) -> list[StoreOutcome]:
        outcomes: list[StoreOutcome | None] = [None] * len(objects)
        pending: list[Pending] = []
        try:
            for i, obj in enumerate(objects):
                try:
                    parsed = read_part10(obj.path, size=obj.size)
                except MedflowError as exc:
                    outcomes[i] = StoreOutcome(
                        ok=False, failure_reason=exc.dicom_reason, message=exc.message
                    )
                    continue
                item = Pending(i, parsed, obj, blob_key_for(parsed, obj.sha256), origin)
                if expected_study_uid is not None and parsed.study_uid != expected_study_uid:
                    outcomes[i] = item.outcome(
                        ok=False,
                        failure_reason=0xA900,
                        message="StudyInstanceUID does not match the study in the request URL",
                    )
                    continue
                pending.append(item)
            for i, outcome in self._index(pending):
                outcomes[i] = outcome
        finally:
            for obj in objects:
                obj.discard()
        return [o for o in outcomes if o is not None]

    def _existing(self, uids: list[str]) -> dict[str, tuple[str, str]]:
        with self.read_session() as s:
            rows = s.execute(
                select(Instance.sop_instance_uid, Instance.sha256, Instance.blob_key).where(
                    Instance.sop_instance_uid.in_(uids)
                )
            ).all()
        return {r[0]: (r[1], r[2]) for r in rows}

    def _index(self, pending: list[Pending]) -> list[tuple[int, StoreOutcome]]:
        if not pending:
            return []
        existing = self._existing([p.parsed.sop_instance_uid for p in pending])
        to_write = [
            (item.blob_key, item.spooled.path)
            for item in pending
            if existing.get(item.parsed.sop_instance_uid, ("",))[0] != item.spooled.sha256
        ]
        self.blobs.put_files(to_write)
        written = [key for key, _ in to_write]
        for attempt in range(3):
            try:
                return self._commit(pending, written)
            except (IntegrityError, OperationalError) as exc:
                log.warning("index transaction failed (attempt %d): %s", attempt + 1, type(exc))
                if attempt == 2:
                    self._forget_blobs(written)
                    raise StorageFailure("index transaction failed") from exc
        raise AssertionError("unreachable")

    def _commit(self, pending: list[Pending], written: list[str]) -> list[tuple[int, StoreOutcome]]:
        with self._write_session() as session:
            lock_change_feed(session)
            result = index_batch(session, pending, overwrite=self.settings.overwrite)
            session.commit()
        ok = {i for i, outcome in result.outcomes if outcome.ok}
        stored_keys = {item.blob_key for item in pending if item.index in ok}
        self._forget_blobs([k for k in written if k not in stored_keys])
        for key in result.replaced_keys:
            self._delete_blob(key)
        self._publish({p.parsed.study_uid for p in pending})
        return result.outcomes

    def _forget_blobs(self, keys: list[str]) -> None:
        """Remove blobs written for a batch but not committed, unless a row refers to them."""
        if not keys:
            return
        with self.read_session() as s:
            referenced = set(
                s.scalars(select(Instance.blob_key).where(Instance.blob_key.in_(keys)))
            )
        for key in keys:
            if key not in referenced:
                self._delete_blob(key)

    def _delete_blob(self, key: str) -> None:
        try:
            self.blobs.delete(key)
        except Exception:  # noqa: BLE001 — a leftover blob is an orphan for `verify`, never a lost instance
            log.warning("could not delete blob %s", key)

    def _publish(self, study_uids: set[str]) -> None:
        if self.events is None:
            return
        latest = self.latest_change()
        self.events.publish(
            InstancesChanged(
                last_sequence=latest.sequence if latest else 0, study_uids=frozenset(study_uids)
            )
        )

    # -- query (QIDO-RS, C-FIND) ----------------------------------------------------------------
    def search(self, query: Query) -> QueryResult:
        """Run a study/series/instance query (PS3.18 10.6, PS3.4 C.2.2 matching)."""
        with self.read_session() as session:
            return execute_query(session, query)

    def find_studies(
        self,
        *,
        patient_ids: Collection[str] | None = None,
        modalities: Sequence[str] = (),
        body_parts: Sequence[str] = (),
        date_from: str | None = None,
        date_to: str | None = None,
        description_contains: str | None = None,
        sop_classes: Sequence[str] = (),
        study_uids: Collection[str] | None = None,
    ) -> list[StudyMatch]:
        """Every study with a series matching all the given keys (QIDO-RS matching, PS3.4
        C.2.2.2): Patient ID in ``patient_ids`` (None: any), Study Instance UID in
        ``study_uids`` (None: any; not together with ``patient_ids``), Modality and Body
        Part Examined in their lists, Study Date in ``date_from``..``date_to`` (DA,
        inclusive), Study Description containing the text (case-insensitive), SOP Class
        UID in ``sop_classes`` (then instances are matched). ``instances``: the matching
        series' (or instances') count. Several queries of at most :data:`FIND_CHUNK`
        patients (or studies), all pages read."""
        if patient_ids is not None and study_uids is not None:
            raise InvalidInput("find_studies: patient_ids or study_uids, not both")
        if (patient_ids is not None and not patient_ids) or (
            study_uids is not None and not study_uids
        ):
            return []
        key, listed = ("PatientID", patient_ids) if study_uids is None else (
            "StudyInstanceUID", study_uids)  # fmt: skip
        level: Level = "instance" if sop_classes else "series"
        common = _study_keys(modalities, body_parts, date_from, date_to, description_contains,
                             sop_classes)  # fmt: skip
        ids = sorted(set(listed)) if listed is not None else None
        chunks = [None] if ids is None else [ids[i : i + FIND_CHUNK]
                                              for i in range(0, len(ids), FIND_CHUNK)]  # fmt: skip
        studies: dict[str, StudyMatch] = {}
        with self.read_session() as session:
            for chunk in chunks:
                matches = common if chunk is None else (_list_key(key, chunk), *common)
                offset = 0
                while True:
                    page = execute_query(session, Query(level, matches, limit=FIND_PAGE,
                                                        offset=offset))  # fmt: skip
                    for row in page.rows:
                        _add_study(studies, row, level)
                    if not page.more:
                        break
                    offset += FIND_PAGE
        return sorted(studies.values(), key=lambda m: (m.patient_id or "", m.study_date or "",
                                                       m.study_uid))  # fmt: skip

    # -- read -------------------------------------------------------------------------------
    def _instance_query(
        self, study_uid: str, series_uid: str | None, sop_uid: str | None
    ) -> Select[Instance, str, str]:
        _check_uids(study_uid, series_uid, sop_uid)
        q = (
            select(Instance, Study.study_uid, Series.series_uid)
            .join(Series, Instance.series_pk == Series.pk)
            .join(Study, Instance.study_pk == Study.pk)
            .where(Study.study_uid == study_uid)
        )
        if series_uid is not None:
            q = q.where(Series.series_uid == series_uid)
        if sop_uid is not None:
            q = q.where(Instance.sop_instance_uid == sop_uid)
        return q.order_by(Series.series_number, Series.pk, Instance.instance_number, Instance.pk)

    def find_instances(
        self, *, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> list[InstanceRecord]:
        """Instances of a study/series/instance in series and instance number order.

        Raises ``NotFound`` when nothing matches."""
        query = self._instance_query(study_uid, series_uid, sop_uid).with_only_columns(
            *InstanceRecord.index_columns()
        )
        with self.engine.connect() as conn:  # plain rows: no ORM state for a read path
            rows = conn.execute(query).all()
        if not rows:
            raise NotFound(
                "no such " + ("instance" if sop_uid else "series" if series_uid else "study")
            )
        return [InstanceRecord.from_row(r) for r in rows]

    def find_instance(self, *, study_uid: str, series_uid: str, sop_uid: str) -> InstanceRecord:
        """One instance's index record (``NotFound`` when there is none): the hot path of
        WADO-RS frames (a slide viewer's tile requests), one prepared statement with bound
        parameters, built once, so no query is constructed or compiled per call."""
        _check_uids(study_uid, series_uid, sop_uid)
        with self.engine.connect() as conn:
            row = conn.execute(
                _one_instance(),
                {"study_uid": study_uid, "series_uid": series_uid, "sop_uid": sop_uid},
            ).first()
        if row is None:
            raise NotFound("no such instance")
        return InstanceRecord.from_row(row)

    def select_instances(
        self,
        *,
        patient_ids: Sequence[str] = (),
        study_uids: Sequence[str] = (),
        series_uids: Sequence[str] = (),
        sop_uids: Sequence[str] = (),
    ) -> list[InstanceRecord]:
        """Instances matching every given key, a list matching any of its values (the unique
        keys of a C-MOVE/C-GET identifier, PS3.4 C.4.2.2.1; ``medflow send``). At least one
        key is required; the result is in study, series and instance number order."""
        if not (patient_ids or study_uids or series_uids or sop_uids):
            raise InvalidInput("no unique key given")
        q = (
            select(*InstanceRecord.index_columns())
            .select_from(Instance)
            .join(Series, Instance.series_pk == Series.pk)
            .join(Study, Instance.study_pk == Study.pk)
        )
        for column, values in (
            (Study.patient_id, patient_ids),
            (Study.study_uid, study_uids),
            (Series.series_uid, series_uids),
            (Instance.sop_instance_uid, sop_uids),
        ):
            if values:
                q = q.where(column.in_(sorted(set(values))))
        q = q.order_by(
            Study.pk, Series.series_number, Series.pk, Instance.instance_number, Instance.pk
        )
        with self.engine.connect() as conn:
            return [InstanceRecord.from_row(r) for r in conn.execute(q)]

    def metadata(
        self, *, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> tuple[list[str], str]:
        """DICOM JSON texts (relative BulkDataURIs) and an ETag over what they describe."""
        _check_uids(study_uid, series_uid, sop_uid)
        q = self._instance_query(study_uid, series_uid, sop_uid).with_only_columns(
            Instance.metadata_json, Instance.sha256
        )
        with self.read_session() as s:
            rows = s.execute(q).all()
        if not rows:
            raise NotFound(
                "no such " + ("instance" if sop_uid else "series" if series_uid else "study")
            )
        etag = hashlib.sha256("".join(r[1] for r in rows).encode()).hexdigest()[:32]
        return [r[0] for r in rows], etag

    def local_path(self, record: InstanceRecord) -> Path | None:
        return self.blobs.local_path(record.blob_key)

    @contextlib.contextmanager
    def open_instance(self, record: InstanceRecord) -> Iterator[BinaryIO]:
        """A seekable binary stream of the stored file (downloaded to the spool for S3)."""
        path = self.blobs.local_path(record.blob_key)
        if path is not None:
            try:
                fp = path.open("rb")
            except FileNotFoundError:
                raise StorageFailure("blob is missing", retryable=False) from None
            with fp:
                yield fp
            return
        with tempfile.TemporaryFile(dir=self.spool_dir) as tmp:
            with self.blobs.open(record.blob_key) as src:
                shutil.copyfileobj(src, tmp, 1 << 20)
            tmp.seek(0)
            yield tmp

    def read_range(self, record: InstanceRecord, offset: int, length: int) -> bytes:
        """Bytes of the stored file at ``offset`` (an S3 range request: no download)."""
        return self.blobs.read_range(record.blob_key, offset, length)

    def iter_bytes(self, record: InstanceRecord, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        """The stored file as chunks, without loading it whole."""
        with self.blobs.open(record.blob_key) as fp:
            while chunk := fp.read(chunk_size):
                yield chunk

    # -- delete -----------------------------------------------------------------------------
    def delete(
        self, *, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None
    ) -> int:
        """Hard delete (index first, then blobs); each instance gets a "delete" feed entry."""
        q = self._instance_query(study_uid, series_uid, sop_uid)
        with self._write_session() as session:
            lock_change_feed(session)
            rows = session.execute(q).all()
            if not rows:
                raise NotFound(
                    "no such " + ("instance" if sop_uid else "series" if series_uid else "study")
                )
            parents = {(r[0].series_pk, r[0].study_pk) for r in rows}
            keys = [r[0].blob_key for r in rows]
            session.execute(delete(Instance).where(Instance.pk.in_([r[0].pk for r in rows])))
            append_feed(
                session, [(st, se, inst.sop_instance_uid, "delete") for inst, st, se in rows]
            )
            for series_pk, study_pk in parents:
                prune_empty(session, series_pk=series_pk, study_pk=study_pk)
            refresh_counts(session, {study_pk for _, study_pk in parents})
            session.commit()
        for key in keys:
            self._delete_blob(key)
        self._publish({study_uid})
        return len(rows)

    # -- change feed ------------------------------------------------------------------------
    def change_feed(
        self,
        *,
        offset: int = 0,
        limit: int = 100,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        include_metadata: bool = False,
    ) -> list[ChangeEvent]:
        """Entries after Sequence ``offset``; in the time-window form, ``offset`` entries of the
        window are skipped instead."""
        q = select(ChangeFeedEntry)
        if start_time is not None or end_time is not None:
            if start_time is not None:
                q = q.where(ChangeFeedEntry.timestamp >= start_time)
            if end_time is not None:
                q = q.where(ChangeFeedEntry.timestamp < end_time)
            q = q.order_by(ChangeFeedEntry.seq).offset(offset)
        else:
            q = q.where(ChangeFeedEntry.seq > offset).order_by(ChangeFeedEntry.seq)
        with self.read_session() as s:
            entries = list(s.scalars(q.limit(limit)))
            meta: dict[str, str] = {}
            if include_metadata and entries:
                uids = {e.sop_instance_uid for e in entries if e.state == "current"}
                rows = s.execute(
                    select(Instance.sop_instance_uid, Instance.metadata_json).where(
                        Instance.sop_instance_uid.in_(uids)
                    )
                )
                meta = {uid: text for uid, text in rows}
        return [
            self._event(e, meta.get(e.sop_instance_uid) if e.state == "current" else None)
            for e in entries
        ]

    def latest_change(self) -> ChangeEvent | None:
        with self.read_session() as s:
            e = s.scalar(select(ChangeFeedEntry).order_by(ChangeFeedEntry.seq.desc()).limit(1))
        return self._event(e, None) if e else None

    @staticmethod
    def _event(e: ChangeFeedEntry, metadata_json: str | None) -> ChangeEvent:
        stamp = e.timestamp if e.timestamp.tzinfo else e.timestamp.replace(tzinfo=UTC)
        return ChangeEvent(
            sequence=e.seq,
            study_uid=e.study_uid,
            series_uid=e.series_uid,
            sop_instance_uid=e.sop_instance_uid,
            action=e.action,
            state=e.state,
            timestamp=stamp,
            metadata_json=metadata_json,
        )

    # -- verify -----------------------------------------------------------------------------
    def verify(self, *, check_hashes: bool = True) -> VerifyReport:
        """Blobs missing, corrupted (SHA-256 or size differs) or orphaned (no row)."""
        report = VerifyReport()
        known: set[str] = set()
        with self.read_session() as s:
            rows = s.execute(
                select(Instance.sop_instance_uid, Instance.blob_key, Instance.sha256, Instance.size)
            ).all()
        for sop_uid, key, sha, size in rows:
            report.checked += 1
            known.add(key)
            if not self.blobs.exists(key):
                report.missing.append(sop_uid)
                continue
            if check_hashes:
                digest, n = hashlib.sha256(), 0
                with self.blobs.open(key) as fp:
                    while chunk := fp.read(1 << 20):
                        digest.update(chunk)
                        n += len(chunk)
                if digest.hexdigest() != sha or n != size:
                    report.corrupted.append(sop_uid)
        report.orphaned = sorted(
            k for k in self.blobs.iter_keys()
            if k not in known and not k.startswith(FOREIGN_PREFIXES)
        )  # fmt: skip
        return report

    def counts(self) -> dict[str, int]:
        with self.read_session() as s:
            return {
                "studies": s.scalar(select(func.count()).select_from(Study)) or 0,
                "series": s.scalar(select(func.count()).select_from(Series)) or 0,
                "instances": s.scalar(select(func.count()).select_from(Instance)) or 0,
            }

    def overview(self, *, top_modalities: int = 20) -> ArchiveOverview:
        """Counts of patients, studies, series and instances, studies by modality (at most
        ``top_modalities``) and by year: aggregates in SQL over indexed columns (scans of the
        study and series tables; the web UI caches the result when it is slow)."""
        year = func.substr(Study.study_date, 1, 4)
        with self.read_session() as s:
            patients = s.scalar(select(func.count(func.distinct(Study.patient_id)))) or 0
            per_study = func.count(func.distinct(Series.study_pk))
            modalities = s.execute(
                select(Series.modality, per_study)
                .where(Series.modality.is_not(None))
                .group_by(Series.modality)
                .order_by(per_study.desc(), Series.modality)
                .limit(top_modalities)
            ).all()
            years = s.execute(
                select(year, func.count())
                .where(Study.study_date.is_not(None), func.length(Study.study_date) >= 4)
                .group_by(year)
                .order_by(year)
            ).all()
        counts = self.counts()
        return ArchiveOverview(
            patients=int(patients),
            studies=counts["studies"],
            series=counts["series"],
            instances=counts["instances"],
            studies_by_modality=[(str(m), int(n)) for m, n in modalities],
            studies_by_year=[(str(y), int(n)) for y, n in years],
        )


FIND_CHUNK = 500
"""Patient IDs per query of :meth:`StoreService.find_studies`."""
FIND_PAGE = 5000


@dataclass(frozen=True)
class StudyMatch:
    """A study found by :meth:`StoreService.find_studies`, with what matched in it."""

    study_uid: str
    patient_id: str | None
    study_date: str | None
    """DA (``YYYYMMDD``)."""
    accession_number: str | None
    description: str | None
    modalities: tuple[str, ...]
    """Of the matching series."""
    body_parts: tuple[str, ...]
    instances: int


def _first(row: dict[str, Any], tag: str) -> Any:
    values = (row.get(tag) or {}).get("Value") or [None]
    return values[0]


def _list_key(keyword: str, values: Sequence[str]) -> Match:
    attribute = parse_attribute(keyword)
    if len(values) == 1:
        return Match(attribute, MatchType.SINGLE, value=values[0])
    return Match(attribute, MatchType.LIST, values=tuple(values))


def _study_keys(
    modalities: Sequence[str],
    body_parts: Sequence[str],
    date_from: str | None,
    date_to: str | None,
    description: str | None,
    sop_classes: Sequence[str],
) -> tuple[Match, ...]:
    keys = [_list_key(k, v) for k, v in (("Modality", modalities), ("BodyPartExamined",
            body_parts), ("SOPClassUID", sop_classes)) if v]  # fmt: skip
    if date_from or date_to:
        keys.append(Match(parse_attribute("StudyDate"), MatchType.RANGE, low=date_from or None,
                          high=date_to or None))  # fmt: skip
    if description:
        text = description.replace("*", "").replace("?", "")
        keys.append(Match(parse_attribute("StudyDescription"), MatchType.WILDCARD,
                          value=f"*{text}*"))  # fmt: skip
    return tuple(keys)


def _add_study(studies: dict[str, StudyMatch], row: dict[str, Any], level: str) -> None:
    """Fold one matching series (or instance) row into its study's match."""
    uid = str(_first(row, "0020000D"))
    modality, body_part = _first(row, "00080060"), _first(row, "00180015")
    count = 1 if level == "instance" else int(_first(row, "00201209") or 0)
    known = studies.get(uid)
    if known is None:
        known = StudyMatch(uid, _first(row, "00100020"), _first(row, "00080020"),
                           _first(row, "00080050"), _first(row, "00081030"), (), (), 0)  # fmt: skip
    studies[uid] = replace(
        known,
        modalities=tuple(sorted({*known.modalities, *([modality] if modality else [])})),
        body_parts=tuple(sorted({*known.body_parts, *([body_part] if body_part else [])})),
        instances=known.instances + count,
    )


__all__ = ["StoreService", "StudyMatch"]
