"""A FHIR search query parsed into a plan (FHIR R4 search §3.1.1): criteria, sort, paging,
includes and the shape of the result, each validated against the search parameters of
:mod:`medflow.fhir.definitions`.

Repeated parameter names are ANDed, comma-separated values ORed (§3.1.1.4 ``#combining``).
A parameter name is a search parameter with an optional modifier (``name:exact``), a chain
(``subject:Patient.name``, ``patient.general-practitioner.name``: §3.1.1.4.9 ``#chaining``) or
a reverse chain (``_has:Observation:patient:code``, nestable: §3.1.1.4.10 ``#has``).

Unknown or unsupported parameters are ignored and reported as warnings under lenient handling
(``Prefer: handling=lenient``, the default) and are an ``InvalidInput`` under strict handling
(§3.1.1.4 ``#errors``). Malformed values, unknown modifiers and invalid result parameters are
an ``InvalidInput`` either way; so are FHIR modifiers that medflow does not implement (``:in``,
``:not-in``, ``:above``/``:below`` on tokens and references): a server "SHALL reject any
search request that contains a search parameter with an unsupported modifier" (§3.1.1.4
``#modifiers``), whatever the handling preference.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from medflow.core.errors import InvalidInput
from medflow.fhir.definitions import SearchParam, SearchParamRegistry, default_registry
from medflow.fhir.search_values import (
    CompositeValue,
    DateValue,
    QuantityValue,
    TokenValue,
    Value,
    parse_date,
    parse_missing,
    parse_number,
    parse_quantity,
    parse_reference,
    parse_string,
    parse_token,
    parse_uri,
    split_escaped,
)

QueryInput = str | Sequence[tuple[str, str]] | Mapping[str, str | Sequence[str]]
DEFAULT_COUNT = 20
MAX_COUNT = 1000
MAX_DEPTH = 4
"""Chains and ``_has`` nest at most this deep (``a.b.c.d.name``)."""
MAX_OFFSET = 2**31 - 1

MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"text", "not", "of-type", "missing"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "uri": frozenset({"below", "above", "missing"}),
    "reference": frozenset({"identifier", "missing"}),
    "composite": frozenset({"missing"}),
}
FHIR_MODIFIERS = frozenset(
    {"missing", "exact", "contains", "not", "text", "in", "not-in", "below", "above", "type"}
    | {"identifier", "of-type"}
)
ENGINE_PARAMS = frozenset({"_id", "_lastUpdated"})
"""Special parameters answered from the resource table."""
SORTABLE = frozenset({"string", "token", "date", "number", "quantity", "uri", "reference"})
SILENT = frozenset({"_format", "_pretty"})
"""Handled by the REST edge: neither used nor reported."""


class UnknownParam(Exception):
    """A parameter the server does not know or does not support (lenient: ignored)."""


@dataclass(frozen=True, slots=True)
class Leaf:
    """A search parameter of ``resource_type`` (None: every type) with ORed ``values``.

    ``modifier`` is a FHIR modifier, or a resource type for ``reference:[type]``; the values
    of ``:missing`` are booleans, of composites :class:`CompositeValue`.
    """

    resource_type: str | None
    param: SearchParam
    modifier: str | None
    values: tuple[Any, ...]
    via: Chain | None = None
    """``reference:identifier``: the chain to the targets' own ``identifier`` parameters."""
    types: tuple[str, ...] = ()
    """A system search's ``_type`` (``resource_type`` None): the index rows of these types
    count, each written from its own type's definition of the parameter (§3.1.1.4.24)."""


@dataclass(frozen=True, slots=True)
class Chain:
    """``param.inner``: resources whose reference ``param`` points at a resource matching the
    inner criterion of its type (one branch per possible target type, ORed)."""

    resource_type: str
    param: SearchParam
    branches: tuple[tuple[str, Criterion], ...]
    base_url: str | None = None
    """The server's base: only local references lead to the targets (see :class:`Has`)."""


@dataclass(frozen=True, slots=True)
class Has:
    """``_has:source_type:param:inner``: resources referenced through ``param`` by a
    ``source_type`` resource that matches ``inner``."""

    resource_type: str
    source_type: str
    param: SearchParam
    inner: Criterion
    base_url: str | None = None
    """The server's base: only local references count, relative (``Type/id``) or absolute
    under ``base_url`` (R4 §3.1.1.4.12 ``#reference``); another server's ``Type/id`` is not
    this server's resource."""


Criterion = Leaf | Chain | Has


@dataclass(frozen=True, slots=True)
class SortKey:
    code: str
    type: str
    descending: bool


@dataclass(frozen=True, slots=True)
class Include:
    """``_include`` (``reverse`` False) or ``_revinclude``: ``source_type`` None and ``param``
    None stand for ``*``."""

    source_type: str | None
    param: str | None
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass(frozen=True)
class SearchPlan:
    resource_type: str | None
    types: tuple[str, ...] = ()
    criteria: tuple[Criterion, ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int = DEFAULT_COUNT
    offset: int = 0
    total: str | None = None
    summary: str | None = None
    elements: tuple[str, ...] = ()
    includes: tuple[Include, ...] = ()
    used: tuple[tuple[str, str], ...] = ()
    """The parameters that were applied, in order (``_count``/``_offset`` left out): the
    bundle's self link (§3.1.1.6 ``#selflink``)."""
    warnings: tuple[str, ...] = ()
    base_url: str | None = None
    """The server's base: references under it are local (includes follow only those)."""


@dataclass
class _Ctx:
    registry: SearchParamRegistry
    base_url: str | None
    now: datetime | None
    plan: dict[str, Any] = field(default_factory=dict)
    types: tuple[str, ...] = ()
    """A system search's ``_type``, read before the other parameters."""
    shared: dict[str, SearchParam] | None = None
    """The parameters that every one of ``types`` has (:func:`_shared`), once computed."""


def query_pairs(query: QueryInput) -> list[tuple[str, str]]:
    """``a=1&b=2``, ``[("a", "1")]`` or ``{"a": ["1", "2"]}`` as a list of pairs."""
    if isinstance(query, str):
        return parse_qsl(query.lstrip("?"), keep_blank_values=True)
    if isinstance(query, Mapping):
        pairs: list[tuple[str, str]] = []
        for name, value in query.items():
            values = [value] if isinstance(value, str) else list(value)
            pairs.extend((name, v) for v in values)
        return pairs
    return [(str(n), str(v)) for n, v in query]


def parse_query(
    resource_type: str | None,
    query: QueryInput,
    *,
    strict: bool = False,
    base_url: str | None = None,
    registry: SearchParamRegistry | None = None,
    now: datetime | None = None,
) -> SearchPlan:
    """Parse and validate a search; ``resource_type`` None is a system search (§3.1.1.2
    ``#searchcontexts``: ``_type``, ``_id``, ``_lastUpdated``, ``_tag``, ``_profile``,
    ``_security``, ``_source``).

    A system search's ``_type`` is read first, wherever it stands in the query: with it the
    parameters that all the listed types share (same code and type) may be used (§3.1.1.4.24
    ``#_type``); with a single type the search is that type's search in all but its URL.
    """
    reg = registry or default_registry()
    if resource_type is not None and resource_type not in reg.resource_types():
        raise InvalidInput(f"unknown resource type {resource_type!r}")
    ctx = _Ctx(reg, base_url, now)
    pairs = query_pairs(query)
    if resource_type is None:
        types = [t for n, v in pairs if n == "_type" and v != "" for t in _types(ctx, v)]
        ctx.types = tuple(dict.fromkeys(types))
    scope = resource_type or (ctx.types[0] if len(ctx.types) == 1 else None)
    criteria: list[Criterion] = []
    used: list[tuple[str, str]] = []
    warnings: list[str] = []
    for name, value in pairs:
        if name in SILENT or value == "":
            continue  # an empty value is ignored (§3.1.1.4)
        try:
            handled = _result_param(ctx, scope, name, value)
            if handled is None:
                criteria.append(_criterion(ctx, scope, name, value, 0))
        except UnknownParam as exc:
            if strict:
                raise InvalidInput(f"{exc} (Prefer: handling=strict)") from exc
            warnings.append(f"{exc}: ignored")
            continue
        if name not in ("_count", "_offset"):
            used.append((name, value))
    if scope is not None:
        criteria += implied_composites(ctx.registry, scope, criteria)
    plan = ctx.plan
    return SearchPlan(
        resource_type=resource_type,
        types=ctx.types,
        criteria=tuple(criteria),
        sort=tuple(plan.get("sort", ())),
        count=plan.get("count", DEFAULT_COUNT),
        offset=plan.get("offset", 0),
        total=plan.get("total"),
        summary=plan.get("summary"),
        elements=tuple(plan.get("elements", ())),
        includes=tuple(plan.get("includes", ())),
        used=tuple(used),
        warnings=tuple(warnings),
        base_url=base_url,
    )


def _params(ctx: _Ctx, resource_type: str | None) -> Mapping[str, SearchParam]:
    if resource_type is not None:
        return ctx.registry.search_params(resource_type)
    if ctx.shared is None:
        common = ctx.registry.search_params("Patient")
        ctx.shared = {code: p for code, p in common.items() if code.startswith("_")}
        if ctx.types:
            ctx.shared |= _shared(ctx.registry, ctx.types)
    return ctx.shared


def _shared(registry: SearchParamRegistry, types: Sequence[str]) -> dict[str, SearchParam]:
    """The parameters of a system search with ``_type`` (§3.1.1.4.24): those every listed
    type has with the same code and type (composites: the same component types). Values are
    parsed once, with the first type's definition and the targets of all (``subject=p1`` is
    typed only when every type's parameter has that one target); the index rows of each
    type were written from its own definition."""
    per_type = [registry.search_params(t) for t in types]
    out: dict[str, SearchParam] = {}
    for code, first in per_type[0].items():
        if code.startswith("_"):
            continue
        params = [p.get(code) for p in per_type]
        shape = (first.type, tuple(c.type for c in first.components))
        if any(p is None or (p.type, tuple(c.type for c in p.components)) != shape
               for p in params):  # fmt: skip
            continue
        found = [p for p in params if p is not None]
        unsupported = [p for p in found if p.special or not p.indexed]
        targets = tuple(sorted({t for p in found for t in p.targets}))
        out[code] = unsupported[0] if unsupported else replace(first, targets=targets)
    return out


# --- criteria ------------------------------------------------------------------------------


def _criterion(
    ctx: _Ctx, resource_type: str | None, name: str, value: str, depth: int
) -> Criterion:
    if depth > MAX_DEPTH:
        raise InvalidInput(f"chains nest at most {MAX_DEPTH} deep")
    if name.startswith("_has:"):
        return _has(ctx, resource_type, name, value, depth)
    head, dot, tail = name.partition(".")
    code, _, modifier = head.partition(":")
    if dot:
        return _chain(ctx, resource_type, code, modifier or None, tail, value, depth)
    return _leaf(ctx, resource_type, code, modifier or None, value)


def _has(ctx: _Ctx, resource_type: str | None, name: str, value: str, depth: int) -> Has:
    parts = name.split(":", 3)
    if len(parts) != 4 or not all(parts):
        raise InvalidInput(f"{name!r}: _has takes _has:Type:reference-param:param")
    _, source, code, rest = parts
    if resource_type is None:
        raise InvalidInput("_has needs a resource type (or a single _type)")
    if source not in ctx.registry.resource_types():
        raise UnknownParam(f"unknown resource type {source!r} in {name!r}")
    param = ctx.registry.search_params(source).get(code)
    if param is None:
        raise UnknownParam(f"{source} has no search parameter {code!r} ({name!r})")
    if param.type != "reference":
        raise InvalidInput(f"{source}:{code} is not a reference parameter ({name!r})")
    if param.targets and resource_type not in param.targets:
        raise InvalidInput(f"{source}:{code} does not refer to {resource_type}")
    inner = _criterion(ctx, source, rest, value, depth + 1)
    return Has(resource_type, source, param, inner, ctx.base_url)


def _chain(
    ctx: _Ctx,
    resource_type: str | None,
    code: str,
    type_modifier: str | None,
    tail: str,
    value: str,
    depth: int,
) -> Chain:
    if resource_type is None:
        raise InvalidInput("chained parameters need a resource type (or a single _type)")
    param = ctx.registry.search_params(resource_type).get(code)
    if param is None:
        raise UnknownParam(f"unknown search parameter {code!r} for {resource_type}")
    if param.type != "reference":
        raise InvalidInput(f"{code!r} is not a reference parameter: it cannot be chained")
    if type_modifier is not None and type_modifier not in param.targets:
        raise InvalidInput(f"{resource_type}:{code} does not refer to {type_modifier!r}")
    branches: list[tuple[str, Criterion]] = []
    for target in (type_modifier,) if type_modifier else param.targets:
        try:
            branches.append((target, _criterion(ctx, target, tail, value, depth + 1)))
        except UnknownParam:
            continue
    if not branches:
        raise UnknownParam(f"no target of {resource_type}:{code} has a parameter {tail!r}")
    return Chain(resource_type, param, tuple(branches), ctx.base_url)


def _leaf(
    ctx: _Ctx, resource_type: str | None, code: str, modifier: str | None, value: str
) -> Leaf:
    param = _params(ctx, resource_type).get(code)
    if resource_type is not None:
        where = resource_type
    elif ctx.types:
        where = f"every one of _type={','.join(ctx.types)}"
    else:
        where = "a system search (without _type)"
    if param is None:
        raise UnknownParam(f"unknown search parameter {code!r} for {where}")
    if param.code in ENGINE_PARAMS:
        if modifier is not None:
            raise InvalidInput(f"{code} takes no modifier")
    elif param.special or not param.indexed or param.type == "special":
        raise UnknownParam(f"search parameter {code!r} is not supported")
    else:
        _check_modifier(param, modifier)
    pieces = split_escaped(value, ",")
    if modifier == "missing":
        values: tuple[Any, ...] = tuple(parse_missing(p) for p in pieces)
    else:
        values = tuple(_value(ctx, param, modifier, p) for p in pieces)
    via = None
    if param.type == "reference" and modifier == "identifier" and resource_type is not None:
        branches = []
        for target in param.targets:
            ident = ctx.registry.search_params(target).get("identifier")
            if ident is not None and ident.type == "token":
                branches.append((target, Leaf(target, ident, None, values)))
        via = Chain(resource_type, param, tuple(branches), ctx.base_url) if branches else None
    types = ctx.types if resource_type is None else ()
    return Leaf(resource_type, param, modifier, values, via, types)


def _check_modifier(param: SearchParam, modifier: str | None) -> None:
    """A modifier this parameter's type supports; an unknown or unsupported one is an
    ``InvalidInput`` (400) under lenient handling too (§3.1.1.4 ``#modifiers``: servers
    "SHALL reject" it, not ignore it)."""
    if modifier is None or modifier in MODIFIERS.get(param.type, ()):
        return
    if param.type == "reference" and modifier in param.targets:
        return
    if modifier in FHIR_MODIFIERS:
        raise InvalidInput(
            f"modifier :{modifier} is not supported on {param.type} parameter {param.code!r}"
        )
    raise InvalidInput(f"unknown modifier :{modifier} on {param.type} parameter {param.code!r}")


def _value(ctx: _Ctx, param: SearchParam, modifier: str | None, text: str) -> Any:
    kind = param.type
    if kind == "token":
        if param.code == "_id":
            return parse_token(text)
        return (
            parse_string(text)
            if modifier == "text"
            else parse_token(text, of_type=modifier == "of-type")
        )
    if kind == "reference" and modifier == "identifier":
        return parse_token(text)
    if kind == "composite":
        parts = split_escaped(text, "$")
        if len(parts) != len(param.components):
            raise InvalidInput(
                f"{param.code} takes {len(param.components)} values joined by $, not {text!r}"
            )
        return CompositeValue(
            tuple(
                _typed(ctx, comp.type, None, part, ())
                for comp, part in zip(param.components, parts, strict=True)
            )
        )
    return _typed(ctx, kind, modifier, text, param.targets)


def _typed(
    ctx: _Ctx, kind: str, modifier: str | None, text: str, targets: tuple[str, ...]
) -> Value:
    if kind == "string":
        return parse_string(text)
    if kind == "token":
        return parse_token(text)
    if kind == "date":
        return parse_date(text, now=ctx.now)
    if kind == "number":
        return parse_number(text)
    if kind == "quantity":
        return parse_quantity(text)
    if kind == "uri":
        return parse_uri(text)
    if kind == "reference":
        type_modifier = modifier if modifier and modifier[:1].isupper() else None
        return parse_reference(
            text, type_modifier=type_modifier, targets=targets, base_url=ctx.base_url
        )
    raise UnknownParam(f"search parameters of type {kind} are not supported")


# --- result parameters (§3.1.1.5) ------------------------------------------------------------


def _result_param(ctx: _Ctx, resource_type: str | None, name: str, value: str) -> bool | None:
    """Record a result parameter in ``ctx.plan``; None when ``name`` is a criterion."""
    base, _, modifier = name.partition(":")
    plan = ctx.plan
    if base in ("_include", "_revinclude"):
        if modifier not in ("", "iterate", "recurse"):
            raise InvalidInput(f"unknown modifier :{modifier} on {base}")
        include = _include(ctx, value, iterate=bool(modifier), reverse=base == "_revinclude")
        plan.setdefault("includes", []).append(include)
        return True
    if not name.startswith("_") or modifier:
        return None
    if name == "_count":
        plan["count"] = min(_non_negative(name, value), MAX_COUNT)
    elif name == "_offset":
        plan["offset"] = min(_non_negative(name, value), MAX_OFFSET)
    elif name == "_sort":
        plan.setdefault("sort", []).extend(_sort(ctx, resource_type, value))
    elif name in ("_total", "_summary"):
        allowed = (
            ("none", "estimate", "accurate")
            if name == "_total"
            else ("true", "false", "text", "data", "count")
        )
        if value not in allowed:
            raise InvalidInput(f"{name} takes one of {', '.join(allowed)}, not {value!r}")
        plan[name[1:]] = value
    elif name == "_elements":
        plan.setdefault("elements", []).extend(e.strip() for e in value.split(",") if e.strip())
    elif name == "_type" and ctx.types:
        pass  # read first, by parse_query
    elif name in ("_contained", "_containedType", "_score", "_filter", "_query", "_list"):
        raise UnknownParam(f"{name} is not supported")
    else:
        return None
    return True


def _non_negative(name: str, value: str) -> int:
    if not value.isdigit():
        raise InvalidInput(f"{name} takes a non-negative integer, not {value!r}")
    return int(value)


def _types(ctx: _Ctx, value: str) -> list[str]:
    out = []
    for t in (v.strip() for v in value.split(",")):
        if t not in ctx.registry.resource_types():
            raise InvalidInput(f"_type: unknown resource type {t!r}")
        out.append(t)
    return out


def _sort(ctx: _Ctx, resource_type: str | None, value: str) -> list[SortKey]:
    keys = []
    for item in (v.strip() for v in value.split(",")):
        descending = item.startswith("-")
        code = item.lstrip("-")
        if code in ENGINE_PARAMS:
            keys.append(SortKey(code, "token" if code == "_id" else "date", descending))
            continue
        param = _params(ctx, resource_type).get(code)
        if param is None or param.special or param.type not in SORTABLE:
            raise UnknownParam(f"_sort: {code!r} is not a sortable parameter")
        keys.append(SortKey(code, param.type, descending))
    return keys


def _include(ctx: _Ctx, value: str, *, iterate: bool, reverse: bool) -> Include:
    """``Type:param[:target]``, ``Type:*`` or ``*`` (§3.1.1.5.4 ``#include``)."""
    if value == "*":
        return Include(None, None, None, iterate, reverse)
    parts = value.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidInput(f"{value!r}: _include takes Type:param[:targetType] or *")
    source, code = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    kind = "_revinclude" if reverse else "_include"
    if source not in ctx.registry.resource_types():
        raise UnknownParam(f"{kind}: unknown resource type {source!r}")
    if code == "*":
        return Include(source, None, target, iterate, reverse)
    param = ctx.registry.search_params(source).get(code)
    if param is None or param.type != "reference":
        raise UnknownParam(f"{kind}: {source} has no reference parameter {code!r}")
    if target is not None and target not in param.targets:
        raise InvalidInput(f"{kind}: {source}:{code} does not refer to {target!r}")
    return Include(source, code, target, iterate, reverse)


def implied_composites(
    registry: SearchParamRegistry, resource_type: str, criteria: Sequence[Criterion]
) -> list[Criterion]:
    """Composite criteria implied by the query's separate ones, so that the composite index
    can drive: ``Observation?code=http://loinc.org|2085-9&value-quantity=gt77|…|mg/dL``
    also means ``code-value-quantity=http://loinc.org|2085-9$gt77|…|mg/dL`` — one index range
    instead of every Observation with that code probed for its value.

    Only for a composite whose expression is the resource itself (each component is then
    evaluated on the whole resource, and the composite rows are the product of the component
    values, §3.1.1.4.8: the composite matches exactly when both separate criteria do), and
    for plain single values whose composite slot holds the same thing (a token with a code; a
    quantity or number without the ``number||unit`` form, which the composite slot cannot
    match by unit). The separate criteria stay: the added one only narrows what drives.
    """
    plain = {
        c.param.url: c
        for c in criteria
        if isinstance(c, Leaf) and c.modifier is None and c.via is None and len(c.values) == 1
    }
    out: list[Criterion] = []
    for param in registry.search_params(resource_type).values():
        if param.type != "composite" or param.expression != resource_type or param.custom:
            continue  # a custom composite's components may select other elements
        if len(param.components) < 2:
            continue
        found = [plain.get(comp.definition) for comp in param.components]
        if any(f is None for f in found):
            continue
        leaves = [f for f in found if f is not None]
        if not all(_slot_compatible(f) for f in leaves):
            continue
        parts = [f.values[0] for f in leaves]
        out.append(Leaf(resource_type, param, None, (CompositeValue(tuple(parts)),)))
    return out


def _slot_compatible(leaf: Leaf) -> bool:
    """Whether a composite slot matches this single value exactly as the separate parameter
    does: a token with a code; a date; a quantity given with its system (or no unit) whose
    parameter only reaches Quantity elements (a Range target is matched as a range by the
    parameter but as its two bounds by a composite slot)."""
    value = leaf.values[0]
    if isinstance(value, TokenValue):
        return value.code is not None and value.type_system is None
    if isinstance(value, QuantityValue):
        expression = leaf.param.expression or ""
        atoms = [atom for atom in expression.split("|") if atom.strip()]
        only_quantity = all(  # every path casts its choice element, never to Range
            re.search(r"\bas\b|\.as\(|ofType\(", atom) and "Range" not in atom for atom in atoms
        )
        return only_quantity and (value.system is not None or value.code is None)
    return isinstance(value, DateValue)
