"""SQL-on-FHIR v2 ViewDefinitions, evaluated in memory over FHIR R4 JSON resources.

:func:`run_view` implements the ViewDefinition processing model of the SQL-on-FHIR v2 spec
(https://sql-on-fhir.org/ig/latest/StructureDefinition-ViewDefinition.html): ``resource`` picks
the resources, every ``where`` path must be true (a non-boolean result is an error), and
``select`` builds the rows: a selection's ``column``s give one partial row per focus, its nested
``select``s are joined to it as a cross product, and its ``unionAll`` branches (which must have
the same columns in the same order) are concatenated. ``forEach`` / ``forEachOrNull`` / ``repeat``
change the focus (``forEachOrNull`` keeps one all-null row when there is nothing to iterate).
``constant``s are FHIRPath variables (``%name``) and ``%rowIndex`` is the index of the focus in
the nearest enclosing iteration (0 outside any).

The view is validated before any resource is read; an invalid view raises
:class:`~medflow.core.errors.InvalidInput`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from medflow.core.errors import InvalidInput
from medflow.fhir.views_fhirpath import (
    BUILTIN_VARIABLES,
    Compiled,
    compile_path,
    to_json,
    variables,
)

Row = dict[str, Any]


@dataclass(frozen=True)
class _Column:
    name: str
    path: Compiled
    source: str
    collection: bool


@dataclass(frozen=True)
class _Select:
    """One compiled selection (the view itself is the outermost one)."""

    columns: tuple[_Column, ...] = ()
    selects: tuple[_Select, ...] = ()
    union: tuple[_Select, ...] = ()
    for_each: Compiled | None = None
    or_null: bool = False
    repeat: tuple[Compiled, ...] = ()
    names: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class _View:
    resource: str
    where: tuple[tuple[str, Compiled], ...]
    root: _Select
    env: Mapping[str, Any]


def run_view(view: dict[str, Any], resources: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``view`` over ``resources``: dicts whose keys follow the view's column order.

    Raises :class:`~medflow.core.errors.InvalidInput` for an invalid ViewDefinition, a ``where``
    path that is not boolean, or a non-collection column with several values.
    """
    compiled = _compile_view(view)
    rows: list[Row] = []
    for resource in resources:
        if not isinstance(resource, dict) or resource.get("resourceType") != compiled.resource:
            continue
        if all(_where_holds(resource, src, fn, compiled.env) for src, fn in compiled.where):
            rows.extend(_rows(compiled.root, resource, compiled.env, 0))
    return rows


def column_names(view: dict[str, Any]) -> list[str]:
    """The columns of ``view``, in order (validates it as :func:`run_view` does)."""
    return list(_compile_view(view).root.names)


# --- compiling and validating -----------------------------------------------------------------


def _compile_view(view: Any) -> _View:
    if not isinstance(view, dict):
        raise InvalidInput("a ViewDefinition must be a JSON object")
    resource = view.get("resource")
    if not isinstance(resource, str) or not resource:
        raise InvalidInput("ViewDefinition.resource is required")
    env = _constants(view.get("constant", []))
    known = set(env)
    if not isinstance(view.get("select"), list) or not view["select"]:
        raise InvalidInput("ViewDefinition.select must be a non-empty list")
    where = []
    for item in _list(view.get("where", []), "where"):
        if not isinstance(item, dict):
            raise InvalidInput("ViewDefinition.where items must be objects")
        path = _path(item.get("path"), known)
        where.append((item["path"], path))
    root = _compile_select({"select": view["select"]}, known)
    return _View(resource, tuple(where), root, env)


def _constants(items: Any) -> dict[str, Any]:
    """``ViewDefinition.constant``: each a ``name`` and exactly one ``value[x]``."""
    env: dict[str, Any] = {}
    for item in _list(items, "constant"):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidInput("ViewDefinition.constant needs a name")
        values = [v for k, v in item.items() if k.startswith("value") and len(k) > 5]
        if len(values) != 1:
            raise InvalidInput(f"constant {item['name']!r} needs exactly one value[x]")
        env[item["name"]] = values[0]
    return env


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidInput(f"ViewDefinition {what} must be a list")
    return value


def _path(expression: Any, known: set[str]) -> Compiled:
    if not isinstance(expression, str):
        raise InvalidInput(f"a ViewDefinition path must be a string: {expression!r}")
    unknown = variables(expression) - known - BUILTIN_VARIABLES
    if unknown:
        raise InvalidInput(f"undefined constant(s) {sorted(unknown)} in {expression!r}")
    return compile_path(expression)


def _compile_select(node: Any, known: set[str]) -> _Select:
    if not isinstance(node, dict):
        raise InvalidInput("a ViewDefinition select must be an object")
    iterators = [k for k in ("forEach", "forEachOrNull", "repeat") if k in node]
    if len(iterators) > 1:
        raise InvalidInput(f"a select may have only one of {iterators}")
    for_each = None
    if "forEach" in node or "forEachOrNull" in node:
        for_each = _path(node.get("forEach", node.get("forEachOrNull")), known)
    repeat = tuple(_path(p, known) for p in _list(node.get("repeat", []), "repeat"))
    if "repeat" in node and not repeat:
        raise InvalidInput("select.repeat needs at least one path")
    columns = tuple(_compile_column(c, known) for c in _list(node.get("column", []), "column"))
    selects = tuple(_compile_select(s, known) for s in _list(node.get("select", []), "select"))
    union = tuple(_compile_select(s, known) for s in _list(node.get("unionAll", []), "unionAll"))
    if union:
        first = union[0].names
        for branch in union[1:]:
            if branch.names != first:
                raise InvalidInput(f"unionAll branches differ: {first} vs {branch.names}")
    names = tuple(c.name for c in columns)
    for part in (*selects, *union[:1]):
        names += part.names
    if len(set(names)) != len(names):
        raise InvalidInput(f"duplicate column names in {names}")
    return _Select(columns, selects, union, for_each, "forEachOrNull" in node, repeat, names)


def _compile_column(column: Any, known: set[str]) -> _Column:
    if not isinstance(column, dict) or not isinstance(column.get("name"), str):
        raise InvalidInput("a ViewDefinition column needs a name")
    collection = column.get("collection", False)
    if not isinstance(collection, bool):
        raise InvalidInput(f"column {column['name']!r}: collection must be a boolean")
    path = _path(column.get("path"), known)
    return _Column(column["name"], path, column["path"], collection)


# --- evaluation ---------------------------------------------------------------------------------


def _where_holds(resource: Any, source: str, path: Compiled, env: Mapping[str, Any]) -> bool:
    """A ``where`` path: true keeps the resource; empty or false drops it; else an error."""
    result = [to_json(v) for v in path(resource, {**env, "rowIndex": 0})]
    if not result:
        return False
    if len(result) == 1 and isinstance(result[0], bool):
        return result[0]
    raise InvalidInput(f"where path {source!r} is not boolean: {result!r}")


def _foci(node: _Select, focus: Any, env: Mapping[str, Any], index: int) -> list[tuple[Any, int]]:
    """The focus items of a selection, each with its ``%rowIndex``."""
    if node.for_each is not None:
        items = node.for_each(focus, {**env, "rowIndex": index})
    elif node.repeat:
        items = _repeat(node.repeat, focus, env, index)
    else:
        return [(focus, index)]
    return [(item, i) for i, item in enumerate(items)]


def _repeat(
    paths: tuple[Compiled, ...], focus: Any, env: Mapping[str, Any], index: int
) -> list[Any]:
    """``repeat``: depth first, each item followed by what the paths reach from it."""
    out: list[Any] = []
    for path in paths:
        for item in path(focus, {**env, "rowIndex": index}):
            out.append(item)
            out.extend(_repeat(paths, item, env, index))
    return out


def _rows(node: _Select, focus: Any, env: Mapping[str, Any], index: int) -> list[Row]:
    """The rows of one selection at ``focus`` (FHIR SQL-on-FHIR v2 "Processing Algorithm")."""
    foci = _foci(node, focus, env, index)
    if not foci and node.or_null:
        # One all-null row; the node's own columns still see %rowIndex (0) and literals.
        return [{**dict.fromkeys(node.names), **_columns(node, [], env, 0)}]
    rows: list[Row] = []
    for item, row_index in foci:
        parts: list[list[Row]] = [[_columns(node, item, env, row_index)]]
        parts.extend(_rows(child, item, env, row_index) for child in node.selects)
        if node.union:
            parts.append([r for b in node.union for r in _rows(b, item, env, row_index)])
        rows.extend(_product(parts))
    return rows


def _columns(node: _Select, focus: Any, env: Mapping[str, Any], index: int) -> Row:
    row: Row = {}
    for column in node.columns:
        values = [to_json(v) for v in column.path(focus, {**env, "rowIndex": index})]
        if column.collection:
            row[column.name] = values
        elif len(values) > 1:
            raise InvalidInput(
                f"column {column.name!r} ({column.source!r}) gave {len(values)} values;"
                " set collection: true"
            )
        else:
            row[column.name] = values[0] if values else None
    return row


def _product(parts: list[list[Row]]) -> list[Row]:
    rows: list[Row] = [{}]
    for part in parts:
        rows = [{**left, **right} for left in rows for right in part]
    return rows
