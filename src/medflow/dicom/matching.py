"""Attribute matching of Query/Retrieve keys (PS3.4 C.2.2.2), shared by QIDO-RS and C-FIND.

This module knows DICOM, not HTTP nor SQL: it turns an attribute name and a key value into a
``Match`` that says which kind of matching the value asks for:

- Universal Matching (C.2.2.2.3): an empty value (or ``*``) matches everything; the attribute
  is still returned.
- Single Value Matching (C.2.2.2.1): a literal value.
- List of UID Matching (C.2.2.2.2): UIDs separated by ``\\`` (DIMSE) or ``,`` (PS3.18 8.3.4.1).
- Wild Card Matching (C.2.2.2.4): ``*`` and ``?`` in values of VR AE, CS, LO, LT, PN, SH, ST, UC,
  UR and UT.
- Range Matching (C.2.2.2.5): ``<low>-<high>``, ``-<high>``, ``<low>-`` for DA, TM and DT.
- Sequence Matching (C.2.2.2.6): a dotted attribute path (``RequestAttributesSequence.
  ScheduledProcedureStepID``) names an Item Key Attribute inside a sequence.

Attribute names are keywords or tags (``PatientName``, ``00100010``) or dotted paths of either
(PS3.18 8.3.4.1). ``Match.matches`` evaluates a match against a value in Python; the SQL form
lives in ``medflow.store.query``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from pydicom.datadict import dictionary_has_tag, dictionary_keyword, dictionary_VR, tag_for_keyword

from medflow.core.errors import InvalidInput
from medflow.dicom.attributes import search_form

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})
"""Leading and trailing spaces are significant in these VRs (PS3.5 6.2)."""
DATE_TIME_VRS = frozenset({"DA", "TM", "DT"})
INT_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "UV", "SV"})
FLOAT_VRS = frozenset({"DS", "FL", "FD"})
MULTI_VALUE_KEYS = frozenset({0x00080061, 0x00080062})
"""ModalitiesInStudy, SOPClassesInStudy: a ``\\`` or ``,`` separated key matches any value."""

MAX_VALUE_LENGTH = 1024
MAX_LIST_LENGTH = 1000
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
DA_RE = re.compile(r"^\d{4}(\d{2}(\d{2})?)?$")
TM_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
DT_BODY = r"\d{4}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\d{2}(?:\.\d{1,6})?)?)?)?)?)?(?:[+-]\d{4})?"
DT_RE = re.compile(f"^{DT_BODY}$")
DT_RANGE_RE = re.compile(f"^({DT_BODY})?-({DT_BODY})?$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
HEX_TAG_RE = re.compile(r"^[0-9A-Fa-f]{8}$")
FULL_LENGTH = {"DA": "YYYYMMDD", "TM": "HHMMSS.FFFFFF", "DT": "YYYYMMDDHHMMSS.FFFFFF"}


class MatchType(StrEnum):
    """The kinds of matching of PS3.4 C.2.2.2."""

    UNIVERSAL = "universal"
    SINGLE = "single"
    LIST = "list"
    WILDCARD = "wildcard"
    RANGE = "range"


def _keyword(tag: int) -> str:
    keyword = str(dictionary_keyword(tag)) if dictionary_has_tag(tag) else ""
    return keyword or f"{tag:08X}"


@dataclass(frozen=True)
class AttributePath:
    """An attribute, or an Item Key Attribute inside sequences (outermost tag first)."""

    tags: tuple[int, ...]
    vr: str

    @property
    def tag(self) -> int:
        """The tag of the attribute itself (the last one of the path)."""
        return self.tags[-1]

    @property
    def keyword(self) -> str:
        """Dotted keywords (hex tags where the dictionary has no keyword)."""
        return ".".join(_keyword(t) for t in self.tags)

    @property
    def hex(self) -> str:
        return ".".join(f"{t:08X}" for t in self.tags)

    def __str__(self) -> str:
        return self.keyword


@dataclass(frozen=True)
class Match:
    """A parsed key: what to match ``attribute`` against (PS3.4 C.2.2.2)."""

    attribute: AttributePath
    type: MatchType
    value: str = ""
    """The literal (SINGLE) or the pattern with ``*``/``?`` (WILDCARD)."""
    values: tuple[str, ...] = ()
    """Alternatives for LIST: any one may match."""
    low: str | None = None
    """Inclusive lower bound (RANGE), as given; None when open."""
    high: str | None = None
    """Inclusive upper bound (RANGE), as given; None when open. See ``range_upper``."""

    @property
    def vr(self) -> str:
        return self.attribute.vr

    @property
    def tag(self) -> int:
        return self.attribute.tag

    def matches(self, candidate: str | None, *, case_insensitive: bool | None = None) -> bool:
        """Evaluate the match against one stored value (None or "" means absent).

        Person names (PN) match case- and accent-insensitively unless told otherwise; other
        VRs literally (C.2.2.2.4). An absent value matches only Universal Matching.
        """
        if self.type is MatchType.UNIVERSAL:
            return True
        if not candidate:
            return False
        fold = self.vr == "PN" if case_insensitive is None else case_insensitive
        if self.type is MatchType.RANGE:
            return _in_range(self, candidate)
        if self.type is MatchType.LIST:
            return any(_single(self.vr, v, candidate, fold) for v in self.values)
        if self.type is MatchType.WILDCARD:
            regex = wildcard_regex(_fold(self.value) if fold else self.value)
            return regex.fullmatch(_fold(candidate) if fold else candidate) is not None
        return _single(self.vr, self.value, candidate, fold)


def _fold(value: str) -> str:
    return search_form(value) or ""


def _single(vr: str, key: str, candidate: str, fold: bool) -> bool:
    if vr == "TM":
        return key <= candidate <= range_upper("TM", key)
    if vr in INT_VRS:
        try:
            return int(key) == int(candidate)
        except ValueError:
            return False
    if vr in FLOAT_VRS:
        try:
            return float(key) == float(candidate)
        except ValueError:
            return False
    return (_fold(key) == _fold(candidate)) if fold else key == candidate


def _in_range(match: Match, candidate: str) -> bool:
    if match.low is not None and candidate < match.low:
        return False
    return not (match.high is not None and candidate > range_upper(match.vr, match.high))


def wildcard_regex(pattern: str) -> re.Pattern[str]:
    """A regular expression for a C.2.2.2.4 pattern: ``*`` any run, ``?`` one character."""
    parts = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in pattern)
    return re.compile("".join(parts), re.DOTALL)


def range_upper(vr: str, high: str) -> str:
    """The largest value an inclusive upper bound covers, as a string to compare lexically.

    A partial bound covers everything it is a prefix of (C.2.2.2.5): ``2020`` as a DA bound is
    ``20209999``, ``12`` as a TM bound is ``129999.999999``. DICOM strings of these VRs are
    fixed-position, so lexical order is chronological order.
    """
    full = FULL_LENGTH.get(vr)
    if full is None or len(high) >= len(full):
        return high
    if vr == "DT" and re.search(r"[+-]\d{4}$", high):
        return high
    return high + "".join("." if c == "." else "9" for c in full[len(high) :])


# -- attribute names ---------------------------------------------------------------------------
def parse_tag(name: str) -> int:
    """A keyword (``PatientName``) or 8 hex digits (``00100010``) as a tag.

    Raises ``InvalidInput`` for anything else (PS3.18 8.3.4.1: keyword or tag).
    """
    if HEX_TAG_RE.match(name):
        return int(name, 16)
    tag = tag_for_keyword(name)
    if tag is None:
        raise InvalidInput(f"unknown attribute {name!r}: not a DICOM keyword or tag")
    return int(tag)


def vr_of(tag: int) -> str:
    """The dictionary VR (``UN`` for private or unknown tags, the first of ``US or SS``)."""
    if not dictionary_has_tag(tag):
        return "UN"
    vr = str(dictionary_VR(tag))
    return vr.split(" or ")[0]


def parse_attribute(name: str) -> AttributePath:
    """Parse ``attribute`` of PS3.18 8.3.4.1: tags or keywords, dotted through sequences."""
    if not name or len(name) > 400:
        raise InvalidInput("empty or overlong attribute name")
    tags = tuple(parse_tag(part) for part in name.split("."))
    for tag in tags[:-1]:
        if vr_of(tag) != "SQ":
            raise InvalidInput(f"{name!r}: only a sequence can hold item attributes")
    return AttributePath(tags, vr_of(tags[-1]))


# -- values --------------------------------------------------------------------------------------
def parse_match(attribute: AttributePath, raw: str) -> Match:
    """Classify a key value for ``attribute`` (PS3.4 C.2.2.2). ``raw`` is already URL-decoded.

    Raises ``InvalidInput`` for a value that cannot be a key of this VR: a malformed date, time
    or range, a non-numeric IS, an invalid UID, control characters, or a value on a sequence.
    """
    if len(raw) > MAX_VALUE_LENGTH:
        raise InvalidInput(f"{attribute}: value longer than {MAX_VALUE_LENGTH} characters")
    if CONTROL_RE.search(raw):
        raise InvalidInput(f"{attribute}: value contains control characters")
    vr = attribute.vr
    value = raw if vr in TEXT_VRS else raw.strip(" ")
    if value == "" or (value.strip("*") == "" and vr != "SQ"):
        return Match(attribute, MatchType.UNIVERSAL)
    if vr == "SQ":
        raise InvalidInput(f"{attribute}: a sequence takes no value; match its item attributes")
    if vr == "UI":
        return _uid_match(attribute, value)
    if vr in DATE_TIME_VRS:
        return _date_time_match(attribute, value)
    if vr in INT_VRS or vr in FLOAT_VRS:
        return _number_match(attribute, value)
    if attribute.tag in MULTI_VALUE_KEYS and re.search(r"[\\,]", value):
        return _list_match(attribute, re.split(r"[\\,]", value), vr)
    if vr in WILDCARD_VRS and ("*" in value or "?" in value):
        return Match(attribute, MatchType.WILDCARD, value=value)
    return Match(attribute, MatchType.SINGLE, value=value)


def _list_match(attribute: AttributePath, parts: list[str], vr: str) -> Match:
    values = tuple(dict.fromkeys(p.strip(" ") for p in parts if p.strip(" ")))
    if not values:
        return Match(attribute, MatchType.UNIVERSAL)
    if len(values) > MAX_LIST_LENGTH:
        raise InvalidInput(f"{attribute}: more than {MAX_LIST_LENGTH} values in a list")
    if any("*" in v or "?" in v for v in values):
        raise InvalidInput(f"{attribute}: wild cards are not allowed in a list of values")
    if len(values) == 1:
        return Match(attribute, MatchType.SINGLE, value=values[0])
    return Match(attribute, MatchType.LIST, values=values)


def _uid_match(attribute: AttributePath, value: str) -> Match:
    """Single Value or List of UID Matching (C.2.2.2.2; ``,`` per PS3.18 8.3.4.1)."""
    parts = re.split(r"[\\,]", value)
    for uid in parts:
        uid = uid.strip(" ")
        if uid and (len(uid) > 64 or not UID_RE.match(uid)):
            raise InvalidInput(f"{attribute}: not a valid UID or list of UIDs")
    return _list_match(attribute, parts, "UI")


def _date_time_match(attribute: AttributePath, value: str) -> Match:
    """Single Value or Range Matching of DA, TM, DT (C.2.2.2.1.3, C.2.2.2.5)."""
    vr = attribute.vr
    if "-" not in value:  # a "-" always means a range (C.2.2.2.1.3 note 3)
        _check_date_time(attribute, value, single=True)
        return Match(attribute, MatchType.SINGLE, value=value)
    low, high = _split_range(attribute, value)
    if low is None and high is None:
        raise InvalidInput(f"{attribute}: a range needs at least one bound")
    for bound in (low, high):
        if bound is not None:
            _check_date_time(attribute, bound, single=False)
    # A TM range may run "backwards" when combined with a date range (C.2.2.2.5.4).
    if vr != "TM" and low is not None and high is not None and low > range_upper(vr, high):
        raise InvalidInput(f"{attribute}: range start is after its end")
    return Match(attribute, MatchType.RANGE, low=low, high=high)


def _split_range(attribute: AttributePath, value: str) -> tuple[str | None, str | None]:
    if attribute.vr == "DT":
        m = DT_RANGE_RE.match(value)
        if m is None:
            raise InvalidInput(f"{attribute}: malformed date-time range")
        return m.group(1), m.group(2)
    if value.count("-") != 1:
        raise InvalidInput(f"{attribute}: malformed range")
    low, _, high = (p.strip(" ") for p in value.partition("-"))
    return low or None, high or None


def _check_date_time(attribute: AttributePath, value: str, *, single: bool) -> None:
    vr = attribute.vr
    if vr == "DA":
        ok = bool(DA_RE.match(value)) and (len(value) == 8 or not single)
    elif vr == "TM":
        ok = bool(TM_RE.match(value))
    else:
        ok = bool(DT_RE.match(value))
    if not ok:
        kind = {"DA": "date (YYYYMMDD)", "TM": "time (HHMMSS.FFFFFF)", "DT": "date-time"}[vr]
        raise InvalidInput(f"{attribute}: malformed {kind} {'value' if single else 'bound'}")


def _number_match(attribute: AttributePath, value: str) -> Match:
    try:
        number: float = int(value) if attribute.vr in INT_VRS else float(value)
    except ValueError:
        raise InvalidInput(f"{attribute}: not a number") from None
    return Match(attribute, MatchType.SINGLE, value=str(number))


def parse_include_fields(values: list[str]) -> tuple[bool, tuple[AttributePath, ...]]:
    """``includefield`` values (PS3.18 8.3.4.3): comma-separated attributes or ``all``.

    Returns (all, attributes). Unknown attribute names raise ``InvalidInput``.
    """
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if "all" in names:
        return True, ()
    return False, tuple(dict.fromkeys(parse_attribute(n) for n in names))


# -- query levels ----------------------------------------------------------------------------------
def _tags(keywords: str) -> frozenset[int]:
    return frozenset(int(t) for k in keywords.split() if (t := tag_for_keyword(k)) is not None)


STUDY_LEVEL = _tags("""
    StudyDate StudyTime AccessionNumber IssuerOfAccessionNumberSequence ReferringPhysicianName
    ReferringPhysicianIdentificationSequence ConsultingPhysicianName StudyDescription
    ProcedureCodeSequence PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
    NameOfPhysiciansReadingStudy PhysiciansReadingStudyIdentificationSequence
    ReferencedStudySequence AdmittingDiagnosesDescription AdmittingDiagnosesCodeSequence
    StudyInstanceUID StudyID RequestingService RequestedProcedureDescription
    RequestedProcedureCodeSequence ReasonForPerformedProcedureCodeSequence AdmissionID
    IssuerOfAdmissionIDSequence PatientIdentityRemoved DeidentificationMethod
    DeidentificationMethodCodeSequence ClinicalTrialSponsorName ClinicalTrialProtocolID
    ClinicalTrialProtocolName ClinicalTrialSiteID ClinicalTrialSiteName ClinicalTrialSubjectID
    ClinicalTrialSubjectReadingID ClinicalTrialTimePointID ClinicalTrialTimePointDescription
    ModalitiesInStudy SOPClassesInStudy NumberOfStudyRelatedSeries NumberOfStudyRelatedInstances
""")
"""General Study, Patient Study, Clinical Trial Subject/Study modules (PS3.3 C.7.1-2) and the
study level return keys of PS3.4 C.6.2.1; all of group 0010 (Patient) is study level too in the
Study Root model (PS3.4 C.3.2)."""
SERIES_LEVEL = _tags("""
    Modality SeriesInstanceUID SeriesNumber Laterality SeriesDate SeriesTime
    PerformingPhysicianName PerformingPhysicianIdentificationSequence ProtocolName
    SeriesDescription SeriesDescriptionCodeSequence OperatorsName OperatorIdentificationSequence
    ReferencedPerformedProcedureStepSequence RelatedSeriesSequence BodyPartExamined
    PatientPosition RequestAttributesSequence PerformedProcedureStepID
    PerformedProcedureStepStartDate PerformedProcedureStepStartTime PerformedProcedureStepEndDate
    PerformedProcedureStepEndTime PerformedProcedureStepDescription PerformedProtocolCodeSequence
    CommentsOnThePerformedProcedureStep AnatomicalOrientationType FrameOfReferenceUID
    PositionReferenceIndicator Manufacturer InstitutionName InstitutionAddress StationName
    InstitutionalDepartmentName ManufacturerModelName DeviceSerialNumber SoftwareVersions
    ClinicalTrialCoordinatingCenterName ClinicalTrialSeriesID ClinicalTrialSeriesDescription
    NumberOfSeriesRelatedInstances
""")
"""General Series, Frame of Reference, General Equipment, Clinical Trial Series (PS3.3 C.7.3-5)."""
INSTANCE_LEVEL = _tags("""
    SOPClassUID SOPInstanceUID InstanceNumber ImageType InstanceCreationDate InstanceCreationTime
    ContentDate ContentTime AcquisitionDate AcquisitionTime AcquisitionDateTime AcquisitionNumber
    ImagePositionPatient ImageOrientationPatient SliceLocation SliceThickness
    ReferencedImageSequence SourceImageSequence DerivationDescription
""")
"""SOP Common, General Image, Image Plane attributes; groups 0028 and 7FE0 are instance level."""


def level_of(tag: int) -> int | None:
    """Query/Retrieve level of an attribute, where known: 0 study (patient attributes included,
    Study Root), 1 series, 2 instance; None for the rest (e.g. private attributes)."""
    if tag >> 16 == 0x0010 or tag in STUDY_LEVEL:
        return 0
    if tag in SERIES_LEVEL:
        return 1
    if tag in INSTANCE_LEVEL or tag >> 16 in (0x0028, 0x7FE0):
        return 2
    return None


__all__ = [
    "AttributePath",
    "Match",
    "MatchType",
    "level_of",
    "parse_attribute",
    "parse_include_fields",
    "parse_match",
    "parse_tag",
    "range_upper",
    "vr_of",
    "wildcard_regex",
]
