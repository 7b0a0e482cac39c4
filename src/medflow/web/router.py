"""The web UI edge: HTML pages rendered with Jinja2 (autoescaped) and their static assets.

``/`` the home page (counts and charts), ``/studies`` the study list, ``/studies/{uid}`` a
study with its series and an image viewer, ``/slides/{study}/{series}`` a whole slide image
viewer (pan and zoom over the pyramid's tiles, WADO-RS frames), ``/cohorts``, ``/cohorts/new`` and
``/cohorts/{id}`` the cohort list, builder and a saved cohort (:mod:`medflow.web.cohorts`),
``/labeling`` and ``/labeling/{set}`` the labeling queue and workspace
(:mod:`medflow.web.labeling`), ``/worklist`` the reading worklist (:mod:`medflow.web.worklist`),
``/models`` and ``/models/{name}/performance`` the models and how they did against outcomes
(:mod:`medflow.web.models`),
``/patients`` and ``/patients/{id}`` patient search and the longitudinal patient record
(:mod:`medflow.web.patients`), ``/static/{name}`` the CSS and JS. The pages call
the archive's and the FHIR store's services (``request.app.state.container``); the browser
fetches images from DICOMweb (WADO-RS rendered and thumbnail resources).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.templating import Jinja2Templates

from medflow import __version__
from medflow.core.errors import InvalidInput, NotFound
from medflow.fhir.service import FhirService
from medflow.store.service import StoreService
from medflow.web.cohorts import builder_context, cohort_page, edit_context
from medflow.web.home import FHIR_TYPES, home
from medflow.web.labeling import chooser, workspace
from medflow.web.models import models_view, performance_view
from medflow.web.patients import patient_view, search_view
from medflow.web.slides import slide_page
from medflow.web.studies import FIELDS, MODALITIES, search_studies
from medflow.web.study import study_page
from medflow.web.worklist import worklist_view

STATIC_TYPES = {
    "medflow.css": "text/css; charset=utf-8",
    "medflow.js": "text/javascript; charset=utf-8",
    "viewer.js": "text/javascript; charset=utf-8",
    "cohorts.js": "text/javascript; charset=utf-8",
    "slides.js": "text/javascript; charset=utf-8",
    "labeling.js": "text/javascript; charset=utf-8",
    "worklist.js": "text/javascript; charset=utf-8",
    "patient.js": "text/javascript; charset=utf-8",
}
"""The static files served (no other name is looked up)."""


@dataclass(frozen=True)
class Asset:
    body: bytes
    etag: str


@cache
def _asset(name: str) -> Asset:
    body = (resources.files("medflow.web") / "static" / name).read_bytes()
    return Asset(body, hashlib.sha256(body).hexdigest()[:16])


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("medflow.web", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["version"] = __version__
    env.globals["static_version"] = lambda name: _asset(name).etag
    return env


templates = Jinja2Templates(env=_environment())


def _services(request: Request) -> tuple[StoreService, FhirService]:
    container = request.app.state.container
    return container.store, container.fhir


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def _page(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> HTMLResponse:
    response = templates.TemplateResponse(
        request, name, {"root": _root(request), "active": "", **context}, status_code=status_code
    )
    response.headers["Cache-Control"] = "no-store"
    return response


HOME_SLOW_SECONDS = 0.25
"""A home page whose counts took longer than this is cached ..."""
HOME_CACHE_SECONDS = 30.0
"""... for this long (small archives are always counted afresh)."""


def build_web_router() -> APIRouter:
    router = APIRouter(tags=["Web UI"], include_in_schema=False)

    @router.get("/", response_class=HTMLResponse)
    def home_page(request: Request) -> HTMLResponse:
        store, fhir = _services(request)
        root, now = _root(request), time.monotonic()
        cached = getattr(request.app.state, "web_home", None)
        if cached is not None and cached[0] == root and now - cached[1] < HOME_CACHE_SECONDS:
            content = cached[2]
        else:
            content = home(store, fhir, root=root)
            # Counting a large archive takes a while: then the page is reused for a short time.
            slow = time.monotonic() - now > HOME_SLOW_SECONDS
            request.app.state.web_home = (root, time.monotonic(), content) if slow else None
        return _page(request, "home.html", {"home": content, "fhir_types": FHIR_TYPES})

    @router.get("/studies", response_class=HTMLResponse)
    def studies_page(request: Request) -> HTMLResponse:
        store, _ = _services(request)
        page = search_studies(store, request.query_params)
        context = {"page": page, "fields": FIELDS, "modalities": MODALITIES}
        return _page(request, "studies.html", context, status_code=400 if page.error else 200)

    @router.get("/studies/{study_uid}", response_class=HTMLResponse)
    def study(request: Request, study_uid: str) -> HTMLResponse:
        store, fhir = _services(request)
        try:
            page = study_page(store, fhir, study_uid)
        except NotFound:
            return _page(request, "not_found.html", {"what": "study"}, status_code=404)
        return _page(request, "study.html", {"page": page, "viewer": page.viewer(_root(request))})

    @router.get("/slides/{study_uid}/{series_uid}", response_class=HTMLResponse)
    def slide(request: Request, study_uid: str, series_uid: str) -> HTMLResponse:
        store, _ = _services(request)
        try:
            page = slide_page(store, study_uid, series_uid)
        except NotFound:
            return _page(request, "not_found.html", {"what": "slide"}, status_code=404)
        context = {"active": "studies", "page": page, "viewer": page.viewer(_root(request))}
        return _page(request, "slide.html", context)

    _cohort_pages(router)
    _labeling_pages(router)
    _patient_pages(router)

    @router.get("/worklist", response_class=HTMLResponse)
    def worklist(request: Request) -> HTMLResponse:
        """The reading worklist: scored studies by urgency (issue 11)."""
        view = worklist_view(request.app.state.container.reading, request.query_params)
        return _page(request, "worklist.html", {"active": "worklist", "view": view})

    @router.get("/models", response_class=HTMLResponse)
    def models_page(request: Request) -> HTMLResponse:
        """The registered models, their versions and test metrics (issues 10, 11)."""
        rows = models_view(request.app.state.container.registry)
        return _page(request, "models.html", {"active": "models", "rows": rows})

    @router.get("/models/{name}/performance", response_class=HTMLResponse)
    def performance_page(request: Request, name: str) -> HTMLResponse:
        """The model and its readers against later outcomes (issue 11, feedback loop)."""
        from medflow.ml.feedback.api import feedback_of

        try:
            view = performance_view(feedback_of(request), name, request.query_params)
        except NotFound:
            return _page(request, "not_found.html", {"what": "model"}, status_code=404)
        except InvalidInput as exc:
            rows = models_view(request.app.state.container.registry)
            context = {"active": "models", "rows": rows, "error": exc.message}
            return _page(request, "models.html", context, status_code=400)
        return _page(request, "model_performance.html", {"active": "models", "view": view})

    @router.get("/static/{name}")
    def static(request: Request, name: str) -> Response:
        media_type = STATIC_TYPES.get(name)
        if media_type is None:
            return Response("not found", status_code=404, media_type="text/plain")
        asset = _asset(name)
        headers = {"ETag": f'"{asset.etag}"', "Cache-Control": "public, max-age=86400"}
        if request.headers.get("if-none-match") == f'"{asset.etag}"':
            return Response(status_code=304, headers=headers)
        return Response(asset.body, media_type=media_type, headers=headers)

    return router


def _cohort_pages(router: APIRouter) -> None:
    @router.get("/cohorts", response_class=HTMLResponse)
    def cohorts_page(request: Request) -> HTMLResponse:
        cohorts = request.app.state.container.cohorts.list_cohorts()
        return _page(request, "cohorts.html", {"active": "cohorts", "cohorts": cohorts})

    @router.get("/cohorts/new", response_class=HTMLResponse)
    def new_cohort(
        request: Request, source: Annotated[str | None, Query(alias="from")] = None
    ) -> HTMLResponse:
        """The builder; ``?from=ID`` shows a saved cohort's latest version in it."""
        context: dict[str, Any] = {"active": "cohorts", "page": None, **builder_context()}
        if source is not None:
            try:
                context.update(edit_context(request.app.state.container.cohorts, source))
            except NotFound:
                return _page(request, "not_found.html", {"what": "cohort"}, status_code=404)
        return _page(request, "cohort.html", context)

    @router.get("/cohorts/{ref}", response_class=HTMLResponse)
    def cohort(request: Request, ref: str) -> HTMLResponse:
        store, fhir = _services(request)
        try:
            page = cohort_page(request.app.state.container.cohorts, store, fhir, ref)
        except NotFound:
            return _page(request, "not_found.html", {"what": "cohort"}, status_code=404)
        return _page(request, "cohort.html", {"active": "cohorts", "page": page,
                                              **builder_context()})  # fmt: skip


def _patient_pages(router: APIRouter) -> None:
    @router.get("/patients", response_class=HTMLResponse)
    def patients_page(request: Request) -> Response:
        """Patient search; one match with ``study`` (a worklist link) or ``go`` opens it."""
        records = request.app.state.container.patients
        view = search_view(records, request.query_params)
        params = request.query_params
        if len(view.hits) == 1 and (view.study or params.get("go")):
            target = f"{_root(request)}/patients/{quote(view.hits[0].id, safe='')}"
            query = urlencode({"study": view.study}) if view.study else ""
            return RedirectResponse(target + (f"?{query}#priors" if query else ""),
                                    status_code=303)  # fmt: skip
        return _page(request, "patients.html", {"active": "patients", "view": view},
                     status_code=400 if view.error else 200)  # fmt: skip

    @router.get("/patients/{patient_id}", response_class=HTMLResponse)
    def patient_page(request: Request, patient_id: str) -> HTMLResponse:
        """One patient's longitudinal record (issue 12)."""
        records = request.app.state.container.patients
        started = time.perf_counter()
        try:
            view = patient_view(records, patient_id, request.query_params)
        except (NotFound, InvalidInput):  # no such patient, or a malformed id
            return _page(request, "not_found.html", {"what": "patient"}, status_code=404)
        response = _page(request, "patient.html", {"active": "patients", "view": view,
                                                   "t": view.timeline})  # fmt: skip
        response.headers["Server-Timing"] = f"page;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response


def _labeling_pages(router: APIRouter) -> None:
    @router.get("/labeling", response_class=HTMLResponse)
    def labeling_home(request: Request) -> Response:
        """The chooser; its form (``?set=NAME&...``) leads to the set's workspace."""
        container = request.app.state.container
        chosen = request.query_params.get("set")
        if chosen:
            rest = urlencode([(k, v) for k, v in request.query_params.multi_items()
                              if k != "set" and v])  # fmt: skip
            target = f"{_root(request)}/labeling/{quote(chosen, safe='')}"
            return RedirectResponse(target + (f"?{rest}" if rest else ""), status_code=303)
        page = chooser(labels=container.labels, cohorts=container.cohorts)
        return _page(request, "labeling_home.html", {"active": "labeling", "page": page})

    @router.get("/labeling/{label_set}", response_class=HTMLResponse)
    def labeling(request: Request, label_set: str) -> HTMLResponse:
        """The reader's workspace over the queue the query parameters select."""
        container = request.app.state.container
        try:
            space = workspace(store=container.store, labels=container.labels,
                              cohorts=container.cohorts, label_set=label_set,
                              params=request.query_params)  # fmt: skip
        except NotFound:
            what = {"what": "label set or cohort"}
            return _page(request, "not_found.html", what, status_code=404)
        except InvalidInput as exc:
            page = chooser(labels=container.labels, cohorts=container.cohorts, error=exc.message)
            context = {"active": "labeling", "page": page}
            return _page(request, "labeling_home.html", context, status_code=400)
        context = {"active": "labeling", "space": space, "data": space.data(_root(request))}
        return _page(request, "labeling.html", context)


__all__ = ["build_web_router"]
