"""The FHIR store's service (what other code may call): create, read, vread, update, patch,
delete and history of R4 resources (FHIR R4 RESTful API, http.html §3.1.0), with versions
(``meta.versionId``, ``meta.lastUpdated``) and a cursor over every write for durable consumers.

Errors are ``medflow.core.errors`` types; structural problems raise ``FhirInvalid`` carrying the
validator's issues (element paths), which the REST edge turns into an OperationOutcome.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jsonpatch
from sqlalchemy import and_, event, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medflow.core.errors import Gone, InvalidInput, NotFound, PreconditionFailed
from medflow.core.events import EventBus, FhirChanged
from medflow.db.engine import write_session
from medflow.fhir import custom_params, stats
from medflow.fhir import repository as repo
from medflow.fhir.models import FhirHistory, FhirReference, FhirResource
from medflow.fhir.search_index import IndexedMatch as IndexedMatch  # returned to callers
from medflow.fhir.stats import CodeCount as CodeCount  # re-exported for the edges
from medflow.fhir.validation import Issue, validate

log = logging.getLogger(__name__)
ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


class FhirInvalid(InvalidInput):
    """A resource that is not valid R4 JSON; ``issues`` locate each problem."""

    def __init__(self, issues: list[Issue]) -> None:
        first = issues[0]
        super().__init__(f"{first.expression}: {first.diagnostics}")
        self.issues = issues


@dataclass(frozen=True)
class Written:
    """Outcome of a write: the stored resource (None after delete) and what happened."""

    resource: dict[str, Any] | None
    resource_type: str
    res_id: str
    version_id: int
    last_updated: datetime
    created: bool = False
    unchanged: bool = False


@dataclass(frozen=True)
class Version:
    resource_type: str
    res_id: str
    version_id: int
    last_updated: datetime
    method: str
    resource: dict[str, Any] | None
    seq: int


def new_id() -> str:
    return str(uuid.uuid4())


def instant(ts: datetime) -> str:
    """FHIR instant with milliseconds and offset (R4 datatypes §2.24.0.1)."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def version_of_etag(value: str, what: str = "If-Match") -> int:
    """``W/"3"`` (or ``"3"``, ``3``) -> 3: the version an ``If-Match`` header or a Bundle
    entry's ``request.ifMatch`` expects (R4 §3.1.0.4.1 version aware updates)."""
    digits = value.strip().removeprefix("W/").strip('"')
    if not re.fullmatch(r"[0-9]{1,18}", digits):
        raise InvalidInput(f"{what} {value!r} is not a version ETag")
    return int(digits)


def check_resource(resource: Any, resource_type: str | None = None) -> dict[str, Any]:
    """Validate structure; the type must match the URL's when one is given."""
    issues = [i for i in validate(resource) if i.severity == "error"]
    if issues:
        raise FhirInvalid(issues)
    assert isinstance(resource, dict)
    if resource_type is not None and resource.get("resourceType") != resource_type:
        raise FhirInvalid(
            [
                Issue(
                    "error",
                    "invalid",
                    "resourceType",
                    f"resourceType {resource.get('resourceType')!r} does not match the URL "
                    f"({resource_type})",
                )
            ]
        )
    return resource


class FhirService:
    """CRUD and history over the FHIR tables of the shared index database."""

    def __init__(self, engine: Engine, events: EventBus | None = None) -> None:
        self.engine = engine
        self.events = events
        self._param_changes: list[tuple[dict[str, Any] | None, dict[str, Any] | None]] = []
        self._param_lock = threading.Lock()
        self._apply_lock = threading.Lock()

    def activate_search_parameters(self) -> int:
        """Register the stored active SearchParameter resources (at start); returns how many."""
        return custom_params.activate_stored(self.engine)

    # -- read -------------------------------------------------------------------------------
    def read(self, *, resource_type: str, res_id: str) -> dict[str, Any]:
        with Session(self.engine) as s:
            return self.read_in(s, resource_type, res_id)

    def vread(self, *, resource_type: str, res_id: str, version_id: int) -> dict[str, Any]:
        with Session(self.engine) as s:
            row = repo.version(s, resource_type, res_id, version_id)
        if row is None:
            raise NotFound(f"{resource_type}/{res_id}/_history/{version_id} is not known")
        if row.content is None:
            raise Gone(f"{resource_type}/{res_id}/_history/{version_id} is a deletion")
        return dict(json.loads(row.content))

    def history(
        self,
        *,
        resource_type: str | None = None,
        res_id: str | None = None,
        since: datetime | None = None,
        at: datetime | None = None,
        count: int = 100,
        offset: int = 0,
    ) -> tuple[list[Version], int]:
        with Session(self.engine) as s:
            if (
                res_id is not None
                and resource_type is not None
                and repo.current(s, resource_type, res_id) is None
            ):
                raise NotFound(f"{resource_type}/{res_id} is not known")
            rows, total = repo.history(
                s,
                resource_type=resource_type,
                res_id=res_id,
                since=since,
                at=at,
                limit=count,
                offset=offset,
            )
        return [_version(r) for r in rows], total

    def changes(
        self, *, after: int = 0, limit: int = 1000, types: Collection[str] | None = None
    ) -> list[Version]:
        """Every write after the cursor ``after`` (a ``seq``), oldest first: durable consumers
        (sync's report linking, the feedback loop) keep the last ``seq`` they processed.
        ``types``: only these types' contents are parsed (the others come with ``resource``
        None, so the cursor still moves past them without the cost of reading them)."""
        with Session(self.engine) as s:
            return [_version(r, types) for r in repo.changes_after(s, after, limit)]

    def search_resources(
        self, *, resource_type: str, params: Sequence[tuple[str, str]], limit: int = 20
    ) -> list[dict[str, Any]]:
        """The first ``limit`` current ``resource_type`` resources matching the search
        parameters (R4 search, strict: a parameter not understood is ``InvalidInput``)."""
        from medflow.fhir.search import parse_query, run_search

        plan = parse_query(resource_type, [*params, ("_count", str(limit))], strict=True)
        page = run_search(self.engine, plan, default_total="none")
        return [json.loads(found.content) for found in page.matches]

    def search_index(
        self,
        *,
        resource_type: str,
        params: Sequence[tuple[str, str]],
        subject_param: str | None = None,
        date_param: str | None = None,
        code_param: str | None = None,
        code_system: str | None = None,
        subjects: Collection[str] | None = None,
        ids: Collection[str] | None = None,
    ) -> list[IndexedMatch]:
        """Every match of an R4 search (strict), without loading any resource: its id, the
        Patient ids of ``subject_param``, the low bounds of ``date_param`` and the
        (system, code) values of ``code_param`` (of ``code_system``), read from the search
        index in one statement per 500 ``subjects`` (Patient ids ``subject_param`` must
        refer to) or ``ids`` (cohorts: who and when, for thousands of matches)."""
        from medflow.fhir.search_index import index_matches

        return index_matches(
            self.engine, resource_type, params, subject_param=subject_param,
            date_param=date_param, code_param=code_param, code_system=code_system,
            subjects=subjects, ids=ids,
        )  # fmt: skip

    def codes_with_prefix(
        self, *, resource_type: str, param: str, system: str, prefixes: Sequence[str]
    ) -> list[str]:
        """The distinct indexed codes of ``system`` for a token parameter that start with one
        of ``prefixes`` (ICD-10 ``C40``: ``C40.20``...), which R4 token search cannot ask."""
        from medflow.fhir.search_index import codes_with_prefix

        return codes_with_prefix(self.engine, resource_type, param, system, prefixes)

    def type_counts(self, *, resource_types: Collection[str]) -> dict[str, int]:
        """Live resources of each type (one grouped count in SQL)."""
        return stats.type_counts(self.engine, resource_types)

    def code_counts(
        self, *, resource_type: str, param: str = "code", limit: int = 10
    ) -> list[CodeCount]:
        """The most frequent codes of a token parameter (``Condition`` ``code``: the top
        diagnoses), counted over the search index."""
        return stats.code_counts(self.engine, resource_type, param, limit=limit)

    # -- write ------------------------------------------------------------------------------
    def create(self, *, resource: Any, resource_type: str | None = None) -> Written:
        """Create with a server-assigned id (an ``id`` in the body is ignored, R4 §3.1.0.5);
        ``resource_type``, when given (the URL's), must be the body's."""
        body = check_resource(resource, resource_type)
        with write_session(self.engine) as s:
            written = self.write_in(s, body["resourceType"], new_id(), body, method="create")
            s.commit()
        self.notify()
        return written

    def conditional_create(
        self,
        *,
        resource: Any,
        if_none_exist: str,
        resource_type: str | None = None,
        base_url: str | None = None,
    ) -> Written:
        """Create unless the ``If-None-Exist`` query matches (R4 §3.1.0.5.1): one match is
        returned unchanged, several are a 412. Search and write share one transaction.
        ``base_url``: the FHIR base, under which absolute references are local (R4
        §3.1.1.4.12); without it only relative references are."""
        body = check_resource(resource, resource_type)
        rtype = body["resourceType"]
        with write_session(self.engine) as s:
            repo.lock_feed(s)
            match = self.match_in(s, rtype, if_none_exist.lstrip("?"), base_url=base_url)
            if match is not None:
                existing = self.read_in(s, rtype, match)
                meta = existing.get("meta") or {}
                return Written(existing, rtype, match, int(meta.get("versionId", 1)),
                               datetime.fromisoformat(str(meta["lastUpdated"]).replace(
                                   "Z", "+00:00")), unchanged=True)  # fmt: skip
            written = self.write_in(s, rtype, new_id(), body, method="create")
            s.commit()
        self.notify()
        return written

    def conditional_update(
        self, *, resource_type: str, query: str, resource: Any, base_url: str | None = None
    ) -> Written:
        """``PUT Type?query`` (R4 §3.1.0.4.3): no match creates, one match is updated,
        several are a 412. ``base_url`` as for :meth:`conditional_create`."""
        body = check_resource(resource, resource_type)
        with write_session(self.engine) as s:
            repo.lock_feed(s)
            written = self.conditional_update_in(s, resource_type, query, body, base_url=base_url)
            s.commit()
        self.notify()
        return written

    def conditional_delete(
        self, *, resource_type: str, query: str, base_url: str | None = None
    ) -> int:
        """``DELETE Type?query`` (R4 §3.1.0.7.1): deletes the single match; several are a 412.
        Returns how many were deleted (0 or 1). ``base_url`` as for
        :meth:`conditional_create`."""
        with write_session(self.engine) as s:
            deleted = self.conditional_delete_in(s, resource_type, query, base_url=base_url)
            s.commit()
        self.notify()
        return int(deleted is not None)

    def update(
        self, *, resource_type: str, res_id: str, resource: Any, if_match: int | None = None
    ) -> Written:
        """Update, or create with the client's id (update as create, R4 §3.1.0.4)."""
        if not ID_RE.match(res_id):
            raise InvalidInput(f"invalid id {res_id!r}")
        body = check_resource(resource, resource_type)
        if body.get("id") != res_id:
            raise FhirInvalid(
                [Issue("error", "invalid", f"{resource_type}.id", "id must equal the URL's id")]
            )
        for attempt in range(2):
            try:
                with write_session(self.engine) as s:
                    written = self.write_in(
                        s, resource_type, res_id, body, method="update", if_match=if_match
                    )
                    s.commit()
                break
            except IntegrityError:  # two creates of one id at once: the second updates
                if attempt:
                    raise
        self.notify()
        return written

    def patch(
        self,
        *,
        resource_type: str,
        res_id: str,
        operations: Any,
        if_match: int | None = None,
    ) -> Written:
        """JSON Patch (RFC 6902, R4 §3.1.0.6.1) applied to the current version."""
        current = self.read(resource_type=resource_type, res_id=res_id)
        try:
            patched = jsonpatch.apply_patch(current, operations)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
            raise InvalidInput(f"the patch cannot be applied: {exc}") from exc
        body = check_resource(patched, resource_type)
        if body.get("id") != res_id:
            raise InvalidInput("a patch must not change the id")
        with write_session(self.engine) as s:
            written = self.write_in(
                s, resource_type, res_id, body, method="patch", if_match=if_match
            )
            s.commit()
        self.notify()
        return written

    def delete(self, *, resource_type: str, res_id: str) -> Written | None:
        """Delete (a new version with no content); deleting twice or an unknown id is fine
        (R4 §3.1.0.7: 200/204 either way). Returns None when there was nothing to delete."""
        with write_session(self.engine) as s:
            written = self.delete_in(s, resource_type, res_id)
            s.commit()
        if written is not None:
            self.notify()
        return written

    # -- building blocks for transactions ---------------------------------------------------
    def write_in(
        self,
        session: Session,
        resource_type: str,
        res_id: str,
        body: dict[str, Any],
        *,
        method: str,
        if_match: int | None = None,
    ) -> Written:
        """Write a version inside the caller's transaction. A body equal to the current
        version (ignoring meta) writes nothing (no new version). ``method="create"`` is only
        used with an id the server has just generated (:func:`new_id`): there is no current
        row to read (the unique key would still refuse a duplicate)."""
        repo.lock_feed(session)
        row = (
            None
            if method == "create"
            else repo.current(session, resource_type, res_id, for_update=True)
        )
        live = row is not None and not row.deleted
        if if_match is not None and (not live or row is None or row.version_id != if_match):
            have = row.version_id if row is not None and live else "none"
            raise PreconditionFailed(f"If-Match version {if_match} but the current is {have}")
        if method == "create" and live:
            raise PreconditionFailed(f"{resource_type}/{res_id} exists")
        old = json.loads(row.content) if live and row is not None and row.content else None
        if resource_type == "SearchParameter":
            custom_params.check(body)
        if old is not None and row is not None and _same(old, body):
            return Written(old, resource_type, res_id, row.version_id, row.last_updated,
                           unchanged=True)  # fmt: skip
        version = (row.version_id + 1) if row is not None else 1
        now = datetime.now(UTC)
        stored = dict(body)
        stored["id"] = res_id
        meta = dict(stored.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = instant(now)
        stored["meta"] = meta
        stored = {"resourceType": resource_type, **{k: v for k, v in stored.items()
                                                    if k != "resourceType"}}  # fmt: skip
        from medflow.fhir.indexing import index_resource  # the definitions load on first use

        repo.write_version(
            session,
            row=row,
            resource_type=resource_type,
            res_id=res_id,
            version_id=version,
            content=stored,
            method=method,
            now=now,
            index_rows=index_resource(stored),
        )
        if resource_type == "SearchParameter":
            self._on_commit(session, old, stored)
        return Written(stored, resource_type, res_id, version, now, created=not live)

    def _on_commit(
        self, session: Session, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> None:
        """Queue a SearchParameter change for :meth:`notify` once the transaction commits (a
        rolled-back transaction registers nothing)."""

        def queue(_: Session) -> None:
            with self._param_lock:
                self._param_changes.append((old, new))

        event.listen(session, "after_commit", queue, once=True)

    def match_in(
        self, session: Session, resource_type: str, query: str, *, base_url: str | None = None
    ) -> str | None:
        """The id of the single match of a conditional operation's query inside the caller's
        transaction, None when nothing matches; several matches are a 412 (R4 §3.1.0.4.3,
        §3.1.0.5.1, §3.1.0.7.1)."""
        from medflow.fhir.search import find_ids

        found = find_ids(session, resource_type, query, limit=2, base_url=base_url)
        if len(found) > 1:
            raise PreconditionFailed(
                f"{resource_type}?{query} matches several {resource_type} resources"
            )
        return found[0] if found else None

    def conditional_update_in(
        self,
        session: Session,
        resource_type: str,
        query: str,
        body: dict[str, Any],
        *,
        base_url: str | None = None,
    ) -> Written:
        """``PUT Type?query`` inside the caller's transaction: the match is updated, no match
        creates (with the body's id or a new one)."""
        match = self.match_in(session, resource_type, query, base_url=base_url)
        if match is not None and body.get("id") not in (None, match):
            raise InvalidInput(f"the resource id differs from the match {match}")
        res_id = match or str(body.get("id") or new_id())
        return self.write_in(session, resource_type, res_id, body, method="update")

    def conditional_delete_in(
        self, session: Session, resource_type: str, query: str, *, base_url: str | None = None
    ) -> Written | None:
        """``DELETE Type?query`` inside the caller's transaction (None: nothing deleted)."""
        match = self.match_in(session, resource_type, query, base_url=base_url)
        return None if match is None else self.delete_in(session, resource_type, match)

    def read_in(self, session: Session, resource_type: str, res_id: str) -> dict[str, Any]:
        """The current version, inside the caller's transaction (sees its own writes)."""
        row = repo.current(session, resource_type, res_id)
        if row is None:
            raise NotFound(f"{resource_type}/{res_id} is not known")
        if row.deleted or row.content is None:
            raise Gone(f"{resource_type}/{res_id} was deleted")
        return dict(json.loads(row.content))

    def delete_in(self, session: Session, resource_type: str, res_id: str) -> Written | None:
        repo.lock_feed(session)
        row = repo.current(session, resource_type, res_id, for_update=True)
        if row is None or row.deleted:
            return None
        now = datetime.now(UTC)
        repo.write_version(
            session,
            row=row,
            resource_type=resource_type,
            res_id=res_id,
            version_id=row.version_id + 1,
            content=None,
            method="delete",
            now=now,
        )
        if resource_type == "SearchParameter" and row.content:
            self._on_commit(session, json.loads(row.content), None)
        return Written(None, resource_type, res_id, row.version_id, now)

    def notify(self) -> None:
        """After a committed write (every write path calls it, outside the write lock):
        apply committed SearchParameter changes (register, reindex the bases), then wake
        consumers early; they read ``changes()`` from their cursor either way."""
        with self._apply_lock:  # in commit order, one thread at a time
            with self._param_lock:
                changes, self._param_changes = self._param_changes, []
            for old, new in changes:
                try:
                    for rtype in custom_params.apply(old, new):
                        count = custom_params.reindex(self.engine, rtype)
                        log.info("reindexed %d %s resources for a search parameter", count, rtype)
                except Exception:  # the write is committed; say so, keep going
                    log.exception("a SearchParameter change could not be applied")
        if self.events is not None:
            self.events.publish(FhirChanged())

    def load(self, resources: list[Any]) -> list[Written]:
        """Write many resources in one transaction (bulk load, ``medflow fhir load``): a
        resource with an ``id`` is updated or created with that id (so references between
        loaded files hold), one without gets a new id. Invalid input writes nothing."""
        bodies = []
        for n, resource in enumerate(resources):
            try:
                bodies.append(check_resource(resource))
            except FhirInvalid as exc:
                raise InvalidInput(f"resource {n + 1}: {exc.message}") from exc
        out = []
        with write_session(self.engine) as s:
            for body in bodies:
                rtype, rid = body["resourceType"], body.get("id")
                if rid is not None and not ID_RE.match(str(rid)):
                    raise InvalidInput(f"invalid id {rid!r}")
                method = "update" if rid else "create"
                out.append(self.write_in(s, rtype, str(rid or new_id()), body, method=method))
            s.commit()
        self.notify()
        return out

    def everything(self, *, patient_id: str, limit: int = 10000) -> list[dict[str, Any]]:
        """``Patient/$everything`` (R4 patient-operation-everything): the patient and every
        resource in its compartment (R4 CompartmentDefinition Patient: the resource refers to
        the patient through one of the listed parameters), read from the reference index."""
        from medflow.fhir.definitions import patient_compartment, resource_types

        patient = self.read(resource_type="Patient", res_id=patient_id)
        pairs = [
            (rtype, param)
            for rtype in sorted(resource_types())
            for param in patient_compartment(rtype)
        ]
        conds = [
            and_(FhirReference.resource_type == rtype, FhirReference.param == param)
            for rtype, param in pairs
        ]
        q = (
            select(FhirResource.content)
            .where(
                FhirResource.pk.in_(
                    select(FhirReference.resource_pk).where(
                        FhirReference.target_type == "Patient",
                        FhirReference.target_id == patient_id,
                        or_(*conds),
                    )
                ),
                FhirResource.deleted.is_(False),
            )
            .order_by(FhirResource.resource_type, FhirResource.pk)
            .limit(limit)
        )
        with Session(self.engine) as s:
            others = [json.loads(c) for (c,) in s.execute(q) if c is not None]
        return [patient, *(o for o in others if o.get("id") != patient_id
                           or o.get("resourceType") != "Patient")]  # fmt: skip


def _strip(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in ("meta", "id")}


def _same(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Equal apart from id and the server-managed meta elements."""
    old_meta = {
        k: v for k, v in (old.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    new_meta = {
        k: v for k, v in (new.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")
    }
    return _strip(old) == _strip(new) and old_meta == new_meta


def _version(row: FhirHistory, types: Collection[str] | None = None) -> Version:
    wanted = row.content is not None and (types is None or row.resource_type in types)
    return Version(
        row.resource_type,
        row.res_id,
        row.version_id,
        row.last_updated,
        row.method,
        json.loads(row.content) if wanted and row.content is not None else None,
        row.seq,
    )
