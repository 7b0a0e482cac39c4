"""Tabular features from FHIR, fused with the image features (concatenated before the head).

- ``age``: years at the study date (DICOM StudyDate) from Patient.birthDate, divided by 100.
- ``sex``: Patient.gender female 1, male 0, other or unknown 0.5.
- ``history``: one indicator per Condition code (``system|code``) in a vocabulary taken from
  the training patients' records (the most frequent, at most ``HISTORY_CODES``), counting only
  conditions with an onset (or recorded date) strictly before the study date, so that the
  diagnosis made from the image itself does not leak into its features.

Patients are found by their identifier ``urn:medflow:mrn|<PatientID>`` through
``FhirService.search_resources``; a patient not in the FHIR store gets the neutral values."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medflow.core.errors import InvalidInput
from medflow.fhir.service import FhirService

MRN_SYSTEM = "urn:medflow:mrn"
FEATURES = ("age", "sex", "history")
HISTORY_CODES = 20


@dataclass
class PatientRecord:
    birth_date: date | None = None
    gender: str | None = None
    conditions: list[tuple[str, date | None]] = field(default_factory=list)
    """(system|code, onset) of each Condition."""


def parse_features(text: str | None) -> tuple[str, ...]:
    names = tuple(n.strip() for n in (text or "").split(",") if n.strip())
    unknown = [n for n in names if n not in FEATURES]
    if unknown:
        raise InvalidInput(f"unknown features {', '.join(unknown)} (known: {', '.join(FEATURES)})")
    return names


def _date(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) < 4:
        return None
    parts = value[:10].split("-")
    try:
        return date(int(parts[0]), int(parts[1]) if len(parts) > 1 else 1,
                    int(parts[2]) if len(parts) > 2 else 1)  # fmt: skip
    except ValueError:
        return None


def fetch_patients(fhir: FhirService, patient_ids: Sequence[str]) -> dict[str, PatientRecord]:
    """Each DICOM PatientID's FHIR Patient and Conditions (an empty record when absent)."""
    out: dict[str, PatientRecord] = {}
    for pid in sorted(set(patient_ids)):
        record = PatientRecord()
        found = fhir.search_resources(
            resource_type="Patient", params=[("identifier", f"{MRN_SYSTEM}|{pid}")], limit=1
        )
        if found:
            patient = found[0]
            record.birth_date = _date(patient.get("birthDate"))
            record.gender = patient.get("gender")
            conditions = fhir.search_resources(
                resource_type="Condition", params=[("subject", f"Patient/{patient['id']}")],
                limit=1000,
            )  # fmt: skip
            for cond in conditions:
                onset = _date(cond.get("onsetDateTime") or cond.get("recordedDate"))
                for coding in cond.get("code", {}).get("coding", []):
                    record.conditions.append((f"{coding.get('system')}|{coding.get('code')}",
                                              onset))  # fmt: skip
        out[pid] = record
    return out


def history_vocabulary(records: Sequence[PatientRecord]) -> list[str]:
    counts = Counter(code for r in records for code in {c for c, _ in r.conditions})
    return sorted(code for code, _ in counts.most_common(HISTORY_CODES))


def feature_width(names: Sequence[str], vocabulary: Sequence[str]) -> int:
    return sum(len(vocabulary) if n == "history" else 1 for n in names)


def feature_matrix(
    names: Sequence[str],
    records: Sequence[PatientRecord],
    study_dates: Sequence[str],
    vocabulary: Sequence[str],
) -> NDArray[np.float32]:
    """One row per (patient record, study date "YYYYMMDD")."""
    rows = []
    for record, when_text in zip(records, study_dates, strict=True):
        when = _date(f"{when_text[:4]}-{when_text[4:6]}-{when_text[6:8]}") if when_text else None
        row: list[float] = []
        for name in names:
            if name == "age":
                age = 0.5
                if record.birth_date and when:
                    age = ((when - record.birth_date).days / 365.25) / 100.0
                row.append(age)
            elif name == "sex":
                row.append({"female": 1.0, "male": 0.0}.get(record.gender or "", 0.5))
            else:
                before = {c for c, onset in record.conditions
                          if onset is not None and when is not None and onset < when}  # fmt: skip
                row.extend(1.0 if code in before else 0.0 for code in vocabulary)
        rows.append(row)
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), feature_width(names, vocabulary))
