"""Search values of each parameter type, parsed from their query-string form (FHIR R4 search
§3.1.1.4: prefixes §3.1.1.4 ``#prefix``, escaping ``#escaping``, and the types number
§3.1.1.4.1, date §3.1.1.4.2, string §3.1.1.4.3, uri §3.1.1.4.4, token §3.1.1.4.5, quantity
§3.1.1.4.6, reference §3.1.1.4.7 and composite §3.1.1.4.8).

Every value is checked here, before any SQL is built, so that a malformed value is an
``InvalidInput`` (HTTP 400) in both lenient and strict handling. Date values become the closed
UTC range they cover at their precision (:func:`medflow.fhir.indexing.date_range`, the same
function the index uses), numbers the half-open range of their precision (``100`` ->
``[99.5, 100.5)``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from medflow.core.errors import InvalidInput
from medflow.fhir.indexing import DATETIME_MAX, DATETIME_MIN, date_range, normalize_string

PREFIXES = frozenset({"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"})
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_TYPE_ID = re.compile(r"^([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/[^/]+)?$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_TZ_SPACE = re.compile(r"(T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}:\d{2})$")
STRING_MAX = 400
"""Length of the string index columns (longer values are cut there, and here)."""


# --- escaping (§3.1.1.4 "Escaping Search Parameters": \, \$ \| \\) ------------------------------


def split_escaped(text: str, sep: str) -> list[str]:
    """Split on ``sep`` where it is not preceded by a backslash; pieces stay escaped."""
    out, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            cur.append(text[i : i + 2])
            i += 2
            continue
        if ch == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def unescape(text: str) -> str:
    """Remove the escaping backslashes of ``\\,``, ``\\$``, ``\\|`` and ``\\\\``."""
    return re.sub(r"\\([\\,$|])", r"\1", text)


# --- value types ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StringValue:
    """A string search value: ``norm`` for default/``:contains`` matching, ``raw`` for
    ``:exact``."""

    raw: str
    norm: str


@dataclass(frozen=True, slots=True)
class TokenValue:
    """``code``, ``system|code``, ``|code`` (no system) or ``system|`` (any code).

    ``system`` is None when not given, "" for "no system" (``|code``); ``code`` None for
    ``system|``. With ``:of-type`` the value is ``type-system|type-code|value``.
    """

    system: str | None
    code: str | None
    type_system: str | None = None
    type_code: str | None = None


@dataclass(frozen=True, slots=True)
class DateValue:
    """A prefixed date: the closed UTC range ``[low, high]`` the value covers."""

    prefix: str
    low: datetime
    high: datetime


@dataclass(frozen=True, slots=True)
class NumberValue:
    """A prefixed number with its precision range ``[low, high)`` (§3.1.1.4.1)."""

    prefix: str
    value: Decimal
    low: Decimal
    high: Decimal


@dataclass(frozen=True, slots=True)
class QuantityValue:
    """``[prefix]number|system|code`` or ``number||code`` (code or unit, no system)."""

    number: NumberValue
    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    """``Type/id`` or ``id`` (type None: any type), or an absolute ``url``.

    ``Type/id`` and ``id`` name a resource of this server (R4 §3.1.1.4.12): it matches a
    relative reference, or an absolute one under ``base_url`` (None: relative ones only), not
    another server's URL or a canonical that happen to end in ``Type/id``."""

    target_type: str | None
    target_id: str | None
    url: str | None
    base_url: str | None = None


@dataclass(frozen=True, slots=True)
class UriValue:
    value: str


Value = (
    StringValue | TokenValue | DateValue | NumberValue | QuantityValue | ReferenceValue | UriValue
)


@dataclass(frozen=True, slots=True)
class CompositeValue:
    """One value per component of a composite parameter, in SearchParameter.component order."""

    parts: tuple[Value, ...]


# --- parsers -------------------------------------------------------------------------------


def split_prefix(text: str) -> tuple[str, str]:
    """``ge2020`` -> (``ge``, ``2020``); no prefix -> (``eq``, text)."""
    if len(text) > 2 and text[:2] in PREFIXES and not text[:2].isdigit():
        return text[:2], text[2:]
    return "eq", text


def parse_string(text: str) -> StringValue:
    raw = unescape(text)
    norm = normalize_string(raw)
    if not norm:
        raise InvalidInput("a string search value must not be empty")
    return StringValue(raw[:STRING_MAX], norm[:STRING_MAX])


def parse_token(text: str, *, of_type: bool = False) -> TokenValue:
    """A token value (§3.1.1.4.5); ``of_type``: the ``:of-type`` form ``system|code|value``."""
    parts = [unescape(p) for p in split_escaped(text, "|")]
    if of_type:
        if len(parts) != 3 or not all(parts):
            raise InvalidInput(f"token :of-type needs system|code|value, not {text!r}")
        return TokenValue(None, parts[2], parts[0], parts[1])
    if len(parts) == 1:
        if not parts[0]:
            raise InvalidInput("a token search value must not be empty")
        return TokenValue(None, parts[0])
    if len(parts) != 2 or parts == ["", ""]:
        raise InvalidInput(f"invalid token {text!r} (code, system|code, |code or system|)")
    system, code = parts
    return TokenValue(system, code or None)


def parse_decimal(text: str, prefix: str = "eq") -> NumberValue:
    """A number and the range its precision implies: half a unit of its last digit either side
    (``100`` -> [99.5, 100.5), ``1e2`` -> [50, 150), §3.1.1.4.1)."""
    if not _NUMBER.match(text):
        raise InvalidInput(f"invalid number {text!r}")
    try:
        value = Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the regex rules it out
        raise InvalidInput(f"invalid number {text!r}") from exc
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return NumberValue(prefix, value, value - half, value + half)


def parse_number(text: str) -> NumberValue:
    prefix, rest = split_prefix(unescape(text))
    return parse_decimal(rest, prefix)


def parse_quantity(text: str) -> QuantityValue:
    """``[prefix]number[|system|code]`` (§3.1.1.4.6); ``number||code`` matches code or unit."""
    parts = [unescape(p) for p in split_escaped(text, "|")]
    if len(parts) not in (1, 3):
        raise InvalidInput(f"invalid quantity {text!r} (number, number|system|code, number||code)")
    prefix, rest = split_prefix(parts[0])
    number = parse_decimal(rest, prefix)
    if len(parts) == 1:
        return QuantityValue(number, None, None)
    return QuantityValue(number, parts[1] or None, parts[2] or None)


def parse_date(text: str, *, now: datetime | None = None) -> DateValue:
    """A prefixed FHIR date/dateTime/instant as the closed UTC range it covers (§3.1.1.4.2).

    A value without a time zone is taken as UTC, as the index does. A ``+hh:mm`` offset whose
    ``+`` arrived as a space (form decoding) is repaired. ``ap`` widens the range by 10% of the
    gap between now and the value on each side.
    """
    prefix, rest = split_prefix(unescape(text).strip())
    rest = _TZ_SPACE.sub(r"\1+\2", rest)
    rng = date_range(rest)
    if rng is None:
        raise InvalidInput(f"invalid date {text!r}")
    low, high = rng
    if prefix == "ap":
        gap = abs((now or datetime.now(UTC)) - low) / 10
        low, high = _shift(low, -gap), _shift(high, gap)
    return DateValue(prefix, low, high)


def _shift(value: datetime, delta: timedelta) -> datetime:
    try:
        return value + delta
    except OverflowError:
        return DATETIME_MIN if delta < timedelta(0) else DATETIME_MAX


def parse_uri(text: str) -> UriValue:
    value = unescape(text)
    if not value:
        raise InvalidInput("a uri search value must not be empty")
    return UriValue(value)


def parse_reference(
    text: str, *, type_modifier: str | None, targets: tuple[str, ...], base_url: str | None
) -> ReferenceValue:
    """A reference value (§3.1.1.4.7): ``Type/id``, ``id`` (typed by ``:Type`` or by the
    parameter's only target), an absolute URL (this server's own ``base/Type/id`` is local)."""
    value = unescape(text).strip()
    if not value:
        raise InvalidInput("a reference search value must not be empty")
    if base_url and value.startswith(base_url.rstrip("/") + "/"):
        value = value[len(base_url.rstrip("/")) + 1 :]
    match = _TYPE_ID.match(value)
    if match:
        if type_modifier and match.group(1) != type_modifier:
            raise InvalidInput(f"{value!r} is not a {type_modifier} reference")
        return ReferenceValue(match.group(1), match.group(2), None, base_url)
    if _ID.match(value):
        target = type_modifier or (targets[0] if len(targets) == 1 else None)
        return ReferenceValue(target, value, None, base_url)
    if ":" in value.split("/", 1)[0]:
        return ReferenceValue(None, None, value)
    raise InvalidInput(f"invalid reference {text!r} (Type/id, id or an absolute URL)")


def prefix_upper(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (code-point
    order), for an index range ``col >= prefix AND col < upper``; None if there is none."""
    for i in range(len(prefix) - 1, -1, -1):
        code = ord(prefix[i])
        if code < 0x10FFFF and not 0xD7FF <= code < 0xE000:
            return prefix[:i] + chr(code + 1)
    return None


def uri_ancestors(value: str) -> list[str]:
    """``value`` and every prefix of it that ends before a ``/`` (for ``:above``, §3.1.1.4.4):
    ``http://a.org/fhir/ValueSet/x`` -> ``http://a.org/fhir/ValueSet/x``,
    ``http://a.org/fhir/ValueSet``, ``http://a.org/fhir``, ``http://a.org``."""
    out = [value]
    head = value
    while True:
        cut = head.rfind("/")
        if cut <= 0 or head[cut - 1] == "/" or head[:cut].endswith(":"):
            break
        head = head[:cut]
        out.append(head)
    return out


def parse_missing(text: str) -> bool:
    if text not in ("true", "false"):
        raise InvalidInput(f":missing takes true or false, not {text!r}")
    return text == "true"
