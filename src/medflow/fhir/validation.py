"""Structural validation of FHIR R4 (4.0.1) resources in their JSON form.

Checks each resource against the R4 StructureDefinitions (profiles-resources.json and
profiles-types.json, condensed by ``scripts/gen_fhir_structures.py`` into
``medflow/fhir/data/structures.json.gz``) and the JSON representation rules of FHIR R4 §2.6.2
(json.html):

* the resource is a JSON object whose ``resourceType`` names a concrete R4 resource type;
* every property is an element of its type (unknown elements are errors, ``fhir_comments`` is
  ignored), and ``_x`` companions of primitive elements hold their id/extensions, aligned with
  ``null`` entries of the value array (json.html#primitive);
* the JSON type of each value fits the element type (object for complex types, JSON string /
  number / boolean for primitives, per datatypes.html §2.24.0.1), and primitive values match the
  regex of their type (the ``http://hl7.org/fhir/StructureDefinition/regex`` extension), integer
  kinds are 32-bit JSON integers within range, dates exist in the calendar, ``string`` is at most
  1 MiB;
* cardinality: elements with max 1 are single values, max ``*`` are arrays (json.html#arrays), and
  elements with min >= 1 are present (code ``required``);
* choice elements (``value[x]``) appear as at most one typed variant (formats.html#choice);
* empty objects, arrays and strings are errors (json.html: "never empty"), as is ``null`` outside
  aligned primitive arrays;
* ``extension``/``modifierExtension`` items are checked as Extension; ``contained`` resources and
  Resource-typed elements (``Bundle.entry.resource``, ``Parameters.parameter.resource``) are
  validated recursively as resources.

Not checked: invariants (FHIRPath constraints such as ext-1, dom-2..5), terminology bindings,
reference targets, profiles in ``meta.profile``, and XHTML content beyond "is a ``<div>``".

Issues carry OperationOutcome issue-type codes (http://hl7.org/fhir/issue-type): ``structure``,
``required``, ``value``, ``invalid``, ``not-supported``; ``expression`` is a FHIRPath-style location
such as ``Patient.name[0].given[1]`` or ``Observation.valueQuantity.value``.
"""

from __future__ import annotations

import calendar
import gzip
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["Issue", "resource_types", "validate", "validate_json_text"]

_DATA_PACKAGE = "medflow.fhir"
_DATA_FILE = "data/structures.json.gz"


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found, as an OperationOutcome.issue (FHIR R4 operationoutcome.html).

    ``severity`` is ``error`` or ``warning``; ``code`` an issue-type code (``structure``,
    ``required``, ``value``, ``invalid``, ``not-supported``); ``expression`` the FHIRPath-style
    location of the element; ``diagnostics`` a human-readable explanation.
    """

    severity: str
    code: str
    expression: str
    diagnostics: str


# -- tables ----------------------------------------------------------------------------------

_PRIM = 0  # primitive value (JSON string / number / boolean)
_PRIM_EXT = 1  # "_x" companion of a primitive (Element: id + extension)
_COMPLEX = 2  # complex data type or backbone element (JSON object)
_RESOURCE = 3  # a resource (JSON object with resourceType)

_Check = Callable[[Any], tuple[str, str] | None]


def _no_check(_value: Any) -> tuple[str, str] | None:
    return None


class _Field:
    """One JSON property name of a definition, with what its value must be."""

    __slots__ = (
        "array",
        "check",
        "expected",
        "group",
        "kind",
        "label",
        "max",
        "min",
        "name",
        "ref",
        "td",
        "type_name",
        "variant",
    )

    def __init__(self, name: str, kind: int, type_name: str, entry: dict[str, Any]) -> None:
        self.name = name
        self.kind = kind
        self.type_name = type_name
        self.array: bool = entry["array"]
        self.min: int = entry["min"]
        maximum = entry["max"]
        self.max: int | None = None if maximum == "*" else int(maximum)
        self.check: _Check = _no_check  # primitives
        self.ref: str | None = None  # complex: definition key
        self.td: _TypeDef | None = None  # complex: resolved lazily
        self.expected: str | None = None  # resource: required resourceType (None: any)
        self.group: str | None = None  # choice element base name ("value")
        self.variant: str = name.removeprefix("_")  # JSON name of the value ("valueString")
        self.label = name  # element name for messages ("value[x]" for choices)


class _TypeDef:
    """Lookup table of one definition: JSON property name -> field, and the required elements."""

    __slots__ = ("fields", "is_resource", "key", "required")

    def __init__(
        self,
        key: str,
        fields: dict[str, _Field],
        required: list[tuple[str, tuple[str, ...]]],
        is_resource: bool,
    ) -> None:
        self.key = key
        self.fields = fields
        self.required = tuple(required)
        self.is_resource = is_resource


@cache
def _table() -> dict[str, Any]:
    raw = resources.files(_DATA_PACKAGE).joinpath(_DATA_FILE).read_bytes()
    table: dict[str, Any] = json.loads(gzip.decompress(raw))
    return table


@cache
def resource_types() -> frozenset[str]:
    """The concrete FHIR R4 resource types (``Patient``, ``Observation``, ...)."""
    return frozenset(_table()["resourceTypes"])


@cache
def _abstract_resources() -> frozenset[str]:
    defs = _table()["definitions"]
    known = resource_types()
    return frozenset(k for k, d in defs.items() if d["kind"] == "resource" and k not in known)


@cache
def _checks() -> dict[str, _Check]:
    return {name: _make_check(name, spec) for name, spec in _table()["primitives"].items()}


_TYPEDEFS: dict[str, _TypeDef] = {}


def _typedef(key: str) -> _TypeDef:
    td = _TYPEDEFS.get(key)
    if td is None:
        td = _TYPEDEFS[key] = _build(key)
    return td


def _build(key: str) -> _TypeDef:
    table = _table()
    definition = table["definitions"][key]
    checks = _checks()
    resources_ = resource_types()
    abstract = _abstract_resources()
    fields: dict[str, _Field] = {}
    required: list[tuple[str, tuple[str, ...]]] = []
    for name, entry in definition["elements"].items():
        if entry["max"] == 0:
            continue  # prohibited: stays unknown
        choice = entry["choice"]
        json_names: list[str] = entry["jsonNames"] if choice else [name]
        names: list[str] = []
        for json_name, type_name in zip(json_names, entry["types"], strict=True):
            if "ref" in entry:
                f = _Field(json_name, _COMPLEX, type_name, entry)
                f.ref = entry["ref"]
            elif type_name in checks:
                f = _Field(json_name, _PRIM, type_name, entry)
                f.check = checks[type_name]
                if type_name != "xhtml":  # xhtml has no extensions (xhtml.extension max 0)
                    ext = _Field("_" + json_name, _PRIM_EXT, type_name, entry)
                    fields[ext.name] = ext
                    names.append(ext.name)
            elif type_name in resources_ or type_name in abstract:
                f = _Field(json_name, _RESOURCE, type_name, entry)
                f.expected = None if type_name in abstract else type_name
            else:
                f = _Field(json_name, _COMPLEX, type_name, entry)
                f.ref = type_name
            fields[json_name] = f
            names.append(json_name)
        label = name + "[x]" if choice else name
        for n in names:
            fields[n].label = label
            if choice:
                fields[n].group = name
        if entry["min"] >= 1:
            required.append((label, tuple(names)))
    return _TypeDef(key, fields, required, definition["kind"] == "resource")


# -- primitive checks --------------------------------------------------------------------------

_HINTS = {
    "date": "expected YYYY, YYYY-MM or YYYY-MM-DD",
    "dateTime": "expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm)",
    "instant": "expected YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm)",
    "time": "expected hh:mm:ss[.fff]",
    "id": "expected 1-64 characters of A-Z a-z 0-9 - .",
    "oid": "expected urn:oid:<dotted decimal>",
    "uuid": "expected urn:uuid:<lower-case UUID>",
    "code": "no leading, trailing or repeated whitespace",
    "uri": "no whitespace",
    "url": "no whitespace",
    "canonical": "no whitespace",
    "base64Binary": "expected base64 (A-Z a-z 0-9 + / with = padding)",
}
_DATES = frozenset({"date", "dateTime", "instant"})
_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_WS = re.compile(r"\s+")


def _jtype(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _short(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _make_check(name: str, spec: dict[str, Any]) -> _Check:
    kind = spec["json"]
    if kind == "boolean":
        return _check_boolean
    if name == "decimal":
        return _check_decimal
    if kind == "number":
        return _integer_check(name, spec["minValue"], spec["maxValue"])
    if name == "xhtml":
        return _check_xhtml
    if name == "base64Binary":
        return _check_base64
    return _string_check(name, spec.get("regex"), spec.get("maxLength"))


def _check_boolean(v: Any) -> tuple[str, str] | None:
    if v is True or v is False:
        return None
    return "structure", f"Expected a JSON boolean (true or false) for boolean, found {_jtype(v)}"


def _check_decimal(v: Any) -> tuple[str, str] | None:
    t = type(v)
    if t is int or (t is float and math.isfinite(v)) or (t is Decimal and v.is_finite()):
        return None
    if t is float or t is Decimal:
        return "value", f"decimal value {v} is not a finite number"
    return "structure", f"Expected a JSON number for decimal, found {_jtype(v)}"


def _integer_check(name: str, lo: int, hi: int) -> _Check:
    def check(v: Any) -> tuple[str, str] | None:
        if type(v) is int:
            if lo <= v <= hi:
                return None
            return "value", f"{name} value {v} is out of range ({lo}..{hi})"
        if type(v) is float or type(v) is Decimal:
            return "value", f"{name} value {v} must be a JSON integer (no fraction or exponent)"
        return "structure", f"Expected a JSON number for {name}, found {_jtype(v)}"

    return check


def _check_xhtml(v: Any) -> tuple[str, str] | None:
    if type(v) is not str:
        return "structure", f"Expected a JSON string for xhtml, found {_jtype(v)}"
    if not v.lstrip().startswith("<div"):
        return "value", "xhtml must be an XHTML <div> element (FHIR R4 narrative.html)"
    return None


def _check_base64(v: Any) -> tuple[str, str] | None:
    if type(v) is not str:
        return "structure", f"Expected a JSON string for base64Binary, found {_jtype(v)}"
    if not v or v.isspace():
        return "value", "base64Binary value must not be empty"
    s = _WS.sub("", v) if _WS.search(v) else v
    if len(s) % 4 or _B64.fullmatch(s) is None:
        return "value", f"Invalid base64Binary value {_short(v)}: {_HINTS['base64Binary']}"
    return None


def _string_check(name: str, regex: str | None, max_length: int | None) -> _Check:
    # FHIR regexes are XML Schema / Java flavoured: \s and \S are ASCII classes there.
    pattern = re.compile(regex, re.ASCII) if regex else None
    hint = _HINTS.get(name, "")
    is_date = name in _DATES

    def check(v: Any) -> tuple[str, str] | None:
        if type(v) is not str:
            return "structure", f"Expected a JSON string for {name}, found {_jtype(v)}"
        if not v or v.isspace():
            return "value", f"{name} value must not be empty"
        if max_length is not None and len(v) > max_length:
            return "value", f"{name} value is longer than {max_length} characters"
        if pattern is not None and pattern.fullmatch(v) is None:
            return "value", f"Invalid {name} value {_short(v)}" + (f": {hint}" if hint else "")
        if is_date and len(v) >= 10 and v[8:10] > "28":
            year, month, day = int(v[0:4]), int(v[5:7]), int(v[8:10])
            if day > calendar.monthrange(year, month)[1]:
                return "value", f"Invalid {name} value {_short(v)}: day {day} is not in the month"
        return None

    return check


# -- walking -----------------------------------------------------------------------------------


def _err(issues: list[Issue], code: str, expression: str, diagnostics: str) -> None:
    issues.append(Issue("error", code, expression, diagnostics))


def _check_object(obj: dict[str, Any], td: _TypeDef, path: str, issues: list[Issue]) -> None:
    """Check the properties of one JSON object against the definition ``td``."""
    if not obj:
        _err(issues, "structure", path, "Objects must not be empty")
        return
    fields = td.fields
    chosen: dict[str, str] | None = None
    for key, value in obj.items():
        f = fields.get(key)
        if f is None:
            if key == "fhir_comments" or (key == "resourceType" and td.is_resource):
                continue
            _err(issues, "structure", f"{path}.{key}", f"Unknown element '{key}' in {td.key}")
            continue
        if f.group is not None:
            if chosen is None:
                chosen = {}
            first = chosen.setdefault(f.group, f.variant)
            if first != f.variant:
                _err(
                    issues,
                    "structure",
                    f"{path}.{key}",
                    f"Only one of {f.label} may be present: found {first} and {f.variant}",
                )
                continue
        if value is None:
            _err(issues, "structure", f"{path}.{key}", "Null is not allowed here")
            continue
        kind = f.kind
        if f.array:
            if type(value) is not list:
                _err(
                    issues,
                    "structure",
                    f"{path}.{key}",
                    f"Element '{key}' has max cardinality *: expected an array, "
                    f"found {_jtype(value)}",
                )
                continue
            if not value:
                _err(issues, "structure", f"{path}.{key}", "Arrays must not be empty")
                continue
            if kind == _PRIM:
                _prim_array(obj, key, value, f, path, issues)
            elif kind == _COMPLEX:
                td2 = f.td if f.td is not None else _resolve(f)
                for i, item in enumerate(value):
                    if type(item) is dict:
                        _check_object(item, td2, f"{path}.{key}[{i}]", issues)
                    else:
                        _not_object(issues, f"{path}.{key}[{i}]", f.type_name, item)
            elif kind == _RESOURCE:
                for i, item in enumerate(value):
                    _check_resource(item, f"{path}.{key}[{i}]", issues, f.expected)
            else:
                _ext_array(obj, key, value, f, path, issues)
            if f.max is not None and len(value) > f.max:
                _err(issues, "structure", f"{path}.{key}", f"At most {f.max} '{key}' allowed")
            if len(value) < f.min:
                _err(issues, "required", f"{path}.{key}", f"At least {f.min} '{key}' required")
        elif type(value) is list:
            _err(
                issues,
                "structure",
                f"{path}.{key}",
                f"Element '{key}' has max cardinality 1: expected a single value, found an array",
            )
        elif kind == _PRIM:
            problem = f.check(value)
            if problem is not None:
                _err(issues, problem[0], f"{path}.{key}", problem[1])
        elif kind == _COMPLEX:
            if type(value) is dict:
                td2 = f.td if f.td is not None else _resolve(f)
                _check_object(value, td2, f"{path}.{key}", issues)
            else:
                _not_object(issues, f"{path}.{key}", f.type_name, value)
        elif kind == _RESOURCE:
            _check_resource(value, f"{path}.{key}", issues, f.expected)
        elif type(value) is dict:
            _check_object(value, _element_td(), f"{path}.{f.variant}", issues)
        else:
            _not_object(issues, f"{path}.{key}", "Element", value)
    for label, names in td.required:
        for n in names:
            if n in obj:
                break
        else:
            _err(issues, "required", f"{path}.{label}", f"Missing required element '{label}'")


def _resolve(f: _Field) -> _TypeDef:
    assert f.ref is not None
    f.td = _typedef(f.ref)
    return f.td


@cache
def _element_td() -> _TypeDef:
    return _typedef("Element")


def _not_object(issues: list[Issue], path: str, type_name: str, value: Any) -> None:
    if value is None:
        _err(issues, "structure", path, "Null is not allowed here")
    else:
        _err(
            issues,
            "structure",
            path,
            f"Expected a JSON object for {type_name}, found {_jtype(value)}",
        )


def _prim_array(
    obj: dict[str, Any], key: str, value: list[Any], f: _Field, path: str, issues: list[Issue]
) -> None:
    ext = obj.get("_" + key)
    exts = ext if type(ext) is list else None
    if exts is not None and len(exts) != len(value):
        _err(
            issues,
            "structure",
            f"{path}._{key}",
            f"'_{key}' must have as many items as '{key}' ({len(exts)} != {len(value)})",
        )
    check = f.check
    for i, item in enumerate(value):
        if item is None:
            if exts is None or i >= len(exts) or exts[i] is None:
                _err(
                    issues,
                    "structure",
                    f"{path}.{key}[{i}]",
                    f"Null in '{key}' is only allowed where '_{key}' has an item",
                )
            continue
        problem = check(item)
        if problem is not None:
            _err(issues, problem[0], f"{path}.{key}[{i}]", problem[1])


def _ext_array(
    obj: dict[str, Any], key: str, value: list[Any], f: _Field, path: str, issues: list[Issue]
) -> None:
    td = _element_td()
    present = False
    for i, item in enumerate(value):
        if item is None:
            continue
        present = True
        if type(item) is dict:
            _check_object(item, td, f"{path}.{f.variant}[{i}]", issues)
        else:
            _not_object(issues, f"{path}.{key}[{i}]", "Element", item)
    if not present and f.variant not in obj:
        _err(issues, "structure", f"{path}.{key}", f"'{key}' must not hold only nulls")


def _check_resource(value: Any, path: str, issues: list[Issue], expected: str | None) -> None:
    """Check a resource; ``path`` is its location ("" at the root)."""
    where = path or "Resource"
    if type(value) is not dict:
        _err(issues, "structure", where, f"A resource must be a JSON object, found {_jtype(value)}")
        return
    rt_path = f"{path}.resourceType" if path else "resourceType"
    rt = value.get("resourceType")
    if rt is None:
        _err(issues, "required", rt_path, "Missing required element 'resourceType'")
        return
    if type(rt) is not str:
        _err(
            issues, "structure", rt_path, f"resourceType must be a JSON string, found {_jtype(rt)}"
        )
        return
    if rt not in resource_types():
        if rt in _abstract_resources():
            msg = f"resourceType '{rt}' is abstract; use a concrete resource type"
        else:
            msg = f"Unknown resourceType '{rt}'"
        _err(issues, "not-supported", rt_path, msg)
        return
    if expected is not None and rt != expected:
        _err(issues, "structure", rt_path, f"Expected a {expected} resource, found {rt}")
        return
    _check_object(value, _typedef(rt), path or rt, issues)


# -- public API -------------------------------------------------------------------------------


def validate(resource: Any) -> list[Issue]:
    """Structural problems of ``resource`` (parsed JSON) against FHIR R4; empty when valid."""
    issues: list[Issue] = []
    try:
        _check_resource(resource, "", issues, None)
    except RecursionError:
        _err(issues, "structure", "Resource", "Resource is nested too deeply")
    return issues


class _DuplicateKey(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _DuplicateKey(f"duplicate property '{k}'")
            seen.add(k)
    return d


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def validate_json_text(text: str | bytes) -> tuple[dict[str, Any] | None, list[Issue]]:
    """Parse ``text`` as JSON (RFC 8259) and validate it as a FHIR R4 resource.

    Returns the parsed resource (None when the text is not JSON, or not a JSON object) and the
    issues. Syntax errors are reported with their line and column; duplicate property names and
    NaN/Infinity are rejected too (FHIR R4 json.html).
    """
    data, issues = parse_json_text(text)
    if issues:
        return None, issues
    issues = validate(data)
    return (data if type(data) is dict else None), issues


def parse_json_text(text: str | bytes) -> tuple[Any, list[Issue]]:
    """Parse ``text`` as FHIR JSON without validating it as a resource (the caller does):
    syntax errors with line and column, duplicate property names and NaN/Infinity rejected."""
    try:
        return json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant), []
    except json.JSONDecodeError as exc:
        diag = f"Invalid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
    except UnicodeDecodeError as exc:
        diag = f"Invalid JSON: not valid {exc.encoding} text at byte {exc.start}"
    except RecursionError:
        diag = "Invalid JSON: nested too deeply"
    except ValueError as exc:
        diag = f"Invalid JSON: {exc}"
    return None, [Issue("error", "structure", "Resource", diag)]
