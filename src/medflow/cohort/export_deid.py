"""The de-identified cohort export (``medflow cohort export --deidentify PROFILE``, issues 7
and 8): what :mod:`medflow.cohort.export` writes, passed through :mod:`medflow.deid` with one
key, so the FHIR ndjson, the DICOM files, the manifest and ``cohort.json`` agree with each
other and with any other export or copy made with that key.

- FHIR: each patient's compartment is de-identified together (the Patient first learnt, so
  its pseudonym is its id and its date shift moves all its resources).
- DICOM: each file by the profile (PS3.15 Annex E), written under its de-identified UIDs
  (``dicom/<study>/<series>/<sop>.dcm``); an instance the profile leaves out (burned-in text)
  is listed with the reason in ``excluded.csv`` and is not written.
- The manifest and ``cohort.json`` carry pseudonyms and de-identified UIDs only: patient ids,
  MRNs, resource ids and study UIDs are mapped, the matched resources' ids too.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medflow.core.errors import NotFound
from medflow.deid.dicom import Excluded
from medflow.deid.service import Deidentification
from medflow.fhir.service import FhirService
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService

EXCLUDED_FILE = "excluded.csv"


@dataclass(frozen=True)
class Written:
    sha256: str
    size: int


class ExportDeid:
    """The de-identification of one export run."""

    def __init__(self, deid: Deidentification) -> None:
        self.deid = deid

    def learn_patients(self, fhir: FhirService, patient_ids: Sequence[str]) -> None:
        """Read the cohort's Patients first: their pseudonyms name them in ``cohort.json``
        and the manifest before their compartments are exported."""
        patients = []
        for patient_id in patient_ids:
            try:
                patients.append(fhir.read(resource_type="Patient", res_id=patient_id))
            except NotFound:  # deleted since: keyed on its id
                continue
        self.deid.fhir.prepare(patients)

    def fingerprint(self) -> str:
        return self.deid.fingerprint()

    def patient_id(self, patient_id: str) -> str:
        return self.deid.fhir.new_id("Patient", patient_id)

    def mrn(self, mrn: str | None) -> str | None:
        if not mrn:
            return None
        return self.deid.keys.patient_pseudonym(self.deid.fhir.patient_system, mrn)

    def source_mark(self, sha256: str) -> str:
        """What the journal keeps of a source file's SHA-256: a keyed code (the plain hash
        would tie the export to the archive's files)."""
        return self.deid.keys.identifier("source-sha256", sha256)

    def uid(self, uid: str) -> str:
        return self.deid.keys.uid(uid)

    def path(self, record: InstanceRecord) -> str:
        uid = self.uid
        return (f"dicom/{uid(record.study_uid)}/{uid(record.series_uid)}/"
                f"{uid(record.sop_instance_uid)}.dcm")  # fmt: skip

    def compartment(self, resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A patient's resources, de-identified together (those a rule drops left out)."""
        self.deid.fhir.prepare(resources)
        out = (self.deid.fhir.deidentify(r) for r in resources)
        return [r for r in out if r is not None]

    def result(self, shown: dict[str, Any]) -> dict[str, Any]:
        """``cohort.json`` with pseudonymous patients, resource ids and study UIDs."""
        patients = []
        for p in shown.get("patients") or []:
            resources = {
                rtype: [self.deid.fhir.new_id(rtype, str(i)) for i in ids]
                for rtype, ids in (p.get("resources") or {}).items()
            }
            studies = [self.uid(s) for s in p.get("studies") or []]
            patients.append({**p, "id": self.patient_id(str(p["id"])),
                             "mrn": self.mrn(p.get("mrn")), "resources": resources,
                             "studies": studies})  # fmt: skip
        return {**shown, "patients": patients, "deidentified": {"profile": self.deid.profile}}

    def write_instance(self, store: StoreService, record: InstanceRecord, target: Path) -> Written:
        """The de-identified file at ``target`` (through a temporary name); ``Excluded``
        (nothing written) when the profile leaves it out."""
        data = self.deid.dicom.deidentify_bytes(b"".join(store.iter_bytes(record)))
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        with partial.open("wb") as fp:
            fp.write(data)
            fp.flush()
            os.fsync(fp.fileno())
        partial.replace(target)
        return Written(hashlib.sha256(data).hexdigest(), len(data))


def write_excluded(folder: Path, excluded: Sequence[tuple[str, str]]) -> None:
    """``excluded.csv``: the de-identified SOP Instance UID and the reason of each instance
    the profile left out (none: the file is not written)."""
    path = folder / EXCLUDED_FILE
    if not excluded:
        path.unlink(missing_ok=True)
        return
    partial = path.with_name(path.name + ".part")
    with partial.open("w", encoding="utf-8", newline="") as fp:
        writer = csv.writer(fp)
        writer.writerow(["sop_instance_uid", "reason"])
        writer.writerows(sorted(excluded))
    partial.replace(path)


__all__ = ["EXCLUDED_FILE", "Excluded", "ExportDeid", "Written", "write_excluded"]
