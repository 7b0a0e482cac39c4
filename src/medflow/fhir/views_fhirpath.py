"""FHIRPath for SQL-on-FHIR v2 ViewDefinitions: fhirpathpy plus the view-specific functions.

The ViewDefinition spec (https://sql-on-fhir.org/ig/latest/StructureDefinition-ViewDefinition.html,
"Required FHIRPath expressions/functions") requires a FHIRPath subset, evaluated here by fhirpathpy
with the R4 model, and adds ``getResourceKey()`` and ``getReferenceKey([type])``, which this module
registers through fhirpathpy's ``userInvocationTable``. ``join()`` is replaced so that an empty
input gives ``''`` (as the spec's tests expect), and ``lowBoundary()``/``highBoundary()``
(experimental in the spec, absent from fhirpathpy) are added for decimals, dates, date-times and
times.

Results keep fhirpathpy's :class:`~fhirpathpy.engine.nodes.ResourceNode` wrappers so that a nested
``forEach`` evaluates with the element's FHIR type known (``value.ofType(string)`` in an answer).
:func:`to_json` turns a result item into a plain JSON value for a row.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from functools import lru_cache
from typing import Any

from fhirpathpy.engine import do_eval
from fhirpathpy.engine.invocations.constants import constants
from fhirpathpy.engine.nodes import FP_Type, ResourceNode
from fhirpathpy.models import models as fhirpath_models
from fhirpathpy.parser import parse

from medflow.core.errors import InvalidInput

Compiled = Callable[[Any, Mapping[str, Any]], list[Any]]

# Environment variables fhirpathpy or FHIRPath itself define (FHIRPath N1 §9, FHIR R4 §2.24.0.2).
BUILTIN_VARIABLES = frozenset(
    {"context", "ucum", "resource", "rootResource", "sct", "loinc", "rowIndex"}
)
_STRING = re.compile(r"'(?:[^'\\]|\\.)*'")
_VARIABLE = re.compile(r"%(?:([A-Za-z_]\w*)|`([^`]+)`)")
_REFERENCE = re.compile(r"(?:^|/)([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def variables(expression: str) -> set[str]:
    """Names of the ``%variables`` an expression refers to (string literals skipped)."""
    text = _STRING.sub("''", expression)
    return {m.group(1) or m.group(2) for m in _VARIABLE.finditer(text)}


@lru_cache(maxsize=2048)
def compile_path(expression: str) -> Compiled:
    """Compile a view's FHIRPath ``expression`` once; InvalidInput when it does not parse."""
    if not isinstance(expression, str) or not expression.strip():
        raise InvalidInput(f"a ViewDefinition path must be a non-empty string: {expression!r}")
    try:
        tree = parse(expression)  # type: ignore[no-untyped-call]
    except Exception as exc:  # antlr raises plain exceptions on syntax errors
        raise InvalidInput(f"invalid FHIRPath expression {expression!r}: {exc}") from exc

    def run(focus: Any, env: Mapping[str, Any]) -> list[Any]:
        try:
            result = _evaluate(tree, focus, env)
        except InvalidInput:
            raise
        except Exception as exc:  # fhirpathpy raises plain exceptions on evaluation
            raise InvalidInput(f"cannot evaluate {expression!r}: {exc}") from exc
        return [item for item in result if item is not None]

    return run


def _evaluate(tree: Any, focus: Any, env: Mapping[str, Any]) -> list[Any]:
    """fhirpathpy's ``apply_parsed_path`` with ``$this`` bound to the focus (a view path may
    start with ``$this``) and functions that see the typed nodes (``lowBoundary`` needs them)."""
    constants.reset()  # type: ignore[no-untyped-call]
    root = focus if isinstance(focus, list) else [focus]
    variables_ = {"context": focus, "ucum": "http://unitsofmeasure.org", **env}
    ctx = {
        "dataRoot": root,
        "$this": root,
        "vars": variables_,
        "model": fhirpath_models["r4"],
        "userInvocationTable": _USER_FUNCTIONS,
    }
    result = do_eval(ctx, root, tree["children"][0])  # type: ignore[no-untyped-call]
    return list(result) if isinstance(result, list) else [result]


def to_json(item: Any) -> Any:
    """A fhirpathpy result item as a plain JSON value (str, int, float, bool, dict, list)."""
    if isinstance(item, ResourceNode):
        item = item.data
    if isinstance(item, FP_Type):
        return str(item)
    if isinstance(item, Decimal):  # FHIRPath arithmetic
        return int(item) if item == item.to_integral_value() else float(item)
    return item


def _data(item: Any) -> Any:
    return item.data if isinstance(item, ResourceNode) else item


def _resource_key(_ctx: Any, inputs: list[Any]) -> list[Any]:
    """``getResourceKey()``: the resource's ``id`` (ViewDefinition spec, "getResourceKey")."""
    out = []
    for item in inputs:
        data = _data(item)
        if isinstance(data, dict) and isinstance(data.get("id"), str):
            out.append(data["id"])
    return out


def _reference_key(_ctx: Any, inputs: list[Any], type_name: Any = None) -> list[Any]:
    """``getReferenceKey([type])``: the referenced resource's key, comparable with
    ``getResourceKey()``; empty when the reference is of another ``type``."""
    wanted = type_name if isinstance(type_name, str) else None
    out = []
    for item in inputs:
        data = _data(item)
        ref = data.get("reference") if isinstance(data, dict) else None
        if not isinstance(ref, str):
            continue
        match = _REFERENCE.search(ref)
        if match is None:
            continue
        if wanted is not None and match.group(1) != wanted:
            continue
        out.append(match.group(2))
    return out


def _join(_ctx: Any, inputs: list[Any], separator: Any = None) -> list[Any]:
    """``join([separator])`` (FHIRPath N2 §5.6.x): ``''`` for an empty input."""
    sep = separator if isinstance(separator, str) else ""
    return [sep.join(str(_data(item)) for item in inputs)]


# Precision-based boundaries (FHIRPath N2 lowBoundary/highBoundary), experimental in the spec.
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")
_DATETIME = re.compile(r"^(\d{4}(?:-\d{2}(?:-\d{2})?)?)T([\d:.]*)(Z|[+-]\d{2}:\d{2})?$")
_TIME = re.compile(r"^(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?$")
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days(year: int, month: int) -> int:
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    return 29 if month == 2 and not leap else _MONTH_DAYS[month - 1]


def _date_boundary(text: str, high: bool) -> str | None:
    match = _DATE.match(text)
    if match is None:
        return None
    year = int(match.group(1))
    month = int(match.group(2) or (12 if high else 1))
    day = int(match.group(3) or (_days(year, month) if high else 1))
    return f"{year:04d}-{month:02d}-{day:02d}"


def _time_boundary(text: str, high: bool) -> str | None:
    match = _TIME.match(text)
    if match is None:
        return None
    hour, minute, second, frac = match.groups()
    fill = "59" if high else "00"
    frac = (frac or "").ljust(3, "9" if high else "0")[:3]
    return f"{hour}:{minute or fill}:{second or fill}.{frac}"


def _type_of(item: Any) -> str | None:
    if isinstance(item, ResourceNode):
        info = item.get_type_info()  # type: ignore[no-untyped-call]
        return str(info.name) if info is not None else None
    return None


def _boundary_of(item: Any, high: bool) -> Any:
    """The boundary of one value at its precision; None when it has no boundary."""
    value, type_name = _data(item), _type_of(item)
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        text = format(Decimal(str(value)), "f")
        digits = len(text.split(".")[1]) if "." in text else 0
        half = Decimal(5) / Decimal(10) ** (digits + 1)
        return float(Decimal(text) + (half if high else -half))
    text = str(value)
    match = _DATETIME.match(text)
    if match is None and type_name in ("dateTime", "instant"):
        match = _DATETIME.match(text + "T")
    if match is not None:
        date = _date_boundary(match.group(1), high)
        time = _time_boundary(match.group(2), high) if match.group(2) else None
        time = time or ("23:59:59.999" if high else "00:00:00.000")
        zone = match.group(3) or ("-12:00" if high else "+14:00")
        return f"{date}T{time}{zone}" if date else None
    if type_name == "time":
        return _time_boundary(text, high)
    return _date_boundary(text, high) or _time_boundary(text, high)


def _low_boundary(_ctx: Any, inputs: list[Any]) -> list[Any]:
    """``lowBoundary()`` (FHIRPath N2 §5.9, experimental in the ViewDefinition spec)."""
    return [b for b in (_boundary_of(i, False) for i in inputs) if b is not None]


def _high_boundary(_ctx: Any, inputs: list[Any]) -> list[Any]:
    """``highBoundary()`` (FHIRPath N2 §5.9, experimental in the ViewDefinition spec)."""
    return [b for b in (_boundary_of(i, True) for i in inputs) if b is not None]


_USER_FUNCTIONS: dict[str, dict[str, Any]] = {
    "getResourceKey": {"fn": _resource_key},
    "getReferenceKey": {"fn": _reference_key, "arity": {0: [], 1: ["Identifier"]}},
    "join": {"fn": _join, "arity": {0: [], 1: ["String"]}},
    "lowBoundary": {"fn": _low_boundary},
    "highBoundary": {"fn": _high_boundary},
}
