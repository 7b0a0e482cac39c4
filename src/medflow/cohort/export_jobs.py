"""Cohort exports through the API (``POST /api/cohorts/{id}/$export``): the same export as
``medflow cohort export`` (:func:`medflow.cohort.export.export_cohort`, a zip), run in a
background thread, with its progress and result in ``<root>/<job>/status.json``.

A job is named by what it exports: the cohort, its version, the evaluation date, the level
and the de-identification (profile and key fingerprint). Asking again for the same export
returns the same job: a finished one is served as it is, one interrupted by a restart resumes
(the export's journal), a running one is left running. Over the API only the named profiles
(``basic``, ``research``) can be asked for: a profile file is a server-side choice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from medflow.cohort.export import ExportProgress, Level, export_cohort
from medflow.cohort.tracking import CohortTracker
from medflow.core.errors import InvalidInput, MedflowError, NotFound
from medflow.core.settings import Settings
from medflow.deid.profile import PRESETS
from medflow.deid.service import Deidentification
from medflow.fhir.service import FhirService
from medflow.store.service import StoreService

log = logging.getLogger(__name__)
STATUS_FILE = "status.json"


@dataclass(frozen=True)
class ExportRequest:
    cohort: str
    level: Level = "study"
    deidentify: str | None = None
    as_of: date | None = None


class CohortExports:
    """Runs and tracks the API's cohort exports under ``root``."""

    def __init__(self, *, tracker: CohortTracker, store: StoreService, fhir: FhirService,
                 settings: Settings, root: Path) -> None:  # fmt: skip
        self.tracker, self.store, self.fhir = tracker, store, fhir
        self.settings, self.root = settings, root
        self._lock = threading.Lock()
        self._running: set[str] = set()

    def start(self, request: ExportRequest) -> dict[str, Any]:
        """Start (or find) the export; returns its status. ``InvalidInput`` for a level or
        profile it does not know, ``MissingKey`` for de-identification without a key."""
        if request.level not in ("study", "series"):
            raise InvalidInput(f"level must be study or series, not {request.level!r}")
        deid = None
        if request.deidentify is not None:
            if request.deidentify not in PRESETS:
                names = ", ".join(sorted(PRESETS))
                raise InvalidInput(f"deidentify names a profile ({names}), not "
                                   f"{request.deidentify!r}")  # fmt: skip
            deid = Deidentification.from_settings(self.settings, profile=request.deidentify)
        info = self.tracker.show(ref=request.cohort)
        definition = self.tracker.definition(ref=info.id)
        day = request.as_of or definition.evaluation_date
        name = json.dumps([info.id, info.version, day.isoformat(), request.level,
                           deid.fingerprint() if deid else None])  # fmt: skip
        job = hashlib.sha256(name.encode()).hexdigest()[:24]
        with self._lock:
            status = self._read(job)
            finished = status is not None and status["status"] == "done" and (
                self.root / job / str(status.get("file"))).is_file()  # fmt: skip
            if job in self._running or finished:
                return status or {"job": job, "status": "running"}
            self._running.add(job)
        self._write(job, {"job": job, "status": "running", "cohort": info.id,
                          "version": info.version, "evaluation_date": day.isoformat(),
                          "level": request.level, "deidentify": request.deidentify,
                          "started": _now(), "progress": None})  # fmt: skip
        worker = threading.Thread(target=self._run, args=(job, info.id, day, request.level, deid),
                                  name=f"cohort-export-{job}", daemon=True)  # fmt: skip
        worker.start()
        return self.status(job)

    def status(self, job: str) -> dict[str, Any]:
        """The job's status (``NotFound`` for an unknown job)."""
        status = self._read(job)
        if status is None:
            raise NotFound("no such export")
        if status["status"] == "running" and job not in self._running:
            status = {**status, "status": "interrupted"}  # the server stopped: ask again
        return status

    def file(self, job: str) -> Path:
        """The finished export's zip (``NotFound`` until it is done)."""
        status = self.status(job)
        path = self.root / job / str(status.get("file") or "")
        if status["status"] != "done" or not path.is_file():
            raise NotFound("the export is not finished")
        return path

    def _run(self, job: str, cohort: int, day: date, level: Level,
             deid: Deidentification | None) -> None:  # fmt: skip
        status = self.status(job)
        last = [0.0]

        def progress(step: ExportProgress) -> None:
            now = datetime.now(UTC).timestamp()
            if now - last[0] > 0.5 or step.done == step.total:
                last[0] = now
                self._write(job, {**status, "progress": {"phase": step.phase, "done": step.done,
                                                         "total": step.total}})  # fmt: skip

        try:
            definition = self.tracker.definition(ref=cohort)
            result = self.tracker.evaluate(definition=definition, as_of=day)
            name = f"cohort-{cohort}{'-deid' if deid else ''}.zip"
            summary = export_cohort(result, store=self.store, fhir=self.fhir,
                                    out=self.root / job / name, level=level,
                                    definition=definition, progress=progress,
                                    deidentify=deid)  # fmt: skip
            done = {"status": "done", "file": name, "finished": _now(), "summary": {
                "patients": summary.patients, "resources": summary.resources,
                "studies": summary.studies, "instances": summary.instances,
                "bytes": summary.bytes, "excluded": summary.excluded,
                "missing_studies": len(summary.missing_studies)}}  # fmt: skip
            self._write(job, {**status, **done})
        except MedflowError as exc:
            self._write(job, {**status, "status": "failed", "error": exc.message})
        except Exception:  # a failed export must not go unnoticed nor kill the server
            log.exception("cohort export %s failed", job)
            self._write(job, {**status, "status": "failed", "error": "internal error (see log)"})
        finally:
            with self._lock:
                self._running.discard(job)

    def _read(self, job: str) -> dict[str, Any] | None:
        if not job.isalnum():
            return None
        try:
            data: dict[str, Any] = json.loads((self.root / job / STATUS_FILE).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data

    def _write(self, job: str, status: dict[str, Any]) -> None:
        folder = self.root / job
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / (STATUS_FILE + ".part")
        partial.write_text(json.dumps(status, indent=1), encoding="utf-8")
        partial.replace(folder / STATUS_FILE)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = ["CohortExports", "ExportRequest"]
