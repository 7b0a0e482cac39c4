"""The FHIR de-identification rules (:mod:`medflow.deid.fhir`): their file format, in the spirit
of Microsoft's "FHIR Tools for Anonymization" configuration (``fhirPathRules`` of ``{path,
method}``, the first matching rule decides), their loading and checking against the R4
StructureDefinitions (datatypes.html), and the matcher that finds the rule of an element
(through backbone elements and choice types, by resource, by data type or by name)."""

from __future__ import annotations

import gzip
import json
import logging
import re
from dataclasses import dataclass
from datetime import date
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medflow.core.errors import InvalidInput

log = logging.getLogger(__name__)

FHIR_PATIENT_SYSTEM = "urn:medflow:fhir-patient"
"""The key system of a Patient without an identifier of the patient system (value: its id)."""
DAR_URL = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
PSEUDED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "PSEUDED",
    "display": "pseudonymized",
}
"""The security label of de-identified output (HL7 v3 ObservationValue, R4 security-labels)."""
Method = Literal["keep", "redact", "dateshift", "pseudonym", "substitute", "generalize"]
_SYNONYMS = {"cryptohash": "pseudonym", "encrypt": "pseudonym"}
_DATES = frozenset({"date", "dateTime", "instant"})
_PRIM, _COMPLEX, _RESOURCE = 0, 1, 2
_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(.*)", re.DOTALL)
_UID = re.compile(r"[0-9]+(\.[0-9]+)+")
_REF = re.compile(r"(?:(?P<base>.+)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9.\-]{1,64})"
                  r"(?:/_history/[^/]+)?")  # fmt: skip
_DEFAULT_RULES = "data/fhir-rules.yaml"
_SUFFIXES = (".ndjson", ".json")
_ADDRESS_KEPT = frozenset({"use", "type", "state", "country", "period"})
"""What a generalized Address keeps (HIPAA Safe Harbor: nothing smaller than a state)."""


# -- the R4 element table ----------------------------------------------------------------------


class _Field(NamedTuple):
    base: str
    """The element's name (``value`` for every ``value[x]`` variant)."""
    json: str
    type: str
    child: str | None
    """The definition key of a complex value (a datatype or a backbone path)."""
    kind: int
    array: bool


@cache
def _structures() -> dict[str, Any]:
    raw = resources.files("medflow.fhir.data").joinpath("structures.json.gz").read_bytes()
    table: dict[str, Any] = json.loads(gzip.decompress(raw))
    return table


@cache
def _resource_types() -> frozenset[str]:
    return frozenset(_structures()["resourceTypes"])


@cache
def _fields(key: str) -> tuple[dict[str, _Field], tuple[tuple[str, ...], ...]]:
    """JSON property name -> field of definition ``key``, and the required elements' names."""
    table = _structures()
    definitions, primitives = table["definitions"], table["primitives"]
    fields: dict[str, _Field] = {}
    required: list[tuple[str, ...]] = []
    for name, entry in definitions[key]["elements"].items():
        names = entry["jsonNames"] if entry["choice"] else [name]
        for json_name, type_name in zip(names, entry["types"], strict=True):
            if "ref" in entry:
                kind, child = _COMPLEX, entry["ref"]
            elif type_name in primitives:
                kind, child = _PRIM, None
            elif type_name in definitions and definitions[type_name]["kind"] != "resource":
                kind, child = _COMPLEX, type_name
            else:
                kind, child = _RESOURCE, None
            fields[json_name] = _Field(name, json_name, type_name, child, kind, entry["array"])
        if entry["min"] >= 1 and entry["max"] != "0":
            required.append(tuple(names))
    return fields, tuple(required)


# -- rules -----------------------------------------------------------------------------------


class FhirRule(BaseModel):
    """One rule: ``path`` (see the module docstring), ``method`` and, for ``substitute``,
    ``replaceWith``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    method: Method
    replace_with: Any = Field(default=None, alias="replaceWith")

    @field_validator("method", mode="before")
    @classmethod
    def _method(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().lower()
            return _SYNONYMS.get(value, value)
        return value


class FhirRuleParameters(BaseModel):
    """``parameters``: ``ageReferenceDate``, the day living patients' ages are computed at
    (default: the day the de-identification runs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    age_reference_date: date | None = Field(default=None, alias="ageReferenceDate")


class FhirRules(BaseModel):
    """A rules file: ``fhirVersion`` (R4), ``fhirPathRules`` and ``parameters``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fhir_version: Literal["R4"] = Field(default="R4", alias="fhirVersion")
    rules: list[FhirRule] = Field(alias="fhirPathRules", min_length=1)
    parameters: FhirRuleParameters = Field(default_factory=FhirRuleParameters)

    @field_validator("parameters", mode="before")
    @classmethod
    def _no_parameters(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _paths(self) -> FhirRules:
        for i, rule in enumerate(self.rules):
            problem = _check_rule(rule)
            if problem:
                raise ValueError(f"fhirPathRules[{i}] ({rule.path!r}, {rule.method}): {problem}")
        return self


def _targets(path: str) -> tuple[set[str] | None, str | None]:
    """The FHIR types ``path`` selects (None for ``*.name``), or an explanation."""
    segments = path.split(".")
    root, rest = segments[0], segments[1:]
    table = _structures()
    definitions = table["definitions"]
    if root == "*":
        ok = len(rest) == 1 and rest[0].isidentifier()
        return None, None if ok else "'*' takes exactly one element name ('*.comment')"
    if root == "Resource":
        keys, types = {"DomainResource"}, {"Resource"}
    elif root in definitions or root in table["primitives"]:
        keys, types = {root}, {root}
    else:
        return None, f"{root!r} is neither an R4 resource type nor a data type"
    for segment in rest:
        found: set[str] = set()
        types = set()
        for key in keys:
            for f in _fields(key)[0].values() if key in definitions else ():
                if segment in (f.base, f.json):
                    types.add(f.type)
                    if f.child is not None:
                        found.add(f.child)
        if not types:
            return None, f"no element {segment!r} there (R4 {root} definitions)"
        keys = found
    return types, None


def _check_rule(rule: FhirRule) -> str | None:
    if "" in rule.path.split(".") or rule.path != rule.path.strip():
        return "a path is names separated by dots"
    types, problem = _targets(rule.path)
    if problem:
        return problem
    if rule.path in _resource_types() and rule.method != "redact":
        return "a whole resource type can only be redacted (dropped)"
    if rule.method == "substitute" and rule.replace_with is None:
        return "substitute needs replaceWith"
    if rule.method == "generalize" and types is not None and not types <= {"Address", *_DATES}:
        return "generalize applies to Address and to dates (birthDate) only"
    return None


def load_rules(path: Path | str | None = None) -> FhirRules:
    """The rules in the YAML (or JSON) file ``path``, or medflow's default rules."""
    if path is None:
        name = "default FHIR rules"
        text = resources.files("medflow.deid").joinpath(_DEFAULT_RULES).read_text("utf-8")
    else:
        name = str(path)
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise InvalidInput(f"cannot read FHIR rules {name}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"FHIR rules {name} are not YAML: {exc}") from exc
    try:
        return FhirRules.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'file'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid FHIR rules {name}: {problems}") from None


@dataclass(frozen=True)
class _Rule:
    index: int
    root: str
    segments: tuple[str, ...]
    method: str
    value: Any


_Context = tuple[str, bool, tuple[tuple[str, str], ...]]
"""(root type, whether it is a resource, the (name, JSON name) steps from it)."""


class _Matcher:
    """The compiled rules: the first (lowest index) rule matching an element."""

    def __init__(self, rules: FhirRules) -> None:
        self.by_type: dict[str, list[_Rule]] = {}
        self.by_name: dict[str, list[_Rule]] = {}
        self.dropped: set[str] = set()
        for i, r in enumerate(rules.rules):
            root, *rest = r.path.split(".")
            rule = _Rule(i, root, tuple(rest), r.method, r.replace_with)
            if not rest and root in _resource_types():
                self.dropped.add(root)
            elif not rest:
                self.by_type.setdefault(root, []).append(rule)
            else:
                self.by_name.setdefault(rest[-1], []).append(rule)

    def first(self, f: _Field, contexts: list[_Context]) -> _Rule | None:
        candidates = [*self.by_type.get(f.type, ()), *self.by_name.get(f.base, ())]
        if f.json != f.base:
            candidates += self.by_name.get(f.json, ())
        rule: _Rule
        for rule in sorted(candidates, key=lambda r: r.index):
            if not rule.segments or rule.root == "*" or _matches(rule, contexts):
                return rule
        return None


def _matches(rule: _Rule, contexts: list[_Context]) -> bool:
    for root, is_resource, steps in contexts:
        same_root = rule.root == root or (rule.root == "Resource" and is_resource)
        if (
            same_root
            and len(steps) == len(rule.segments)
            and all(s in step for s, step in zip(rule.segments, steps, strict=True))
        ):
            return True
    return False
