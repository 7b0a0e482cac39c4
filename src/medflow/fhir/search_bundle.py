"""The ``searchset`` Bundle of a search (FHIR R4 search §3.1.1.6 ``#return``): entries with
``search.mode`` match/include/outcome, ``total``, and self/first/previous/next/last links; and
the resource subsets of ``_summary`` and ``_elements`` (§3.1.1.5.7 ``#summary``, §3.1.1.5.8
``#elements``), tagged ``SUBSETTED``.

``_summary=true`` keeps the top-level elements that the R4 StructureDefinitions mark
``isSummary`` (``data/structures.json.gz``), whole (their nested non-summary elements are not
pruned); ``text`` keeps ``text``, ``id``, ``meta`` and the mandatory top-level elements;
``data`` removes ``text``. ``_elements`` keeps the listed top-level elements (``name`` or
``Patient.name``; a choice element by its base name, ``value`` for ``valueQuantity``) plus
``resourceType``, ``id`` and ``meta``, and applies to matches only.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

from medflow.fhir.search_include import Found
from medflow.fhir.search_parse import SearchPlan

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}
ALWAYS = frozenset({"resourceType", "id", "meta"})


@cache
def _elements_table() -> dict[str, Any]:
    raw = resources.files("medflow.fhir.data").joinpath("structures.json.gz").read_bytes()
    definitions: dict[str, Any] = json.loads(gzip.decompress(raw))["definitions"]
    return definitions


@cache
def top_level_keys(resource_type: str, kind: str) -> frozenset[str]:
    """JSON keys of ``resource_type``'s top-level elements that are ``summary`` or
    ``mandatory`` (choice elements under each of their typed names)."""
    elements = (_elements_table().get(resource_type) or {}).get("elements", {})
    keys: set[str] = set()
    for name, spec in elements.items():
        wanted = spec.get("summary") if kind == "summary" else int(spec.get("min", 0)) > 0
        if wanted:
            keys.update(spec.get("jsonNames") or [name])
    return frozenset(keys)


@cache
def element_keys(resource_type: str, names: frozenset[str]) -> frozenset[str]:
    """JSON keys of the top-level elements ``names``: a choice element named by its base name
    (``value`` or ``value[x]``) is each of its typed names (``valueQuantity``,
    ``valueString``...), as ``_elements`` names them (R4 search §3.1.1.5.9 ``#elements``);
    a typed name or an unknown one stands for itself."""
    elements = (_elements_table().get(resource_type) or {}).get("elements", {})
    keys: set[str] = set()
    for name in names:
        base = name.removesuffix("[x]")
        spec = elements.get(base) or {}
        keys.update(spec.get("jsonNames") or [name])
    return frozenset(keys)


def shape(resource: dict[str, Any], plan: SearchPlan) -> dict[str, Any]:
    """The resource as ``_summary`` / ``_elements`` ask (unchanged when neither does)."""
    rtype = str(resource.get("resourceType"))
    if plan.summary in ("true", "text", "data"):
        if plan.summary == "true":
            keep: frozenset[str] | None = ALWAYS | top_level_keys(rtype, "summary")
        elif plan.summary == "text":
            keep = ALWAYS | {"text"} | top_level_keys(rtype, "mandatory")
        else:
            keep = None
        drop = {"text"} if plan.summary == "data" else set()
        return _subset(resource, keep, drop)
    if plan.elements:
        names = {e.split(".", 1)[1] if e.startswith(rtype + ".") else e for e in plan.elements}
        listed = element_keys(rtype, frozenset(n for n in names if "." not in n))
        return _subset(resource, ALWAYS | listed | top_level_keys(rtype, "mandatory"), set())
    return resource


def _subset(resource: dict[str, Any], keep: Iterable[str] | None, drop: set[str]) -> dict[str, Any]:
    kept = set(keep) if keep is not None else None
    out = {
        k: v
        for k, v in resource.items()
        if k not in drop and (kept is None or k in kept or (k[:1] == "_" and k[1:] in kept))
    }
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    out["meta"] = meta
    return out


def page_url(base_url: str, plan: SearchPlan, offset: int) -> str:
    """A link of the search: the parameters that were used, ``_count`` and ``_offset``."""
    pairs = [*plan.used, ("_count", str(plan.count))]
    if offset:
        pairs.append(("_offset", str(offset)))
    path = f"{base_url.rstrip('/')}/{plan.resource_type}" if plan.resource_type else base_url
    return f"{path}?{urlencode(pairs, quote_via=quote, safe=':/|,$*')}"


def links(
    base_url: str, plan: SearchPlan, *, total: int | None, has_next: bool
) -> list[dict[str, str]]:
    """self, first, previous, next and (when the total is known) last (§3.1.1.6
    ``#paging``): offsets over an order that ends in the primary key, so stable while the
    data do not change."""
    count, offset = plan.count, plan.offset
    out = [{"relation": "self", "url": page_url(base_url, plan, offset)}]
    if plan.summary == "count" or count == 0:
        return out
    out.append({"relation": "first", "url": page_url(base_url, plan, 0)})
    if offset > 0:
        prev = max(0, offset - count)
        out.append({"relation": "previous", "url": page_url(base_url, plan, prev)})
    if has_next:
        out.append({"relation": "next", "url": page_url(base_url, plan, offset + count)})
    if total is not None:
        last = ((total - 1) // count) * count if total > 0 else 0
        out.append({"relation": "last", "url": page_url(base_url, plan, last)})
    return out


def outcome(warnings: Sequence[str]) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "warning", "code": "not-supported", "diagnostics": w} for w in warnings
        ],
    }


def bundle(
    plan: SearchPlan,
    *,
    base_url: str,
    matches: Sequence[Found],
    included: Sequence[Found],
    total: int | None,
    has_next: bool,
    warnings: Sequence[str] = (),
) -> dict[str, Any]:
    """The ``searchset`` Bundle (matches, then includes, then an OperationOutcome of
    warnings)."""
    root = base_url.rstrip("/")
    entries: list[dict[str, Any]] = []
    for mode, rows in (("match", matches), ("include", included)):
        for row in rows:
            resource = json.loads(row.content)
            if mode == "match":
                resource = shape(resource, plan)
            entries.append(
                {
                    "fullUrl": f"{root}/{row.resource_type}/{row.res_id}",
                    "resource": resource,
                    "search": {"mode": mode},
                }
            )
    if warnings:
        entries.append(
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": outcome(warnings),
                "search": {"mode": "outcome"},
            }
        )
    out: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": _now()},
        "type": "searchset",
    }
    if total is not None:
        out["total"] = total
    out["link"] = links(base_url, plan, total=total, has_next=has_next)
    if entries:
        out["entry"] = entries
    return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
