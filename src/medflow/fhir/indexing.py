"""Search-index rows of a resource, one kind per search parameter type (FHIR R4 search §3.1.1.4).

:func:`index_resource` evaluates the FHIRPath expression of every indexed search parameter of the
resource's type (:mod:`medflow.fhir.definitions`) and turns what it selects into rows, as HAPI
fills its SPIDX tables at write time. The rows are frozen dataclasses whose fields are the columns
of the index tables. What each FHIR type becomes:

* token (§3.1.1.4.10): Coding -> (system, code, display); CodeableConcept -> one row per coding,
  and ``text`` as a row of its own; Identifier -> (system, value), with ``type_system``/
  ``type_code`` from each Identifier.type coding for ``:of-type``; ContactPoint -> (its system,
  value); code, id, string, uri, boolean (``true``/``false``) -> code only. ``text`` is
  normalized like :func:`normalize_string` (for ``:text``).
* string (§3.1.1.4.11): strings; HumanName -> family, given, prefix, suffix and text, a row each;
  Address -> line, city, district, state, postalCode, country and text.
* date (§3.1.1.4.4): date, dateTime, instant, Period, Timing become the range they cover, in UTC:
  ``2020`` covers 2020-01-01T00:00:00 to 2020-12-31T23:59:59.999999. Values without a time zone
  (dates, and dateTimes written without an offset) are taken as UTC. An open Period end is
  ``datetime.min``/``datetime.max`` (UTC). A Timing covers its events and ``repeat.boundsPeriod``
  (its outer limits).
* reference (§3.1.1.4.6): ``Type/id`` -> (type, id); an absolute URL keeps ``url`` and, when it
  ends in ``Type/id``, type and id as well; ``urn:uuid:``/``urn:oid:`` and canonical URLs -> url
  (with type/id when the URL ends in ``Type/id``, as ``http://hl7.org/fhir/ValueSet/x``); a
  contained ``#id`` is not indexed. Only a row without ``url`` (relative) or with a ``url``
  under the server's base is local: search tells them apart (the index does not know the
  base). ``Reference.identifier`` becomes a :class:`TokenRow` of the same parameter (for the
  ``:identifier`` modifier). An Attachment (Consent.source[x]) counts by
  its ``url``; a resource itself (``Bundle.entry[0].resource``) by its type and id, when its type
  is a target of the parameter.
* quantity (§3.1.1.4.7): Quantity and its profiles (Age, Duration, Distance, Count) ->
  (value, system, code, unit); Money -> (value, ``urn:iso:std:iso:4217``, currency); a Range
  -> one row, ``value`` its low bound and ``value_high`` its high bound (``-inf``/``inf`` for a
  missing bound: open), with the unit of its low (else high) bound: search compares the
  interval (§3.1.1.4.6: ``eq`` contains it, ``sa``/``eb`` against its bounds). A point's
  ``value_high`` is None.
* number (§3.1.1.4.5): decimal and integer types; a Range -> one row as for quantity. In a
  composite, a Range's finite bounds are two values of the component, as before.
* uri (§3.1.1.4.13): uri, url, canonical, oid, uuid strings.
* composite (§3.1.1.4.8): for each node the composite's expression selects, the rows of each
  component (evaluated from that node), one :class:`CompositeRow` per combination.

Decimals keep the precision of the JSON value when the resource was parsed with
``parse_float=Decimal``; a float is converted through its shortest ``repr``.
"""

from __future__ import annotations

import calendar
import dataclasses
import logging
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import cache
from itertools import product
from typing import Any

from medflow.core.errors import InvalidInput
from medflow.fhir.definitions import SearchParam, SearchParamRegistry, default_registry
from medflow.fhir.fhirpath import (
    Extractor,
    Node,
    compile_expression,
    infer_type,
    is_a,
    reference_type,
)

logger = logging.getLogger(__name__)

DATETIME_MIN = datetime.min.replace(tzinfo=UTC)
DATETIME_MAX = datetime.max.replace(tzinfo=UTC)
ISO_4217 = "urn:iso:std:iso:4217"


@dataclass(frozen=True, slots=True)
class TokenRow:
    param: str
    system: str | None
    code: str | None
    text: str | None
    """Normalized (:func:`normalize_string`) Coding.display, CodeableConcept.text or
    Identifier.type.text, for ``:text``."""
    type_system: str | None = None
    type_code: str | None = None
    """An Identifier.type coding, for ``:of-type``."""


@dataclass(frozen=True, slots=True)
class StringRow:
    param: str
    value: str
    norm: str
    """:func:`normalize_string` of ``value``: default and ``:contains`` matching."""


@dataclass(frozen=True, slots=True)
class DateRow:
    param: str
    low: datetime
    high: datetime


@dataclass(frozen=True, slots=True)
class ReferenceRow:
    param: str
    target_type: str | None
    target_id: str | None
    url: str | None


@dataclass(frozen=True, slots=True)
class QuantityRow:
    param: str
    value: Decimal
    system: str | None
    code: str | None
    unit: str | None
    value_high: float | None = None
    """A Range's high bound (``inf`` when open; ``value`` is then its low bound, ``-inf`` when
    open); None for a point value."""


@dataclass(frozen=True, slots=True)
class NumberRow:
    param: str
    value: Decimal
    value_high: float | None = None
    """As :attr:`QuantityRow.value_high`."""


@dataclass(frozen=True, slots=True)
class UriRow:
    param: str
    value: str


@dataclass(frozen=True, slots=True)
class CompositeRow:
    param: str
    components: tuple[object, ...]
    """One row per component, in the order of SearchParameter.component."""


Row = (
    TokenRow | StringRow | DateRow | ReferenceRow | QuantityRow | NumberRow | UriRow | CompositeRow
)


def normalize_string(value: str) -> str:
    """Case-folded, accents removed (NFKD without combining marks), whitespace collapsed.

    FHIR R4 search §3.1.1.4.11: string matching is case- and accent-insensitive; the search side
    normalizes its value with the same function.
    """
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def index_resource(
    resource: Mapping[str, Any], *, registry: SearchParamRegistry | None = None
) -> list[Row]:
    """Index rows for every indexed search parameter of the resource's type (no duplicates).

    Parameters the search engine answers itself (``_id``, ``_lastUpdated``, ``_has``, ``_list``,
    ``_text``, ``_content``, ``_query``, ``near``) give no rows; nor does an unknown type. A
    custom expression that fhirpathpy cannot evaluate on this resource is skipped (logged), so
    that a bad SearchParameter never blocks writes. ``resource`` is plain JSON (dicts, lists).
    """
    reg = registry or default_registry()
    rows: list[Row] = []
    resource_type = str(resource.get("resourceType"))
    for code, extract, convert, components in _plan(reg, resource_type):
        try:
            nodes = extract(resource)
        except InvalidInput as exc:  # only fhirpathpy-evaluated (custom) expressions raise
            logger.warning("%s search parameter %r not indexed", resource_type, code)
            logger.debug("%s %r: %s", resource_type, code, exc.message)
            continue
        if not nodes:
            continue
        if components:
            rows.extend(_composite_rows(code, components, nodes, resource))
        else:
            for node in nodes:
                rows.extend(convert(code, node))
    return list(dict.fromkeys(rows))


_Converter = Callable[[str, Node], Iterator["Row"]]
_Component = tuple[str, Extractor, _Converter]
_PlanItem = tuple[str, Extractor, _Converter, tuple[_Component, ...]]
_PLANS: dict[str, tuple[Mapping[str, SearchParam], list[_PlanItem]]] = {}


def _plan(registry: SearchParamRegistry, resource_type: str) -> list[_PlanItem]:
    """The compiled work for a type; rebuilt when the registry's mapping for it changes."""
    params = registry.search_params(resource_type)
    cached = _PLANS.get(resource_type)
    if cached is not None and cached[0] is params:
        return cached[1]
    plan: list[_PlanItem] = []
    for param in params.values():
        if param.expression is None or param.special:
            continue
        extract = compile_expression(param.expression)
        if param.type == "composite":
            comps = tuple(
                (c.code, compile_expression(c.expression), _CONVERTERS[c.type])
                for c in param.components
                if c.type in _CONVERTERS
            )
            if len(comps) == len(param.components):
                plan.append((param.code, extract, _token_rows, comps))
        elif param.type == "reference" and param.targets:
            plan.append((param.code, extract, _resource_targets(param.targets), ()))
        elif param.type in _CONVERTERS:
            plan.append((param.code, extract, _CONVERTERS[param.type], ()))
    _PLANS[resource_type] = (params, plan)
    return plan


def rows_for(param_type: str, code: str, nodes: Iterable[Node]) -> list[Row]:
    """The rows a parameter ``code`` of ``param_type`` gets for already extracted nodes."""
    convert = _CONVERTERS[param_type]
    return [row for node in nodes for row in convert(code, node)]


def _composite_rows(
    code: str,
    components: tuple[_Component, ...],
    nodes: list[Node],
    resource: Mapping[str, Any],
) -> Iterator[CompositeRow]:
    """One row per combination of component rows of each node (R4 §3.1.1.4.8).

    Components are evaluated last first (the value part is the selective one) and a node with
    an empty component gives no row. A token component needs a code: a text-only
    CodeableConcept cannot be matched by ``code$value``.
    """
    for node in nodes:
        parts: list[list[Row]] = []
        for comp_code, extract, convert in reversed(components):
            rows = [
                row
                for value in extract.from_nodes([node], resource)
                for whole in convert(comp_code, value)
                for row in _range_bounds(whole)
                if not (type(row) is TokenRow and row.code is None)
            ]
            if not rows:
                break
            parts.append(list(dict.fromkeys(rows)))
        else:
            parts.reverse()
            for combo in product(*parts):
                yield CompositeRow(code, tuple(combo))


def _range_bounds(row: Row) -> Iterator[Row]:
    """A Range row as its finite bounds, each a value of its own (a composite slot holds one
    number); any other row as is."""
    if not isinstance(row, QuantityRow | NumberRow) or row.value_high is None:
        yield row
        return
    for bound in (row.value, Decimal(repr(row.value_high))):
        if bound.is_finite():
            yield dataclasses.replace(row, value=bound, value_high=None)


# --- per FHIR type --------------------------------------------------------------------------

_HANDLED = frozenset(
    {
        "CodeableConcept",
        "Coding",
        "Identifier",
        "ContactPoint",
        "Reference",
        "Quantity",
        "Money",
        "Range",
        "Period",
        "Timing",
        "HumanName",
        "Address",
        "Attachment",
        "Annotation",
        "string",
        "uri",
        "boolean",
        "integer",
        "decimal",
        "date",
        "dateTime",
        "instant",
        "Resource",
    }
)


@cache
def _kind(type_name: str) -> str | None:
    """The handled type that ``type_name`` is or derives from (``code`` -> ``string``)."""
    for name in _HANDLED:
        if is_a(type_name, name):
            return name
    return None


def _node_kind(node: Node) -> str | None:
    type_name = node.type
    if type_name is None or "." in type_name:
        type_name = infer_type(node.value)
    if type_name is None:
        return None
    if isinstance(node.value, dict) and "resourceType" in node.value:
        return "Resource"
    return _kind(type_name)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _text(value: Any) -> str | None:
    text = _str(value)
    return normalize_string(text) if text else None


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _token_rows(code: str, node: Node) -> Iterator[Row]:
    kind, v = _node_kind(node), node.value
    if kind == "CodeableConcept":
        for coding in _list(v.get("coding")):
            if isinstance(coding, dict):
                yield from _coding_row(code, coding)
        if _str(v.get("text")):
            yield TokenRow(code, None, None, _text(v.get("text")))
    elif kind == "Coding":
        yield from _coding_row(code, v)
    elif kind == "Identifier":
        yield from _identifier_rows(code, v)
    elif kind == "ContactPoint":
        if _str(v.get("value")):
            yield TokenRow(code, _str(v.get("system")), v["value"], None)
    elif kind == "boolean":
        yield TokenRow(code, None, "true" if v else "false", None)
    elif kind in ("string", "uri", "date", "dateTime", "instant") and _str(v):
        yield TokenRow(code, None, v, None)
    elif kind in ("integer", "decimal") and not isinstance(v, bool):
        yield TokenRow(code, None, str(v), None)
    elif kind == "Reference" and isinstance(v.get("identifier"), dict):
        yield from _identifier_rows(code, v["identifier"])


def _coding_row(code: str, coding: Mapping[str, Any]) -> Iterator[TokenRow]:
    system, value, display = (
        _str(coding.get("system")),
        _str(coding.get("code")),
        coding.get("display"),
    )
    if system or value or _str(display):
        yield TokenRow(code, system, value, _text(display))


def _identifier_rows(code: str, ident: Mapping[str, Any]) -> Iterator[TokenRow]:
    system, value = _str(ident.get("system")), _str(ident.get("value"))
    raw_type = ident.get("type")
    id_type: Mapping[str, Any] = raw_type if isinstance(raw_type, dict) else {}
    if not (system or value):
        return
    text = _text(id_type.get("text"))
    codings = [c for c in _list(id_type.get("coding")) if isinstance(c, dict)]
    if not codings:
        yield TokenRow(code, system, value, text)
    for coding in codings:
        yield TokenRow(
            code, system, value, text, _str(coding.get("system")), _str(coding.get("code"))
        )


_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


def _string_rows(code: str, node: Node) -> Iterator[Row]:
    kind, v = _node_kind(node), node.value
    if kind == "HumanName":
        parts: Iterable[str] = _NAME_PARTS
    elif kind == "Address":
        parts = _ADDRESS_PARTS
    elif kind == "Annotation":
        parts = ("text",)
    elif kind == "Attachment":
        parts = ("title",)
    elif kind == "CodeableConcept":
        parts = ("text",)
    elif kind in ("string", "uri") and _str(v):
        yield StringRow(code, v, normalize_string(v))
        return
    else:
        return
    for part in parts:
        for item in _list(v.get(part)):
            if _str(item):
                yield StringRow(code, item, normalize_string(item))


_DATE = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def date_range(value: str) -> tuple[datetime, datetime] | None:
    """The UTC range a FHIR date, dateTime or instant covers at its precision (R4 §3.1.1.4.4).

    ``2020`` -> 2020-01-01T00:00:00 .. 2020-12-31T23:59:59.999999; ``2020-03-01T10:00:00+01:00``
    -> 09:00:00 .. 09:00:00.999999 UTC. A value without offset is taken as UTC. None when the
    text is not a FHIR date.
    """
    match = _DATE.match(value.strip())
    if match is None:
        return None
    y, mo, d, h, mi, s, frac, tz = match.groups()
    try:
        if mo is None:
            low, high = datetime(int(y), 1, 1), datetime(int(y), 12, 31, 23, 59, 59, 999999)
        elif d is None:
            last = calendar.monthrange(int(y), int(mo))[1]
            low = datetime(int(y), int(mo), 1)
            high = datetime(int(y), int(mo), last, 23, 59, 59, 999999)
        elif h is None:
            low = datetime(int(y), int(mo), int(d))
            high = low.replace(hour=23, minute=59, second=59, microsecond=999999)
        else:
            digits = (frac or "")[:6]
            low = datetime(
                int(y),
                int(mo),
                int(d),
                int(h),
                int(mi),
                int(s or 0),
                int(digits.ljust(6, "0") or 0),
            )
            if s is None:
                step = timedelta(minutes=1)
            elif frac is None:
                step = timedelta(seconds=1)
            else:
                step = timedelta(microseconds=10 ** (6 - len(digits)))
            high = low + step - timedelta(microseconds=1)
    except ValueError:
        return None
    return _to_utc(low, tz), _to_utc(high, tz)


def _to_utc(value: datetime, tz: str | None) -> datetime:
    if tz is None or tz == "Z":
        return value.replace(tzinfo=UTC)
    sign = -1 if tz[0] == "-" else 1
    offset = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    try:
        return value.replace(tzinfo=offset).astimezone(UTC)
    except OverflowError:
        return DATETIME_MIN if sign > 0 else DATETIME_MAX


def _date_rows(code: str, node: Node) -> Iterator[Row]:
    kind, v = _node_kind(node), node.value
    if kind in ("date", "dateTime", "instant", "string") and isinstance(v, str):
        rng = date_range(v)
        if rng is not None:
            yield DateRow(code, *rng)
    elif kind == "Period":
        yield from _period_row(code, v)
    elif kind == "Timing":
        ranges = [
            r for e in _list(v.get("event")) if isinstance(e, str) for r in [date_range(e)] if r
        ]
        repeat = v.get("repeat") if isinstance(v.get("repeat"), dict) else {}
        bounds = repeat.get("boundsPeriod")
        if isinstance(bounds, dict):
            ranges.extend((row.low, row.high) for row in _period_row(code, bounds))
        if ranges:
            yield DateRow(code, min(r[0] for r in ranges), max(r[1] for r in ranges))


def _period_row(code: str, period: Mapping[str, Any]) -> Iterator[DateRow]:
    start_text, end_text = period.get("start"), period.get("end")
    start = date_range(start_text) if isinstance(start_text, str) else None
    end = date_range(end_text) if isinstance(end_text, str) else None
    if start or end:
        yield DateRow(code, start[0] if start else DATETIME_MIN, end[1] if end else DATETIME_MAX)


_TYPE_ID = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def parse_reference(ref: str) -> ReferenceRow | None:
    """A reference string as ``ReferenceRow`` fields (param left empty); None for ``#id``."""
    ref = ref.strip()
    if not ref or ref.startswith("#"):
        return None
    absolute = ":" in ref.split("/", 1)[0]
    match = _TYPE_ID.search(ref.split("|", 1)[0])
    rtype, rid = (match.group(1), match.group(2)) if match else (None, None)
    return ReferenceRow("", rtype, rid, ref if absolute or rtype is None else None)


def _reference_rows(code: str, node: Node) -> Iterator[Row]:
    kind, v = _node_kind(node), node.value
    if kind == "Reference":
        ref = v.get("reference")
        parsed = parse_reference(ref) if isinstance(ref, str) else None
        if parsed is not None:
            yield ReferenceRow(code, parsed.target_type, parsed.target_id, parsed.url)
        if isinstance(v.get("identifier"), dict):
            yield from _identifier_rows(code, v["identifier"])
    elif kind in ("uri", "string", "Attachment"):
        url = v.get("url") if kind == "Attachment" else v
        parsed = parse_reference(url) if isinstance(url, str) else None
        if parsed is not None:
            yield ReferenceRow(code, parsed.target_type, parsed.target_id, url)
    elif kind == "Resource" and isinstance(v, dict):
        yield ReferenceRow(code, _str(v.get("resourceType")), _str(v.get("id")), None)


def _resource_targets(targets: tuple[str, ...]) -> _Converter:
    """Reference rows, where a resource itself (``Bundle.entry[0].resource``) counts only when
    its type is a target: ``composition`` for a document, ``message`` for a message Bundle."""
    allowed = frozenset(targets)

    def convert(code: str, node: Node) -> Iterator[Row]:
        value = node.value
        is_resource = isinstance(value, dict) and "resourceType" in value
        if is_resource and value["resourceType"] not in allowed:
            return
        yield from _reference_rows(code, node)

    return convert


def to_decimal(value: Any) -> Decimal | None:
    """A JSON number as Decimal (floats through their shortest repr); None if not a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, Decimal):
        return value
    if isinstance(value, int):
        return Decimal(value)
    try:
        return Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        return None


def _quantity_rows(code: str, node: Node) -> Iterator[Row]:
    kind, v = _node_kind(node), node.value
    if kind == "Quantity":
        yield from _quantity_row(code, v)
    elif kind == "Money":
        value = to_decimal(v.get("value"))
        if value is not None:
            currency = _str(v.get("currency"))
            yield QuantityRow(code, value, ISO_4217 if currency else None, currency, None)
    elif kind == "Range":
        bounds = _range(v)
        if bounds is not None:
            low, high, unit = bounds
            yield QuantityRow(
                code, low, _str(unit.get("system")), _str(unit.get("code")),
                _str(unit.get("unit")), float(high),
            )  # fmt: skip
    elif kind in ("integer", "decimal"):
        value = to_decimal(v)
        if value is not None:
            yield QuantityRow(code, value, None, None, None)


def _range(rng: Mapping[str, Any]) -> tuple[Decimal, Decimal, Mapping[str, Any]] | None:
    """A Range's (low, high, the bound that gives the unit): a missing bound is ``-inf`` or
    ``inf`` (open, R4 §3.1.1.4.1 ranges); None when it has neither."""
    raw_low, raw_high = rng.get("low"), rng.get("high")
    low: Mapping[str, Any] = raw_low if isinstance(raw_low, dict) else {}
    high: Mapping[str, Any] = raw_high if isinstance(raw_high, dict) else {}
    low_value, high_value = to_decimal(low.get("value")), to_decimal(high.get("value"))
    if low_value is None and high_value is None:
        return None
    return (
        low_value if low_value is not None else Decimal("-Infinity"),
        high_value if high_value is not None else Decimal("Infinity"),
        low if low_value is not None else high,
    )


def _quantity_row(code: str, q: Mapping[str, Any]) -> Iterator[QuantityRow]:
    value = to_decimal(q.get("value"))
    if value is not None:
        yield QuantityRow(
            code, value, _str(q.get("system")), _str(q.get("code")), _str(q.get("unit"))
        )


def _number_rows(code: str, node: Node) -> Iterator[Row]:
    kind, v = _node_kind(node), node.value
    if kind in ("integer", "decimal"):
        values = [to_decimal(v)]
    elif kind == "Quantity":
        values = [to_decimal(v.get("value"))]
    elif kind == "Range":
        bounds = _range(v)
        if bounds is not None:
            yield NumberRow(code, bounds[0], float(bounds[1]))
        return
    else:
        return
    for value in values:
        if value is not None:
            yield NumberRow(code, value)


def _uri_rows(code: str, node: Node) -> Iterator[Row]:
    if isinstance(node.value, str) and node.value:
        yield UriRow(code, node.value)


_CONVERTERS: dict[str, _Converter] = {
    "token": _token_rows,
    "string": _string_rows,
    "date": _date_rows,
    "reference": _reference_rows,
    "quantity": _quantity_rows,
    "number": _number_rows,
    "uri": _uri_rows,
}

__all__ = [
    "DATETIME_MAX",
    "DATETIME_MIN",
    "CompositeRow",
    "DateRow",
    "NumberRow",
    "QuantityRow",
    "ReferenceRow",
    "Row",
    "StringRow",
    "TokenRow",
    "UriRow",
    "date_range",
    "index_resource",
    "normalize_string",
    "parse_reference",
    "reference_type",
    "rows_for",
    "to_decimal",
]
