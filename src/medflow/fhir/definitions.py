"""The FHIR R4 search parameters of every resource type, from the official definitions.

The package data ``data/search_parameters.json.gz`` is derived by
``scripts/gen_fhir_search_params.py`` from the R4 ``search-parameters.json`` Bundle (1,378
SearchParameter resources, FHIR R4 search §3.1.1) and the Patient CompartmentDefinition (§3.1.1.3
compartments). It is read once, on first use. Multi-resource expressions are already split by
resource type there, and the ``Resource``/``DomainResource`` parameters (``_id``, ``_lastUpdated``,
``_profile``, ``_security``, ``_source``, ``_tag``, ``_text``, ``_content``, ``_query``) expanded to
every concrete type. Custom SearchParameters are added at run time with :func:`register`.

The same script writes ``data/search_elements.json.gz``, the element table of the R4
StructureDefinitions that :mod:`medflow.fhir.fhirpath` reads to type what it extracts.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from types import MappingProxyType
from typing import Any, Literal, cast, get_args

from medflow.core.errors import InvalidInput
from medflow.fhir.fhirpath import compile_expression, split_union

ParamType = Literal[
    "number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"
]
PARAM_TYPES: frozenset[str] = frozenset(get_args(ParamType))

_EMPTY: Mapping[str, SearchParam] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Component:
    """One component of a composite parameter (SearchParameter.component, R4 §3.1.1.4.8).

    ``expression`` is relative to the node the composite's own expression selects.
    """

    code: str
    type: ParamType
    expression: str
    definition: str


@dataclass(frozen=True, slots=True)
class SearchParam:
    """A search parameter of one resource type (FHIR R4 SearchParameter, restricted to a base).

    ``special`` parameters are answered by the search engine itself, not from index tables:
    ``_id``/``_lastUpdated`` from the resource table, ``_has``/``_list``/``_query``/``_text``/
    ``_content`` and ``near`` (type ``special``) by dedicated code or not at all.
    """

    code: str
    type: ParamType
    expression: str | None
    url: str | None = None
    targets: tuple[str, ...] = ()
    components: tuple[Component, ...] = ()
    comparators: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()
    multiple_or: bool | None = None
    multiple_and: bool | None = None
    special: bool = False
    custom: bool = False
    usage: str = "normal"
    """SearchParameter.xpathUsage: ``normal``, ``phonetic`` or ``nearby``."""

    @property
    def indexed(self) -> bool:
        """Whether :func:`medflow.fhir.indexing.index_resource` writes rows for it."""
        return not self.special and self.expression is not None


def _package_json(name: str) -> Any:
    raw = resources.files("medflow.fhir.data").joinpath(name).read_bytes()
    if name.endswith(".gz"):
        raw = gzip.decompress(raw)
    return json.loads(raw)


def _load_params() -> Any:
    for name in ("search_parameters.json.gz", "search_parameters.json"):
        if resources.files("medflow.fhir.data").joinpath(name).is_file():
            return _package_json(name)
    raise FileNotFoundError("medflow/fhir/data/search_parameters.json[.gz]")  # pragma: no cover


def _param_from_entry(code: str, entry: Mapping[str, Any]) -> SearchParam:
    return SearchParam(
        code=code,
        type=cast(ParamType, entry["type"]),
        expression=entry.get("expression"),
        url=entry.get("url"),
        targets=tuple(entry.get("targets", ())),
        components=tuple(
            Component(c["code"], cast(ParamType, c["type"]), c["expression"], c["definition"])
            for c in entry.get("components", ())
        ),
        comparators=tuple(entry.get("comparators", ())),
        modifiers=tuple(entry.get("modifiers", ())),
        multiple_or=entry.get("multipleOr"),
        multiple_and=entry.get("multipleAnd"),
        special=bool(entry.get("special", False)),
        custom=bool(entry.get("custom", False)),
        usage=entry.get("usage", "normal"),
    )


class SearchParamRegistry:
    """Search parameters per resource type: the R4 ones plus custom ones registered later.

    Readers never lock: :meth:`register` replaces the per-type mapping (copy on write).
    """

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.fhir_version: str = data["fhirVersion"]
        self.standard_count: int = data["standardCount"]
        self._types = frozenset(data["resourceTypes"])
        self._params: dict[str, Mapping[str, SearchParam]] = {
            rt: MappingProxyType(
                {code: _param_from_entry(code, e) for code, e in sorted(per.items())}
            )
            for rt, per in data["params"].items()
        }
        self._compartments: dict[str, dict[str, tuple[str, ...]]] = {
            name: {rt: tuple(codes) for rt, codes in per.items()}
            for name, per in data["compartments"].items()
        }
        self._by_url: dict[str, SearchParam] = {}
        for per in self._params.values():
            for param in per.values():
                if param.url is not None:
                    self._by_url.setdefault(param.url, param)
        self._standard = dict(self._params)
        self._lock = threading.Lock()

    def resource_types(self) -> frozenset[str]:
        return self._types

    def search_params(self, resource_type: str) -> Mapping[str, SearchParam]:
        """Parameters of ``resource_type`` by code (empty for an unknown type)."""
        return self._params.get(resource_type, _EMPTY)

    def by_url(self, url: str) -> SearchParam | None:
        """A parameter by its canonical URL (the first base's copy of a multi-base one)."""
        return self._by_url.get(url)

    def compartment(self, name: str, resource_type: str) -> tuple[str, ...]:
        """Codes of the parameters that put a ``resource_type`` in compartment ``name``."""
        return self._compartments.get(name, {}).get(resource_type, ())

    def register(self, resource_type: str, param: SearchParam | Mapping[str, Any]) -> SearchParam:
        """Add (or replace) a parameter of ``resource_type``; returns what was registered.

        ``param`` is a :class:`SearchParam` or a SearchParameter resource (FHIR R4
        SearchParameter: ``code``, ``type``, ``expression``, ``base`` listing the type).
        """
        if resource_type not in self._types:
            raise InvalidInput(f"unknown resource type {resource_type!r}")
        if not isinstance(param, SearchParam):
            param = self.from_resource(param, resource_type)
        with self._lock:
            per = dict(self._params.get(resource_type, {}))
            per[param.code] = param
            self._params[resource_type] = MappingProxyType(per)
            if param.url is not None:
                self._by_url[param.url] = param
        return param

    def unregister(self, resource_type: str, code: str) -> None:
        """Remove a custom parameter; a standard R4 parameter of the same code comes back."""
        with self._lock:
            per = dict(self._params.get(resource_type, {}))
            old = per.pop(code, None)
            standard = self._standard.get(resource_type, _EMPTY).get(code)
            if standard is not None:
                per[code] = standard
            self._params[resource_type] = MappingProxyType(per)
            if old is not None and old.url is not None and self._by_url.get(old.url) is old:
                del self._by_url[old.url]

    def from_resource(self, resource: Mapping[str, Any], resource_type: str) -> SearchParam:
        """A SearchParameter resource as the :class:`SearchParam` of one of its bases."""
        code, ptype = resource.get("code"), resource.get("type")
        if not isinstance(code, str) or not code or ptype not in PARAM_TYPES:
            raise InvalidInput("SearchParameter needs a code and a valid type")
        bases = resource.get("base") or [resource_type]
        if resource_type not in bases and not {"Resource", "DomainResource"} & set(bases):
            raise InvalidInput(f"SearchParameter {code!r} has no base {resource_type!r}")
        expression = resource.get("expression")
        if expression is not None and not isinstance(expression, str):
            raise InvalidInput(f"SearchParameter {code!r}: expression must be a string")
        components = []
        for comp in resource.get("component", ()):
            ref = self._by_url.get(comp.get("definition", ""))
            if ref is None or not isinstance(comp.get("expression"), str):
                raise InvalidInput(f"SearchParameter {code!r}: unknown component definition")
            components.append(Component(ref.code, ref.type, comp["expression"], comp["definition"]))
        if ptype == "composite" and not components:
            raise InvalidInput(f"composite SearchParameter {code!r} has no components")
        for text in [expression or ""] + [c.expression for c in components]:
            if text:
                compile_expression(text)  # InvalidInput when not FHIRPath
        return SearchParam(
            code=code,
            type=cast(ParamType, ptype),
            expression=expression,
            url=resource.get("url"),
            targets=tuple(sorted(resource.get("target", ()))),
            components=tuple(components),
            comparators=tuple(resource.get("comparator", ())),
            modifiers=tuple(resource.get("modifier", ())),
            multiple_or=resource.get("multipleOr"),
            multiple_and=resource.get("multipleAnd"),
            special=ptype == "special" or expression is None,
            custom=True,
        )

    def copy(self) -> SearchParamRegistry:
        """An independent registry with the same parameters (for tests and tenants)."""
        clone = object.__new__(SearchParamRegistry)
        clone.fhir_version, clone.standard_count = self.fhir_version, self.standard_count
        clone._types = self._types
        clone._params = dict(self._params)
        clone._compartments = self._compartments
        clone._by_url = dict(self._by_url)
        clone._standard = self._standard
        clone._lock = threading.Lock()
        return clone


@cache
def default_registry() -> SearchParamRegistry:
    """The process-wide registry, loaded from the package data on first use."""
    return SearchParamRegistry(_load_params())


def resource_types() -> frozenset[str]:
    """The concrete R4 resource types."""
    return default_registry().resource_types()


def search_params(resource_type: str) -> Mapping[str, SearchParam]:
    """The search parameters of ``resource_type`` by code (R4 plus registered custom ones)."""
    return default_registry().search_params(resource_type)


def patient_compartment(resource_type: str) -> tuple[str, ...]:
    """Parameters that put a resource in a Patient's compartment (R4 CompartmentDefinition)."""
    return default_registry().compartment("Patient", resource_type)


def register(resource_type: str, param: SearchParam | Mapping[str, Any]) -> SearchParam:
    """Register a custom search parameter for ``resource_type`` in the process-wide registry."""
    return default_registry().register(resource_type, param)


def register_search_parameter(resource: Mapping[str, Any]) -> list[SearchParam]:
    """Register a SearchParameter resource for each of its bases (``Resource``: every type)."""
    registry = default_registry()
    bases = list(resource.get("base") or ())
    if not bases:
        raise InvalidInput("SearchParameter has no base")
    if {"Resource", "DomainResource"} & set(bases):
        bases = sorted(registry.resource_types())
    unknown = [rt for rt in bases if rt not in registry.resource_types()]
    if unknown:
        raise InvalidInput(f"SearchParameter base {unknown[0]!r} is not a resource type")
    params = []
    for rt in bases:  # check them all before registering any
        param = registry.from_resource(resource, rt)
        if param.expression is not None and len(bases) > 1:
            param = replace(param, expression=_restrict(param.expression, rt))
        params.append((rt, param))
    return [registry.register(rt, param) for rt, param in params]


def _restrict(expression: str, resource_type: str) -> str:
    """Keep the union members of ``expression`` that start at ``resource_type`` (or any type)."""
    kept = []
    for atom in split_union(expression):
        head = atom.lstrip("( ").split(".", 1)[0]
        if head in (resource_type, "Resource", "DomainResource") or not head[:1].isupper():
            kept.append(atom)
    return " | ".join(kept) if kept else expression
