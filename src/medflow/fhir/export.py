"""Bulk data export (HL7 FHIR Bulk Data Access IG 1.0, ``$export``): system, ``Patient/`` and
``Group/[id]/`` level, ``_type``, ``_since`` and ``_typeFilter`` (FHIR search queries
``Type?query``: a type with filters exports the resources matching any of them, a type without
filters is exported whole; Bulk Data IG 2.0 "_typeFilter"). An asynchronous job writes one
ndjson file per resource type under ``<data>/exports/<job>/`` and records its state in
``fhir_export_job`` (so any server process can answer status polls). Patient and Group level
export the Patient compartment (R4 CompartmentDefinition) of every patient, or of the group's
members.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, aliased

from medflow.core.errors import InvalidInput, NotFound
from medflow.fhir import repository as repo
from medflow.fhir.definitions import patient_compartment, resource_types
from medflow.fhir.models import FhirExportJob, FhirReference, FhirResource
from medflow.fhir.search import matching_pks
from medflow.fhir.service import FhirService

log = logging.getLogger(__name__)
BATCH = 1000


@dataclass(frozen=True)
class ExportStatus:
    job_id: str
    status: str
    request_url: str
    created_at: datetime
    output: list[dict[str, Any]]
    error: str | None


class ExportService:
    def __init__(self, engine: Engine, fhir: FhirService, root: Path) -> None:
        self.engine, self.fhir, self.root = engine, fhir, root

    def start(
        self,
        *,
        level: str,
        request_url: str,
        group_id: str | None = None,
        types: list[str] | None = None,
        since: datetime | None = None,
        type_filters: list[str] | None = None,
    ) -> str:
        """Queue an export and run it in a background thread; returns the job id.
        ``type_filters`` are checked here (unknown types or parameters: ``InvalidInput``)."""
        unknown = [t for t in types or [] if t not in resource_types()]
        if unknown:
            raise InvalidInput(f"_type names unknown resource types: {', '.join(unknown)}")
        for text in type_filters or []:
            rtype, _, query = text.partition("?")
            if not query:
                raise InvalidInput(f"_typeFilter {text!r} is not Type?query")
            if types and rtype not in types:
                raise InvalidInput(f"_typeFilter {text!r}: {rtype} is not in _type")
            matching_pks(rtype, query)  # parses strictly: a filter never widens silently
        if level == "group":
            self.fhir.read(resource_type="Group", res_id=str(group_id))
        job_id = uuid.uuid4().hex
        with Session(self.engine) as s, s.begin():
            s.add(
                FhirExportJob(
                    job_id=job_id,
                    request_url=request_url,
                    level=level,
                    group_id=group_id,
                    types=",".join(types) if types else None,
                    since=since,
                    type_filter=json.dumps(type_filters) if type_filters else None,
                    status="queued",
                    created_at=datetime.now(UTC),
                )
            )
        threading.Thread(target=self._run, args=(job_id,), daemon=True).start()
        return job_id

    def status(self, job_id: str) -> ExportStatus:
        with Session(self.engine) as s:
            job = s.scalars(select(FhirExportJob).where(FhirExportJob.job_id == job_id)).first()
            if job is None:
                raise NotFound(f"no export job {job_id}")
            return ExportStatus(
                job.job_id,
                job.status,
                job.request_url,
                job.created_at,
                json.loads(job.output) if job.output else [],
                job.error,
            )

    def delete(self, job_id: str) -> None:
        """Cancel a running job or remove a finished one with its files."""
        with Session(self.engine) as s, s.begin():
            job = s.scalars(select(FhirExportJob).where(FhirExportJob.job_id == job_id)).first()
            if job is None:
                raise NotFound(f"no export job {job_id}")
            job.status = "cancelled"
        shutil.rmtree(self.root / job_id, ignore_errors=True)

    def file(self, job_id: str, name: str) -> Path:
        path = (self.root / job_id / name).resolve()
        if path.parent != (self.root / job_id).resolve() or not path.is_file():
            raise NotFound(f"no export file {name}")
        return path

    # -- the job ------------------------------------------------------------------------------
    def _run(self, job_id: str) -> None:
        try:
            self._set(job_id, status="running")
            with Session(self.engine) as s:
                job = s.scalars(select(FhirExportJob).where(FhirExportJob.job_id == job_id)).one()
                level, group_id, since = job.level, job.group_id, job.since
                types = job.types.split(",") if job.types else None
                filters = self._filters(json.loads(job.type_filter or "[]"))
            folder = self.root / job_id
            folder.mkdir(parents=True, exist_ok=True)
            patients = self._patients(level, group_id)
            output = []
            for rtype in sorted(types or resource_types()):
                if patients is not None and not patient_compartment(rtype) and rtype != "Patient":
                    continue
                count = self._write_type(
                    folder / f"{rtype}.ndjson", rtype, patients, since, filters.get(rtype)
                )
                if count:
                    output.append({"type": rtype, "file": f"{rtype}.ndjson", "count": count})
                if self.status(job_id).status == "cancelled":
                    return
            self._set(job_id, status="done", output=json.dumps(output))
        except Exception as exc:  # a durable job records its failure and stops
            log.exception("export job failed")
            self._set(job_id, status="failed", error=f"{type(exc).__name__}: {exc}")

    def _set(self, job_id: str, **values: Any) -> None:
        with Session(self.engine) as s, s.begin():
            job = s.scalars(select(FhirExportJob).where(FhirExportJob.job_id == job_id)).one()
            if job.status == "cancelled":
                return
            for key, value in values.items():
                setattr(job, key, value)
            if values.get("status") in ("done", "failed"):
                job.finished_at = datetime.now(UTC)

    def _patients(self, level: str, group_id: str | None) -> Any:
        """Patient ids whose compartments are exported: a list (group), a subquery of every
        live Patient (patient level) or None (system level, everything)."""
        if level == "system":
            return None
        if level == "group":
            group = self.fhir.read(resource_type="Group", res_id=str(group_id))
            refs = [str((m.get("entity") or {}).get("reference", "")) for m in
                    group.get("member") or []]  # fmt: skip
            return [r.split("/", 1)[1] for r in refs if r.startswith("Patient/")]
        live = aliased(FhirResource, name="live_patient")
        return select(live.res_id).where(live.resource_type == "Patient", live.deleted.is_(False))

    @staticmethod
    def _filters(texts: list[str]) -> dict[str, Any]:
        """``_typeFilter`` queries as one SQL condition per type (OR of its filters)."""
        by_type: dict[str, list[Any]] = {}
        for text in texts:
            rtype, _, query = text.partition("?")
            by_type.setdefault(rtype, []).append(FhirResource.pk.in_(matching_pks(rtype, query)))
        return {rtype: or_(*conds) for rtype, conds in by_type.items()}

    def _write_type(
        self,
        path: Path,
        rtype: str,
        patients: Any,
        since: datetime | None,
        type_filter: Any = None,
    ) -> int:
        count = 0
        with path.open("w", encoding="utf-8") as fp:
            for content in self._contents(rtype, patients, since, type_filter):
                fp.write(content)
                fp.write("\n")
                count += 1
        if not count:
            path.unlink(missing_ok=True)
        return count

    def _contents(
        self, rtype: str, patients: Any, since: datetime | None, type_filter: Any = None
    ) -> Iterator[str]:
        conds: list[Any] = [FhirResource.resource_type == rtype, FhirResource.deleted.is_(False)]
        if since is not None:
            conds.append(FhirResource.last_updated >= since)
        if type_filter is not None:
            conds.append(type_filter)
        if patients is not None:
            if rtype == "Patient":
                conds.append(FhirResource.res_id.in_(patients))
            else:
                params = patient_compartment(rtype)
                conds.append(
                    FhirResource.pk.in_(
                        select(FhirReference.resource_pk).where(
                            FhirReference.resource_type == rtype,
                            FhirReference.target_type == "Patient",
                            FhirReference.target_id.in_(patients),
                            or_(*[and_(FhirReference.param == p) for p in params]),
                        )
                    )
                )
        last = 0
        while True:
            with Session(self.engine) as s:
                rows = repo.content_page(s, conds, after=last, limit=BATCH)
            for pk, content in rows:
                last = pk
                if content is not None:
                    yield content
            if len(rows) < BATCH:
                return
