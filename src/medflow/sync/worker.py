"""The sync worker ("DICOMcast"): every change of the archive reflected in FHIR.

It reads the archive's change feed from a cursor kept in the database (``sync_cursor``),
coalesces the changes of a batch per study, and writes one FHIR transaction per study: the
Patient (found by ``identifier=system|PatientID``; created, or its DICOM-derived fields updated
with ``ifMatch``), the archive's Endpoint (conditional create), the ImagingStudy (created, or
replaced with ``ifMatch``; deleted with its last instance) and the links to the
DiagnosticReports and ServiceRequests that carry the study's accession number
(``DiagnosticReport.imagingStudy``, ``ImagingStudy.basedOn``). A version race (412) re-reads
and tries again; a study that cannot be mapped or that the FHIR server refuses goes to the
dead letters (``sync_failure``) and the worker moves on; ``replay()`` tries them again.

The cursor only moves past a batch once every study in it was written or dead-lettered, so a
crash (even SIGKILL) replays at most one batch, and the writes are idempotent (an unchanged
resource gets no new version). DESIGN.md: durable consumers, ``except Exception`` per item.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy.engine import Engine

from medflow.core.errors import InvalidInput, NotFound, PreconditionFailed
from medflow.core.settings import SyncSettings
from medflow.store.records import ChangeEvent
from medflow.sync import mapping as m
from medflow.sync.state import DbState, DeadLetter, SyncState

log = logging.getLogger(__name__)
DICOM_CURSOR = "dicom"
FHIR_CURSOR = "fhir"
LINKED_TYPES = ("DiagnosticReport", "ServiceRequest")
"""The FHIR writes the worker reads back: reports and orders it links by accession."""
RACE_RETRIES = 3


class ArchiveSource(Protocol):
    """The archive the worker follows: the local store or a DICOMweb server over HTTP."""

    def change_feed(self, *, offset: int = 0, limit: int = 100) -> list[ChangeEvent]: ...

    def metadata(self, *, study_uid: str) -> tuple[list[str], str]:
        """DICOM JSON texts of the study's current instances (``NotFound``: none)."""
        ...

    def latest_change(self) -> ChangeEvent | None: ...


class FhirTarget(Protocol):
    """Where the worker writes: the embedded store or any FHIR R4 server over HTTP."""

    def search(self, resource_type: str, query: str) -> list[dict[str, Any]]:
        """The resources matching ``query`` (one page is enough: callers expect few)."""
        ...

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """Run a transaction Bundle; errors as ``medflow.core.errors`` types."""
        ...


@dataclass
class SyncStatus:
    cursor: int
    latest: int
    backlog: int
    failures: int
    synced_studies: int
    lag_p50_s: float | None
    lag_p95_s: float | None
    last_error: str | None


def _ref(resource: Mapping[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}"


def _version(resource: Mapping[str, Any]) -> str:
    return f'W/"{(resource.get("meta") or {}).get("versionId", "1")}"'


def _acsn_query(accession: str) -> str:
    """``identifier:of-type=<v2-0203>|ACSN|<accession>`` (R4 search §3.1.1.4.5)."""
    return m.token_query("identifier:of-type", *m.ACSN, accession)


class SyncWorker:
    def __init__(
        self,
        *,
        engine: Engine | None = None,
        store: ArchiveSource,
        target: FhirTarget,
        settings: SyncSettings,
        dicomweb_url: str,
        fhir_changes: Callable[[int, int], Sequence[Any]] | None = None,
        state: SyncState | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``fhir_changes(after, limit)``: the FHIR store's change feed (``FhirService.changes``
        records with ``seq``, ``resource_type``, ``resource``), read to link reports and orders
        that arrive after their images; None: not followed."""
        self.store, self.target = store, target
        if state is None:
            assert engine is not None, "a SyncWorker needs an engine or a state"
            state = DbState(engine)
        self.state: SyncState = state
        self.fhir_changes = fhir_changes
        self.settings, self.dicomweb_url, self.clock = settings, dicomweb_url, clock
        self._wake = threading.Event()
        self._lags: deque[float] = deque(maxlen=2000)
        self._synced = 0
        self._last_error: str | None = None

    # -- the loop ---------------------------------------------------------------------------
    def wake(self, _event: object = None) -> None:
        """Look at the change feed now (an ``InstancesChanged`` subscriber)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Sync until ``stop`` is set; a failing FHIR server is retried with backoff."""
        delay = 0.5
        while not stop.is_set():
            try:
                done = self.step() + self.step_fhir()
                delay = 0.5
            except Exception as exc:  # noqa: BLE001  (transient: FHIR down, database busy)
                self._last_error = type(exc).__name__  # the message may carry PHI: not shown
                log.warning("sync step failed (%s), retrying in %.1f s", self._last_error, delay)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            if not done:
                self._wake.wait(self.settings.poll_seconds)
                self._wake.clear()

    def step(self) -> int:
        """Sync the studies of the next batch of changes; returns how many changes it read."""
        cursor = self.cursor()
        events = self.store.change_feed(offset=cursor, limit=self.settings.batch)
        if not events:
            return 0
        by_study: dict[str, list[ChangeEvent]] = {}
        for e in events:
            by_study.setdefault(e.study_uid, []).append(e)
        for study_uid, changes in by_study.items():
            self._sync_or_dead_letter(study_uid, changes[-1])
        self._set_cursor(events[-1].sequence)
        lags = sorted(self._lags)
        log.info("sync: %d changes of %d studies up to sequence %d; lag p95 %s s; %d dead letters",
                 len(events), len(by_study), events[-1].sequence,
                 f"{_quantile(lags, 0.95):.2f}" if lags else "-",
                 self.state.failure_count())  # fmt: skip
        return len(events)

    def run_until_idle(self, *, max_steps: int = 10_000) -> None:
        """Step until both change feeds are drained (tests, ``medflow sync --once``)."""
        for _ in range(max_steps):
            if not self.step() + self.step_fhir():
                return

    def step_fhir(self) -> int:
        """Link the DiagnosticReports and ServiceRequests written since the ``fhir`` cursor
        to the ImagingStudy of their accession number (they may arrive after the images);
        returns how many FHIR changes it read."""
        if self.fhir_changes is None:
            return 0
        cursor = self.cursor(FHIR_CURSOR)
        changes = list(self.fhir_changes(cursor, self.settings.batch))
        if not changes:
            return 0
        for change in changes:
            if change.resource_type in LINKED_TYPES and change.resource:
                accession = _accession_of(change.resource)
                if accession is None:
                    continue
                try:
                    self._link_accession(change.resource_type, accession)
                except (InvalidInput, NotFound, PreconditionFailed) as exc:  # skip, go on
                    log.warning("a %s could not be linked to its study (%s); skipped",
                                change.resource_type, type(exc).__name__)  # fmt: skip
        self._set_cursor(int(changes[-1].seq), FHIR_CURSOR)
        return len(changes)

    def _link_accession(self, resource_type: str, accession: str) -> None:
        """Link every study of ``accession`` with the current reports/orders of it (a race
        with another writer: read again, a few times)."""
        _retry_races(lambda: self._link_once(resource_type, accession))

    def _link_once(self, resource_type: str, accession: str) -> None:
        studies = self.target.search("ImagingStudy", _acsn_query(accession))
        others = self.target.search(resource_type, _acsn_query(accession))
        entries: list[dict[str, Any]] = []
        if resource_type == "DiagnosticReport":
            entries += _report_links(others, [_ref(study) for study in studies])
        else:
            for study in studies:
                based_on = list(study.get("basedOn", []))
                lacking = [{"reference": _ref(o)} for o in others
                           if {"reference": _ref(o)} not in based_on]  # fmt: skip
                if lacking:
                    request = {"method": "PUT", "url": _ref(study), "ifMatch": _version(study)}
                    entries.append({"resource": {**study, "basedOn": based_on + lacking},
                                    "request": request})  # fmt: skip
        if entries:
            self.target.transaction(_bundle(entries))

    # -- one study ----------------------------------------------------------------------------
    def _sync_or_dead_letter(self, study_uid: str, last: ChangeEvent) -> None:
        try:
            self.sync_study(study_uid)
        except (InvalidInput, NotFound) as exc:  # will not succeed by retrying as is
            self._dead_letter(study_uid, last.sequence, exc.message)
            return
        self._resolve(study_uid)
        self._lags.append(max(0.0, (self.clock() - last.timestamp).total_seconds()))
        self._synced += 1

    def sync_study(self, study_uid: str) -> None:
        """Reflect the study as it is now in the archive (idempotent)."""
        _retry_races(lambda: self._sync_once(study_uid))

    def _sync_once(self, study_uid: str) -> None:
        instances = self._instances(study_uid)
        study_query = m.token_query("identifier", *m.study_identifier(study_uid))
        existing = self.target.search("ImagingStudy", study_query)
        if not instances:
            deletes = [{"request": {"method": "DELETE", "url": _ref(s)}} for s in existing]
            if deletes:
                self.target.transaction(_bundle(deletes))
            return
        if len(existing) > 1:
            raise InvalidInput(f"several ImagingStudy resources carry study {study_uid}")
        latest = instances[-1]
        keys = {m.patient_key(i, system=self.settings.patient_system,
                              use_issuer=self.settings.use_issuer) for i in instances}  # fmt: skip
        if len(keys) > 1:
            raise InvalidInput(f"the study's instances name {len(keys)} different patients")
        entries: list[dict[str, Any]] = []
        patient_ref = self._patient(keys.pop(), latest, entries)
        endpoint_ref = self._endpoint(entries)
        accession = m.accession_number(instances)
        orders: list[dict[str, Any]] = []
        reports: list[dict[str, Any]] = []
        if accession:
            orders = self.target.search("ServiceRequest", _acsn_query(accession))
            reports = self.target.search("DiagnosticReport", _acsn_query(accession))
        current = existing[0] if existing else None
        based_on = [dict(b) for b in (current or {}).get("basedOn", [])]
        for order in orders:
            if {"reference": _ref(order)} not in based_on:
                based_on.append({"reference": _ref(order)})
        study = m.imaging_study(
            instances,
            patient_reference=patient_ref,
            endpoint_reference=endpoint_ref,
            based_on=based_on,
        )
        if current is not None:
            study["id"] = current["id"]
            study_ref = _ref(current)
            if not _same(current, study):
                entries.append({"resource": study, "request": {
                    "method": "PUT", "url": study_ref, "ifMatch": _version(current)}})  # fmt: skip
        else:
            study_ref = f"urn:uuid:{uuid.uuid4()}"
            post = {"method": "POST", "url": "ImagingStudy", "ifNoneExist": study_query}
            entries.append({"fullUrl": study_ref, "resource": study, "request": post})
        entries += _report_links(reports, [study_ref])
        if entries:
            self.target.transaction(_bundle(entries))

    def _instances(self, study_uid: str) -> list[dict[str, Any]]:
        """The study's current instances as DICOM JSON (oldest first)."""
        try:
            texts, _ = self.store.metadata(study_uid=study_uid)
        except NotFound:
            return []
        return [json.loads(t) for t in texts]

    def _patient(
        self, key: m.PatientKey, latest: Mapping[str, Any], entries: list[dict[str, Any]]
    ) -> str:
        fields = m.patient_fields(latest)
        found = self.target.search("Patient", key.query())
        if len(found) > 1:
            raise InvalidInput(f"several Patient resources match identifier system {key.system}")
        if found:
            merged = m.merge_patient(found[0], fields)
            if merged is not None:
                request = {"method": "PUT", "url": _ref(found[0]), "ifMatch": _version(found[0])}
                entries.append({"resource": merged, "request": request})
            return _ref(found[0])
        full_url = f"urn:uuid:{uuid.uuid4()}"
        entries.append({"fullUrl": full_url, "resource": m.new_patient(key, fields), "request": {
            "method": "POST", "url": "Patient", "ifNoneExist": key.query()}})  # fmt: skip
        return full_url

    def _endpoint(self, entries: list[dict[str, Any]]) -> str:
        query = m.token_query("identifier", *m.endpoint_identifier(self.dicomweb_url))
        found = self.target.search("Endpoint", query)
        if found:
            return _ref(found[0])
        full_url = f"urn:uuid:{uuid.uuid4()}"
        entries.append({"fullUrl": full_url, "resource": m.endpoint(self.dicomweb_url),
                        "request": {"method": "POST", "url": "Endpoint",
                                    "ifNoneExist": query}})  # fmt: skip
        return full_url

    # -- cursor, dead letters, status ---------------------------------------------------------
    def cursor(self, name: str = DICOM_CURSOR) -> int:
        return self.state.cursor(name)

    def _set_cursor(self, seq: int, name: str = DICOM_CURSOR) -> None:
        self.state.set_cursor(name, seq, self.clock())

    def _dead_letter(self, study_uid: str, seq: int, reason: str) -> None:
        log.warning("a study could not be synced: dead letter recorded (see medflow sync failures)")
        self.state.dead_letter(study_uid, seq, reason, self.clock())

    def _resolve(self, study_uid: str) -> None:
        self.state.resolve(study_uid)

    def failures(self, *, include_resolved: bool = False) -> list[DeadLetter]:
        return self.state.failures(include_resolved=include_resolved)

    def replay(self) -> tuple[int, int]:
        """Try every unresolved dead letter again; returns (synced, still failing)."""
        ok = failed = 0
        for failure in self.failures():
            event = ChangeEvent(failure.seq, failure.study_uid, "", "", "replay", "current",
                                self.clock())  # fmt: skip
            self._sync_or_dead_letter(failure.study_uid, event)
            if any(f.study_uid == failure.study_uid for f in self.failures()):
                failed += 1
            else:
                ok += 1
        return ok, failed

    def status(self) -> SyncStatus:
        cursor = self.cursor()
        latest_event = self.store.latest_change()
        latest = latest_event.sequence if latest_event is not None else 0
        lags = sorted(self._lags)
        return SyncStatus(
            cursor=cursor,
            latest=latest,
            backlog=max(0, latest - cursor),
            failures=self.state.failure_count(),
            synced_studies=self._synced,
            lag_p50_s=_quantile(lags, 0.5),
            lag_p95_s=_quantile(lags, 0.95),
            last_error=self._last_error,
        )


def _accession_of(resource: Mapping[str, Any]) -> str | None:
    """The value of the resource's accession identifier (type v2-0203 ACSN), if any."""
    system, code = m.ACSN
    for ident in resource.get("identifier") or []:
        codings = (ident.get("type") or {}).get("coding") or []
        if any(c.get("system") == system and c.get("code") == code for c in codings):
            value = ident.get("value")
            if isinstance(value, str) and value:
                return value
    return None


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, int(q * len(values)))]


def _retry_races(attempt: Callable[[], None]) -> None:
    """Run ``attempt``; when another writer moved a version (412), read again and retry."""
    for n in range(RACE_RETRIES):
        try:
            attempt()
            return
        except PreconditionFailed:
            if n == RACE_RETRIES - 1:
                raise


def _report_links(
    reports: Sequence[Mapping[str, Any]], study_refs: Sequence[str]
) -> list[dict[str, Any]]:
    """One ``PUT`` (``ifMatch``) per report that lacks some of ``study_refs`` in
    ``DiagnosticReport.imagingStudy``, adding all it lacks."""
    entries: list[dict[str, Any]] = []
    for report in reports:
        linked = [i.get("reference") for i in report.get("imagingStudy", [])]
        missing = [{"reference": ref} for ref in study_refs if ref not in linked]
        if missing:
            changed = {**report, "imagingStudy": [*report.get("imagingStudy", []), *missing]}
            request = {"method": "PUT", "url": _ref(report), "ifMatch": _version(report)}
            entries.append({"resource": changed, "request": request})
    return entries


def _bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _same(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    strip = {"meta", "id", "text"}
    return {k: v for k, v in old.items() if k not in strip} == {
        k: v for k, v in new.items() if k not in strip
    }


class EmbeddedFhir:
    """The embedded FHIR store as a :class:`FhirTarget` (no HTTP)."""

    def __init__(self, fhir: Any, base_url: str = "") -> None:
        self.fhir, self.base_url = fhir, base_url

    def search(self, resource_type: str, query: str) -> list[dict[str, Any]]:
        from medflow.fhir.search import search_bundle

        found = search_bundle(
            self.fhir.engine, resource_type, f"{query}&_count=20", base_url=self.base_url,
            strict=True,
        )  # fmt: skip
        return [e["resource"] for e in found.get("entry", []) if e["search"]["mode"] == "match"]

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        from medflow.fhir.bundles import EntryFailed, transaction

        try:
            return transaction(self.fhir, bundle, base_url=self.base_url)
        except EntryFailed as exc:
            raise exc.cause from exc


def start_in_thread(worker: SyncWorker) -> tuple[threading.Thread, threading.Event]:
    """Run the worker in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="medflow-sync", daemon=True)
    thread.start()
    return thread, stop


__all__ = ["EmbeddedFhir", "FhirTarget", "SyncStatus", "SyncWorker", "start_in_thread"]
