"""Custom search parameters as SearchParameter resources (FHIR R4 searchparameter.html).

A client registers a parameter the way HAPI and other R4 servers accept it: it writes a
``SearchParameter`` resource with ``status`` ``active`` (``code``, ``type``, ``base``,
``expression``, ``target`` for references, ``component`` for composites). medflow checks the
expression compiles before it stores the resource (400 otherwise), registers the parameter
once the write commits, and reindexes the resources of each base type so that the parameter
finds what was stored before it existed. Retiring or deleting the resource removes the
parameter again (a standard parameter of the same code comes back). At start, every stored
active SearchParameter is registered again.

A SearchParameter whose ``url`` is a standard R4 parameter's (a client loading the R4
definitions) is stored but changes nothing: the standard parameter is already served.

With several server processes (``--workers``), the other processes see a new parameter after
their next start; the index itself is shared, so nothing needs rebuilding then.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from medflow.core.errors import InvalidInput
from medflow.db.engine import write_session
from medflow.fhir import repository as repo
from medflow.fhir.definitions import SearchParamRegistry, default_registry
from medflow.fhir.models import FhirResource

log = logging.getLogger(__name__)
REINDEX_BATCH = 500


def is_active(resource: Mapping[str, Any] | None) -> bool:
    return resource is not None and resource.get("status") == "active"


def _standard(registry: SearchParamRegistry, resource: Mapping[str, Any]) -> bool:
    url = resource.get("url")
    known = registry.by_url(url) if isinstance(url, str) else None
    return known is not None and not known.custom


def bases(registry: SearchParamRegistry, resource: Mapping[str, Any]) -> list[str]:
    names = [str(b) for b in resource.get("base") or ()]
    if {"Resource", "DomainResource"} & set(names):
        return sorted(registry.resource_types())
    return names


def check(resource: Mapping[str, Any], registry: SearchParamRegistry | None = None) -> None:
    """Raise ``InvalidInput`` when an active SearchParameter cannot be served (unknown base,
    type, component or an expression that is not FHIRPath), before anything is written."""
    reg = registry or default_registry()
    if not is_active(resource) or _standard(reg, resource):
        return
    names = bases(reg, resource)
    if not names:
        raise InvalidInput("SearchParameter.base: an active SearchParameter needs a base")
    for rtype in names:
        if rtype not in reg.resource_types():
            raise InvalidInput(f"SearchParameter.base: {rtype!r} is not a resource type")
        reg.from_resource(resource, rtype)


def apply(
    old: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    registry: SearchParamRegistry | None = None,
) -> list[str]:
    """Bring the registry in line with a committed change of a SearchParameter (``old`` and
    ``new`` versions, None when absent or deleted); returns the resource types to reindex."""
    from medflow.fhir.definitions import register_search_parameter

    reg = registry or default_registry()
    touched: set[str] = set()
    if is_active(old) and old is not None and not _standard(reg, old):
        code = str(old.get("code"))
        for rtype in bases(reg, old):
            reg.unregister(rtype, code)
            touched.add(rtype)
    if is_active(new) and new is not None and not _standard(reg, new):
        for param in register_search_parameter(new):
            log.info("custom search parameter %s registered", param.code)
        touched.update(bases(reg, new))
    return sorted(touched)


def activate_stored(engine: Engine, registry: SearchParamRegistry | None = None) -> int:
    """Register every stored active SearchParameter (at start); returns how many."""
    with Session(engine) as s:
        contents = s.scalars(
            select(FhirResource.content).where(
                FhirResource.resource_type == "SearchParameter",
                FhirResource.deleted.is_(False),
            )
        ).all()
    count = 0
    for content in contents:
        resource = json.loads(content) if content else None
        try:
            if is_active(resource) and apply(None, resource, registry):
                count += 1
        except InvalidInput as exc:  # stored before a rule tightened: skip, say which
            log.warning("stored SearchParameter not registered: %s", exc.message)
    return count


def reindex(engine: Engine, resource_type: str) -> int:
    """Recompute the index rows of every live ``resource_type`` resource (in batches, each its
    own transaction); returns how many resources were reindexed."""
    from medflow.fhir.indexing import index_resource

    last, done = 0, 0
    while True:
        with write_session(engine) as s:
            repo.lock_feed(s)  # PostgreSQL: no writer changes a resource between read and index
            live = [FhirResource.resource_type == resource_type, FhirResource.deleted.is_(False)]
            rows = repo.content_page(s, live, after=last, limit=REINDEX_BATCH)
            for pk, content in rows:
                last = pk
                if content is not None:
                    repo.replace_index(s, pk, resource_type, index_resource(json.loads(content)))
                    done += 1
            s.commit()
        if len(rows) < REINDEX_BATCH:
            return done
