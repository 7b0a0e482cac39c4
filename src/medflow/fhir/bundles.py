"""Batch and transaction Bundles (FHIR R4 http.html §3.1.0.11).

A transaction is atomic (one database transaction; any failure writes nothing) and is processed
in the order DELETE, POST, PUT/PATCH, GET (§3.1.0.11.2). ``urn:uuid:`` fullUrls of created
resources are replaced in every reference of the Bundle by the ids the server assigns.

Conditional forms work inside bundles as at the REST API: ``request.ifNoneExist`` on POST
(conditional create, §3.1.0.5.1), ``PUT Type?query`` and ``DELETE Type?query`` (§3.1.0.4.3,
§3.1.0.7.1), and ``GET Type?query`` answers a searchset. Conditional references
(``"reference": "Patient?identifier=urn:medflow:mrn|123"``, §3.1.0.11.2) are resolved to the
single match; a conditional create's query in the same Bundle resolves to that entry's resource,
so a Bundle can say "this patient, unless it exists" once and refer to it by identifier
everywhere. No match or several matches fail the entry (412) and, in a transaction, all of it.

A batch runs each entry on its own; a failed entry becomes an OperationOutcome entry.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import jsonpatch
from sqlalchemy.orm import Session

from medflow.core.errors import (
    InvalidInput,
    MedflowError,
    NotFound,
    PreconditionFailed,
    StorageFailure,
)
from medflow.db.engine import write_session
from medflow.fhir import repository as repo
from medflow.fhir.definitions import resource_types
from medflow.fhir.outcomes import outcome_entry
from medflow.fhir.service import (
    FhirService,
    Written,
    check_resource,
    instant,
    new_id,
    version_of_etag,
)

log = logging.getLogger(__name__)
ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass
class Entry:
    index: int
    method: str
    url: str
    full_url: str | None
    resource: Any
    if_none_exist: str | None = None
    if_match: int | None = None
    """``request.ifMatch`` (``W/"3"``): the version a PUT or PATCH expects (412 otherwise)."""

    @property
    def rtype(self) -> str:
        return self.url.split("?")[0].split("/")[0]

    @property
    def query(self) -> str | None:
        """The search part of a conditional url (``Type?query``), None for ``Type/id``."""
        return self.url.split("?", 1)[1] if "?" in self.url else None


@dataclass
class Context:
    """One bundle's state: the session, the ids given to fullUrls and to conditional queries."""

    fhir: FhirService
    session: Session
    base_url: str
    validated: bool = False
    """The whole Bundle was validated already (a transaction): entries are not again."""
    ids: dict[str, str] = field(default_factory=dict)  # fullUrl or "Type?query" -> "Type/id"
    existing: set[int] = field(default_factory=set)  # conditional creates that matched

    def resolve(self, reference: str) -> str:
        """A conditional reference ``Type?query`` to ``Type/id`` (exactly one match)."""
        if reference in self.ids:
            return self.ids[reference]
        rtype, query = reference.split("?", 1)
        match = self.fhir.match_in(self.session, rtype, query, base_url=self.base_url)
        if match is None:
            raise PreconditionFailed(f"the conditional reference {reference} matches no "
                                     f"{rtype} resources (exactly one is needed)")  # fmt: skip
        self.ids[reference] = f"{rtype}/{match}"
        return self.ids[reference]


class EntryFailed(MedflowError):
    """A transaction entry failed; ``index`` says which (the transaction wrote nothing)."""

    def __init__(self, index: int, cause: MedflowError) -> None:
        super().__init__(f"entry {index}: {cause.message}")
        self.index, self.cause = index, cause


def parse_entries(bundle: dict[str, Any]) -> list[Entry]:
    return [parse_entry(i, item) for i, item in enumerate(bundle.get("entry") or [])]


def parse_entry(i: int, item: Any) -> Entry:
    """One entry's request (InvalidInput names ``Bundle.entry[i]``)."""
    known = resource_types()
    if not isinstance(item, dict):
        raise InvalidInput(f"Bundle.entry[{i}] must be an object")
    request = item.get("request") or {}
    method = str(request.get("method", "")).upper()
    url = str(request.get("url", "")).strip().strip("/")
    if method not in ORDER or not url:
        raise InvalidInput(f"Bundle.entry[{i}].request needs a method and a url")
    e = Entry(i, method, url, item.get("fullUrl"), item.get("resource"))
    if e.rtype not in known:
        raise InvalidInput(f"Bundle.entry[{i}].request.url: unknown resource type {e.rtype}")
    if method in ("POST", "PATCH") and e.query is not None:
        raise InvalidInput(f"Bundle.entry[{i}].request.url: {method} takes no query "
                           "(use request.ifNoneExist for a conditional create)")  # fmt: skip
    if method == "POST" and request.get("ifNoneExist"):
        e.if_none_exist = str(request["ifNoneExist"]).lstrip("?")
    if request.get("ifMatch") and method in ("PUT", "PATCH"):
        e.if_match = version_of_etag(str(request["ifMatch"]), f"Bundle.entry[{i}].request.ifMatch")
    return e


def _rewrite(value: Any, ctx: Context) -> Any:
    """Replace references to fullUrls of created resources and conditional references
    (R4 §3.1.0.11.2)."""
    if isinstance(value, dict):
        out = {k: _rewrite(v, ctx) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str):
            if ref in ctx.ids:
                out["reference"] = ctx.ids[ref]
            elif "?" in ref and ref.split("?", 1)[0] in resource_types():
                out["reference"] = ctx.resolve(ref)
        return out
    if isinstance(value, list):
        return [_rewrite(v, ctx) for v in value]
    return value


def _response(written: Written | None, status: int) -> dict[str, Any]:
    response: dict[str, Any] = {"status": STATUS_TEXT.get(status, str(status))}
    if written is not None:
        response["location"] = (
            f"{written.resource_type}/{written.res_id}/_history/{written.version_id}"
        )
        response["etag"] = f'W/"{written.version_id}"'
        response["lastModified"] = instant(written.last_updated)
    entry: dict[str, Any] = {"response": response}
    if written is not None and written.resource is not None:
        entry["resource"] = written.resource
    return entry


def _assign_ids(ctx: Context, entries: list[Entry]) -> None:
    """Give every POST with a fullUrl its id before anything is written, so references in
    any order resolve; a conditional create that matches takes the existing id."""
    for e in entries:
        if e.method != "POST" or not isinstance(e.resource, dict):
            continue
        target: str | None = None
        key = f"{e.rtype}?{e.if_none_exist}"
        if e.if_none_exist is not None and key in ctx.ids:
            target = ctx.ids[key]  # the same condition earlier in the Bundle: one resource
            ctx.existing.add(e.index)
        elif e.if_none_exist is not None:
            try:
                match = ctx.fhir.match_in(ctx.session, e.rtype, e.if_none_exist,
                                          base_url=ctx.base_url)  # fmt: skip
            except MedflowError as exc:
                raise EntryFailed(e.index, exc) from exc
            if match is not None:
                target = f"{e.rtype}/{match}"
                ctx.existing.add(e.index)
        target = target or f"{e.rtype}/{new_id()}"
        if e.full_url:
            ctx.ids[e.full_url] = target
        if e.if_none_exist is not None:
            ctx.ids[key] = target
        e.url = target  # where the entry writes (its id is now fixed)


def transaction(fhir: FhirService, bundle: dict[str, Any], *, base_url: str = "") -> dict[str, Any]:
    """Run a transaction Bundle atomically; returns the ``transaction-response`` Bundle."""
    check_resource(bundle, "Bundle")
    entries = parse_entries(bundle)
    results: dict[int, dict[str, Any]] = {}
    with write_session(fhir.engine) as session:
        repo.lock_feed(session)  # searches and writes see one state
        ctx = Context(fhir, session, base_url, validated=True)
        try:
            ordered = sorted(entries, key=lambda x: (ORDER[x.method], x.index))
            deletes = [e for e in ordered if e.method == "DELETE"]
            for e in deletes:  # first, so that a conditional create sees their effect
                results[e.index] = _entry(ctx, e)
            _assign_ids(ctx, entries)
            for e in ordered[len(deletes) :]:
                results[e.index] = _entry(ctx, e)
        except MedflowError:
            session.rollback()
            raise
        session.commit()
    fhir.notify()
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [results[e.index] for e in entries],
    }


def _entry(ctx: Context, e: Entry) -> dict[str, Any]:
    try:
        return _run(ctx, e)
    except MedflowError as exc:
        raise EntryFailed(e.index, exc) from exc


def batch(fhir: FhirService, bundle: dict[str, Any], *, base_url: str = "") -> dict[str, Any]:
    """Run each entry on its own; failures become OperationOutcome entries (R4 §3.1.0.11.1).
    Entries of a batch must not refer to each other, so fullUrls are not rewritten."""
    check_resource(_shell(bundle), "Bundle")
    out = []
    for i, raw in enumerate(bundle.get("entry") or []):
        try:
            item = parse_entry(i, raw)
            with write_session(fhir.engine) as session:
                repo.lock_feed(session)
                ctx = Context(fhir, session, base_url)
                if item.method == "POST":
                    _assign_ids(ctx, [item])
                result = _run(ctx, item)
                session.commit()
            out.append(result)
        except EntryFailed as exc:
            out.append(outcome_entry(exc.cause))
        except MedflowError as exc:
            out.append(outcome_entry(exc))
        except Exception:  # a bug must not lose the other entries' results
            log.exception("batch entry %d failed", i)
            out.append(outcome_entry(StorageFailure(f"entry {i} failed on the server")))
    fhir.notify()
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}


def _run(ctx: Context, e: Entry) -> dict[str, Any]:
    fhir, session = ctx.fhir, ctx.session
    body = _rewrite(e.resource, ctx) if e.resource is not None else None
    if e.method == "GET":
        return _get(ctx, e)
    if e.method == "POST":
        if "/" not in e.url:  # no id was assigned: the entry has no resource object
            check_resource(body, e.rtype)
            raise InvalidInput(f"Bundle.entry[{e.index}]: a POST needs a resource")
        type_, res_id = e.url.split("/")
        if e.index in ctx.existing:  # ifNoneExist matched: nothing is written (200)
            current = fhir.read_in(session, type_, res_id)
            meta = current.get("meta") or {}
            return {"response": {"status": "200 OK",
                                 "location": f"{type_}/{res_id}/_history/{meta.get('versionId')}",
                                 "etag": f'W/"{meta.get("versionId")}"'},
                    "resource": current}  # fmt: skip
        resource = _checked(ctx, body, type_)
        return _response(fhir.write_in(session, type_, res_id, resource, method="create"), 201)
    if e.method == "DELETE" and e.query is not None:
        fhir.conditional_delete_in(session, e.rtype, e.query, base_url=ctx.base_url)
        return _response(None, 204)
    if e.method == "PUT" and e.query is not None:
        resource = _checked(ctx, body, e.rtype)
        written = fhir.conditional_update_in(session, e.rtype, e.query, resource,
                                             base_url=ctx.base_url)  # fmt: skip
        return _response(written, 201 if written.created else 200)
    parts = e.url.split("/")
    if len(parts) < 2:
        raise InvalidInput(f"{e.method} {e.url}: expected Type/id or Type?query")
    type_, res_id = parts[0], parts[1]
    if e.method == "PUT":
        resource = _checked(ctx, body, type_)
        if resource.get("id") != res_id:
            raise InvalidInput(f"PUT {e.url}: the resource id must be {res_id}")
        written = fhir.write_in(
            session, type_, res_id, resource, method="update", if_match=e.if_match
        )
        return _response(written, 201 if written.created else 200)
    if e.method == "PATCH":
        current = fhir.read_in(session, type_, res_id)
        try:
            patched = jsonpatch.apply_patch(current, _patch_ops(e.resource))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError) as exc:
            raise InvalidInput(f"the patch cannot be applied: {exc}") from exc
        resource = check_resource(patched, type_)
        written = fhir.write_in(
            session, type_, res_id, resource, method="patch", if_match=e.if_match
        )
        return _response(written, 200)
    fhir.delete_in(session, type_, res_id)  # DELETE Type/id
    return _response(None, 204)


def _get(ctx: Context, e: Entry) -> dict[str, Any]:
    """GET Type/id, Type/id/_history/n or a search ``Type?query`` (a searchset)."""
    if e.query is not None or "/" not in e.url:
        from medflow.fhir.search import search_bundle

        found = search_bundle(ctx.session, e.rtype, e.query or "", base_url=ctx.base_url)
        return {"response": {"status": "200 OK"}, "resource": found}
    parts = e.url.split("/")
    if len(parts) == 4 and parts[2] == "_history":
        row = repo.version(ctx.session, parts[0], parts[1], _int(parts[3]))
        if row is None or row.content is None:
            raise NotFound(f"{e.url} is not known or is a deletion")
        resource = json.loads(row.content)
    else:
        resource = ctx.fhir.read_in(ctx.session, parts[0], parts[1])
    return {"response": {"status": "200 OK"}, "resource": resource}


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise InvalidInput(f"{text!r} is not a version number") from exc


def _patch_ops(resource: Any) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary (R4 §3.1.0.11.3)."""
    if isinstance(resource, dict) and resource.get("resourceType") == "Binary":
        import base64

        try:
            return json.loads(base64.b64decode(resource.get("data", "")))
        except ValueError as exc:
            raise InvalidInput(f"the Binary does not hold a JSON Patch: {exc}") from exc
    raise NotFound("a PATCH entry needs its JSON Patch in a Binary resource")


def _checked(ctx: Context, body: Any, resource_type: str) -> dict[str, Any]:
    """An entry's resource, validated unless the whole Bundle was (a transaction validates
    the Bundle once, entries included; rewriting references keeps them valid)."""
    if ctx.validated and isinstance(body, dict) and body.get("resourceType") == resource_type:
        return body
    return check_resource(body, resource_type)


def _shell(bundle: dict[str, Any]) -> dict[str, Any]:
    """The Bundle without its entries' resources: a batch validates each entry on its own,
    so one invalid resource fails its entry, not the batch (R4 §3.1.0.11.1)."""
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return bundle
    return {**bundle, "entry": [{k: v for k, v in e.items() if k != "resource"}
                                if isinstance(e, dict) else e for e in entries]}  # fmt: skip
