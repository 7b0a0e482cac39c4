"""Study/series/instance queries over the index, for QIDO-RS (PS3.18 10.6) and C-FIND (PS3.4 C.4.1).

Match specs from ``medflow.dicom.matching`` compile to one SQLAlchemy select over the index
tables that runs the same on SQLite and PostgreSQL:

- Single Value / List of UID Matching: ``=`` / ``IN`` on the indexed column.
- Wild Card Matching: ``PREFIX*`` becomes a range (``col >= 'DOE' AND col < 'DOF'``) that an
  index serves; other patterns become ``LIKE ... ESCAPE`` (PostgreSQL) or ``GLOB`` (SQLite, whose
  LIKE ignores case), with the user's ``%``, ``_``, ``[`` escaped. Text comparisons on
  PostgreSQL use ``COLLATE "C"`` so that order is code-point order, as on SQLite.
- Person names (PN) match case- and accent-insensitively on the ``*_search`` columns
  (C.2.2.2.4 leaves PN wild card matching to the implementation); with fuzzy matching each
  word of the key must be the prefix of a word of the name (``person_name_token``).
- Study and Series Description match case-insensitively (free text, OHIF sends ``*text*``).
- Range Matching of DA/TM compares the fixed-position strings lexically (C.2.2.2.5); a pair of
  date and time ranges of the same form is combined into one date-time range (PS3.18 8.3.4.1.1).
- ModalitiesInStudy: ``EXISTS`` over ``series(modality, study_pk)``.

Computed attributes (Number of Related Series/Instances, Modalities in Study) are counted for
the returned page only. Results are DICOM JSON text written straight from the index columns by a
narrow writer for the index attributes only (checked against pydicom's ``to_json_dict``).
``includefield`` attributes that the index does not hold come from the stored DICOM JSON of one
instance of each study/series, BulkDataURIs made absolute.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, and_, exists, func, literal, or_, select, true
from sqlalchemy.orm import Bundle, InstrumentedAttribute, Session, aliased

from medflow.dicom.attributes import absolutize_bulkdata, search_form
from medflow.dicom.matching import (
    AttributePath,
    Match,
    MatchType,
    level_of,
    range_upper,
)
from medflow.store.models import Instance, PersonNameToken, Series, Study
from medflow.store.query_json import (
    INDEX_VR,
    Attrs,
    element_json,
    instance_attrs,
    object_json,
    series_attrs,
    study_attrs,
)

Level = Literal["study", "series", "instance"]
RANK: dict[str, int] = {"study": 0, "series": 1, "instance": 2}
MAX_OFFSET = 2**31 - 1


@dataclass(frozen=True)
class Query:
    """A search at ``level``; ``study_uid``/``series_uid`` come from the resource path."""

    level: Level
    matches: tuple[Match, ...] = ()
    study_uid: str | None = None
    series_uid: str | None = None
    fuzzy: bool = False
    include_all: bool = False
    include: tuple[AttributePath, ...] = ()
    limit: int = 100
    offset: int = 0
    base_url: str = ""
    """Absolute DICOMweb root for Retrieve URL and BulkDataURIs; "" leaves them out/relative."""


@dataclass(frozen=True)
class QueryResult:
    texts: list[str]
    """One DICOM JSON object (PS3.18 F.2) per match, as JSON text, in a stable order."""
    ignored: tuple[str, ...] = ()
    """Keys with a value that the index cannot match; they were ignored (not supported)."""
    more: bool = False
    """More matches exist after this page."""

    @cached_property
    def rows(self) -> list[dict[str, Any]]:
        """The matches as parsed DICOM JSON objects."""
        return [json.loads(text) for text in self.texts]

    def json_bytes(self) -> bytes:
        """The DICOM JSON array of the matches (a QIDO-RS response body), UTF-8."""
        return ("[" + ",".join(self.texts) + "]").encode()


@dataclass(frozen=True)
class Key:
    """An attribute the index can match: its level, column and how to compare."""

    level: Level
    column: InstrumentedAttribute[Any]
    kind: Literal["exact", "pn", "ci", "int", "date", "time"] = "exact"


KEYS: dict[tuple[int, ...], Key] = {
    (0x00100010,): Key("study", Study.patient_name_search, "pn"),
    (0x00080090,): Key("study", Study.referring_physician_name_search, "pn"),
    (0x00100020,): Key("study", Study.patient_id),
    (0x00100021,): Key("study", Study.issuer_of_patient_id),
    (0x00100030,): Key("study", Study.patient_birth_date, "date"),
    (0x00100040,): Key("study", Study.patient_sex),
    (0x0020000D,): Key("study", Study.study_uid),
    (0x00080020,): Key("study", Study.study_date, "date"),
    (0x00080030,): Key("study", Study.study_time, "time"),
    (0x00080050,): Key("study", Study.accession_number),
    (0x00200010,): Key("study", Study.study_id),
    (0x00081030,): Key("study", Study.study_description, "ci"),
    (0x00080061,): Key("study", Series.modality),  # ModalitiesInStudy, via EXISTS
    (0x0020000E,): Key("series", Series.series_uid),
    (0x00080060,): Key("series", Series.modality),
    (0x00200011,): Key("series", Series.series_number, "int"),
    (0x0008103E,): Key("series", Series.series_description, "ci"),
    (0x00180015,): Key("series", Series.body_part_examined),
    (0x00400244,): Key("series", Series.performed_procedure_step_start_date, "date"),
    (0x00400245,): Key("series", Series.performed_procedure_step_start_time, "time"),
    (0x00400275, 0x00400009): Key("series", Series.scheduled_procedure_step_id),
    (0x00400275, 0x00401001): Key("series", Series.requested_procedure_id),
    (0x00080018,): Key("instance", Instance.sop_instance_uid),
    (0x00080016,): Key("instance", Instance.sop_class_uid),
    (0x00200013,): Key("instance", Instance.instance_number, "int"),
    (0x00280010,): Key("instance", Instance.rows, "int"),
    (0x00280011,): Key("instance", Instance.columns, "int"),
    (0x00280100,): Key("instance", Instance.bits_allocated, "int"),
    (0x00280008,): Key("instance", Instance.number_of_frames, "int"),
}
MODALITIES_IN_STUDY = 0x00080061
NEVER_MATCHED = frozenset({0x00080005})  # Specific Character Set (PS3.4 C.2.2.2)
DATE_TIME_PAIRS = (((0x00080020,), (0x00080030,)), ((0x00400244,), (0x00400245,)))
PN_TOKEN_ATTR = {0x00100010: "00100010", 0x00080090: "00080090"}


def execute_query(session: Session, query: Query) -> QueryResult:
    """Run ``query`` (PS3.18 10.6.1 resources, PS3.4 C.2.2.2 matching) and build its page."""
    dialect = session.get_bind().dialect.name
    conds, ignored, extra = _conditions(query, dialect)
    stmt = _base_select(query).where(*conds)
    limit = max(0, query.limit)
    offset = min(max(0, query.offset), MAX_OFFSET)
    rows = session.execute(stmt.limit(limit + 1).offset(offset)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    builder = _Builder(session, query, extra)
    return QueryResult(texts=builder.build(rows), ignored=tuple(ignored), more=more)


# -- matching ------------------------------------------------------------------------------------
def _conditions(
    query: Query, dialect: str
) -> tuple[list[ColumnElement[bool]], list[str], list[AttributePath]]:
    """WHERE conditions, keys ignored as not supported, and return keys (universal matches)."""
    conds: list[ColumnElement[bool]] = []
    ignored: list[str] = []
    extra: list[AttributePath] = []
    if query.study_uid is not None:
        conds.append(Study.study_uid == query.study_uid)
    if query.series_uid is not None:
        conds.append(Series.series_uid == query.series_uid)
    combined = _combined_date_time(query.matches, dialect)
    for match in query.matches:
        path = match.attribute.tags
        key = KEYS.get(path)
        if match.type is MatchType.UNIVERSAL:
            if key is None:
                extra.append(match.attribute)
            continue
        if path[-1] in NEVER_MATCHED:
            continue
        if key is None or RANK[key.level] > RANK[query.level]:
            ignored.append(str(match.attribute))
            continue
        if path in combined:
            continue
        conds.append(_condition(match, key, dialect, query.fuzzy))
    conds.extend(combined.values())
    return conds, ignored, extra


def _condition(match: Match, key: Key, dialect: str, fuzzy: bool) -> ColumnElement[bool]:
    if match.tag == MODALITIES_IN_STUDY:
        return _modalities_in_study(match, dialect)
    if key.kind == "pn" and fuzzy:
        return _fuzzy(match, dialect)
    return _value_condition(match, key, dialect)


def _modalities_in_study(match: Match, dialect: str) -> ColumnElement[bool]:
    """Any series of the study has the modality. Exact values and lists test the study's own
    Modalities in Study (kept by the write transaction, ``\\``-delimited): no probe of the
    series table per study while walking studies in date order. Wildcards probe the series."""
    values = match.values if match.type is MatchType.LIST else (match.value,)
    if match.type in (MatchType.SINGLE, MatchType.LIST) and not any("\\" in v for v in values):
        padded = literal("\\") + func.coalesce(Study.modalities_in_study, "") + literal("\\")
        find = func.instr if dialect == "sqlite" else func.strpos  # both case-sensitive
        return or_(*(find(padded, f"\\{v}\\") > 0 for v in values))
    other = aliased(Series)  # an alias: the outer query may select from series itself
    inner = _value_condition(match, Key("study", other.modality), dialect)
    return exists().where(other.study_pk == Study.pk, inner)


def _value_condition(match: Match, key: Key, dialect: str) -> ColumnElement[bool]:
    col: Any = key.column
    if match.type is MatchType.RANGE:
        return _range(col, match, dialect, key.kind == "date")
    if key.kind == "int":
        ints: ColumnElement[bool] = col.in_([int(v) for v in match.values or (match.value,)])
        return ints
    if key.kind == "time" and match.type is MatchType.SINGLE:
        return _range(
            col,
            Match(match.attribute, MatchType.RANGE, low=match.value, high=match.value),
            dialect,
            False,
        )
    fold = key.kind == "pn"
    if match.type is MatchType.LIST:
        listed: ColumnElement[bool] = col.in_([_norm(v, fold) for v in match.values])
        return listed
    if key.kind == "ci":
        return _like(col, match.value, dialect, case_insensitive=True)
    if match.type is MatchType.WILDCARD:
        return _wildcard(col, _norm(match.value, fold), dialect)
    return col == _norm(match.value, fold)  # type: ignore[no-any-return]


def _norm(value: str, fold: bool) -> str:
    return (search_form(value) or "") if fold else value


def _c(col: Any, dialect: str) -> Any:
    """Code-point order on PostgreSQL (its default collation may not be), as SQLite has."""
    return col.collate("C") if dialect == "postgresql" else col


def _range(col: Any, match: Match, dialect: str, is_date: bool) -> ColumnElement[bool]:
    """Range Matching (C.2.2.2.5): inclusive, a partial bound covers what it prefixes."""
    target = col if is_date else _c(col, dialect)  # digits only: every collation agrees
    parts: list[ColumnElement[bool]] = []
    if match.low is not None:
        parts.append(target >= match.low)
    if match.high is not None:
        parts.append(target <= range_upper(match.vr, match.high))
    return and_(*parts) if parts else true()


def _prefix_successor(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``."""
    last = ord(prefix[-1])
    if last >= 0x10FFFF or 0xD7FF <= last < 0xE000:
        return None
    return prefix[:-1] + chr(last + 1)


def _wildcard(col: Any, pattern: str, dialect: str) -> ColumnElement[bool]:
    """Wild Card Matching (C.2.2.2.4), case-sensitive on the given column."""
    body = pattern.rstrip("*")
    if body and "*" not in body and "?" not in body and body != pattern:
        upper = _prefix_successor(body)
        if upper is not None:
            target = _c(col, dialect)
            return and_(target >= body, target < upper)
    if dialect == "sqlite":
        glob = "".join(f"[{c}]" if c in "[]" else c for c in pattern)
        return col.op("GLOB")(glob)  # type: ignore[no-any-return]
    return col.like(_like_pattern(pattern), escape="\\")  # type: ignore[no-any-return]


def _like_pattern(pattern: str) -> str:
    """``*``/``?`` to ``%``/``_``; the user's ``\\``, ``%`` and ``_`` escaped with ``\\``."""
    out = []
    for c in pattern:
        if c in "\\%_":
            out.append("\\" + c)
        else:
            out.append("%" if c == "*" else "_" if c == "?" else c)
    return "".join(out)


def _like(col: Any, pattern: str, dialect: str, *, case_insensitive: bool) -> ColumnElement[bool]:
    """Case-insensitive match (ILIKE; SQLite's LIKE folds ASCII letters only)."""
    like = _like_pattern(pattern)
    if dialect == "postgresql" and case_insensitive:
        return col.ilike(like, escape="\\")  # type: ignore[no-any-return]
    return col.like(like, escape="\\")  # type: ignore[no-any-return]


def _fuzzy(match: Match, dialect: str) -> ColumnElement[bool]:
    """Each word of the key is the prefix of a word of the name (PS3.18 8.3.4.2)."""
    attr = PN_TOKEN_ATTR[match.tag]
    folded = search_form(match.value) or ""
    words = [w for w in re.split(r"[\^=\s,]+", folded) if w.strip("*")]
    parts: list[ColumnElement[bool]] = []
    for word in words:
        pattern = word if word.endswith("*") else word + "*"
        sub = select(PersonNameToken.study_pk).where(
            PersonNameToken.attr == attr, _wildcard(PersonNameToken.token, pattern, dialect)
        )
        parts.append(Study.pk.in_(sub))
    return and_(*parts) if parts else true()


def _combined_date_time(
    matches: Sequence[Match], dialect: str
) -> dict[tuple[int, ...], ColumnElement[bool]]:
    """Date and time ranges of the same form as one date-time range (C.2.2.2.5.4)."""
    by_path = {m.attribute.tags: m for m in matches}
    out: dict[tuple[int, ...], ColumnElement[bool]] = {}
    for date_path, time_path in DATE_TIME_PAIRS:
        d, t = by_path.get(date_path), by_path.get(time_path)
        if d is None or t is None or d.type is not MatchType.RANGE or t.type is not MatchType.RANGE:
            continue
        if (d.low is None) != (t.low is None) or (d.high is None) != (t.high is None):
            continue
        date_col: Any = KEYS[date_path].column
        time_col = _c(KEYS[time_path].column, dialect)
        parts: list[ColumnElement[bool]] = []
        # Each OR comes with the plain date bound it implies: the range an index can seek.
        if d.low is not None and t.low is not None:
            parts.append(date_col >= d.low)
            parts.append(or_(date_col > d.low, and_(date_col == d.low, time_col >= t.low)))
        if d.high is not None and t.high is not None:
            d_hi, t_hi = range_upper("DA", d.high), range_upper("TM", t.high)
            parts.append(date_col <= d_hi)
            if len(d.high) == 8:  # a full date: the time limits its last day (a partial: none)
                parts.append(or_(date_col < d_hi, and_(date_col == d_hi, time_col <= t_hi)))
        out[date_path] = and_(*parts)
        out[time_path] = true()
    return out


def _columns(model: type[Study | Series | Instance], *skip: str) -> Bundle[Any]:
    """A table's columns as plain rows with attribute access (``row.study_uid``): a page is
    read, never changed, so ORM instances (identity map, state tracking) are not needed."""
    cols = [c for c in model.__table__.columns if c.key not in skip]
    return Bundle(model.__tablename__, *cols)


STUDY_COLUMNS = _columns(Study)
SERIES_COLUMNS = _columns(Series)
INSTANCE_COLUMNS = _columns(Instance, "metadata_json")


def _base_select(query: Query) -> Select[*tuple[Any, ...]]:
    """Rows of the level, joined to their parents, in a stable order (PS3.18 8.3.4.4.1)."""
    scoped = query.study_uid is not None
    if query.level == "study":
        return select(STUDY_COLUMNS).order_by(Study.study_date.desc().nulls_last(), Study.pk.desc())
    if query.level == "series":
        stmt: Select[*tuple[Any, ...]] = select(SERIES_COLUMNS, STUDY_COLUMNS).join(
            Study, Series.study_pk == Study.pk
        )
        if scoped:
            return stmt.order_by(Series.series_number.asc().nulls_last(), Series.pk)
        return stmt.order_by(Series.study_pk.desc(), Series.pk.desc())  # index order
    stmt = (
        select(INSTANCE_COLUMNS, SERIES_COLUMNS, STUDY_COLUMNS)
        .select_from(Instance)
        .join(Series, Instance.series_pk == Series.pk)
        .join(Study, Instance.study_pk == Study.pk)
    )
    if scoped:
        return stmt.order_by(
            Series.series_number.asc().nulls_last(),
            Series.pk,
            Instance.instance_number.asc().nulls_last(),
            Instance.pk,
        )
    return stmt.order_by(Instance.pk.desc())


class _Builder:
    """Turns a page of rows into DICOM JSON, with computed and included attributes."""

    def __init__(self, session: Session, query: Query, extra: list[AttributePath]) -> None:
        self.s = session
        self.q = query
        self.base = query.base_url.rstrip("/")
        self.include = {p.tags[0] for p in (*query.include, *extra)}

    def build(self, rows: Sequence[Any]) -> list[str]:
        if not rows:
            return []
        level, all_form = self.q.level, self.q.study_uid is None
        stats = level == "study" or all_form
        counts = level == "series" or (level == "instance" and all_form)
        out = [self._one(row, stats=stats, counts=counts) for row in rows]
        self._add_included(out, [r[0].pk for r in rows])
        return [object_json(attrs) for attrs in out]

    def _one(self, row: Any, *, stats: bool, counts: bool) -> Attrs:
        """One result: the level's own attributes (with its Retrieve URL) and its parents'.
        The computed attributes (Number of ... Related ..., Modalities in Study) are the counts
        the write transaction keeps on the study and series rows."""
        out, level, st = Attrs(), self.q.level, row[-1]
        if level == "instance":
            instance_attrs(out, row[0], (st.study_uid, row[1].series_uid), self.base)
        if level != "study":
            se = row[0] if level == "series" else row[1]
            series_attrs(out, se, st.study_uid, self.base if level == "series" else "")
            if counts:
                out.put(0x00201209, se.num_instances, required=True)
        if level != "series" or self.q.study_uid is None:
            study_attrs(out, st, self.base if level == "study" else "")
        if stats:
            out.put(0x00201206, st.num_series, required=True)
            out.put(0x00201208, st.num_instances, required=True)
            modalities = st.modalities_in_study.split("\\") if st.modalities_in_study else []
            out.put(0x00080061, modalities, required=True)
        return out

    def _pairs(self, stmt: Select[Any, Any]) -> dict[Any, Any]:
        return {row[0]: row[1] for row in self.s.execute(stmt)}

    def _wanted(self, key: str, present: dict[str, Any]) -> bool:
        """Whether an attribute of the stored metadata goes into a result of this level
        (PS3.18 10.6.3.3: attributes of lower levels are not returned)."""
        if key in present:
            return False
        tag = int(key, 16)
        rank, level = level_of(tag), RANK[self.q.level]
        if self.q.include_all:
            return level == 2 or (rank is not None and rank <= level)
        return tag in self.include and (rank is None or rank <= level)

    def _add_included(self, out: list[Attrs], owners: list[int]) -> None:
        """``includefield`` attributes the index lacks, from one instance's stored metadata."""
        if not (self.q.include_all or self.include - {int(k, 16) for k in out[0]}):
            return
        reps = self._representatives(owners)
        texts = self._pairs(
            select(Instance.pk, Instance.metadata_json).where(Instance.pk.in_(set(reps.values())))
        )
        for obj, owner in zip(out, owners, strict=True):
            text = texts.get(reps.get(owner, -1))
            if text is None:
                continue
            if self.base:
                text = absolutize_bulkdata(text, self.base)
            meta: dict[str, Any] = json.loads(text)
            for key in [k for k in meta if self._wanted(k, obj)]:
                obj.put_parsed(key, meta[key])

    def _representatives(self, owners: Iterable[int]) -> dict[int, int]:
        """The first instance of each study/series (the instance itself at instance level)."""
        ids = set(owners)
        if self.q.level == "instance":
            return {pk: pk for pk in ids}
        col = Instance.study_pk if self.q.level == "study" else Instance.series_pk
        return self._pairs(select(col, func.min(Instance.pk)).where(col.in_(ids)).group_by(col))


__all__ = [
    "INDEX_VR",
    "KEYS",
    "Level",
    "Query",
    "QueryResult",
    "element_json",
    "execute_query",
    "object_json",
]
