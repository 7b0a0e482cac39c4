"""The FHIR R4 REST edge (http.html §3.1.0) at ``/fhir``: JSON only (``application/fhir+json``;
XML is answered 406), errors as OperationOutcome (§3.1.0.1.9), versions in ETag/Location.

A thin router over ``FhirService``; medflow errors map to statuses in one table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from medflow.core.errors import InvalidInput, MedflowError, NotFound, Unsupported
from medflow.fhir.bundles import EntryFailed, batch, transaction
from medflow.fhir.export import ExportService
from medflow.fhir.outcomes import outcome_of, status_of
from medflow.fhir.service import (
    FhirInvalid,
    FhirService,
    Version,
    Written,
    instant,
    version_of_etag,
)
from medflow.fhir.validation import parse_json_text, validate_json_text
from medflow.fhir.views_api import add_view_routes

FHIR_JSON = "application/fhir+json"
TYPE_FILTER_SPLIT = re.compile(r",(?=[A-Z][A-Za-z]+\?)")
"""``_typeFilter`` is a comma-separated list of ``Type?query``; a comma inside a query (an OR
of values) is kept because only a comma followed by ``Type?`` separates filters."""


_PREFERENCE = re.compile(
    r"""\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)"""  # name (an RFC 9110 token)
    r"""(?:\s*=\s*("(?:[^"\\]|\\.)*"|[^\s,;"]*))?"""  # BWS "=" BWS word
)


def parse_prefer(values: list[str]) -> dict[str, str]:
    """The preferences of ``Prefer`` headers (RFC 7240 §2): comma-separated, each
    ``name[=value]`` with optional ``;`` parameters (ignored here), whitespace allowed around
    ``=``, values a token or a quoted string. Names are lower-cased (case-insensitive); a
    preference given twice counts the first time (§2); one without a value maps to "".
    Anything malformed is skipped: a preference is a hint, never a reason to fail."""
    out: dict[str, str] = {}
    for header in values:
        pos = 0
        while pos < len(header):
            match = _PREFERENCE.match(header, pos)
            if match is None:  # not a preference: skip to the next one
                cut = header.find(",", pos)
                pos = len(header) if cut < 0 else cut + 1
                continue
            name, value = match.group(1).lower(), match.group(2) or ""
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            out.setdefault(name, value)
            pos = _next_preference(header, match.end())
    return out


def _next_preference(header: str, pos: int) -> int:
    """The position after the comma that ends a preference (its parameters skipped)."""
    quoted = False
    while pos < len(header):
        ch = header[pos]
        if ch == "\\" and quoted:
            pos += 1
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            return pos + 1
        pos += 1
    return pos


def preferences(request: Request) -> dict[str, str]:
    """The request's ``Prefer`` preferences (:func:`parse_prefer`)."""
    return parse_prefer(request.headers.getlist("prefer"))


def strict_handling(request: Request) -> bool:
    """``Prefer: handling=strict`` (R4 search §3.1.1.4 ``#errors``); ``lenient``, anything
    else or nothing is lenient handling, the default."""
    return preferences(request).get("handling", "").lower() == "strict"


def outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": issues}


def error_response(exc: MedflowError) -> JSONResponse:
    status, _ = status_of(exc)
    if isinstance(exc, EntryFailed):
        status, _ = status_of(exc.cause)
        body = outcome_of(exc.cause)
        for issue in body["issue"]:
            issue["diagnostics"] = f"Bundle.entry[{exc.index}]: {issue['diagnostics']}"
        return JSONResponse(body, status_code=status, media_type=FHIR_JSON)
    return JSONResponse(outcome_of(exc), status_code=status, media_type=FHIR_JSON)


class FhirRoute(APIRoute):
    """Maps medflow errors to OperationOutcome responses (the edge's one table)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            accept = request.headers.get("accept", "")
            if "xml" in accept and "json" not in accept:
                return JSONResponse(
                    outcome([{"severity": "error", "code": "not-supported",
                              "diagnostics": "only JSON is supported"}]),
                    status_code=406, media_type=FHIR_JSON,
                )  # fmt: skip
            try:
                return await handler(request)
            except MedflowError as exc:
                return error_response(exc)

        return route


def service(request: Request) -> FhirService:
    fhir: FhirService = request.app.state.fhir
    return fhir


Fhir = Annotated[FhirService, Depends(service)]


def base_url(request: Request) -> str:
    public = getattr(request.app.state.settings, "public_url", None)
    root = (public or str(request.base_url)).rstrip("/")
    return f"{root}/fhir"


async def body_json(request: Request) -> Any:
    raw = await request.body()
    parsed, issues = validate_json_text(raw)
    if issues:
        raise FhirInvalid(issues)
    return parsed


def resource_response(written: Written, request: Request, *, status: int = 200) -> Response:
    headers = {
        "ETag": f'W/"{written.version_id}"',
        "Last-Modified": written.last_updated.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        "Location": f"{base_url(request)}/{written.resource_type}/{written.res_id}"
        f"/_history/{written.version_id}",
    }
    minimal = preferences(request).get("return", "").lower() == "minimal"
    if minimal or written.resource is None:
        return Response(status_code=status if written.resource else 204, headers=headers)
    return JSONResponse(written.resource, status_code=status, headers=headers,
                        media_type=FHIR_JSON)  # fmt: skip


def read_response(resource: dict[str, Any]) -> JSONResponse:
    meta = resource.get("meta") or {}
    headers = {"ETag": f'W/"{meta.get("versionId", "")}"'}
    return JSONResponse(resource, headers=headers, media_type=FHIR_JSON)


def parse_if_match(value: str | None) -> int | None:
    """``If-Match: W/"3"`` → 3 (R4 §3.1.0.4.1 version aware updates)."""
    return version_of_etag(value) if value else None


def history_bundle(
    versions: list[Version], total: int, request: Request, offset: int, count: int
) -> dict[str, Any]:
    """A ``history`` Bundle (R4 §3.1.0.8), newest first, with paging links."""
    base = base_url(request)
    entries = []
    for v in versions:
        url = f"{base}/{v.resource_type}/{v.res_id}"
        entry: dict[str, Any] = {
            "fullUrl": url,
            "request": {
                "method": {"create": "POST", "delete": "DELETE", "patch": "PATCH"}.get(
                    v.method, "PUT"
                ),
                "url": v.resource_type if v.method == "create" else f"{v.resource_type}/{v.res_id}",
            },
            "response": {
                "status": {"create": "201", "delete": "204"}.get(v.method, "200"),
                "etag": f'W/"{v.version_id}"',
                "lastModified": instant(v.last_updated),
            },
        }
        if v.resource is not None:
            entry["resource"] = v.resource
        entries.append(entry)
    self_url = str(request.url)
    links = [{"relation": "self", "url": self_url}]
    if offset + count < total:
        links.append({"relation": "next", "url": _with_offset(request, offset + count, count)})
    if offset > 0:
        links.append({"relation": "previous",
                      "url": _with_offset(request, max(0, offset - count), count)})  # fmt: skip
    return {"resourceType": "Bundle", "type": "history", "total": total, "link": links,
            "entry": entries}  # fmt: skip


def _with_offset(request: Request, offset: int, count: int) -> str:
    params = [(k, v) for k, v in request.query_params.multi_items()
              if k not in ("_offset", "_count")]  # fmt: skip
    params += [("_count", str(count)), ("_offset", str(offset))]
    return str(request.url.replace(query=urlencode(params)))


async def _history(request: Request, fhir: FhirService, **scope: Any) -> JSONResponse:
    """Instance, type or system history (R4 §3.1.0.8) as a Bundle, by ``scope``."""
    args = _history_args(request)
    versions, total = await run_in_threadpool(lambda: fhir.history(**scope, **args))
    bundle = history_bundle(versions, total, request, args["offset"], args["count"])
    return JSONResponse(bundle, media_type=FHIR_JSON)


def _history_args(request: Request) -> dict[str, Any]:
    q = request.query_params
    out: dict[str, Any] = {}
    try:
        count = min(int(q.get("_count", "100")), 1000)
        offset = int(q.get("_offset", "0"))
        if q.get("_since"):
            out["since"] = datetime.fromisoformat(q["_since"].replace("Z", "+00:00"))
        if q.get("_at"):
            out["at"] = datetime.fromisoformat(q["_at"].replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInput(f"invalid history parameter: {exc}") from exc
    if any(v.tzinfo is None for v in out.values()):
        raise InvalidInput("_since/_at need a time zone (an instant)")
    out["count"], out["offset"] = max(count, 0), max(offset, 0)
    return out


def build_fhir_router() -> APIRouter:
    router = APIRouter(prefix="/fhir", tags=["FHIR R4"], route_class=FhirRoute)

    @router.get("/metadata")
    async def metadata(request: Request) -> JSONResponse:
        from medflow.fhir.capability import capability_statement

        return JSONResponse(capability_statement(base_url(request)), media_type=FHIR_JSON)

    @router.post("")
    async def bundle(request: Request, fhir: Fhir) -> JSONResponse:
        """Batch or transaction (R4 §3.1.0.11); validated in the worker thread, once."""
        body, issues = parse_json_text(await request.body())
        if issues:
            raise FhirInvalid(issues)
        kind = body.get("type") if isinstance(body, dict) else None
        if (
            not isinstance(body, dict)
            or body.get("resourceType") != "Bundle"
            or kind
            not in (
                "batch",
                "transaction",
            )
        ):
            raise InvalidInput("POST /fhir takes a Bundle of type batch or transaction")
        run = transaction if kind == "transaction" else batch
        result = await run_in_threadpool(lambda: run(fhir, body, base_url=base_url(request)))
        return JSONResponse(result, media_type=FHIR_JSON)

    add_view_routes(router)  # ViewDefinition/$run, before the generic /{type}/{id} routes

    @router.get("/$export")
    async def export_system(request: Request) -> Response:
        return await _start_export(request, "system", None)

    @router.get("/Patient/$export")
    async def export_patients(request: Request) -> Response:
        return await _start_export(request, "patient", None)

    @router.get("/Group/{group_id}/$export")
    async def export_group(group_id: str, request: Request) -> Response:
        return await _start_export(request, "group", group_id)

    @router.get("/$export-status/{job_id}")
    async def export_status(job_id: str, request: Request) -> Response:
        """202 while running, 200 with the manifest when done (Bulk Data IG, status request)."""
        export: ExportService = request.app.state.export
        st = await run_in_threadpool(lambda: export.status(job_id))
        if st.status in ("queued", "running"):
            return Response(status_code=202, headers={"X-Progress": st.status})
        if st.status == "failed":
            body = outcome([{"severity": "error", "code": "exception",
                             "diagnostics": st.error or "export failed"}])  # fmt: skip
            return JSONResponse(body, status_code=500, media_type=FHIR_JSON)
        if st.status == "cancelled":
            raise NotFound(f"export {job_id} was cancelled")
        base = base_url(request)
        manifest = {
            "transactionTime": instant(st.created_at),
            "request": st.request_url,
            "requiresAccessToken": False,
            "output": [
                {
                    "type": o["type"],
                    "url": f"{base}/$export-file/{job_id}/{o['file']}",
                    "count": o["count"],
                }
                for o in st.output
            ],
            "error": [],
        }
        return JSONResponse(manifest)

    @router.delete("/$export-status/{job_id}")
    async def export_delete(job_id: str, request: Request) -> Response:
        export: ExportService = request.app.state.export
        await run_in_threadpool(lambda: export.delete(job_id))
        return Response(status_code=202)

    @router.get("/$export-file/{job_id}/{name}")
    async def export_file(job_id: str, name: str, request: Request) -> Response:
        export: ExportService = request.app.state.export
        path = export.file(job_id, name)
        return FileResponse(path, media_type="application/fhir+ndjson")

    @router.get("/_history")
    async def system_history(request: Request, fhir: Fhir) -> JSONResponse:
        return await _history(request, fhir)

    @router.post("/{resource_type}")
    async def create(
        resource_type: str,
        request: Request,
        fhir: Fhir,
        if_none_exist: Annotated[str | None, Header()] = None,
    ) -> Response:
        body = await body_json(request)
        if if_none_exist:
            query = if_none_exist
            written = await run_in_threadpool(
                lambda: fhir.conditional_create(
                    resource=body,
                    if_none_exist=query,
                    resource_type=resource_type,
                    base_url=base_url(request),
                )
            )
            return resource_response(written, request, status=200 if written.unchanged else 201)
        written = await run_in_threadpool(
            lambda: fhir.create(resource=body, resource_type=resource_type)
        )
        return resource_response(written, request, status=201)

    @router.put("/{resource_type}")
    async def conditional_update(resource_type: str, request: Request, fhir: Fhir) -> Response:
        query = request.url.query
        if not query:
            raise InvalidInput("PUT on a type needs a search query (conditional update)")
        body = await body_json(request)
        written = await run_in_threadpool(
            lambda: fhir.conditional_update(
                resource_type=resource_type, query=query, resource=body, base_url=base_url(request)
            )
        )
        return resource_response(written, request, status=201 if written.created else 200)

    @router.delete("/{resource_type}")
    async def conditional_delete(resource_type: str, request: Request, fhir: Fhir) -> Response:
        query = request.url.query
        if not query:
            raise InvalidInput("DELETE on a type needs a search query (conditional delete)")
        await run_in_threadpool(
            lambda: fhir.conditional_delete(
                resource_type=resource_type, query=query, base_url=base_url(request)
            )
        )
        return Response(status_code=204)

    @router.get("/Patient/{res_id}/$everything")
    async def everything(res_id: str, request: Request, fhir: Fhir) -> JSONResponse:
        """Patient/$everything: the patient's compartment as a searchset Bundle."""
        resources = await run_in_threadpool(lambda: fhir.everything(patient_id=res_id))
        base = base_url(request)
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(resources),
            "link": [{"relation": "self", "url": str(request.url)}],
            "entry": [
                {
                    "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                    "resource": r,
                    "search": {"mode": "match"},
                }
                for r in resources
            ],
        }
        return JSONResponse(bundle, media_type=FHIR_JSON)

    @router.get("/{resource_type}/_history")
    async def type_history(resource_type: str, request: Request, fhir: Fhir) -> JSONResponse:
        return await _history(request, fhir, resource_type=resource_type)

    @router.get("/{resource_type}/{res_id}")
    async def read(resource_type: str, res_id: str, fhir: Fhir) -> JSONResponse:
        resource = await run_in_threadpool(
            lambda: fhir.read(resource_type=resource_type, res_id=res_id)
        )
        return read_response(resource)

    @router.put("/{resource_type}/{res_id}")
    async def update(
        resource_type: str,
        res_id: str,
        request: Request,
        fhir: Fhir,
        if_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        body = await body_json(request)
        version = parse_if_match(if_match)
        written = await run_in_threadpool(
            lambda: fhir.update(
                resource_type=resource_type, res_id=res_id, resource=body, if_match=version
            )
        )
        return resource_response(written, request, status=201 if written.created else 200)

    @router.patch("/{resource_type}/{res_id}")
    async def patch(
        resource_type: str,
        res_id: str,
        request: Request,
        fhir: Fhir,
        if_match: Annotated[str | None, Header()] = None,
    ) -> Response:
        if "json-patch" not in request.headers.get("content-type", ""):
            raise Unsupported("PATCH takes application/json-patch+json")
        try:
            operations = json.loads(await request.body())
        except ValueError as exc:
            raise InvalidInput(f"the patch is not JSON: {exc}") from exc
        version = parse_if_match(if_match)
        written = await run_in_threadpool(
            lambda: fhir.patch(
                resource_type=resource_type, res_id=res_id, operations=operations, if_match=version
            )
        )
        return resource_response(written, request)

    @router.delete("/{resource_type}/{res_id}")
    async def delete(resource_type: str, res_id: str, fhir: Fhir) -> Response:
        await run_in_threadpool(lambda: fhir.delete(resource_type=resource_type, res_id=res_id))
        return Response(status_code=204)

    @router.get("/{resource_type}/{res_id}/_history")
    async def instance_history(
        resource_type: str, res_id: str, request: Request, fhir: Fhir
    ) -> JSONResponse:
        return await _history(request, fhir, resource_type=resource_type, res_id=res_id)

    @router.get("/{resource_type}/{res_id}/_history/{version_id}")
    async def vread(resource_type: str, res_id: str, version_id: str, fhir: Fhir) -> JSONResponse:
        if not version_id.isdigit():
            raise NotFound(f"no version {version_id!r}")
        resource = await run_in_threadpool(
            lambda: fhir.vread(
                resource_type=resource_type, res_id=res_id, version_id=int(version_id)
            )
        )
        return read_response(resource)

    @router.get("")
    async def search_system(request: Request) -> JSONResponse:
        """System search (R4 §3.1.1.3), ``_type`` names the types."""
        return await _search(request, None, list(request.query_params.multi_items()))

    @router.get("/{resource_type}")
    async def search_type(resource_type: str, request: Request) -> JSONResponse:
        return await _search(request, resource_type, list(request.query_params.multi_items()))

    @router.post("/{resource_type}/_search")
    async def search_post(resource_type: str, request: Request) -> JSONResponse:
        """Search by POST (R4 §3.1.1.2): form parameters and URL parameters together."""
        form = await request.form()
        params = list(request.query_params.multi_items())
        params += [(k, str(v)) for k, v in form.multi_items()]
        return await _search(request, resource_type, params)

    return router


async def _search(
    request: Request, resource_type: str | None, params: list[tuple[str, str]]
) -> JSONResponse:
    from medflow.fhir.search import search_bundle

    fhir: FhirService = request.app.state.fhir
    strict = strict_handling(request)
    base = base_url(request)
    bundle = await run_in_threadpool(
        lambda: search_bundle(fhir.engine, resource_type, params, base_url=base, strict=strict)
    )
    return JSONResponse(bundle, media_type=FHIR_JSON)


async def _start_export(request: Request, level: str, group_id: str | None) -> Response:
    """Kick-off request (Bulk Data IG): ``Prefer: respond-async`` is required; 202 with
    Content-Location of the status endpoint."""
    if "respond-async" not in preferences(request):
        raise InvalidInput("$export needs the header Prefer: respond-async")
    q = request.query_params
    fmt = q.get("_outputFormat", "application/fhir+ndjson")
    if fmt not in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
        raise Unsupported(f"_outputFormat {fmt!r}: only ndjson")
    type_filters = [f for v in q.getlist("_typeFilter") for f in TYPE_FILTER_SPLIT.split(v) if f]
    types = [t for v in q.getlist("_type") for t in v.split(",") if t] or None
    since = None
    if q.get("_since"):
        try:
            since = datetime.fromisoformat(q["_since"].replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidInput(f"_since is not an instant: {exc}") from exc
        if since.tzinfo is None:
            raise InvalidInput("_since needs a time zone (an instant)")
    export: ExportService = request.app.state.export
    job_id = await run_in_threadpool(
        lambda: export.start(
            level=level,
            request_url=str(request.url),
            group_id=group_id,
            types=types,
            since=since,
            type_filters=type_filters or None,
        )
    )
    location = f"{base_url(request)}/$export-status/{job_id}"
    return Response(status_code=202, headers={"Content-Location": location})
