"""De-identification as one service: a DICOM profile and the FHIR rules over one key
(:class:`Deidentification`), and a de-identified copy of a whole data dir
(:func:`copy_deidentified`) that a second ``medflow serve`` serves to researchers.

The patient identity pair is the sync's (``settings.sync.patient_system``/``use_issuer``):
a DICOM PatientID and the FHIR Patient.identifier with that system get one pseudonym and one
date shift, so the de-identified ImagingStudy still points at the de-identified Patient and
carries the de-identified study UID.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medflow.core.errors import InvalidInput, MedflowError
from medflow.core.settings import Settings
from medflow.deid.dicom import DicomDeidentifier, Excluded
from medflow.deid.fhir import FhirDeidentifier, load_rules
from medflow.deid.keys import DeidKeys
from medflow.deid.profile import Option, load_profile
from medflow.fhir.service import FhirService
from medflow.store.service import StoreService
from medflow.store.spool import spool_stream

log = logging.getLogger(__name__)
DEFAULT_PROFILE = "research"
"""The profile used when none is named: basic + modified dates, patient characteristics,
clean descriptors, structured content and graphics (docs/deid.md)."""
PAGE = 1000


@dataclass(frozen=True)
class Deidentification:
    """The DICOM and FHIR de-identifiers over one key and one patient identity system."""

    keys: DeidKeys
    dicom: DicomDeidentifier
    fhir: FhirDeidentifier
    profile: str

    @classmethod
    def from_settings(
        cls, settings: Settings, *, profile: str | None = None, rules: Path | None = None
    ) -> Deidentification:
        """From ``settings.deid`` (``MissingKey`` without a key), a DICOM profile (a preset's
        name or a YAML/JSON file) and FHIR rules (a YAML file; default: the shipped rules)."""
        keys = DeidKeys.from_settings(settings.deid)
        name = profile or DEFAULT_PROFILE
        system, use_issuer = settings.sync.patient_system, settings.sync.use_issuer
        chosen = load_profile(name)
        dicom = DicomDeidentifier(chosen, keys, patient_system=system, use_issuer=use_issuer)
        # FHIR follows the DICOM profile where links depend on it: UIDs kept or mapped,
        # dates kept (full dates retained) or shifted
        options = chosen.options
        fhir = FhirDeidentifier(
            load_rules(rules),
            keys,
            patient_system=system,
            use_issuer=use_issuer,
            retain_uids=Option.RETAIN_UIDS in options,
            shift_dates=Option.RETAIN_LONG_FULL_DATES not in options,
        )
        return cls(keys, dicom, fhir, name)

    def fingerprint(self) -> str:
        """Names this key, profile (its content), FHIR rules and patient identity system
        without revealing the key: an export made with any other is not resumed with this."""
        settings = json.dumps([
            self.dicom.profile.model_dump(mode="json"), self.fhir.rules.model_dump(mode="json"),
            self.fhir.patient_system, self.fhir.use_issuer, self.keys.max_shift_days,
        ], sort_keys=True, default=str)  # fmt: skip
        mark = self.keys.identifier("fingerprint", settings)
        return hashlib.sha256(f"{self.profile}|{mark}".encode()).hexdigest()[:16]


@dataclass
class CopySummary:
    resources: dict[str, int] = field(default_factory=dict)
    """Resource type -> resources written to the target."""
    instances: int = 0
    excluded: list[tuple[str, str]] = field(default_factory=list)
    """(de-identified SOP Instance UID, reason) of instances left out (burned-in text...)."""
    failed: list[tuple[str, str]] = field(default_factory=list)


CopyProgress = Callable[[str, int], None]
"""Called with ("fhir"|"dicom", items done so far)."""


def current_resources(fhir: FhirService) -> Iterator[dict[str, Any]]:
    """Every current (not deleted) resource of the store, each once (from the write log)."""
    latest: dict[tuple[str, str], int] = {}
    after = 0
    while batch := fhir.changes(after=after, limit=PAGE, types=()):
        for version in batch:
            latest[(version.resource_type, version.res_id)] = version.seq
        after = batch[-1].seq
    wanted = set(latest.values())
    after = 0
    while batch := fhir.changes(after=after, limit=PAGE):
        for version in batch:
            if version.seq in wanted and version.resource is not None:
                yield version.resource
        after = batch[-1].seq


def copy_deidentified(
    deid: Deidentification,
    *,
    source_store: StoreService,
    source_fhir: FhirService,
    target_store: StoreService,
    target_fhir: FhirService,
    progress: CopyProgress | None = None,
) -> CopySummary:
    """Copy every current FHIR resource and every stored instance of the source, each
    de-identified, into the target's stores. Re-running it writes the same ids and UIDs (the
    same key), so the target ends the same. Nothing of the source is changed."""
    if source_store.engine.url == target_store.engine.url:
        raise InvalidInput("the target is the source's index: give another data dir")
    tell = progress or (lambda _phase, _n: None)
    summary = CopySummary()
    deid.fhir.prepare(current_resources(source_fhir))
    batch: list[dict[str, Any]] = []
    for resource in current_resources(source_fhir):
        out = deid.fhir.deidentify(resource)
        if out is None:
            continue
        batch.append(out)
        summary.resources[out["resourceType"]] = summary.resources.get(out["resourceType"], 0) + 1
        if len(batch) >= PAGE:
            target_fhir.load(batch)
            batch = []
            tell("fhir", sum(summary.resources.values()))
    if batch:
        target_fhir.load(batch)
    tell("fhir", sum(summary.resources.values()))
    _copy_instances(deid, source_store, target_store, summary, tell)
    return summary


def _source_instances(store: StoreService) -> Iterator[list[str]]:
    """SOP Instance UIDs of the current instances, a page at a time (from the change feed)."""
    offset, current = 0, {}
    while events := store.change_feed(offset=offset, limit=PAGE):
        for event in events:
            current[event.sop_instance_uid] = event.state == "current" and event.action != "delete"
        offset = events[-1].sequence
    uids = [uid for uid, alive in current.items() if alive]
    for start in range(0, len(uids), PAGE):
        yield uids[start : start + PAGE]


def _copy_instances(
    deid: Deidentification,
    source: StoreService,
    target: StoreService,
    summary: CopySummary,
    tell: CopyProgress,
) -> None:
    for uids in _source_instances(source):
        for record in source.select_instances(sop_uids=uids):
            new_uid = deid.keys.uid(record.sop_instance_uid)
            try:
                data = deid.dicom.deidentify_bytes(b"".join(source.iter_bytes(record)))
            except Excluded as exc:
                summary.excluded.append((new_uid, exc.message))
                continue
            except MedflowError as exc:
                summary.failed.append((new_uid, exc.message))
                continue
            obj = spool_stream(io.BytesIO(data), target.spool_dir)
            outcome = target.store(objects=[obj])[0]
            if outcome.ok:
                summary.instances += 1
            else:
                summary.failed.append((new_uid, outcome.message or "not stored"))
            tell("dicom", summary.instances)


__all__ = ["DEFAULT_PROFILE", "CopySummary", "Deidentification", "copy_deidentified",
           "current_resources"]  # fmt: skip
