"""What a converted slide says about its patient, study and specimen, and where it comes from.

Pure: no services, no wsidicom. Three sources, strongest first (:func:`resolve`):

1. the options of ``medflow wsi import`` / ``POST /api/wsi/import`` (``--patient-id``,
   ``--accession``, ``--specimen``, ...);
2. the study already in the archive with the same Accession Number (0008,0050): its Study
   Instance UID, patient and study attributes, so the slide joins the patient's study
   (PS3.3 C.7.1.1 Patient, C.7.2.1 General Study modules) instead of starting a new one;
3. the sidecar ``<slide>.json`` next to the slide file (what the synthetic hospital writes,
   :func:`medflow.synthetic.pathology.sidecar`): DICOM keywords for the patient and study,
   plus the specimen (container, specimen identifier, stain, body site, label text).

Whatever the file itself says (scanner, magnification, pixel spacing, acquisition time) comes
from wsidicomizer's reading of it (:mod:`medflow.pathology.convert`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from medflow.core.errors import InvalidInput

SNOMED_URL = "http://snomed.info/sct"
CodeTuple = tuple[str, str, str]
"""(code value, coding scheme designator, code meaning), e.g. ("12710003", "SCT", "...")."""


_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


def _valid_da(value: str) -> bool:
    text = value.replace("-", "")
    try:
        dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return False
    return len(text) == 8 and text.isdigit()


@dataclass(frozen=True)
class SlideMetadata:
    """Patient, study and specimen attributes of one slide (DICOM string forms: DA dates,
    PN names ``Family^Given``, sex ``M``/``F``/``O``). ``None`` is "not known here"."""

    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    accession_number: str | None = None
    study_uid: str | None = None
    study_id: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    referring_physician_name: str | None = None
    series_description: str | None = None
    container_id: str | None = None
    """Container Identifier (0040,0512): the slide's identifier."""
    specimen_id: str | None = None
    """Specimen Identifier (0040,0551) of the specimen on the slide."""
    specimen_description: str | None = None
    stain: str | None = None
    """Free-text staining, e.g. "H&E" (when no stain codes are known)."""
    stain_codes: tuple[CodeTuple, ...] = ()
    """Staining substances (CID 8112)."""
    body_site: CodeTuple | None = None
    """Primary anatomic structure of the specimen (Primary Anatomic Structure Sequence)."""
    label_text: str | None = None

    def check(self) -> None:
        """Refuse values that cannot be written as their VRs (PS3.5 6.2) before a slide is
        converted, with the option's name (``InvalidInput``)."""
        problems = []
        if self.study_uid is not None and not (
            len(self.study_uid) <= 64 and _UID.fullmatch(self.study_uid)
        ):
            problems.append("study UID: digits and dots, at most 64 characters")
        if self.patient_sex is not None and self.patient_sex not in ("M", "F", "O"):
            problems.append("sex: M, F or O")
        for name, value in (("birth date", self.patient_birth_date),
                            ("study date", self.study_date)):  # fmt: skip
            if value is not None and not _valid_da(value):
                problems.append(f"{name}: a date YYYYMMDD or YYYY-MM-DD")
        for name, value, limit in (("patient id", self.patient_id, 64),
                                   ("accession", self.accession_number, 16),
                                   ("specimen", self.specimen_id, 64),
                                   ("container", self.container_id, 64),
                                   ("study id", self.study_id, 16)):  # fmt: skip
            if value is not None and (len(value) > limit or "\\" in value or not value.strip()):
                problems.append(f"{name}: at most {limit} characters, no backslash")
        if problems:
            raise InvalidInput("invalid slide metadata: " + "; ".join(problems))

    def over(self, weaker: SlideMetadata) -> SlideMetadata:
        """These values, with ``weaker``'s where these are not known."""
        values: dict[str, Any] = {}
        for f in fields(self):
            mine = getattr(self, f.name)
            values[f.name] = mine if mine not in (None, ()) else getattr(weaker, f.name)
        return SlideMetadata(**values)


PATIENT_FIELDS = ("patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date",
                  "patient_sex")  # fmt: skip
STUDY_FIELDS = ("study_uid", "study_id", "study_date", "study_time", "study_description",
                "referring_physician_name")  # fmt: skip

_TAGS = {
    "patient_id": "00100020",
    "issuer_of_patient_id": "00100021",
    "patient_name": "00100010",
    "patient_birth_date": "00100030",
    "patient_sex": "00100040",
    "accession_number": "00080050",
    "study_uid": "0020000D",
    "study_id": "00200010",
    "study_date": "00080020",
    "study_time": "00080030",
    "study_description": "00081030",
    "referring_physician_name": "00080090",
}
"""DICOM JSON tags (PS3.18 F.2) of the study-level attributes a slide takes from its study."""

STUDY_RETURN_KEYS = tuple(_TAGS.values())
"""The attributes to ask a QIDO-RS study search for (``includefield``)."""


def _json_value(item: Mapping[str, Any], tag: str) -> str | None:
    element = item.get(tag)
    if not isinstance(element, Mapping):
        return None
    values = element.get("Value")
    if not values:
        return None
    value = values[0]
    if isinstance(value, Mapping):  # PN
        value = value.get("Alphabetic")
    return str(value) if value not in (None, "") else None


def from_study_json(study: Mapping[str, Any]) -> SlideMetadata:
    """The patient and study attributes of a study's DICOM JSON (a QIDO-RS study result)."""
    values: dict[str, Any] = {name: _json_value(study, tag) for name, tag in _TAGS.items()}
    return SlideMetadata(**values)


def _code(value: Any) -> CodeTuple | None:
    if not isinstance(value, Mapping) or not value.get("code"):
        return None
    system = str(value.get("system", ""))
    scheme = "SCT" if system == SNOMED_URL else str(value.get("scheme") or system or "99LOCAL")
    return (str(value["code"]), scheme, str(value.get("display") or value["code"]))


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _date(value: Any) -> str | None:
    """A DICOM DA from ``YYYYMMDD`` or ISO ``YYYY-MM-DD``."""
    text = _text(value)
    return text.replace("-", "") if text else None


def from_sidecar(data: Mapping[str, Any]) -> SlideMetadata:
    """The sidecar JSON's values (DICOM keywords for patient and study; ``stain``,
    ``stain_substances``, ``body_site`` (FHIR-style codings), ``label_text``)."""
    stains = tuple(c for c in (_code(s) for s in data.get("stain_substances") or ()) if c)
    specimen_type = data.get("specimen_type")
    description = specimen_type.get("display") if isinstance(specimen_type, Mapping) else None
    return SlideMetadata(
        patient_id=_text(data.get("PatientID")),
        issuer_of_patient_id=_text(data.get("IssuerOfPatientID")),
        patient_name=_text(data.get("PatientName")),
        patient_birth_date=_date(data.get("PatientBirthDate")),
        patient_sex=_text(data.get("PatientSex")),
        accession_number=_text(data.get("AccessionNumber")),
        study_uid=_text(data.get("StudyInstanceUID")),
        study_id=_text(data.get("StudyID")),
        study_date=_date(data.get("StudyDate")),
        study_description=_text(data.get("StudyDescription")),
        series_description=_text(data.get("SeriesDescription")),
        container_id=_text(data.get("ContainerIdentifier")),
        specimen_id=_text(data.get("SpecimenIdentifier")),
        specimen_description=_text(description),
        stain=_text(data.get("stain")),
        stain_codes=stains,
        body_site=_code(data.get("body_site")),
        label_text=_text(data.get("label_text")),
    )


def sidecar_path(slide: Path) -> Path | None:
    """The sidecar of ``slide``: ``<name without its suffixes>.json`` (``S1.ome.tiff`` ->
    ``S1.json``), else ``<name without its last suffix>.json``; None when there is none."""
    name = slide.name
    candidates = [slide.with_name(name.split(".", 1)[0] + ".json"), slide.with_suffix(".json")]
    return next((c for c in candidates if c != slide and c.is_file()), None)


def read_sidecar(slide: Path) -> SlideMetadata:
    """The sidecar's metadata, or empty metadata when the slide has none."""
    path = sidecar_path(slide)
    if path is None:
        return SlideMetadata()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"the slide's sidecar JSON is not readable: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidInput("the slide's sidecar JSON is not a JSON object")
    return from_sidecar(data)


def _none(names: tuple[str, ...]) -> dict[str, Any]:
    return dict.fromkeys(names)


def resolve(
    *, options: SlideMetadata, existing: list[SlideMetadata], sidecar: SlideMetadata
) -> SlideMetadata:
    """The slide's metadata: ``options`` first; then the study of the same accession number
    (``existing``: the archive's studies carrying it), whose Study Instance UID and patient the
    slide takes; then ``sidecar``. Raises ``InvalidInput`` when the accession number names
    several studies (unless a Study Instance UID chooses one) or a study of another patient.
    Messages carry no identifiers (they may be PHI)."""
    accession = options.accession_number or sidecar.accession_number
    base = options
    if accession and existing:
        chosen = existing
        if options.study_uid:
            chosen = [s for s in existing if s.study_uid == options.study_uid]
            if not chosen:
                raise InvalidInput(
                    "the accession number belongs to another study than the given StudyInstanceUID"
                )
        if len({s.study_uid for s in chosen}) > 1:
            raise InvalidInput(
                f"{len(chosen)} studies carry this accession number: give the "
                "StudyInstanceUID of the one the slide belongs to"
            )
        study = chosen[0]
        if options.patient_id and study.patient_id and options.patient_id != study.patient_id:
            raise InvalidInput("the accession number belongs to a study of another patient")
        keep = {name: getattr(study, name) for name in PATIENT_FIELDS + STUDY_FIELDS}
        # the study decides who the patient is; options can only add what it does not say
        base = replace(study, **{k: v for k, v in keep.items() if v}).over(options)
        base = replace(base, accession_number=accession)
        # the existing study's attributes stand as they are (the archive's study row follows
        # its latest instance): the sidecar adds none of them
        sidecar = replace(sidecar, **_none(STUDY_FIELDS))
    if sidecar.patient_id and base.patient_id and sidecar.patient_id != base.patient_id:
        sidecar = replace(sidecar, **_none(PATIENT_FIELDS))  # another patient's
    merged = base.over(sidecar)
    if accession:
        merged = replace(merged, accession_number=accession)
    return merged
