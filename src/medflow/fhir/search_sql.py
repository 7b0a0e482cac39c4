"""Search criteria as SQL over the index tables (FHIR R4 search §3.1.1.4), for SQLite and
PostgreSQL alike.

Each criterion becomes a condition on an alias ``r`` of ``fhir_resource`` whose type the caller
has fixed; nothing is filtered in Python:

* a parameter: ``r.pk IN (SELECT resource_pk FROM fhir_<type> WHERE resource_type = :t AND
  param = :p AND (<value 1> OR <value 2> ...))``, served by the ``(resource_type, param, ...)``
  index of each table; ``:not`` and ``:missing`` are a correlated ``[NOT] EXISTS``;
* a chain (§3.1.1.4.9): ``r.pk IN (SELECT ref.resource_pk FROM fhir_reference ref JOIN
  fhir_resource t ON (t.resource_type, t.res_id) = (:type, ref.target_id) WHERE ...
  AND <inner criterion on t>)``, one SELECT per target type joined by ``UNION ALL``;
* ``_has`` (§3.1.1.4.10): ``r.res_id IN (SELECT ref.target_id FROM fhir_reference ref JOIN
  fhir_resource s ON s.pk = ref.resource_pk WHERE ref.target_type = :t AND <inner on s>)``;
* ``_id``/``_lastUpdated``: the columns of ``fhir_resource`` itself.

Text is compared by code point on both databases (``CodeString`` columns), so a string prefix is
an index range (``norm >= 'smi' AND norm < 'smj'``); ``:contains`` and ``:text`` are ``LIKE``
with ``%``/``_`` escaped. Dates compare as closed UTC ranges ``[low, high]`` (the index's form).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, exists, false, func, or_, select, true, union_all
from sqlalchemy.orm import aliased

from medflow.fhir.models import (
    FhirComposite,
    FhirDate,
    FhirNumber,
    FhirQuantity,
    FhirReference,
    FhirResource,
    FhirString,
    FhirToken,
    FhirUri,
)
from medflow.fhir.search_parse import Chain, Criterion, Has, Leaf, SortKey
from medflow.fhir.search_values import (
    CompositeValue,
    DateValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    prefix_upper,
    uri_ancestors,
)

Cond = ColumnElement[bool]
TABLES: dict[str, Any] = {
    "token": FhirToken,
    "string": FhirString,
    "date": FhirDate,
    "reference": FhirReference,
    "quantity": FhirQuantity,
    "number": FhirNumber,
    "uri": FhirUri,
    "composite": FhirComposite,
}
SORT_COLUMNS = {
    "token": ("code", "code"),
    "string": ("norm", "norm"),
    "date": ("low", "high"),
    "reference": ("target_id", "target_id"),
    "quantity": ("value", "value"),
    "number": ("value", "value"),
    "uri": ("value", "value"),
}
"""(column for ascending, column for descending): ascending sorts by a resource's lowest
value, descending by its highest (§3.1.1.5.1 ``#_sort``)."""


def _c(expr: Any) -> Cond:
    """An ORM comparison (typed Any through ``aliased``) as the condition it is."""
    return cast(Cond, expr)


def criterion_sql(crit: Criterion, r: Any) -> Cond:
    """The condition on ``r`` (an alias of ``FhirResource`` of the criterion's type)."""
    if isinstance(crit, Leaf):
        return _leaf(crit, r)
    if isinstance(crit, Chain):
        return _chain(crit, r)
    return _has(crit, r)


def _scope(t: Any, resource_type: str | None, code: str) -> list[Cond]:
    conds: list[Cond] = [t.param == code]
    if resource_type is not None:
        conds.insert(0, t.resource_type == resource_type)
    return conds


def _leaf(leaf: Leaf, r: Any) -> Cond:
    code, kind = leaf.param.code, leaf.param.type
    if code == "_id":
        return _c(r.res_id.in_([v.code for v in leaf.values]))
    if code == "_lastUpdated":
        return or_(*(date_cond(v, r.last_updated, r.last_updated) for v in leaf.values))
    t = aliased(TABLES[kind])
    scope = _scope(t, leaf.resource_type, code)
    if leaf.modifier == "missing":
        present = exists().where(t.resource_pk == r.pk, *scope)
        return or_(*((~present if missing else present) for missing in leaf.values))
    if leaf.modifier == "identifier":
        return _reference_identifier(leaf, r)
    values = or_(*(value_cond(kind, leaf.modifier, t, v) for v in leaf.values))
    if leaf.modifier == "not":
        return ~exists().where(t.resource_pk == r.pk, *scope, values)
    return _c(r.pk.in_(select(t.resource_pk).where(*scope, values)))


def value_cond(kind: str, modifier: str | None, t: Any, value: Any) -> Cond:
    """One search value against one index row ``t`` of the parameter's table."""
    if kind == "token":
        if modifier == "text":
            return text_cond(t.text, value)
        return token_cond(t.system, t.code, value, t)
    if kind == "string":
        return string_cond(t.norm, value, modifier, t.value)
    if kind == "date":
        return date_cond(value, t.low, t.high)
    if kind == "number":
        return number_cond(value, t.value)
    if kind == "quantity":
        return quantity_cond(value, t.value, t.system, t.code, t.unit)
    if kind == "uri":
        return uri_cond(t.value, value, modifier)
    if kind == "reference":
        return reference_cond(t, value)
    assert isinstance(value, CompositeValue)
    return and_(*(_slot(t, n, part) for n, part in enumerate(value.parts, start=1)))


def token_cond(system: Any, code: Any, v: TokenValue, t: Any = None) -> Cond:
    """``code``, ``system|code``, ``|code`` (system absent), ``system|`` (§3.1.1.4.5);
    ``:of-type`` also matches Identifier.type (``type_system``, ``type_code``)."""
    conds: list[Cond] = []
    if v.type_system is not None and t is not None:
        conds += [t.type_system == v.type_system, t.type_code == v.type_code]
    if v.system == "":
        conds.append(system.is_(None))
    elif v.system is not None:
        conds.append(system == v.system)
    if v.code is not None:
        conds.append(code == v.code)
    return and_(*conds)


def text_cond(column: Any, v: StringValue) -> Cond:
    """``:text``: a word of the normalized display/text starts with the value."""
    return or_(
        column.startswith(v.norm, autoescape=True),
        column.contains(" " + v.norm, autoescape=True),
    )


def string_cond(norm: Any, v: StringValue, modifier: str | None, raw: Any = None) -> Cond:
    """Default: the normalized value starts with the normalized search value (an index range);
    ``:exact``: the value as written; ``:contains``: anywhere (§3.1.1.4.3)."""
    if modifier == "exact":
        return and_(norm == v.norm, raw == v.raw) if raw is not None else norm == v.norm
    if modifier == "contains":
        return _c(norm.contains(v.norm, autoescape=True))
    upper = prefix_upper(v.norm)
    if upper is None:
        return _c(norm.startswith(v.norm, autoescape=True))
    return and_(norm >= v.norm, norm < upper)


def date_cond(v: DateValue, low: Any, high: Any) -> Cond:
    """The prefixes over closed ranges: search ``[sl, sh]`` against stored ``[low, high]``
    (§3.1.1.4.2): eq contains, gt/lt the range above/below intersects, ge/le gt/lt or eq,
    sa/eb starts after/ends before, ap overlaps the range widened by 10% of the gap to now."""
    sl, sh = v.low, v.high
    conds: dict[str, Any] = {  # low <= high: the redundant bounds on low give index ranges
        "eq": lambda: and_(low >= sl, low <= sh, high <= sh),
        "ne": lambda: or_(low < sl, high > sh),
        "gt": lambda: high > sh,
        "lt": lambda: low < sl,
        "ge": lambda: or_(high > sh, low >= sl),
        "le": lambda: and_(low <= sh, or_(low < sl, high <= sh)),
        "sa": lambda: low > sh,
        "eb": lambda: and_(low < sl, high < sl),
        "ap": lambda: and_(low <= sh, high >= sl),
    }
    result: Cond = conds[v.prefix]()
    return result


def number_cond(v: NumberValue, column: Any) -> Cond:
    """eq/ne use the precision range of the value, the comparisons the exact value; ap is
    within 10% of it (§3.1.1.4.1)."""
    exact = float(v.value)
    if v.prefix == "eq":
        return and_(column >= float(v.low), column < float(v.high))
    if v.prefix == "ne":
        return or_(column < float(v.low), column >= float(v.high))
    if v.prefix == "ap":
        spread = abs(v.value) / 10
        if not spread:
            return and_(column >= float(v.low), column < float(v.high))
        return and_(column >= float(v.value - spread), column <= float(v.value + spread))
    ops = {"gt": column > exact, "sa": column > exact, "lt": column < exact, "eb": column < exact}
    ops |= {"ge": column >= exact, "le": column <= exact}
    result: Cond = ops[v.prefix]
    return result


def quantity_cond(v: QuantityValue, value: Any, system: Any, code: Any, unit: Any) -> Cond:
    """``number|system|code`` matches system and code; ``number||code`` code or unit
    (§3.1.1.4.6). Units are not converted (no UCUM canonical form)."""
    conds = [number_cond(v.number, value)]
    if v.system is not None:
        conds.append(system == v.system)
        if v.code is not None:
            conds.append(code == v.code)
    elif v.code is not None:
        conds.append(or_(code == v.code, unit == v.code) if unit is not None else code == v.code)
    return and_(*conds)


def uri_cond(column: Any, v: UriValue, modifier: str | None) -> Cond:
    """Exact; ``:below`` the value is a prefix of the stored one; ``:above`` the stored one is
    the value or a ``/``-ancestor of it (§3.1.1.4.4)."""
    if modifier == "below":
        upper = prefix_upper(v.value)
        if upper is None:
            return _c(column.startswith(v.value, autoescape=True))
        return and_(column >= v.value, column < upper)
    if modifier == "above":
        return _c(column.in_(uri_ancestors(v.value)))
    return _c(column == v.value)


def reference_cond(t: Any, v: ReferenceValue) -> Cond:
    if v.url is not None:
        return _c(t.url == v.url)
    if v.target_type is None:
        return _c(t.target_id == v.target_id)
    return and_(t.target_id == v.target_id, t.target_type == v.target_type)


def _slot(t: Any, n: int, part: Any) -> Cond:
    """Composite slot ``n`` (see ``FhirComposite``): token/reference in (system, code), string
    and uri in code, number/quantity in num (+ system/code), date in (low, high)."""
    col = {name: getattr(t, f"c{n}_{name}") for name in ("system", "code", "num", "low", "high")}
    if isinstance(part, TokenValue):
        return token_cond(col["system"], col["code"], part)
    if isinstance(part, StringValue):
        return string_cond(col["code"], part, None)
    if isinstance(part, NumberValue):
        return number_cond(part, col["num"])
    if isinstance(part, QuantityValue):
        return quantity_cond(part, col["num"], col["system"], col["code"], None)
    if isinstance(part, DateValue):
        return date_cond(part, col["low"], col["high"])
    if isinstance(part, ReferenceValue):
        conds = [col["code"] == part.target_id]
        if part.target_type is not None:
            conds.append(col["system"] == part.target_type)
        return and_(*conds) if part.url is None else false()
    assert isinstance(part, UriValue)
    return _c(col["code"] == part.value)


def _reference_identifier(leaf: Leaf, r: Any) -> Cond:
    """``reference:identifier=system|value`` (§3.1.1.4.7): the Reference.identifier (indexed as
    a token of the reference parameter), or the identifier of the resource referred to."""
    code, rt = leaf.param.code, leaf.resource_type
    own = aliased(FhirToken)
    direct = select(own.resource_pk).where(
        *_scope(own, rt, code), or_(*(token_cond(own.system, own.code, v) for v in leaf.values))
    )
    ref, target, tok = aliased(FhirReference), aliased(FhirResource), aliased(FhirToken)
    types = list(leaf.param.targets)
    identified = select(tok.resource_pk).where(
        tok.resource_type.in_(types) if types else true(),
        tok.param == "identifier",
        or_(*(token_cond(tok.system, tok.code, v) for v in leaf.values)),
    )
    joined = (
        select(ref.resource_pk)
        .join(target, and_(target.resource_type == ref.target_type, target.res_id == ref.target_id))
        .where(*_scope(ref, rt, code), target.pk.in_(identified))
    )
    return _c(r.pk.in_(union_all(direct, joined)))


def _chain(chain: Chain, r: Any) -> Cond:
    """One SELECT per target type, joined by UNION ALL (an OR of branches would make
    PostgreSQL scan every resource of the target types)."""
    branches = []
    for target, inner in chain.branches:
        ref, t = aliased(FhirReference), aliased(FhirResource)
        branches.append(
            select(ref.resource_pk)
            .join(t, and_(t.resource_type == target, t.res_id == ref.target_id))
            .where(
                *_scope(ref, chain.resource_type, chain.param.code),
                ref.target_type == target,
                t.deleted.is_(False),
                criterion_sql(inner, t),
            )
        )
    sub = branches[0] if len(branches) == 1 else union_all(*branches)
    return _c(r.pk.in_(sub))


def _has(has: Has, r: Any) -> Cond:
    ref, s = aliased(FhirReference), aliased(FhirResource)
    sub = (
        select(ref.target_id)
        .join(s, s.pk == ref.resource_pk)
        .where(
            *_scope(ref, has.source_type, has.param.code),
            ref.target_type == has.resource_type,
            s.deleted.is_(False),
            criterion_sql(has.inner, s),
        )
    )
    return _c(r.res_id.in_(sub))


def sort_columns(keys: Sequence[SortKey], resource_type: str | None, r: Any) -> list[Any]:
    """ORDER BY terms: per key a correlated MIN (ascending) or MAX (descending) over the
    resource's index rows of the parameter, missing values last; then ``r.pk`` so that the
    order is total and offset paging is stable (§3.1.1.5.1)."""
    terms: list[Any] = []
    for key in keys:
        if key.code == "_id":
            column: Any = r.res_id
        elif key.code == "_lastUpdated":
            column = r.last_updated
        else:
            t = aliased(TABLES[key.type])
            name = SORT_COLUMNS[key.type][1 if key.descending else 0]
            agg = func.max if key.descending else func.min
            column = (
                select(agg(getattr(t, name)))
                .where(t.resource_pk == r.pk, *_scope(t, resource_type, key.code))
                .scalar_subquery()
            )
        terms.append((column.desc() if key.descending else column.asc()).nulls_last())
    terms.append(r.pk.asc())
    return terms
