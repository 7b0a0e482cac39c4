"""Batch and transaction Bundles (FHIR R4 http.html §3.1.0.11): a transaction is atomic (one
database transaction; any failure writes nothing), processed in the order DELETE, POST,
PUT/PATCH, GET; ``urn:uuid:`` fullUrls of created resources are replaced in every reference of
the Bundle by the ids the server assigns. A batch runs each entry on its own.

Conditional URLs (``Patient?identifier=...``) need search and are answered "not supported"
until it is served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonpatch

from medflow.core.errors import InvalidInput, MedflowError, NotFound, Unsupported
from medflow.db.engine import write_session
from medflow.fhir.outcomes import outcome_entry
from medflow.fhir.service import FhirService, Written, check_resource, instant, new_id

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3}
STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass
class Entry:
    index: int
    method: str
    url: str
    full_url: str | None
    resource: Any


class EntryFailed(MedflowError):
    """A transaction entry failed; ``index`` says which (the transaction wrote nothing)."""

    def __init__(self, index: int, cause: MedflowError) -> None:
        super().__init__(f"entry {index}: {cause.message}")
        self.index, self.cause = index, cause


def parse_entries(bundle: dict[str, Any]) -> list[Entry]:
    entries = []
    for i, item in enumerate(bundle.get("entry") or []):
        request = item.get("request") or {}
        method, url = str(request.get("method", "")).upper(), str(request.get("url", ""))
        if method not in ORDER or not url:
            raise InvalidInput(f"Bundle.entry[{i}].request needs a method and a url")
        if "?" in url.split("/")[0] or (method != "GET" and "?" in url):
            raise Unsupported(f"Bundle.entry[{i}]: conditional operations are not served yet")
        entries.append(Entry(i, method, url.strip("/"), item.get("fullUrl"), item.get("resource")))
    return entries


def _rewrite(value: Any, ids: dict[str, str]) -> Any:
    """Replace references to fullUrls of created resources (R4 §3.1.0.11.2)."""
    if isinstance(value, dict):
        out = {k: _rewrite(v, ids) for k, v in value.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in ids:
            out["reference"] = ids[ref]
        return out
    if isinstance(value, list):
        return [_rewrite(v, ids) for v in value]
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


def transaction(fhir: FhirService, bundle: dict[str, Any]) -> dict[str, Any]:
    """Run a transaction Bundle atomically; returns the ``transaction-response`` Bundle."""
    check_resource(bundle, "Bundle")
    entries = parse_entries(bundle)
    ids = {
        e.full_url: f"{e.resource['resourceType']}/{new_id()}"
        for e in entries
        if e.method == "POST" and e.full_url and isinstance(e.resource, dict)
    }
    results: dict[int, dict[str, Any]] = {}
    with write_session(fhir.engine) as session:
        for e in sorted(entries, key=lambda x: (ORDER[x.method], x.index)):
            try:
                results[e.index] = _run(fhir, session, e, ids)
            except MedflowError as exc:
                session.rollback()
                raise EntryFailed(e.index, exc) from exc
        session.commit()
    fhir.notify()
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [results[e.index] for e in entries],
    }


def batch(fhir: FhirService, bundle: dict[str, Any]) -> dict[str, Any]:
    """Run each entry on its own; failures become OperationOutcome entries (R4 §3.1.0.11.1)."""
    check_resource(bundle, "Bundle")
    out = []
    for item in parse_entries(bundle):
        try:
            with write_session(fhir.engine) as session:
                result = _run(fhir, session, item, {})
                session.commit()
            out.append(result)
        except MedflowError as exc:
            out.append(outcome_entry(exc))
    fhir.notify()
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}


def _run(fhir: FhirService, session: Any, e: Entry, ids: dict[str, str]) -> dict[str, Any]:
    parts = e.url.split("/")
    body = _rewrite(e.resource, ids) if e.resource is not None else None
    if e.method == "POST":
        resource = check_resource(body, parts[0])
        type_, res_id = ids[e.full_url].split("/") if e.full_url in ids else (parts[0], new_id())
        return _response(fhir.write_in(session, type_, res_id, resource, method="create"), 201)
    if len(parts) < 2:
        raise InvalidInput(f"{e.method} {e.url}: expected Type/id")
    type_, res_id = parts[0], parts[1]
    if e.method == "PUT":
        resource = check_resource(body, type_)
        if resource.get("id") != res_id:
            raise InvalidInput(f"PUT {e.url}: the resource id must be {res_id}")
        written = fhir.write_in(session, type_, res_id, resource, method="update")
        return _response(written, 201 if written.created else 200)
    if e.method == "PATCH":
        current = fhir.read_in(session, type_, res_id)
        patched = jsonpatch.apply_patch(current, _patch_ops(e.resource))
        resource = check_resource(patched, type_)
        return _response(fhir.write_in(session, type_, res_id, resource, method="patch"), 200)
    if e.method == "DELETE":
        fhir.delete_in(session, type_, res_id)
        return _response(None, 204)
    resource = fhir.read_in(session, type_, res_id)  # GET Type/id
    return {"response": {"status": "200 OK"}, "resource": resource}


def _patch_ops(resource: Any) -> Any:
    """A PATCH entry carries its JSON Patch as a Binary (R4 §3.1.0.11.3)."""
    if isinstance(resource, dict) and resource.get("resourceType") == "Binary":
        import base64

        try:
            return json.loads(base64.b64decode(resource.get("data", "")))
        except ValueError as exc:
            raise InvalidInput(f"the Binary does not hold a JSON Patch: {exc}") from exc
    raise NotFound("a PATCH entry needs its JSON Patch in a Binary resource")
