"""The write side of the index: one transaction stores a batch of parsed instances.

Called by ``StoreService.store`` after every blob of the batch is durable. Study and series rows
are created on first sight and their attributes follow the latest instance; each create/update
appends a change feed entry. On PostgreSQL an advisory transaction lock orders change feed
writers, so Sequence values become visible in commit order (a reader at cursor N never skips
an entry committed later with a smaller number). SQLite gets the same from ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from medflow.dicom.attributes import ParsedInstance, name_tokens, search_form
from medflow.store.models import ChangeFeedEntry, Instance, PersonNameToken, Series, Study
from medflow.store.spool import SpooledObject

CHANGE_FEED_LOCK = 0x6D66_6366  # "mfcf"
PN_ATTRS = {"00100010": "PatientName", "00080090": "ReferringPhysicianName"}


@dataclass(frozen=True)
class Pending:
    """A parsed object whose blob is already durable under ``blob_key``."""

    parsed: ParsedInstance
    spooled: SpooledObject
    blob_key: str


def now() -> datetime:
    return datetime.now(UTC)


def lock_change_feed(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(CHANGE_FEED_LOCK)))


class BatchIndexer:
    """Index rows for one batch inside one open transaction."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.studies: dict[str, Study] = {}
        self.series: dict[str, Series] = {}
        self.touched_studies: set[str] = set()
        self.stamp = now()

    def study(self, p: ParsedInstance) -> Study:
        uid = p.study_uid
        row = self.studies.get(uid) or self.session.scalar(
            select(Study).where(Study.study_uid == uid)
        )
        is_new = row is None
        if row is None:
            row = Study(study_uid=uid, created_at=self.stamp)
            self.session.add(row)
        a = p.attrs
        old_names = (row.patient_name, row.referring_physician_name)
        row.patient_id = a["PatientID"]
        row.issuer_of_patient_id = a["IssuerOfPatientID"]
        row.patient_name = a["PatientName"]
        row.patient_name_search = search_form(a["PatientName"])
        row.patient_birth_date = a["PatientBirthDate"]
        row.patient_sex = a["PatientSex"]
        row.study_date = a["StudyDate"]
        row.study_time = a["StudyTime"]
        row.accession_number = a["AccessionNumber"]
        row.referring_physician_name = a["ReferringPhysicianName"]
        row.referring_physician_name_search = search_form(a["ReferringPhysicianName"])
        row.study_id = a["StudyID"]
        row.study_description = a["StudyDescription"]
        row.specific_character_set = a["SpecificCharacterSet"]
        row.timezone_offset = a["TimezoneOffsetFromUTC"]
        row.updated_at = self.stamp
        self.session.flush()
        if is_new or old_names != (row.patient_name, row.referring_physician_name):
            self._tokens(row)
        self.studies[uid] = row
        return row

    def _tokens(self, row: Study) -> None:
        self.session.execute(delete(PersonNameToken).where(PersonNameToken.study_pk == row.pk))
        values = {"00100010": row.patient_name, "00080090": row.referring_physician_name}
        for attr, value in values.items():
            for token in sorted(name_tokens(value)):
                self.session.add(PersonNameToken(study_pk=row.pk, attr=attr, token=token[:128]))

    def series_row(self, p: ParsedInstance, study: Study) -> Series:
        uid = p.series_uid
        row = self.series.get(uid) or self.session.scalar(
            select(Series).where(Series.series_uid == uid)
        )
        if row is None:
            row = Series(series_uid=uid, study_pk=study.pk, created_at=self.stamp)
            self.session.add(row)
        a = p.attrs
        row.study_pk = study.pk
        row.modality = a["Modality"]
        row.series_number = a["SeriesNumber"]
        row.series_description = a["SeriesDescription"]
        row.body_part_examined = a["BodyPartExamined"]
        row.performed_procedure_step_start_date = a["PerformedProcedureStepStartDate"]
        row.performed_procedure_step_start_time = a["PerformedProcedureStepStartTime"]
        row.scheduled_procedure_step_id = a["ScheduledProcedureStepID"]
        row.requested_procedure_id = a["RequestedProcedureID"]
        row.specific_character_set = a["SpecificCharacterSet"]
        row.timezone_offset = a["TimezoneOffsetFromUTC"]
        row.updated_at = self.stamp
        self.session.flush()
        self.series[uid] = row
        return row

    def put(self, item: Pending, existing: Instance | None) -> tuple[str, Instance]:
        """Insert or replace the instance row; returns the change feed action and the row."""
        p = item.parsed
        study = self.study(p)
        series = self.series_row(p, study)
        row = existing or Instance(sop_instance_uid=p.sop_instance_uid, created_at=self.stamp)
        moved_from = (row.series_pk, row.study_pk) if existing is not None else None
        a = p.attrs
        row.study_pk = study.pk
        row.series_pk = series.pk
        row.sop_class_uid = p.sop_class_uid
        row.instance_number = a["InstanceNumber"]
        row.transfer_syntax_uid = p.transfer_syntax_uid
        row.rows = a["Rows"]
        row.columns = a["Columns"]
        row.bits_allocated = a["BitsAllocated"]
        row.number_of_frames = a["NumberOfFrames"]
        row.specific_character_set = a["SpecificCharacterSet"]
        row.timezone_offset = a["TimezoneOffsetFromUTC"]
        row.pixel_data_offset = p.pixel_data_offset
        row.pixel_data_length = p.pixel_data_length
        row.size = item.spooled.size
        row.sha256 = item.spooled.sha256
        row.blob_key = item.blob_key
        row.metadata_json = p.metadata_json
        row.updated_at = self.stamp
        if existing is None:
            self.session.add(row)
        self.session.flush()
        if moved_from is not None and moved_from != (series.pk, study.pk):
            prune_empty(self.session, series_pk=moved_from[0], study_pk=moved_from[1])
        action = "update" if existing is not None else "create"
        self.feed(p.study_uid, p.series_uid, p.sop_instance_uid, action)
        self.touched_studies.add(p.study_uid)
        return action, row

    def feed(self, study_uid: str, series_uid: str, sop_uid: str, action: str) -> None:
        superseded = "deleted" if action == "delete" else "replaced"
        if action != "create":
            self.session.execute(
                update(ChangeFeedEntry)
                .where(
                    ChangeFeedEntry.sop_instance_uid == sop_uid,
                    ChangeFeedEntry.state == "current",
                )
                .values(state=superseded)
            )
        self.session.add(
            ChangeFeedEntry(
                timestamp=now(),
                action=action,
                state="deleted" if action == "delete" else "current",
                study_uid=study_uid,
                series_uid=series_uid,
                sop_instance_uid=sop_uid,
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
