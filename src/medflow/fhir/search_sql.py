"""Search criteria as SQL over the index tables (FHIR R4 search §3.1.1.4), for SQLite and
PostgreSQL alike.

Each criterion becomes a condition on an alias ``r`` of ``fhir_resource`` whose type the caller
has fixed; nothing is filtered in Python:

* a parameter: ``r.pk IN (SELECT resource_pk FROM fhir_<type> WHERE resource_type = :t AND
  param = :p AND (<value 1> OR <value 2> ...))``, served by the ``(resource_type, param, ...)``
  index of each table, or (when another criterion drives) ``EXISTS (... WHERE resource_pk =
  r.pk ...)``; ``:not`` and ``:missing`` are a correlated ``[NOT] EXISTS``;
* a chain (§3.1.1.4.9): ``r.pk IN (SELECT ref.resource_pk FROM fhir_reference ref WHERE
  ref.resource_type = :t AND ref.param = :p AND ref.target_type = :target AND ref.target_id IN
  (SELECT t.res_id FROM fhir_resource t WHERE t.resource_type = :target AND <inner on t>))``,
  one SELECT per target type joined by ``UNION ALL``;
* ``_has`` (§3.1.1.4.10): ``r.res_id IN (SELECT ref.target_id FROM fhir_reference ref WHERE
  ... AND ref.target_type = :t AND ref.resource_pk IN (SELECT s.pk FROM fhir_resource s WHERE
  s.resource_type = :source AND <inner on s>))``;
* ``_id``/``_lastUpdated``: the columns of ``fhir_resource`` itself.

Wherever ``target_type``/``target_id`` stand for a resource of this server (a ``Type/id``
value, chains, ``_has``, includes) the reference row must be local (:func:`local_cond`,
§3.1.1.4.12): relative, or absolute under the plan's base URL.

The inner sets are IN lists, so that the selective side drives the plan on both databases;
of several criteria on one resource only the most selective is a list, the others are
``EXISTS`` probes by ``resource_pk`` (:func:`where_criteria`).

Text is compared by code point on both databases (``CodeString`` columns), so a string prefix is
an index range (``norm >= 'smi' AND norm < 'smj'``); ``:contains`` and ``:text`` are ``LIKE``
with ``%``/``_`` escaped. Dates compare as closed UTC ranges ``[low, high]`` (the index's form);
so do number and quantity Range targets (``[value, value_high]``), whose matches by their high
bound alone (``gt``/``ge``/``ap``) are a second SELECT joined by ``UNION ALL`` over a partial
index of the Range rows, so that a point search keeps its index range on ``value``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, exists, false, func, or_, select, union_all
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql.visitors import InternalTraversal

from medflow.fhir.definitions import resource_types
from medflow.fhir.fhirpath import element_spec, split_union
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


def where_criteria(
    resource_type: str | None,
    criteria: Sequence[Criterion],
    r: Any,
    *,
    types: Sequence[str] = (),
    probe_joins: bool = True,
    walk: bool = False,
) -> list[Cond]:
    """The conditions on ``r`` (an alias of ``FhirResource``): its type (``resource_type``,
    or one of a system search's ``_type`` ``types``) and every criterion.

    Chains and ``_has`` that do not drive are probed per resource too (a page stops early);
    ``probe_joins=False`` (a count, which visits every match) keeps them as IN lists.
    ``walk``: no driver at all; the type's resources are walked in ``pk`` order (the
    ``(resource_type, pk)`` index) and every criterion is probed, for a page whose driver
    would collect a large share of the type (see ``search.walk_instead``).

    The most selective criterion (:func:`rank`) is the plan's driver, an IN list; the other
    parameters are probed per resource (``EXISTS ... WHERE resource_pk = r.pk``). PostgreSQL
    plans both as semi-joins; SQLite materializes every IN list whole, so only the driver
    should be one. On SQLite the type terms of probes and, when a pk list drives, of ``r`` are
    kept off their ``(resource_type, ...)`` indexes (:class:`Unindexed`): without ANALYZE
    statistics SQLite would otherwise walk every row of the type (the plan it picks with
    statistics is the one that these SQL texts force).
    """
    candidates = [c for c in criteria if rank(c) < NEVER_DRIVES and not walk]
    driver = min(candidates, key=_driver_key, default=None)
    conds = [
        criterion_sql(c, r, probe=c is not driver and (probe_joins or isinstance(c, Leaf)))
        for c in criteria
    ]
    by_pk = driver is not None and drives_by_pk(driver)
    column = Unindexed(r.resource_type) if by_pk else r.resource_type
    if resource_type is not None:
        conds.insert(0, _c(column == resource_type))
    elif types:
        conds.insert(0, _c(column.in_(types)))
    return conds


NEVER_DRIVES = 9


def _driver_key(crit: Criterion) -> tuple[int, bool, bool]:
    """Rank, then a chain or ``_has`` before a leaf, then a composite (narrower than either
    of its components, and one index range) before other leaves of the same rank."""
    composite = isinstance(crit, Leaf) and crit.param.type == "composite"
    return rank(crit), isinstance(crit, Leaf), not composite


def rank(crit: Criterion) -> int:
    """How selective a criterion usually is (lower: more), to choose the driver; a chain or
    ``_has`` as its innermost criterion (and preferred on a tie)."""
    if isinstance(crit, Chain):
        return min(rank(inner) for _, inner in crit.branches)
    if isinstance(crit, Has):
        return rank(crit.inner)
    code, kind, modifier = crit.param.code, crit.param.type, crit.modifier
    if code == "_id":
        return 0
    if code == "_lastUpdated" or modifier in ("not", "missing"):
        return NEVER_DRIVES
    if modifier in ("contains", "text"):
        return 6
    if kind == "token" and few_values(crit.param.expression):
        return 4
    if kind in ("token", "reference", "uri", "composite") or modifier == "exact":
        return 1
    prefixes = {getattr(v, "prefix", None) or getattr(getattr(v, "number", None), "prefix", "eq")
                for v in crit.values}  # fmt: skip
    return 3 if prefixes <= {"eq", None} else 5


@lru_cache(maxsize=4096)
def few_values(expression: str | None) -> bool:
    """Whether a token parameter selects only ``code``/``boolean`` elements (``gender``,
    ``status``, ``active``): a handful of values, so a poor driver."""
    if not expression:
        return False
    for atom in split_union(expression):
        spec = element_spec(atom.strip().strip("()"))
        if spec is None or not set(spec[0]) <= {"code", "boolean"}:
            return False
    return True


def drives_by_pk(crit: Criterion) -> bool:
    """Whether a driver is a ``pk IN (...)`` list (not an ``_id`` list of ids)."""
    return not (isinstance(crit, Leaf) and crit.param.code == "_id")


def criterion_sql(crit: Criterion, r: Any, *, probe: bool = False) -> Cond:
    """The condition on ``r`` (an alias of ``FhirResource`` of the criterion's type):
    ``probe`` asks for a per-resource test rather than an IN list."""
    if isinstance(crit, Leaf):
        return _leaf(crit, r, probe)
    if isinstance(crit, Chain):
        return _chain_probe(crit, r) if probe else _chain(crit, r)
    return _has_probe(crit, r) if probe else _has(crit, r)


def _scope(
    t: Any,
    resource_type: str | None,
    code: str,
    *,
    probe: bool = False,
    types: Sequence[str] = (),
) -> list[Cond]:
    """Index rows of parameter ``code`` of ``resource_type``; in a system search of the
    ``_type`` ``types``, or of every type (an IN list, so that the ``(resource_type, param,
    ...)`` index still serves)."""
    conds: list[Cond] = [t.param == code]
    if resource_type is not None:
        column = Unindexed(t.resource_type) if probe else t.resource_type
        conds.insert(0, _c(column == resource_type))
    elif not probe:
        conds.insert(0, _c(t.resource_type.in_(sorted(types or resource_types()))))
    return conds


def _leaf(leaf: Leaf, r: Any, probe: bool) -> Cond:
    code, kind = leaf.param.code, leaf.param.type
    if code == "_id":
        return _c(r.res_id.in_([v.code for v in leaf.values]))
    if code == "_lastUpdated":
        return or_(*(date_cond(v, r.last_updated, r.last_updated) for v in leaf.values))
    if leaf.modifier == "identifier":
        return _reference_identifier(leaf, r)
    t = aliased(TABLES[kind])
    probe_scope = [
        t.resource_pk == r.pk,
        *_scope(t, leaf.resource_type, code, probe=True, types=leaf.types),
    ]
    if leaf.modifier == "missing":
        present: Cond = exists().where(*probe_scope)
        if kind == "reference":  # a logical reference (Reference.identifier) is a value too
            tok = aliased(FhirToken)
            scope = _scope(tok, leaf.resource_type, code, probe=True, types=leaf.types)
            present = or_(present, exists().where(tok.resource_pk == r.pk, *scope))
        return or_(*((~present if missing else present) for missing in leaf.values))
    values = or_(*(value_cond(kind, leaf.modifier, t, v) for v in leaf.values))
    extras = [e for v in leaf.values if (e := range_extra(kind, t, v)) is not None]
    if leaf.modifier == "not" or probe:
        found = exists().where(*probe_scope, or_(values, *extras))
        return ~found if leaf.modifier == "not" else found
    scope = _scope(t, leaf.resource_type, code, types=leaf.types)
    selects = [select(t.resource_pk).where(*scope, values)]
    if extras:  # the Ranges that their high bound decides: through their own (small) index
        selects.append(select(t.resource_pk).where(*scope, or_(*extras)))
    return _c(r.pk.in_(_union(selects)))


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
        return number_cond(value, t.value, t.value_high)
    if kind == "quantity":
        return quantity_cond(value, t.value, t.system, t.code, t.unit, t.value_high)
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


def number_cond(v: NumberValue, column: Any, high: Any = None) -> Cond:
    """eq/ne use the precision range of the value, the comparisons the exact value; ap is
    within 10% of it (§3.1.1.4.1).

    With ``high`` (``value_high``: NULL for a point) a row may be a Range, ``column`` its low
    bound: the target is the interval [low, high] (§3.1.1.4.1, §3.1.1.4.6 ranges): eq the
    search range contains it, ne not; gt/ge the range above the value intersects it (high >
    value), lt/le the range below does (low < value); sa it starts after the value, eb it ends
    before; ap it overlaps the approximate range. This condition is the part that the index on
    ``column`` answers: every point, and the Ranges whose low bound decides (a residual test
    of ``high`` for eq and eb); :func:`range_extra` adds the Ranges that only their high bound
    matches (gt, ge, ap), so that a point search keeps its index range."""
    exact, low, upper = float(v.value), float(v.low), float(v.high)
    ranged = Unindexed(high) if high is not None else None
    if v.prefix == "eq":
        conds = [column >= low, column < upper]
        if ranged is not None:
            conds.append(or_(ranged.is_(None), ranged < upper))
        return and_(*conds)
    if v.prefix == "ne":
        terms = [column < low, column >= upper]
        if ranged is not None:
            terms.append(ranged >= upper)
        return or_(*terms)
    if v.prefix == "ap":
        spread = abs(v.value) / 10
        if not spread:
            return and_(column >= low, column < upper)
        return and_(column >= float(v.value - spread), column <= float(v.value + spread))
    if v.prefix == "eb" and ranged is not None:
        return and_(column < exact, or_(ranged.is_(None), ranged < exact))
    ops = {"gt": column > exact, "sa": column > exact, "lt": column < exact, "eb": column < exact}
    ops |= {"ge": column >= exact, "le": column <= exact}
    result: Cond = ops[v.prefix]
    return result


def number_range_extra(v: NumberValue, column: Any, high: Any) -> Cond | None:
    """The Ranges that :func:`number_cond` leaves to their high bound (``high`` NOT NULL: the
    partial ``(type, param, value_high)`` index): gt/ge, the range above the value meets
    [low, high] though low does not; ap, [low, high] overlaps the approximate range."""
    exact = float(v.value)
    if v.prefix == "gt":
        return _c(high > exact)
    if v.prefix == "ge":
        return _c(high >= exact)
    if v.prefix == "ap":
        spread = abs(v.value) / 10
        if not spread:
            return and_(high >= float(v.low), column < float(v.high))
        return and_(high >= float(v.value - spread), column <= float(v.value + spread))
    return None


def range_extra(kind: str, t: Any, value: Any) -> Cond | None:
    """For a number or quantity value, the Range rows of ``t`` that match only by their high
    bound (:func:`number_range_extra`); None for other kinds and prefixes."""
    if kind == "number":
        return number_range_extra(value, t.value, t.value_high)
    if kind != "quantity":
        return None
    extra = number_range_extra(value.number, t.value, t.value_high)
    if extra is None:
        return None
    return and_(extra, *_unit_conds(value, t.system, t.code, t.unit))


def quantity_cond(
    v: QuantityValue, value: Any, system: Any, code: Any, unit: Any, high: Any = None
) -> Cond:
    """``number|system|code`` matches system and code; ``number||code`` code or unit
    (§3.1.1.4.6). Units are not converted (no UCUM canonical form). ``high``: see
    :func:`number_cond`."""
    return and_(number_cond(v.number, value, high), *_unit_conds(v, system, code, unit))


def _unit_conds(v: QuantityValue, system: Any, code: Any, unit: Any) -> list[Cond]:
    conds: list[Cond] = []
    if v.system is not None:
        conds.append(system == v.system)
        if v.code is not None:
            conds.append(code == v.code)
    elif v.code is not None:
        conds.append(or_(code == v.code, unit == v.code) if unit is not None else code == v.code)
    return conds


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
    """An absolute URL as written; ``Type/id`` or ``id`` a local reference to it
    (:func:`local_cond`)."""
    if v.url is not None:
        return _c(t.url == v.url)
    if v.target_type is None:
        return and_(t.target_id == v.target_id, local_cond(t.url, v.base_url))
    return and_(
        t.target_id == v.target_id, t.target_type == v.target_type, local_cond(t.url, v.base_url)
    )


def local_cond(url: Any, base_url: str | None) -> Cond:
    """Whether a reference row points at this server's resource (R4 §3.1.1.4.12
    ``#reference``): a relative reference (``Type/id``: ``url`` NULL) or an absolute URL under
    ``base_url`` ("If the server base address is http://example.org/fhir, then ... also matches
    http://example.org/fhir/Patient/123"). Another server's URL or a canonical that ends in
    ``Type/id`` keeps its ``target_type``/``target_id`` in the index but is not local.

    A residual filter after the ``(type, param, target_id, target_type)`` lookup: ``url`` is
    :class:`Unindexed` so that SQLite does not turn the OR into lookups on ``url``."""
    column = Unindexed(url)
    if not base_url:
        return _c(column.is_(None))
    prefix = base_url.rstrip("/") + "/"
    upper = prefix_upper(prefix)
    assert upper is not None  # "/" has a successor
    return or_(column.is_(None), and_(column >= prefix, column < upper))


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
    a token of the reference parameter), or the identifier of the resource referred to (the
    branches of a chain to each target type's ``identifier``)."""
    own = aliased(FhirToken)
    direct = select(own.resource_pk).where(
        *_scope(own, leaf.resource_type, leaf.param.code, types=leaf.types),
        or_(*(token_cond(own.system, own.code, v) for v in leaf.values)),
    )
    branches = _chain_branches(leaf.via) if leaf.via is not None else []
    return _c(r.pk.in_(_union([direct, *branches])))


def _chain(chain: Chain, r: Any) -> Cond:
    """One SELECT per target type, joined by UNION ALL (an OR of branches would make
    PostgreSQL scan every resource of the target types); the matching targets are an IN list
    that drives the ``(resource_type, param, target_id, ...)`` index of ``fhir_reference``."""
    return _c(r.pk.in_(_union(_chain_branches(chain))))


def _chain_probe(chain: Chain, r: Any) -> Cond:
    """A chain tested per resource (not the driver): the reference rows of ``r`` lead to the
    target, which must meet the inner criterion (itself probed). A page ordered by ``pk``
    then stops after ``_count`` matches instead of collecting every target of a broad inner
    criterion (``subject:Patient.birthdate=lt1950``)."""
    branches = []
    for target, inner in chain.branches:
        ref, t = aliased(FhirReference), aliased(FhirResource)
        branches.append(
            exists().where(
                ref.resource_pk == r.pk,
                *_scope(ref, chain.resource_type, chain.param.code, probe=True),
                ref.target_type == target,
                local_cond(ref.url, chain.base_url),
                t.resource_type == target,
                t.res_id == ref.target_id,
                t.deleted.is_(False),
                criterion_sql(inner, t, probe=True),
            )
        )
    return or_(*branches)


def _has_probe(has: Has, r: Any) -> Cond:
    """``_has`` tested per resource (not the driver): a source resource refers to ``r``
    through the parameter and meets the inner criterion (probed)."""
    ref, s = aliased(FhirReference), aliased(FhirResource)
    return exists().where(
        ref.target_type == has.resource_type,
        ref.target_id == r.res_id,
        Unindexed(ref.resource_type) == has.source_type,
        ref.param == has.param.code,
        local_cond(ref.url, has.base_url),
        s.pk == ref.resource_pk,
        s.deleted.is_(False),
        criterion_sql(has.inner, s, probe=True),
    )


def _union(selects: list[Any]) -> Any:
    """One SELECT, or several joined by UNION ALL."""
    if len(selects) == 1:
        return selects[0]
    combine: Any = union_all
    return combine(*selects)


def _chain_branches(chain: Chain) -> list[Any]:
    branches = []
    for target, inner in chain.branches:
        ref, t = aliased(FhirReference), aliased(FhirResource)
        targets = select(t.res_id).where(*where_criteria(target, [inner], t), t.deleted.is_(False))
        branches.append(
            select(ref.resource_pk).where(
                *_scope(ref, chain.resource_type, chain.param.code),
                ref.target_id.in_(targets),
                ref.target_type == target,
                local_cond(ref.url, chain.base_url),
            )
        )
    return branches


def _has(has: Has, r: Any) -> Cond:
    ref, s = aliased(FhirReference), aliased(FhirResource)
    sources = select(s.pk).where(
        *where_criteria(has.source_type, [has.inner], s), s.deleted.is_(False)
    )
    sub = select(ref.target_id).where(  # SQLite: look up by resource_pk, not by type
        Unindexed(ref.resource_type) == has.source_type,
        ref.param == has.param.code,
        Unindexed(ref.target_type) == has.resource_type,
        ref.resource_pk.in_(sources),
        local_cond(ref.url, has.base_url),
    )
    t = aliased(FhirResource)  # a pk list like every other driver (the targets by their id)
    targets = select(t.pk).where(t.resource_type == has.resource_type, t.res_id.in_(sub))
    return _c(r.pk.in_(targets))


class Unindexed(ColumnElement[str]):
    """A column that SQLite must not use an index for (unary ``+``, SQLite's documented way
    to disqualify a term); as is on other databases."""

    inherit_cache = True
    _traverse_internals = [("column", InternalTraversal.dp_clauseelement)]

    def __init__(self, column: Any) -> None:
        self.column = column
        self.type = column.type


@compiles(Unindexed)
def _unindexed(element: Unindexed, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.column, **kw))


@compiles(Unindexed, "sqlite")
def _unindexed_sqlite(element: Unindexed, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.column, **kw))


def sort_columns(keys: Sequence[SortKey], resource_type: str | None, r: Any) -> list[Any]:
    """ORDER BY terms: per key a correlated MIN (ascending) or MAX (descending) over the
    resource's index rows of the parameter (looked up by ``resource_pk``), missing values
    last; then ``r.pk`` so that the order is total and offset paging is stable
    (§3.1.1.5.1)."""
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
            value = getattr(t, name)
            if key.descending and key.type in ("number", "quantity"):
                value = func.coalesce(t.value_high, t.value)  # a Range's high bound
            column = (
                select(agg(value))
                .where(t.resource_pk == r.pk, *_scope(t, resource_type, key.code, probe=True))
                .scalar_subquery()
            )
        terms.append((column.desc() if key.descending else column.asc()).nulls_last())
    terms.append(r.pk.asc())
    return terms
