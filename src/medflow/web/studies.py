"""The study list: a form's fields as a QIDO-RS study query (the archive's own matching,
PS3.18 10.6, PS3.4 C.2.2.2), one page of rows and the links to the pages before and after.

Fields: ``PatientName`` (case- and accent-insensitive; without ``*``/``?`` each word must
begin a word of the name, QIDO's ``fuzzymatching``), ``PatientID`` and ``AccessionNumber``
(exact, or ``*``/``?`` wildcards), ``Modality`` (ModalitiesInStudy), ``StudyDateFrom`` and
``StudyDateTo`` (``YYYY-MM-DD`` or ``YYYYMMDD``, a StudyDate range), ``offset`` and ``limit``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlencode

from medflow.core.errors import InvalidInput
from medflow.dicom.matching import Match, parse_attribute, parse_match
from medflow.store.query import Query
from medflow.store.service import StoreService
from medflow.web import dicom_json as dj

FIELDS = (
    "PatientName",
    "PatientID",
    "AccessionNumber",
    "Modality",
    "StudyDateFrom",
    "StudyDateTo",
)
DEFAULT_LIMIT = 25
MAX_LIMIT = 200
MAX_OFFSET = 1_000_000
MODALITIES = ("CR", "CT", "DX", "MG", "MR", "NM", "OT", "PT", "RF", "SEG", "SR", "US", "XA")
"""Suggestions for the modality field (any value may be typed)."""


@dataclass(frozen=True)
class StudyRow:
    study_uid: str
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    study_date: str
    accession: str
    description: str
    modalities: str
    series: int
    instances: int


@dataclass
class StudyList:
    filters: dict[str, str]
    limit: int = DEFAULT_LIMIT
    offset: int = 0
    rows: list[StudyRow] = field(default_factory=list)
    more: bool = False
    error: str | None = None

    def link(self, offset: int) -> str:
        """The query string of this search at another offset."""
        params = {k: v for k, v in self.filters.items() if v}
        if self.limit != DEFAULT_LIMIT:
            params["limit"] = str(self.limit)
        if offset:
            params["offset"] = str(offset)
        return urlencode(params)

    @property
    def previous(self) -> str | None:
        return self.link(max(0, self.offset - self.limit)) if self.offset > 0 else None

    @property
    def next(self) -> str | None:
        return self.link(self.offset + self.limit) if self.more else None


def _count(value: str | None, default: int, top: int, what: str) -> int:
    if not value:
        return default
    if not value.isascii() or not value.isdigit():
        raise InvalidInput(f"{what} must be a non-negative integer")
    return min(int(value), top)


def _date(value: str, what: str) -> str:
    digits = value.replace("-", "")
    if len(digits) != 8 or not digits.isascii() or not digits.isdigit():
        raise InvalidInput(f"{what} must be a date (YYYY-MM-DD)")
    return digits


def _match(keyword: str, value: str) -> Match:
    return parse_match(parse_attribute(keyword), value)


def study_query(filters: Mapping[str, str], *, limit: int, offset: int) -> Query:
    """The QIDO-RS study query of the form's fields; ``InvalidInput`` for a bad value."""
    matches: list[Match] = []
    name = filters.get("PatientName", "")
    fuzzy = bool(name) and not any(c in name for c in "*?")
    for keyword, form in (
        ("PatientName", "PatientName"),
        ("PatientID", "PatientID"),
        ("AccessionNumber", "AccessionNumber"),
        ("ModalitiesInStudy", "Modality"),
    ):
        if filters.get(form):
            matches.append(_match(keyword, filters[form]))
    low, high = filters.get("StudyDateFrom", ""), filters.get("StudyDateTo", "")
    if low or high:
        span = (_date(low, "from") if low else "") + "-" + (_date(high, "to") if high else "")
        matches.append(_match("StudyDate", span))
    return Query(level="study", matches=tuple(matches), fuzzy=fuzzy, limit=limit, offset=offset)


def study_row(obj: dj.Obj) -> StudyRow:
    """A study (QIDO-RS study result) as a row of the list."""
    return StudyRow(
        study_uid=dj.text(obj, dj.STUDY_UID),
        patient_name=dj.text(obj, dj.PATIENT_NAME),
        patient_id=dj.text(obj, dj.PATIENT_ID),
        birth_date=dj.date(dj.text(obj, dj.PATIENT_BIRTH_DATE)),
        sex=dj.text(obj, dj.PATIENT_SEX),
        study_date=dj.date(dj.text(obj, dj.STUDY_DATE)),
        accession=dj.text(obj, dj.ACCESSION),
        description=dj.text(obj, dj.STUDY_DESCRIPTION),
        modalities=", ".join(str(v) for v in dj.values(obj, dj.MODALITIES)),
        series=int(dj.number(obj, dj.NUM_SERIES) or 0),
        instances=int(dj.number(obj, dj.NUM_INSTANCES) or 0),
    )


def search_studies(store: StoreService, params: Mapping[str, str]) -> StudyList:
    """One page of the study list; a bad field value is reported in ``error`` (no rows)."""
    filters = {name: params.get(name, "").strip() for name in FIELDS}
    page = StudyList(filters)
    try:
        page.limit = max(1, _count(params.get("limit"), DEFAULT_LIMIT, MAX_LIMIT, "limit"))
        page.offset = _count(params.get("offset"), 0, MAX_OFFSET, "offset")
        query = study_query(filters, limit=page.limit, offset=page.offset)
        for name in ("StudyDateFrom", "StudyDateTo"):  # shown as the date inputs want them
            if filters[name]:
                day = _date(filters[name], name)
                filters[name] = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    except InvalidInput as exc:
        page.error = exc.message
        return page
    result = store.search(query)
    page.rows = [study_row(obj) for obj in result.rows]
    page.more = result.more
    return page


__all__ = [
    "FIELDS",
    "MODALITIES",
    "StudyList",
    "StudyRow",
    "search_studies",
    "study_query",
    "study_row",
]
