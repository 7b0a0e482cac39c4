"""The write side of the index: one transaction stores a batch of parsed instances.

Called by ``StoreService`` after every blob of the batch is durable. The batch is written with
set-based statements (one query per table, not one ORM flush per instance): study and series
rows are created on first sight and their attributes follow the latest instance of the batch;
each create/update/delete appends a change feed entry. On PostgreSQL an advisory transaction
lock orders change feed writers, so Sequence values become visible in commit order (a reader at
cursor N never skips an entry committed later with a smaller number). SQLite gets the same from
``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from medflow.core.errors import AlreadyExists
from medflow.dicom.attributes import ParsedInstance, name_tokens, search_form
from medflow.store.models import ChangeFeedEntry, Instance, PersonNameToken, Series, Study
from medflow.store.records import StoreOutcome
from medflow.store.spool import SpooledObject

CHANGE_FEED_LOCK = 0x6D66_6366  # "mfcf"
PATIENT_NAME, REFERRING_PHYSICIAN = "00100010", "00080090"


@dataclass(frozen=True)
class Pending:
    """A parsed object whose blob is already durable under ``blob_key``."""

    index: int
    parsed: ParsedInstance
    spooled: SpooledObject
    blob_key: str
    origin: str | None = None

    def outcome(self, *, ok: bool, **kw: Any) -> StoreOutcome:
        p = self.parsed
        return StoreOutcome(
            ok=ok,
            sop_class_uid=p.sop_class_uid,
            sop_instance_uid=p.sop_instance_uid,
            study_uid=p.study_uid,
            series_uid=p.series_uid,
            **kw,
        )


@dataclass
class BatchResult:
    outcomes: list[tuple[int, StoreOutcome]]
    replaced_keys: list[str]
    """Blob keys of replaced instances, to delete after commit."""


def now() -> datetime:
    return datetime.now(UTC)


def lock_change_feed(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(CHANGE_FEED_LOCK)))


def _fit(table: Any, values: dict[str, Any]) -> dict[str, Any]:
    """Cut text values to their column's length. Real-world values exceed their VR's maximum
    (PS3.5 6.2); the stored file keeps them whole, the index keeps what fits."""
    out = {}
    for key, value in values.items():
        length = getattr(table.c[key].type, "length", None)
        out[key] = value[:length] if isinstance(value, str) and length else value
    return out


def _study_values(p: ParsedInstance) -> dict[str, Any]:
    a = p.attrs
    return _fit(
        Study.__table__,
        {
            "patient_id": a["PatientID"],
            "issuer_of_patient_id": a["IssuerOfPatientID"],
            "patient_name": a["PatientName"],
            "patient_name_search": search_form(a["PatientName"]),
            "patient_birth_date": a["PatientBirthDate"],
            "patient_sex": a["PatientSex"],
            "study_date": a["StudyDate"],
            "study_time": a["StudyTime"],
            "accession_number": a["AccessionNumber"],
            "referring_physician_name": a["ReferringPhysicianName"],
            "referring_physician_name_search": search_form(a["ReferringPhysicianName"]),
            "study_id": a["StudyID"],
            "study_description": a["StudyDescription"],
            "specific_character_set": a["SpecificCharacterSet"],
            "timezone_offset": a["TimezoneOffsetFromUTC"],
        },
    )


def _series_values(p: ParsedInstance) -> dict[str, Any]:
    a = p.attrs
    return _fit(
        Series.__table__,
        {
            "modality": a["Modality"],
            "series_number": a["SeriesNumber"],
            "series_description": a["SeriesDescription"],
            "body_part_examined": a["BodyPartExamined"],
            "performed_procedure_step_start_date": a["PerformedProcedureStepStartDate"],
            "performed_procedure_step_start_time": a["PerformedProcedureStepStartTime"],
            "scheduled_procedure_step_id": a["ScheduledProcedureStepID"],
            "requested_procedure_id": a["RequestedProcedureID"],
            "specific_character_set": a["SpecificCharacterSet"],
            "timezone_offset": a["TimezoneOffsetFromUTC"],
        },
    )


def _instance_values(item: Pending) -> dict[str, Any]:
    p, a = item.parsed, item.parsed.attrs
    return _fit(
        Instance.__table__,
        {
            "sop_class_uid": p.sop_class_uid,
            "instance_number": a["InstanceNumber"],
            "transfer_syntax_uid": p.transfer_syntax_uid,
            "rows": a["Rows"],
            "columns": a["Columns"],
            "bits_allocated": a["BitsAllocated"],
            "number_of_frames": a["NumberOfFrames"],
            "specific_character_set": a["SpecificCharacterSet"],
            "timezone_offset": a["TimezoneOffsetFromUTC"],
            "pixel_data_offset": p.pixel_data_offset,
            "pixel_data_length": p.pixel_data_length,
            "size": item.spooled.size,
            "sha256": item.spooled.sha256,
            "blob_key": item.blob_key,
            "metadata_json": p.metadata_json,
            "origin": item.origin,
        },
    )


def index_batch(session: Session, items: list[Pending], *, overwrite: bool) -> BatchResult:
    """Index ``items`` (in order) inside the caller's open transaction."""
    stamp = now()
    uids = {it.parsed.sop_instance_uid for it in items}
    existing = {
        r.sop_instance_uid: r
        for r in session.execute(
            select(
                Instance.pk,
                Instance.sop_instance_uid,
                Instance.sha256,
                Instance.blob_key,
                Instance.series_pk,
                Instance.study_pk,
            ).where(Instance.sop_instance_uid.in_(uids))
        )
    }
    outcomes: list[tuple[int, StoreOutcome]] = []
    accepted: dict[str, Pending] = {}  # the last accepted object per SOP Instance UID wins
    for it in items:
        uid = it.parsed.sop_instance_uid
        known = accepted.get(uid)
        sha = known.spooled.sha256 if known else (existing[uid].sha256 if uid in existing else None)
        if sha == it.spooled.sha256:
            outcomes.append((it.index, it.outcome(ok=True, action="none")))
        elif sha is not None and not overwrite:
            exc = AlreadyExists(
                "an instance with this SOP Instance UID and different content exists"
            )
            outcomes.append(
                (
                    it.index,
                    it.outcome(ok=False, failure_reason=exc.dicom_reason, message=exc.message),
                )
            )
        else:
            accepted[uid] = it
            action = "update" if uid in existing else "create"
            outcomes.append((it.index, it.outcome(ok=True, action=action)))
    if not accepted:
        return BatchResult(outcomes, [])
    batch = list(accepted.values())
    study_pks = _upsert_studies(session, batch, stamp)
    series_pks = _upsert_series(session, batch, study_pks, stamp)
    replaced = _write_instances(session, batch, existing, study_pks, series_pks, stamp)
    return BatchResult(outcomes, replaced)


def _upsert_studies(session: Session, batch: list[Pending], stamp: datetime) -> dict[str, int]:
    latest = {it.parsed.study_uid: it.parsed for it in batch}
    rows = {
        r.study_uid: r
        for r in session.execute(
            select(
                Study.pk, Study.study_uid, Study.patient_name, Study.referring_physician_name
            ).where(Study.study_uid.in_(latest))
        )
    }
    new = [uid for uid in latest if uid not in rows]
    pks = {uid: r.pk for uid, r in rows.items()}
    if new:
        inserted = session.execute(
            insert(Study).returning(Study.pk, Study.study_uid, sort_by_parameter_order=True),
            [
                {
                    "study_uid": uid,
                    "created_at": stamp,
                    "updated_at": stamp,
                    **_study_values(latest[uid]),
                }
                for uid in new
            ],
        )
        pks.update({r.study_uid: r.pk for r in inserted})
    retoken = set(new)
    for uid, r in rows.items():
        values = _study_values(latest[uid])
        session.execute(update(Study).where(Study.pk == r.pk).values(updated_at=stamp, **values))
        if (r.patient_name, r.referring_physician_name) != (
            values["patient_name"],
            values["referring_physician_name"],
        ):
            retoken.add(uid)
    if retoken:
        _write_tokens(session, {pks[uid]: latest[uid] for uid in retoken})
    return pks


def _write_tokens(session: Session, studies: dict[int, ParsedInstance]) -> None:
    session.execute(delete(PersonNameToken).where(PersonNameToken.study_pk.in_(studies)))
    tokens = [
        {"study_pk": pk, "attr": attr, "token": token[:128]}
        for pk, p in studies.items()
        for attr, keyword in (
            (PATIENT_NAME, "PatientName"),
            (REFERRING_PHYSICIAN, "ReferringPhysicianName"),
        )
        for token in sorted(name_tokens(p.attrs[keyword]))
    ]
    if tokens:
        session.execute(insert(PersonNameToken), tokens)


def _upsert_series(
    session: Session, batch: list[Pending], study_pks: dict[str, int], stamp: datetime
) -> dict[str, int]:
    latest = {it.parsed.series_uid: it.parsed for it in batch}
    pks: dict[str, int] = {
        uid: pk
        for uid, pk in session.execute(
            select(Series.series_uid, Series.pk).where(Series.series_uid.in_(latest))
        )
    }
    new = [uid for uid in latest if uid not in pks]
    if new:
        inserted = session.execute(
            insert(Series).returning(Series.pk, Series.series_uid, sort_by_parameter_order=True),
            [
                {
                    "series_uid": uid,
                    "study_pk": study_pks[latest[uid].study_uid],
                    "created_at": stamp,
                    "updated_at": stamp,
                    **_series_values(latest[uid]),
                }
                for uid in new
            ],
        )
        pks.update({r.series_uid: r.pk for r in inserted})
    for uid in latest.keys() - set(new):
        session.execute(
            update(Series)
            .where(Series.pk == pks[uid])
            .values(
                study_pk=study_pks[latest[uid].study_uid],
                updated_at=stamp,
                **_series_values(latest[uid]),
            )
        )
    return pks


def _write_instances(
    session: Session,
    batch: list[Pending],
    existing: dict[str, Any],
    study_pks: dict[str, int],
    series_pks: dict[str, int],
    stamp: datetime,
) -> list[str]:
    creates, replaced, moved = [], [], set()
    for it in batch:
        p = it.parsed
        values = {
            "study_pk": study_pks[p.study_uid],
            "series_pk": series_pks[p.series_uid],
            "updated_at": stamp,
            **_instance_values(it),
        }
        old = existing.get(p.sop_instance_uid)
        if old is None:
            creates.append({"sop_instance_uid": p.sop_instance_uid, "created_at": stamp, **values})
            continue
        session.execute(update(Instance).where(Instance.pk == old.pk).values(**values))
        if old.blob_key != it.blob_key:
            replaced.append(old.blob_key)
        if (old.series_pk, old.study_pk) != (values["series_pk"], values["study_pk"]):
            moved.add((old.series_pk, old.study_pk))
    if creates:
        session.execute(insert(Instance), creates)
    for series_pk, study_pk in moved:
        prune_empty(session, series_pk=series_pk, study_pk=study_pk)
    refresh_counts(session, {*study_pks.values(), *(study_pk for _, study_pk in moved)})
    append_feed(
        session,
        [
            (
                it.parsed.study_uid,
                it.parsed.series_uid,
                it.parsed.sop_instance_uid,
                "update" if it.parsed.sop_instance_uid in existing else "create",
            )
            for it in batch
        ],
    )
    return replaced


def append_feed(session: Session, entries: Iterable[tuple[str, str, str, str]]) -> None:
    """Append (study, series, sop, action) change feed entries; supersede earlier ones."""
    entries = list(entries)
    for action, state in (("update", "replaced"), ("delete", "deleted")):
        uids = [e[2] for e in entries if e[3] == action]
        if uids:
            session.execute(
                update(ChangeFeedEntry)
                .where(
                    ChangeFeedEntry.sop_instance_uid.in_(uids), ChangeFeedEntry.state == "current"
                )
                .values(state=state)
            )
    stamp = now()
    session.execute(
        insert(ChangeFeedEntry),
        [
            {
                "timestamp": stamp,
                "action": action,
                "state": "deleted" if action == "delete" else "current",
                "study_uid": st,
                "series_uid": se,
                "sop_instance_uid": sop,
            }
            for st, se, sop, action in entries
        ],
    )


def refresh_counts(session: Session, study_pks: Iterable[int]) -> None:
    """Recount Number of Study/Series Related Series/Instances and Modalities in Study for
    these studies from the index itself (in the write transaction, so the stored counts never
    drift from the rows; QIDO then reads them instead of counting per request)."""
    pks = set(study_pks)
    if not pks:
        return
    per_series = select(func.count()).where(Instance.series_pk == Series.pk).scalar_subquery()
    session.execute(update(Series).where(Series.study_pk.in_(pks)).values(num_instances=per_series))
    modalities: dict[int, set[str]] = {pk: set() for pk in pks}
    n_series: dict[int, int] = dict.fromkeys(pks, 0)
    for pk, modality in session.execute(
        select(Series.study_pk, Series.modality).where(Series.study_pk.in_(pks))
    ):
        n_series[pk] += 1
        if modality:
            modalities[pk].update(m for m in modality.split("\\") if m)
    per_study = select(func.count()).where(Instance.study_pk == Study.pk).scalar_subquery()
    for pk in pks:
        session.execute(
            update(Study)
            .where(Study.pk == pk)
            .values(
                num_instances=per_study,
                num_series=n_series[pk],
                modalities_in_study="\\".join(sorted(modalities[pk]))[:256] or None,
            )
        )


def prune_empty(session: Session, *, series_pk: int, study_pk: int) -> None:
    """Delete a series and a study that no instance refers to any more."""
    if session.scalar(select(func.count()).where(Instance.series_pk == series_pk)) == 0:
        session.execute(delete(Series).where(Series.pk == series_pk))
    if session.scalar(select(func.count()).where(Instance.study_pk == study_pk)) == 0:
        session.execute(delete(PersonNameToken).where(PersonNameToken.study_pk == study_pk))
        session.execute(delete(Series).where(Series.study_pk == study_pk))
        session.execute(delete(Study).where(Study.pk == study_pk))
