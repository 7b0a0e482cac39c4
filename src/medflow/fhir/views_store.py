"""SQL-on-FHIR v2 ViewDefinitions over the FHIR store: the resources of a type read page by
page (keyset paging, never all in memory), the shipped views (``fhir/data/views/*.json``), view
files, and the ``$run`` operation's request (``ViewDefinition/$run``, a ``Parameters``
resource) turned into batches of rows.

Nothing here knows HTTP: the REST edge (``views_api``) and the CLI call these functions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from medflow.core.errors import InvalidInput, NotFound, Unsupported
from medflow.fhir import repository as repo
from medflow.fhir.models import FhirResource
from medflow.fhir.views import column_names, run_view

PAGE = 1000
"""Resources read per database round trip (and run through a view at once)."""
FORMATS = {
    "json": "json", "application/json": "json", "application/fhir+json": "json",
    "ndjson": "ndjson", "application/ndjson": "ndjson", "application/x-ndjson": "ndjson",
    "application/fhir+ndjson": "ndjson",
    "csv": "csv", "text/csv": "csv",
}  # fmt: skip
"""``_format`` values (short names and MIME types) and the output they ask for."""
_UNSUPPORTED = ("patient", "group", "source")

Row = dict[str, Any]


# -- the store --------------------------------------------------------------------------------


def store_resources(
    engine: Engine, resource_type: str, *, since: datetime | None = None, page: int | None = None
) -> Iterator[dict[str, Any]]:
    """The current (not deleted) ``resource_type`` resources, parsed, in storage order; read
    ``page`` at a time with the repository's keyset-paged reader (one short session each)."""
    conds: list[Any] = [FhirResource.resource_type == resource_type,
                        FhirResource.deleted.is_(False)]  # fmt: skip
    if since is not None:
        conds.append(FhirResource.last_updated >= since)
    page = page or PAGE
    last = 0
    while True:
        with Session(engine) as s:
            rows = repo.content_page(s, conds, after=last, limit=page)
        for pk, content in rows:
            last = pk
            if content is not None:
                yield json.loads(content)
        if len(rows) < page:
            return


def row_batches(
    view: dict[str, Any],
    resources: Iterable[dict[str, Any]],
    *,
    page: int | None = None,
    limit: int | None = None,
) -> Iterator[list[Row]]:
    """The rows of ``view`` over ``resources``, a list per ``page`` resources (empty lists
    skipped), at most ``limit`` rows in all. The view is checked first (``InvalidInput``)."""
    column_names(view)
    size = page or PAGE
    left = limit
    it = iter(resources)
    while left is None or left > 0:
        chunk = list(islice(it, size))
        if not chunk:
            return
        rows = run_view(view, chunk)
        if left is not None:
            rows = rows[:left]
            left -= len(rows)
        if rows:
            yield rows


def view_resource_type(view: dict[str, Any]) -> str:
    """The view's ``resource`` (checks the view)."""
    column_names(view)
    return str(view["resource"])


# -- shipped views and view files -------------------------------------------------------------


def shipped_views() -> dict[str, dict[str, Any]]:
    """The ViewDefinitions medflow ships (``fhir/data/views``), by name, in name order."""
    folder = resources.files("medflow.fhir.data").joinpath("views")
    views: dict[str, dict[str, Any]] = {}
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.name.endswith(".json"):
            view = json.loads(item.read_text(encoding="utf-8"))
            views[view_name(view, item.name[: -len(".json")])] = view
    return views


def view_name(view: dict[str, Any], fallback: str) -> str:
    """A table name for ``view``: its ``name`` (the spec asks for a database-safe name), else
    ``fallback``."""
    name = view.get("name")
    return name if isinstance(name, str) and name else fallback


def load_view_files(paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
    """ViewDefinitions from JSON files and folders (their ``*.json``), by table name;
    ``InvalidInput`` for a file that is not a ViewDefinition or a name used twice."""
    views: dict[str, dict[str, Any]] = {}
    for path in paths:
        files = sorted(path.glob("*.json")) if path.is_dir() else [path]
        for file in files:
            try:
                view = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise InvalidInput(f"{file}: cannot read a ViewDefinition ({exc})") from exc
            if not isinstance(view, dict) or view.get("resourceType") != "ViewDefinition":
                raise InvalidInput(f"{file}: not a ViewDefinition")
            name = view_name(view, file.stem)
            if name in views:
                raise InvalidInput(f"{file}: a second view named {name!r}")
            views[name] = view
    return views


def resolve_view_reference(engine: Engine, reference: str) -> dict[str, Any]:
    """The view a ``viewReference`` names: ``ViewDefinition/<id>`` (or a bare id, or a
    canonical URL ending in it) of a stored ViewDefinition, else of a shipped view."""
    key = reference.rstrip("/").rsplit("/", 1)[-1]
    with Session(engine) as s:
        found = repo.current(s, "ViewDefinition", key)
    if found is not None and found.content is not None:
        return dict(json.loads(found.content))
    for name, view in shipped_views().items():
        if key in (name, view.get("id")) or reference == view.get("url"):
            return view
    raise NotFound(f"no ViewDefinition {reference!r}")


# -- the $run operation ---------------------------------------------------------------------


@dataclass
class RunRequest:
    """What a ``$run`` request asks for (OperationDefinition ViewDefinitionRun)."""

    view: dict[str, Any] | None = None
    view_reference: str | None = None
    resources: list[dict[str, Any]] | None = None
    format: str | None = None
    header: bool = True
    limit: int | None = None
    since: datetime | None = None
    unsupported: list[str] = field(default_factory=list)


def parse_run_parameters(body: Any) -> RunRequest:
    """A ``$run`` request from its ``Parameters`` body (``InvalidInput`` when malformed)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise InvalidInput("ViewDefinition/$run takes a Parameters resource")
    request = RunRequest()
    for param in body.get("parameter") or []:
        if not isinstance(param, dict) or not isinstance(param.get("name"), str):
            raise InvalidInput("each Parameters.parameter needs a name")
        _apply_parameter(request, param["name"], param)
    return request


def _apply_parameter(request: RunRequest, name: str, param: dict[str, Any]) -> None:
    value = next((v for k, v in param.items() if k.startswith("value")), None)
    if name == "viewResource":
        request.view = _resource_of(param, name)
    elif name == "viewReference":
        ref = value.get("reference") if isinstance(value, dict) else value
        if not isinstance(ref, str) or not ref:
            raise InvalidInput("viewReference needs a valueReference with a reference")
        request.view_reference = ref
    elif name == "resource":
        request.resources = [*(request.resources or []), _resource_of(param, name)]
    elif name == "_format":
        request.format = parse_format(value)
    elif name == "header":
        if not isinstance(value, bool):
            raise InvalidInput("header needs a valueBoolean")
        request.header = value
    elif name == "_limit":
        request.limit = parse_limit(value)
    elif name == "_since":
        request.since = parse_since(value)
    elif name in _UNSUPPORTED:
        request.unsupported.append(name)
    else:
        raise InvalidInput(f"unknown $run parameter {name!r}")


def _resource_of(param: dict[str, Any], name: str) -> dict[str, Any]:
    resource = param.get("resource")
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise InvalidInput(f"{name} needs a resource")
    return resource


def parse_format(value: Any) -> str:
    """``_format`` (a short name or a MIME type, parameters ignored) → json, ndjson or csv."""
    text = value.split(";")[0].strip().lower() if isinstance(value, str) else None
    if text is None or text not in FORMATS:
        raise Unsupported(f"_format {value!r}: json, ndjson or csv")
    return FORMATS[text]


def parse_limit(value: Any) -> int:
    try:
        limit = int(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"_limit {value!r} is not an integer") from exc
    if limit < 0 or isinstance(value, bool):
        raise InvalidInput(f"_limit {value!r} must be a non-negative integer")
    return limit


def parse_since(value: Any) -> datetime:
    try:
        since = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(f"_since {value!r} is not an instant") from exc
    if since.tzinfo is None:
        raise InvalidInput("_since needs a time zone (an instant)")
    return since


def run_request(engine: Engine, request: RunRequest) -> tuple[dict[str, Any], Iterator[list[Row]]]:
    """The view of a ``$run`` request and its row batches: over the inline ``resource``s when
    given, else over the store's resources of the view's type (paged)."""
    if request.unsupported:
        raise Unsupported(f"$run parameters not supported: {', '.join(request.unsupported)}")
    view = request.view
    if view is None and request.view_reference is not None:
        view = resolve_view_reference(engine, request.view_reference)
    if view is None:
        raise InvalidInput("$run needs viewResource or viewReference")
    rtype = view_resource_type(view)
    source: Iterable[dict[str, Any]]
    if request.resources is not None:
        source = request.resources
    else:
        source = store_resources(engine, rtype, since=request.since)
    return view, row_batches(view, source, limit=request.limit)
