"""DICOM JSON of one study's current instances -> FHIR R4 ImagingStudy, Patient and Endpoint.

Pure functions: no I/O, no database, no HTTP; the sync worker decides what to read and write.
The input is DICOM JSON (PS3.18 F.2, as ``pydicom.Dataset.to_json_dict()`` writes it: keys are
8-hex-digit tags, values ``{"vr": ..., "Value": [...]}``). The output is FHIR R4 (4.0.1) JSON that
passes :func:`medflow.fhir.validation.validate`.

The mapping follows FHIR R4 imagingstudy.html (and its "DICOM mapping" column) and closes the
known gaps of Microsoft's DICOMcast:

* ``ImagingStudy.modality`` is the union of the Modality (0008,0060) of every series, never
  ModalitiesInStudy (0008,0061), which is a query key and is often absent or stale;
* the study carries the AccessionNumber (0008,0050) as an identifier typed ``v2-0203#ACSN``
  (the R4 convention of imagingstudy.html "Notes"), so orders and reports can be linked;
* ``started`` is only given with a time when the time zone is known (TimezoneOffsetFromUTC,
  0008,0201), since a FHIR ``dateTime`` with a time must carry an offset (datatypes.html#dateTime);
* series and instances are sorted, so the same instances always give the same resource and a
  replay writes no new version.

When instances disagree on a study- or series-level attribute (a re-sent series with a corrected
description), the later instance in the given sequence wins: the worker passes them oldest first.
Errors (:class:`MappingError`) name the tag, never a value (no PHI in messages or logs).
"""

from __future__ import annotations

import copy
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from pydicom.datadict import tag_for_keyword
from pydicom.valuerep import DA, PersonName

from medflow.core.errors import InvalidInput
from medflow.dicom.attributes import is_valid_uid
from medflow.fhir.identifiers import ACSN, DICOM_UID_SYSTEM, patient_system, search_token

__all__ = [
    "ACSN",
    "DCM",
    "DICOM_UID_SYSTEM",
    "MappingError",
    "PatientKey",
    "accession_number",
    "endpoint",
    "endpoint_identifier",
    "imaging_study",
    "merge_patient",
    "new_patient",
    "patient_fields",
    "patient_key",
    "study_identifier",
]

DCM = "http://dicom.nema.org/resources/ontology/DCM"
"""The DICOM code system (PS3.16), for modality codes (CID 29 / CID 33)."""
SNOMED = "http://snomed.info/sct"
RFC3986 = "urn:ietf:rfc:3986"
ENDPOINT_SYSTEM = "urn:medflow:endpoint"
ENDPOINT_CONNECTION_TYPE = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
OTHER_MODALITY = "OT"
"""Modality used when a series has none (Modality is Type 1, but old data lacks it)."""

BODY_PART_SNOMED = {
    "CHEST": "51185008",
    "HEAD": "69536005",
    "ABDOMEN": "818983003",
    "BREAST": "76752008",
    "PELVIS": "12921003",
    "KNEE": "72696002",
}
"""BodyPartExamined (0018,0015) defined terms -> SNOMED CT (PS3.16 Annex L, CID 4031)."""

GENDERS = {"M": "male", "F": "female", "O": "other"}
"""PatientSex (0010,0040) -> Patient.gender (administrative-gender); other values are omitted."""

DICOM_PATIENT_FIELDS = ("name", "gender", "birthDate")
"""The Patient elements that come from DICOM; everything else belongs to other sources."""

_KEYWORDS = (
    "AccessionNumber",
    "BodyPartExamined",
    "ContentLabel",
    "DocumentTitle",
    "InstanceNumber",
    "IssuerOfPatientID",
    "Modality",
    "PatientBirthDate",
    "PatientID",
    "PatientName",
    "PatientSex",
    "SOPClassUID",
    "SOPInstanceUID",
    "SeriesDate",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesTime",
    "StudyDate",
    "StudyDescription",
    "StudyInstanceUID",
    "StudyTime",
    "TimezoneOffsetFromUTC",
)


def _tag_hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:  # pragma: no cover - the keywords above are all in the data dictionary
        raise KeyError(keyword)
    return f"{tag:08X}"


_TAGS = {keyword: _tag_hex(keyword) for keyword in _KEYWORDS}
_TM_RE = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?$")
_OFFSET_RE = re.compile(r"^([+-])(\d{2})(\d{2})$")
_FHIR_OFFSET_RE = re.compile(r"^[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00)$")
_PADDING = string.whitespace + "\x00"
"""Trailing spaces pad text values and NULs pad UIs (PS3.5 6.2); both are dropped."""
_QUERY_SAFE = "".join(c for c in string.punctuation if c not in "%&+#")
"""Kept as is in a query string; ``% & + #``, blanks and non-ASCII are percent-encoded."""

JsonInstance = Mapping[str, Any]


class MappingError(InvalidInput):
    """A required attribute is missing or unusable; the message names the tag, never a value."""


def _label(keyword: str) -> str:
    """``StudyInstanceUID (0020,000D)``, the way PS3.6 names a data element."""
    tag = _TAGS[keyword]
    return f"{keyword} ({tag[:4]},{tag[4:]})"


# -- reading DICOM JSON ------------------------------------------------------------------------


def _first(instance: JsonInstance, keyword: str) -> Any:
    """The first value of the element (PS3.18 F.2.3 "Value"), None when absent or empty."""
    element = instance.get(_TAGS[keyword])
    if not isinstance(element, Mapping):
        return None
    values = element.get("Value")
    if not isinstance(values, list) or not values:
        return None
    return values[0]


def _text(instance: JsonInstance, keyword: str) -> str | None:
    """A string value with its padding removed (PS3.5 6.2); None when absent or blank."""
    value = _first(instance, keyword)
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip(_PADDING) or None


def _number(instance: JsonInstance, keyword: str) -> int | None:
    """An IS value (a JSON number per PS3.18 F.2.3.1, or a string) fit for ``unsignedInt``."""
    value = _first(instance, keyword)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 <= value <= 2**31 - 1 else None


def _uid(instance: JsonInstance, keyword: str) -> str:
    """A required UID (PS3.5 9.1); :class:`MappingError` naming the tag when absent or bad."""
    value = _text(instance, keyword)
    if value is None:
        raise MappingError(f"{_label(keyword)} is missing")
    if not is_valid_uid(value):
        raise MappingError(f"{_label(keyword)} is not a valid UID")
    return value


def _latest(instances: Sequence[JsonInstance], keyword: str) -> str | None:
    """The value of the latest instance (last in the sequence) that has one."""
    for instance in reversed(instances):
        value = _text(instance, keyword)
        if value is not None:
            return value
    return None


def _date(value: str | None) -> str | None:
    """DA ``YYYYMMDD`` (or the ACR-NEMA ``YYYY.MM.DD``) -> FHIR ``YYYY-MM-DD``; None if invalid."""
    if not value:
        return None
    try:
        parsed = DA(value)
    except (ValueError, OverflowError):
        return None
    return None if parsed is None else parsed.isoformat()


def _time(value: str | None) -> str | None:
    """TM ``HH[MM[SS[.F{1,6}]]]`` (PS3.5 Table 6.2-1) -> ``hh:mm:ss[.f]``; None if invalid."""
    match = _TM_RE.match(value or "")
    if match is None:
        return None
    hours, minutes, seconds, fraction = match.groups()
    minutes, seconds = minutes or "00", seconds or "00"
    if int(hours) > 23 or int(minutes) > 59 or int(seconds) > 60:
        return None
    return f"{hours}:{minutes}:{seconds}{fraction or ''}"


def _offset(value: str | None) -> str | None:
    """TimezoneOffsetFromUTC ``&ZZXX`` (PS3.3 C.12.1.1.8) -> ``+hh:mm``; None if unusable."""
    match = _OFFSET_RE.match(value or "")
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    result = f"{sign}{hours}:{minutes}"
    return result if _FHIR_OFFSET_RE.match(result) else None


def _started(date: str | None, time: str | None, offset: str | None) -> str | None:
    """A FHIR ``dateTime`` from DA, TM and the offset from UTC.

    FHIR R4 requires a time zone whenever a time is given (datatypes.html#dateTime), and DICOM
    local time without TimezoneOffsetFromUTC has no known zone: then only the date is given,
    rather than guessing the server's zone. An invalid time also leaves the date alone.
    """
    day = _date(date)
    if day is None:
        return None
    clock, zone = _time(time), _offset(offset)
    if clock is None or zone is None:
        return day
    return f"{day}T{clock}{zone}"


# -- Patient -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PatientKey:
    """How a Patient is found: its identifier ``system`` and ``value`` (the PatientID)."""

    system: str
    value: str = field(repr=False)  # a PatientID is PHI: kept out of reprs and logs

    def query(self) -> str:
        """``identifier=<system>|<value>`` for a search or ``ifNoneExist``.

        Both parts get the FHIR search escaping of ``\\ , $ |`` (R4 search.html#escaping), then
        the characters a query-string parser would alter (``% & + #``, blanks, controls and
        non-ASCII) are percent-encoded (RFC 3986 2.1), so ``parse_qsl`` gives the value back.
        """
        return token_query("identifier", self.system, self.value)


def token_query(param: str, *parts: str) -> str:
    """``param=a|b...`` for a search or ``ifNoneExist``: each part FHIR-search escaped
    (``\\ , $ |``), the whole percent-encoded where a query-string parser would alter it."""
    return f"{param}=" + quote(search_token(*parts), safe=_QUERY_SAFE)


def patient_key(
    instance: JsonInstance, *, system: str = "urn:medflow:mrn", use_issuer: bool = False
) -> PatientKey:
    """The Patient identifier of an instance: PatientID (0010,0020) in ``system``.

    With ``use_issuer`` and an IssuerOfPatientID (0010,0021), the system is
    ``urn:medflow:issuer:<issuer>``, the issuer percent-encoded (RFC 3986) so the system stays a
    valid FHIR ``uri`` (no blanks): the same PatientID from two issuers are two patients. Without
    an issuer the configured ``system`` is used. :class:`MappingError` without a PatientID.
    """
    value = _text(instance, "PatientID")
    if value is None:
        raise MappingError(f"{_label('PatientID')} is missing")
    issuer = _text(instance, "IssuerOfPatientID")
    return PatientKey(
        system=patient_system(issuer, default=system, use_issuer=use_issuer), value=value
    )


def _human_name(value: Any) -> dict[str, Any] | None:
    """PN (PS3.5 6.2.1, JSON ``{"Alphabetic": ...}``) -> HumanName; None when it is empty.

    family <- family name; given <- given and middle names; prefix and suffix <- theirs. Only
    the alphabetic group is used (FHIR HumanName has no place for ideographic/phonetic groups).
    """
    alphabetic = value.get("Alphabetic") if isinstance(value, Mapping) else value
    if not isinstance(alphabetic, str) or not alphabetic.strip():
        return None
    pn = PersonName(alphabetic.split("=")[0])
    parts = {
        "family": pn.family_name.strip(),
        "given": [p for p in (pn.given_name.strip(), pn.middle_name.strip()) if p],
        "prefix": [pn.name_prefix.strip()] if pn.name_prefix.strip() else [],
        "suffix": [pn.name_suffix.strip()] if pn.name_suffix.strip() else [],
    }
    name = {k: v for k, v in parts.items() if v}
    return name or None


def patient_fields(instance: JsonInstance) -> dict[str, Any]:
    """The Patient elements that DICOM provides (PS3.3 C.7.1.1 Patient Module).

    ``name``: a one-item list with the HumanName of PatientName (0010,0010); ``gender``:
    PatientSex (0010,0040) M/F/O -> male/female/other; ``birthDate``: PatientBirthDate
    (0010,0030) as ``YYYY-MM-DD``. A key is absent when DICOM gives no usable value.
    """
    fields: dict[str, Any] = {}
    name = _human_name(_first(instance, "PatientName"))
    if name is not None:
        fields["name"] = [name]
    gender = GENDERS.get((_text(instance, "PatientSex") or "").upper())
    if gender is not None:
        fields["gender"] = gender
    birth_date = _date(_text(instance, "PatientBirthDate"))
    if birth_date is not None:
        fields["birthDate"] = birth_date
    return fields


def new_patient(key: PatientKey, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A new Patient: the identifier of ``key`` and the DICOM-derived ``fields``."""
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": [{"system": key.system, "value": key.value}],
    }
    for name in DICOM_PATIENT_FIELDS:
        if name in fields:
            patient[name] = copy.deepcopy(fields[name])
    return patient


def _name_core(name: Any) -> Any:
    if not isinstance(name, Mapping):
        return name
    return {k: name[k] for k in ("family", "given", "prefix", "suffix") if k in name}


def _unchanged(existing: Mapping[str, Any], key: str, value: Any) -> bool:
    """Whether ``existing`` already says ``value`` for ``key``.

    A name counts as present when any existing name has the same family/given/prefix/suffix,
    so a name with more detail from another source (``use``, ``period``) is not overwritten.
    """
    if key != "name" or not isinstance(value, list) or len(value) != 1:
        return bool(existing.get(key) == value)
    names = existing.get("name")
    wanted = _name_core(value[0])
    return isinstance(names, list) and any(_name_core(n) == wanted for n in names)


def merge_patient(existing: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any] | None:
    """``existing`` with its DICOM-derived elements replaced by ``fields``; None if unchanged.

    Only ``name``, ``gender`` and ``birthDate`` are touched, and only those present in
    ``fields`` (DICOM saying nothing does not erase what another source said). Everything else
    (``meta``, ``id``, other identifiers, telecom, ...) is kept as is; ``meta`` is not compared.
    """
    changes = {
        k: fields[k]
        for k in DICOM_PATIENT_FIELDS
        if k in fields and not _unchanged(existing, k, fields[k])
    }
    if not changes:
        return None
    merged = copy.deepcopy(dict(existing))
    merged.update(copy.deepcopy(changes))
    return merged


# -- Endpoint ------------------------------------------------------------------------------------


def endpoint_identifier(base_url: str) -> tuple[str, str]:
    """The identifier (system, value) of the archive's Endpoint: its DICOMweb base URL."""
    return ENDPOINT_SYSTEM, base_url


def endpoint(base_url: str) -> dict[str, Any]:
    """The Endpoint of the archive's DICOMweb service (R4 endpoint.html, ``dicom-wado-rs``).

    ``payloadType`` is 1..* in R4, given as the text ``DICOM``. :class:`MappingError` when the
    URL is empty or has blanks (FHIR ``url`` is ``\\S*``).
    """
    if not base_url or any(c.isspace() for c in base_url):
        raise MappingError("the DICOMweb base URL is empty or contains blanks")
    system, value = endpoint_identifier(base_url)
    return {
        "resourceType": "Endpoint",
        "identifier": [{"system": system, "value": value}],
        "status": "active",
        "connectionType": {"system": ENDPOINT_CONNECTION_TYPE, "code": "dicom-wado-rs"},
        "name": "medflow DICOMweb (WADO-RS)",
        "payloadType": [{"text": "DICOM"}],
        "address": base_url,
    }


# -- ImagingStudy --------------------------------------------------------------------------------


def study_identifier(study_uid: str) -> tuple[str, str]:
    """The identifier (system, value) of a study: ``urn:dicom:uid`` / ``urn:oid:<uid>``."""
    return DICOM_UID_SYSTEM, "urn:oid:" + study_uid


def accession_number(instances: Sequence[JsonInstance]) -> str | None:
    """AccessionNumber (0008,0050) of the latest instance that has one."""
    return _latest(instances, "AccessionNumber")


@dataclass
class _Series:
    uid: str
    instances: dict[str, JsonInstance] = field(default_factory=dict)
    """SOPInstanceUID -> instance, in input order (a later duplicate replaces an earlier one)."""


def _group(instances: Sequence[JsonInstance]) -> tuple[str, dict[str, _Series]]:
    """Check the required UIDs of every instance and group them by series."""
    if not instances:
        raise MappingError("a study needs at least one instance")
    study_uid = _uid(instances[0], "StudyInstanceUID")
    series: dict[str, _Series] = {}
    seen: dict[str, str] = {}
    for instance in instances:
        if _uid(instance, "StudyInstanceUID") != study_uid:
            raise MappingError(f"{_label('StudyInstanceUID')} differs between the instances")
        series_uid = _uid(instance, "SeriesInstanceUID")
        sop_uid = _uid(instance, "SOPInstanceUID")
        _uid(instance, "SOPClassUID")
        previous = seen.get(sop_uid)
        if previous is not None and previous != series_uid:
            del series[previous].instances[sop_uid]
        seen[sop_uid] = series_uid
        series.setdefault(series_uid, _Series(series_uid)).instances[sop_uid] = instance
    return study_uid, {uid: s for uid, s in series.items() if s.instances}


def _order(number: int | None, uid: str) -> tuple[int, int, str]:
    """Sort key: numbered items first, by number, then by UID."""
    return (0 if number is not None else 1, number or 0, uid)


def _body_site(value: str | None) -> dict[str, Any] | None:
    """BodyPartExamined -> Coding: SNOMED CT for a few common terms, else the text only."""
    if value is None:
        return None
    code = BODY_PART_SNOMED.get(value.upper())
    if code is None:
        return {"display": value}
    return {"system": SNOMED, "code": code, "display": value}


def _instance(sop_uid: str, instance: JsonInstance) -> dict[str, Any]:
    """ImagingStudy.series.instance: uid, sopClass (urn:oid:), number, title."""
    item: dict[str, Any] = {
        "uid": sop_uid,
        "sopClass": {"system": RFC3986, "code": "urn:oid:" + _uid(instance, "SOPClassUID")},
    }
    number = _number(instance, "InstanceNumber")
    if number is not None:
        item["number"] = number
    title = _text(instance, "DocumentTitle") or _text(instance, "ContentLabel")
    if title is not None:
        item["title"] = title
    return item


def _series_modality(members: Sequence[JsonInstance]) -> str:
    return _latest(members, "Modality") or OTHER_MODALITY


def _series(series: _Series) -> dict[str, Any]:
    """ImagingStudy.series from its instances (PS3.3 C.7.3.1 General Series Module)."""
    members = list(series.instances.values())
    item: dict[str, Any] = {"uid": series.uid}
    number = next(
        (n for n in (_number(i, "SeriesNumber") for i in reversed(members)) if n is not None),
        None,
    )
    if number is not None:
        item["number"] = number
    item["modality"] = {"system": DCM, "code": _series_modality(members)}
    description = _latest(members, "SeriesDescription")
    if description is not None:
        item["description"] = description
    item["numberOfInstances"] = len(members)
    body_site = _body_site(_latest(members, "BodyPartExamined"))
    if body_site is not None:
        item["bodySite"] = body_site
    started = _started(
        _latest(members, "SeriesDate"),
        _latest(members, "SeriesTime"),
        _latest(members, "TimezoneOffsetFromUTC"),
    )
    if started is not None:
        item["started"] = started
    rows = [(_number(i, "InstanceNumber"), uid, i) for uid, i in series.instances.items()]
    rows.sort(key=lambda row: _order(row[0], row[1]))
    item["instance"] = [_instance(uid, i) for _, uid, i in rows]
    return item


def _study_identifiers(study_uid: str, accession: str | None) -> list[dict[str, Any]]:
    system, value = study_identifier(study_uid)
    identifiers: list[dict[str, Any]] = [{"system": system, "value": value}]
    if accession is not None:
        coding = {"system": ACSN[0], "code": ACSN[1]}
        identifiers.append({"type": {"coding": [coding]}, "value": accession})
    return identifiers


def imaging_study(
    instances: Sequence[JsonInstance],
    *,
    patient_reference: str,
    endpoint_reference: str | None,
    based_on: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """The ImagingStudy (FHIR R4) of one study from the DICOM JSON of its current instances.

    ``instances`` in any order (>= 1, all of one study); where they disagree on a study or
    series attribute, the later one wins. ``based_on``: the Reference objects to keep in
    ``basedOn``. The result is deterministic: series sorted by SeriesNumber then UID, instances
    by InstanceNumber then UID (unnumbered ones last). :class:`MappingError` names the tag when
    StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID or SOPClassUID is missing or invalid.
    """
    study_uid, grouped = _group(instances)
    series = [_series(s) for s in grouped.values()]
    series.sort(key=lambda s: _order(s.get("number"), s["uid"]))
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "identifier": _study_identifiers(study_uid, accession_number(instances)),
        "status": "available",
    }
    modalities = sorted({s["modality"]["code"] for s in series})
    study["modality"] = [{"system": DCM, "code": code} for code in modalities]
    study["subject"] = {"reference": patient_reference}
    started = _started(
        _latest(instances, "StudyDate"),
        _latest(instances, "StudyTime"),
        _latest(instances, "TimezoneOffsetFromUTC"),
    )
    if started is not None:
        study["started"] = started
    if based_on:
        study["basedOn"] = [copy.deepcopy(dict(reference)) for reference in based_on]
    if endpoint_reference is not None:
        study["endpoint"] = [{"reference": endpoint_reference}]
    study["numberOfSeries"] = len(series)
    study["numberOfInstances"] = sum(s["numberOfInstances"] for s in series)
    description = _latest(instances, "StudyDescription")
    if description is not None:
        study["description"] = description
    study["series"] = series
    return study
