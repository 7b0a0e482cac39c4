"""FHIRPath for search indexing: direct extractors for the simple paths, fhirpathpy for the rest.

The R4 SearchParameter expressions (FHIR R4 search §3.1.1, FHIRPath N1) are nearly all simple
paths: ``Type.a.b``, unions ``|``, ``(Type.x as T)``, ``.as(T)``/``.ofType(T)``,
``.where(system='email')`` and ``.where(resolve() is Patient)``, ``[0]``, ``%resource``.
:func:`compile_expression` turns those into closures over plain JSON (about 1 µs a step) and hands
anything else to fhirpathpy (compiled once, with the R4 model), which costs 50 µs and more a call.

Results are :class:`Node` values: the JSON value and its FHIR type, known from the element table
of the R4 StructureDefinitions (``data/search_elements.json.gz``). A choice element (FHIR R4
§2.24.0.1, ``value[x]``) is found under its typed JSON names (``valueQuantity``,
``valueCodeableConcept``, ...), and the name that matched gives the node's type. Inline
backbone elements are typed by their path (``Observation.component``). ``resolve() is T`` is
answered from the reference itself (``T/id``, an absolute URL ending in ``T/id``, ``type``, or a
contained resource), as HAPI does: indexing never fetches other resources.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from functools import cache, lru_cache
from importlib import resources
from types import MappingProxyType
from typing import Any, NamedTuple

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream  # type: ignore[import-untyped]
from antlr4.error.ErrorListener import ErrorListener  # type: ignore[import-untyped]
from fhirpathpy.engine.nodes import FP_Type, ResourceNode
from fhirpathpy.models import models as fhirpath_models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from medflow.core.errors import InvalidInput


class Node(NamedTuple):
    """One FHIRPath result: the JSON ``value`` and its FHIR ``type``.

    ``type`` is a FHIR type code (``Quantity``, ``dateTime``, ``Patient``), the path of an inline
    backbone element (``Observation.component``), or None when unknown.
    """

    value: Any
    type: str | None


Steps = Callable[[list[Node], Mapping[str, Any]], list[Node]]

# FHIRPath System types (FHIRPath N1 §11) that R4 expressions write where FHIR types are meant.
_SYSTEM_TYPES = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}
_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})


@cache
def _tables() -> tuple[Mapping[str, str], Mapping[str, str]]:
    raw = resources.files("medflow.fhir.data").joinpath("search_elements.json.gz").read_bytes()
    data = json.loads(gzip.decompress(raw))
    return MappingProxyType(data["elements"]), MappingProxyType(data["parents"])


def element_spec(path: str) -> tuple[tuple[str, ...], bool, str | None] | None:
    """``(types, repeats, content_reference)`` of an element path (``Observation.value[x]``)."""
    spec = _tables()[0].get(path)
    if spec is None:
        return None
    many = spec.endswith("*")
    spec = spec.rstrip("*")
    if spec.startswith("@"):
        return (), many, spec[1:]
    return tuple(spec.split(",")), many, None


def element_paths() -> Mapping[str, str]:
    """The raw element table: path -> ``"Type1,Type2"`` (``*`` repeats, ``@path`` reference)."""
    return _tables()[0]


def fhir_type_name(name: str) -> str:
    """``DateTime``/``System.String`` (FHIRPath) -> ``dateTime``/``string`` (FHIR type codes)."""
    name = name.removeprefix("System.").removeprefix("FHIR.")
    return _SYSTEM_TYPES.get(name, name)


def is_a(type_name: str | None, base: str) -> bool:
    """Whether ``type_name`` is ``base`` or derives from it (``Age`` is a ``Quantity``)."""
    parents = _tables()[1]
    seen = 0
    while type_name is not None and seen < 16:
        if type_name == base:
            return True
        type_name = parents.get(type_name)
        seen += 1
    return False


def infer_type(value: Any) -> str | None:
    """The FHIR type a JSON value most likely has, for nodes whose type is unknown."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float | Decimal):
        return "decimal"
    if isinstance(value, str):
        return "string"
    if not isinstance(value, dict):
        return None
    if "resourceType" in value:
        return str(value["resourceType"])
    return _infer_complex(value)


def _infer_complex(value: dict[str, Any]) -> str | None:
    keys = value.keys()
    rules: tuple[tuple[str, bool], ...] = (
        ("CodeableConcept", "coding" in keys or keys == {"text"}),
        ("Reference", "reference" in keys or ("identifier" in keys and "display" in keys)),
        ("Period", bool(keys) and keys <= {"start", "end", "id", "extension"}),
        ("Range", bool(keys) and keys <= {"low", "high", "id", "extension"}),
        ("Money", "currency" in keys),
        ("Ratio", "numerator" in keys or "denominator" in keys),
        ("HumanName", bool({"family", "given", "prefix", "suffix"} & keys)),
        ("Address", bool({"line", "city", "postalCode", "country", "state", "district"} & keys)),
        ("Timing", "event" in keys or "repeat" in keys),
        ("Quantity", "value" in keys and bool({"unit", "code", "comparator"} & keys)),
        ("Coding", "code" in keys),
        ("ContactPoint", value.get("system") in _CONTACT_SYSTEMS and "value" in keys),
        ("Identifier", "value" in keys),
    )
    for name, hit in rules:
        if hit:
            return name
    return None


def split_union(expression: str) -> list[str]:
    """Split at the top-level ``|`` (outside parentheses, brackets and string literals)."""
    parts: list[str] = []
    depth, quote, start = 0, False, 0
    for i, ch in enumerate(expression):
        if ch == "'":
            quote = not quote
        elif quote:
            continue
        elif ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return parts


# --- type-directed child access ---------------------------------------------------------------

_Options = tuple[tuple[str, str | None], ...]
_OPTIONS: dict[tuple[str | None, str], _Options] = {}


def _child_options(type_key: str | None, name: str) -> _Options:
    """The JSON keys under which child ``name`` of a ``type_key`` node appears, with types."""
    key = (type_key, name)
    options = _OPTIONS.get(key)
    if options is None:
        options = _compute_options(type_key, name)
        _OPTIONS[key] = options
    return options


def _compute_options(type_key: str | None, name: str) -> _Options:
    if type_key is None:
        return ((name, None),)
    spec = element_spec(f"{type_key}.{name}")
    if spec is not None:
        types, _, ref = spec
        if ref is not None:
            return ((name, ref),)
        if types and types[0] in ("BackboneElement", "Element"):
            return ((name, f"{type_key}.{name}"),)
        return ((name, types[0] if len(types) == 1 else None),)
    choice = element_spec(f"{type_key}.{name}[x]")
    if choice is not None:
        return tuple((name + t[0].upper() + t[1:], t) for t in choice[0])
    return ((name, None),)


def _child(name: str, *, only: str | None = None) -> Steps:
    """Step to child ``name``; ``only``: a type filter follows, so skip other choice keys."""
    by_type: dict[str | None, _Options] = {}  # this step's options per node type

    def step(nodes: list[Node], _resource: Mapping[str, Any]) -> list[Node]:
        out: list[Node] = []
        append = out.append
        for value, type_key in nodes:
            if type(value) is not dict:
                continue
            options = by_type.get(type_key)
            if options is None:
                if type_key is None:
                    options = _guess_options(value, name)
                else:
                    options = _child_options(type_key, name)
                    if only is not None and len(options) > 1:
                        options = tuple(o for o in options if o[1] is None or is_a(o[1], only))
                    by_type[type_key] = options
            for key, child_type in options:
                found = value.get(key)
                if found is None:
                    continue
                if child_type == "Resource":
                    items = found if type(found) is list else [found]
                    out.extend(_resource_node(item) for item in items if item is not None)
                elif type(found) is list:
                    for item in found:
                        if item is not None:
                            append(Node(item, child_type))
                else:
                    append(Node(found, child_type))
        return out

    return step


def _resource_node(value: Any) -> Node:
    """A contained or entry resource: typed by its own ``resourceType``."""
    return Node(value, value.get("resourceType") if isinstance(value, dict) else None)


def _guess_options(value: Mapping[str, Any], name: str) -> _Options:
    """Untyped node: the key itself, or a ``name<Type>`` choice key (FHIR R4 §2.24.0.1)."""
    if name in value:
        return ((name, None),)
    for key in value:
        if key.startswith(name) and len(key) > len(name) and key[len(name)].isupper():
            suffix = key[len(name) :]
            lowered = suffix[0].lower() + suffix[1:]
            parents = _tables()[1]
            type_name = suffix if suffix in parents else lowered if lowered in parents else None
            if type_name is not None:
                return ((key, type_name),)
    return ()


def _type_filter(type_name: str) -> Steps:
    def step(nodes: list[Node], _resource: Mapping[str, Any]) -> list[Node]:
        out = []
        for node in nodes:
            node_type = node.type if node.type is not None else infer_type(node.value)
            if is_a(node_type, type_name):
                out.append(node if node.type is not None else Node(node.value, node_type))
        return out

    return step


def _start_type(type_name: str) -> Steps:
    """``Observation.`` at the start: the input nodes of that type (``Resource``: any)."""
    if type_name in ("Resource", "DomainResource"):

        def any_resource(nodes: list[Node], _resource: Mapping[str, Any]) -> list[Node]:
            return [n for n in nodes if isinstance(n.value, dict) and "resourceType" in n.value]

        return any_resource
    general = _type_filter(type_name)

    def start(nodes: list[Node], resource: Mapping[str, Any]) -> list[Node]:
        if len(nodes) == 1 and nodes[0].type == type_name:
            return nodes
        return general(nodes, resource)

    return start


def _where_equals(name: str, literal: str) -> Steps:
    def step(nodes: list[Node], _resource: Mapping[str, Any]) -> list[Node]:
        out = []
        for node in nodes:
            value = node.value
            if isinstance(value, dict):
                found = value.get(name)
                if found == literal or (isinstance(found, list) and literal in found):
                    out.append(node)
        return out

    return step


def _where_resolves_to(type_name: str) -> Steps:
    def step(nodes: list[Node], resource: Mapping[str, Any]) -> list[Node]:
        return [n for n in nodes if reference_type(n.value, resource) == type_name]

    return step


def _index(position: int) -> Steps:
    def step(nodes: list[Node], _resource: Mapping[str, Any]) -> list[Node]:
        return nodes[position : position + 1]

    return step


def _root(nodes: list[Node], resource: Mapping[str, Any]) -> list[Node]:
    return [Node(resource, resource.get("resourceType"))]


_REF_TAIL = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def reference_type(value: Any, resource: Mapping[str, Any] | None = None) -> str | None:
    """The resource type a Reference (or canonical/uri string) points to, without fetching it.

    ``Patient/1``, ``http://x/fhir/Patient/1``, ``Reference.type``, or a contained ``#id``
    looked up in ``resource.contained`` (FHIR R4 §2.3.0 references).
    """
    ref = value.get("reference") if isinstance(value, dict) else value
    if isinstance(ref, str):
        if ref.startswith("#"):
            for contained in (resource or {}).get("contained", ()):
                if isinstance(contained, dict) and contained.get("id") == ref[1:]:
                    return str(contained.get("resourceType"))
            return None
        match = _REF_TAIL.search(ref.split("|", 1)[0])
        if match:
            return match.group(1)
    if isinstance(value, dict) and isinstance(value.get("type"), str):
        return str(value["type"]).rsplit("/", 1)[-1]
    return None


# --- parsing of the supported subset --------------------------------------------------------


class _Unsupported(Exception):
    """The expression is outside the directly compiled subset: use fhirpathpy."""


_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+)|(?P<var>%[A-Za-z_]\w*)"
    r"|(?P<id>[A-Za-z_]\w*|`[^`]+`)|(?P<op>[.()\[\]|=]))"
)


def _tokenize(expression: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    text = expression.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise _Unsupported(text[pos:])
        kind = match.lastgroup or ""
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


class _Parser:
    """Recursive descent over: union := term ('|' term)*; term := head step* ['as' Type]."""

    def __init__(self, expression: str) -> None:
        self.tokens = _tokenize(expression)
        self.pos = 0

    def peek(self, value: str | None = None, kind: str | None = None) -> bool:
        if self.pos >= len(self.tokens):
            return False
        tok_kind, tok = self.tokens[self.pos]
        return (value is None or tok == value) and (kind is None or tok_kind == kind)

    def take(self, value: str | None = None, kind: str | None = None) -> str:
        if not self.peek(value, kind):
            raise _Unsupported(f"expected {value or kind}")
        self.pos += 1
        return self.tokens[self.pos - 1][1]

    def parse(self) -> tuple[Steps, frozenset[str] | None]:
        steps, keys = self.union()
        if self.pos != len(self.tokens):
            raise _Unsupported("trailing tokens")
        return steps, keys

    def union(self) -> tuple[Steps, frozenset[str] | None]:
        """The closure, and the top-level JSON keys one of which a non-empty result needs
        (None: unknown)."""
        terms = [self.term()]
        while self.peek("|"):
            self.take("|")
            terms.append(self.term())
        keys: frozenset[str] | None = frozenset()
        for _, term_keys in terms:
            keys = None if keys is None or term_keys is None else keys | term_keys
        if len(terms) == 1:
            return terms[0][0], keys
        closures = tuple(term for term, _ in terms)

        def union(nodes: list[Node], resource: Mapping[str, Any]) -> list[Node]:
            out: list[Node] = []
            for term in closures:
                out.extend(term(nodes, resource))
            return out

        return union, keys

    def term(self) -> tuple[Steps, frozenset[str] | None]:
        steps: list[_Step] = [self.head()]
        while True:
            if self.peek("."):
                self.take(".")
                steps.append(self.step())
            elif self.peek("["):
                self.take("[")
                steps.append(("fn", _index(int(self.take(kind="num")))))
                self.take("]")
            else:
                break
        if self.peek("as", "id"):
            self.take("as")
            steps.append(("cast", fhir_type_name(self.take(kind="id"))))
        return _chain(_build(steps)), _first_keys(steps)

    def head(self) -> _Step:
        if self.peek("("):
            self.take("(")
            inner, keys = self.union()
            self.take(")")
            return ("group", (inner, keys))
        if self.peek(kind="var"):
            if self.take(kind="var") not in ("%resource", "%rootResource"):
                raise _Unsupported("variable")
            return ("fn", _root)
        name = self.take(kind="id").strip("`")
        if self.peek("("):
            raise _Unsupported(f"function {name}")
        return ("type", name) if name[0].isupper() else ("child", name)

    def step(self) -> _Step:
        name = self.take(kind="id").strip("`")
        if not self.peek("("):
            return ("child", name)
        self.take("(")
        result: _Step
        if name in ("as", "ofType"):
            result = ("cast", fhir_type_name(self.take(kind="id")))
        elif name == "where":
            result = ("fn", self.where())
        elif name == "first":
            result = ("fn", _index(0))
        else:
            raise _Unsupported(f"function {name}")
        self.take(")")
        return result

    def where(self) -> Steps:
        if self.peek("resolve", "id"):
            self.take("resolve")
            self.take("(")
            self.take(")")
            self.take("is")
            return _where_resolves_to(fhir_type_name(self.take(kind="id")))
        name = self.take(kind="id")
        self.take("=")
        literal = self.take(kind="str")[1:-1].replace("\\'", "'")
        return _where_equals(name, literal)


_Step = tuple[str, Any]  # (child|cast|type, name), (fn, Steps), (group, (Steps, keys))


def _first_keys(steps: list[_Step]) -> frozenset[str] | None:
    """JSON keys of the root one of which ``Type.name...`` needs (None when not known)."""
    kind, arg = steps[0]
    if kind == "group":
        return arg[1]  # type: ignore[no-any-return]
    if kind != "type" or arg in ("Resource", "DomainResource") or len(steps) < 2:
        return None
    if steps[1][0] != "child":
        return None
    options = _child_options(arg, steps[1][1])
    if len(steps) > 2 and steps[2][0] == "cast":
        options = tuple(o for o in options if o[1] is None or is_a(o[1], steps[2][1]))
    return frozenset(key for key, _ in options)


def _build(steps: list[_Step]) -> list[Steps]:
    """Closures for the steps; ``name.as(T)`` looks up only the JSON keys of type T."""
    out: list[Steps] = []
    for i, (kind, arg) in enumerate(steps):
        if kind == "child":
            cast = steps[i + 1][1] if i + 1 < len(steps) and steps[i + 1][0] == "cast" else None
            out.append(_child(arg, only=cast))
        elif kind == "cast":
            out.append(_type_filter(arg))
        elif kind == "type":
            out.append(_start_type(arg))
        elif kind == "group":
            out.append(arg[0])
        else:
            out.append(arg)
    return out


def _chain(steps: list[Steps]) -> Steps:
    if len(steps) == 1:
        return steps[0]
    first, rest = steps[0], tuple(steps[1:])

    def chain(nodes: list[Node], resource: Mapping[str, Any]) -> list[Node]:
        nodes = first(nodes, resource)
        for step in rest:
            if not nodes:
                return nodes
            nodes = step(nodes, resource)
        return nodes

    return chain


# --- extractors -------------------------------------------------------------------------------


class Extractor:
    """A compiled expression: ``extractor(resource)`` -> the :class:`Node` list it selects."""

    __slots__ = ("direct", "expression")

    expression: str
    direct: bool
    """True when compiled to closures; False when evaluated by fhirpathpy."""

    def __call__(self, resource: Mapping[str, Any]) -> list[Node]:
        return self.from_nodes([Node(resource, resource.get("resourceType"))], resource)

    def from_nodes(self, nodes: Sequence[Node], resource: Mapping[str, Any]) -> list[Node]:
        """Evaluate with ``nodes`` as the focus (composite components); ``%resource`` is
        ``resource``."""
        raise NotImplementedError


class _DirectExtractor(Extractor):
    __slots__ = ("_keys", "_steps")

    def __init__(self, expression: str, steps: Steps, keys: frozenset[str] | None) -> None:
        self.expression, self.direct, self._steps = expression, True, steps
        self._keys = tuple(sorted(keys)) if keys is not None else None

    def __call__(self, resource: Mapping[str, Any]) -> list[Node]:
        if type(resource) is not dict:
            resource = dict(resource)  # the steps walk plain JSON: dicts and lists
        keys = self._keys
        if keys is not None:
            for key in keys:
                if key in resource:
                    break
            else:
                return []  # none of the JSON keys the expression starts with is there
        return self._steps([Node(resource, resource.get("resourceType"))], resource)

    def from_nodes(self, nodes: Sequence[Node], resource: Mapping[str, Any]) -> list[Node]:
        return self._steps(list(nodes), resource)


class _CountErrors(ErrorListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.count = 0

    def syntaxError(self, *_args: object) -> None:  # noqa: N802 (antlr's name)
        self.count += 1


def _syntax_errors(expression: str) -> int:
    """Syntax errors in ``expression`` by the FHIRPath grammar; fhirpathpy's own parse
    recovers from them silently (``Patient.name.(`` would select nothing)."""
    listener = _CountErrors()
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(listener)
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(listener)
    parser.entireExpression()  # type: ignore[no-untyped-call]
    return listener.count


class _FhirpathpyExtractor(Extractor):
    __slots__ = ("_fn",)

    def __init__(self, expression: str) -> None:
        self.expression, self.direct = expression, False
        try:
            if _syntax_errors(expression):
                raise InvalidInput(f"invalid FHIRPath expression {expression!r}")
            self._fn = fhirpathpy.compile(
                expression, fhirpath_models["r4"], {"returnRawData": True}
            )
            self._fn({"resourceType": "Basic"}, {})  # unknown functions fail only when run
        except InvalidInput:
            raise
        except Exception as exc:  # antlr and fhirpathpy raise plain exceptions
            raise InvalidInput(f"invalid FHIRPath expression {expression!r}: {exc}") from exc

    def from_nodes(self, nodes: Sequence[Node], resource: Mapping[str, Any]) -> list[Node]:
        out: list[Node] = []
        env = {"resource": resource, "rootResource": resource}
        for node in nodes:
            if node.value is resource:
                focus: Any = resource
            else:
                focus = ResourceNode.create_node(node.value, node.type)  # type: ignore[no-untyped-call]
            try:
                raw = self._fn(focus, env)
            except Exception as exc:  # fhirpathpy raises plain exceptions on evaluation
                raise InvalidInput(f"cannot evaluate {self.expression!r}: {exc}") from exc
            out.extend(_from_fhirpathpy(item) for item in raw if item is not None)
        return [n for n in out if n.value is not None]


def _from_fhirpathpy(item: Any) -> Node:
    if isinstance(item, ResourceNode):
        path = item.path
        type_key = fhir_type_name(path) if isinstance(path, str) else None
        if type_key is not None and "." in type_key and element_spec(type_key) is None:
            type_key = None
        data = item.data
        if isinstance(data, FP_Type):
            data = str(data)
        return Node(data, type_key or infer_type(data))
    if isinstance(item, FP_Type):
        return Node(str(item), None)
    return Node(item, infer_type(item))


@lru_cache(maxsize=8192)
def compile_expression(expression: str) -> Extractor:
    """Compile a FHIRPath expression once: directly when it is a simple path, else fhirpathpy.

    Raises :class:`~medflow.core.errors.InvalidInput` when fhirpathpy cannot parse it either.
    """
    try:
        return _DirectExtractor(expression, *_Parser(expression).parse())
    except _Unsupported:
        return _FhirpathpyExtractor(expression)
