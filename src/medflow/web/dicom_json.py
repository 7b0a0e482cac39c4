"""Reading DICOM JSON objects (PS3.18 F.2) for display: first values, person names, dates."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

PATIENT_NAME = "00100010"
PATIENT_ID = "00100020"
PATIENT_BIRTH_DATE = "00100030"
PATIENT_SEX = "00100040"
STUDY_UID = "0020000D"
STUDY_DATE = "00080020"
STUDY_TIME = "00080030"
ACCESSION = "00080050"
STUDY_DESCRIPTION = "00081030"
REFERRING = "00080090"
MODALITIES = "00080061"
NUM_SERIES = "00201206"
NUM_INSTANCES = "00201208"
SERIES_UID = "0020000E"
MODALITY = "00080060"
SERIES_NUMBER = "00200011"
SERIES_DESCRIPTION = "0008103E"
BODY_PART = "00180015"
SERIES_INSTANCES = "00201209"
SOP_UID = "00080018"
WINDOW_CENTER = "00281050"
WINDOW_WIDTH = "00281051"
WINDOW_EXPLANATION = "00281055"
RESCALE_INTERCEPT = "00281052"
RESCALE_SLOPE = "00281053"
BITS_STORED = "00280101"
PIXEL_REPRESENTATION = "00280103"


def values(obj: Obj, tag: str) -> list[Any]:
    element = obj.get(tag)
    if not isinstance(element, dict):
        return []
    found = element.get("Value")
    return list(found) if isinstance(found, list) else []


def first(obj: Obj, tag: str) -> Any:
    found = values(obj, tag)
    return found[0] if found else None


def text(obj: Obj, tag: str) -> str:
    """The first value as text ("" when absent); a person name in display form."""
    value = first(obj, tag)
    if value is None:
        return ""
    if isinstance(value, dict):
        groups = (value.get(k) for k in ("Alphabetic", "Ideographic", "Phonetic"))
        return person_name(str(next((g for g in groups if g), "")))
    return str(value)


def person_name(pn: str) -> str:
    """``Doe^John^M^Dr`` -> ``Doe, John M``: family name, then given and middle names."""
    parts = [p.strip() for p in pn.split("^")]
    family = parts[0] if parts else ""
    given = " ".join(p for p in parts[1:3] if p)
    if family and given:
        return f"{family}, {given}"
    return family or given


def date(value: str | None) -> str:
    """DA ``YYYYMMDD`` -> ``YYYY-MM-DD`` (other forms as they are)."""
    if value and len(value) == 8 and value.isascii() and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value or ""


def number(obj: Obj, tag: str) -> float | None:
    value = first(obj, tag)
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


__all__ = ["date", "first", "number", "person_name", "text", "values"]
