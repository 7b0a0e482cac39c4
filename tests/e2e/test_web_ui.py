"""The web UI in headless Chromium against ``medflow serve`` holding a small synthetic hospital
(FHIR bundles and 64-pixel images, loaded through the public APIs, then synced): the home
page's counts and charts, the study list to a study page, its thumbnails, and the viewer's
scrolling, windowing and zoom, each a WADO-RS rendered request. No console errors anywhere."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from medflow.synthetic.loader import load
from medflow.synthetic.writer import Generated, generate
from tests.conftest import need_peer
from tests.e2e.test_cli import serving

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
PATIENTS = 4
ALL_THUMBNAILS_DONE = (
    "() => [...document.querySelectorAll('img.thumbnail')].every((i) => i.complete)"
)
IMAGE_SHOWN = (  # the image whose URL the viewer set last has loaded
    "() => { const i = document.getElementById('viewer-image');"
    " return i.complete && i.naturalWidth > 0 && i.currentSrc.endsWith(i.getAttribute('src')); }"
)


def have_browser() -> bool:
    return importlib.util.find_spec("playwright") is not None and bool(shutil.which(CHROMIUM))


@dataclass
class Hospital:
    base: str
    generated: Generated


@dataclass
class Watch:
    """What a page did: console errors, uncaught exceptions and every request URL."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    need_peer(have_browser(), f"playwright (Python) and {CHROMIUM} are needed for the UI tests")
    root = tmp_path_factory.mktemp("web-ui")
    generated = generate(root / "hospital", patients=PATIENTS, seed=0, size=64, slides=False)
    with serving(root / "data") as base:
        load(root / "hospital", url=base)
        deadline = time.monotonic() + 60
        while True:  # the sync links each study to FHIR (the study page shows it)
            r = httpx.get(f"{base}/fhir/ImagingStudy", params={"_summary": "count"})
            if int(r.json()["total"]) >= generated.studies:
                break
            assert time.monotonic() < deadline, "the sync did not make every ImagingStudy"
            time.sleep(0.2)
        yield Hospital(base, generated)


@contextmanager
def chromium_tab() -> Iterator[tuple[Any, Watch, list[str]]]:
    """A tab of a new headless Chromium (1280x900, 20 s timeouts), what it did, and every
    console message (of any type, to check that no PHI reaches the console)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(20_000)
        watch, console = Watch(), []
        tab.on("console", lambda m: console.append(m.text))
        tab.on("console", lambda m: watch.errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: watch.errors.append(f"uncaught: {e}"))
        tab.on("request", lambda r: watch.requests.append(r.url))
        try:
            yield tab, watch, console
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def browser(hospital: Hospital) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[tuple[Any, Watch]]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(20_000)
    watch = Watch()
    tab.on("console", lambda m: watch.errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: watch.errors.append(f"uncaught: {e}"))
    tab.on("request", lambda r: watch.requests.append(r.url))
    try:
        yield tab, watch
    finally:
        context.close()


def count(tab: Any, name: str) -> int:
    return int(tab.inner_text(f'[data-count="{name}"]'))


def test_home_page_counts_and_charts(hospital: Hospital, page: tuple[Any, Watch]) -> None:
    tab, watch = page
    assert tab.goto(hospital.base + "/").status == 200
    made = hospital.generated
    assert count(tab, "patients") == PATIENTS
    assert (count(tab, "studies"), count(tab, "instances")) == (made.studies, made.instances)
    assert count(tab, "Patient") == PATIENTS
    assert count(tab, "ImagingStudy") == made.studies
    assert count(tab, "Condition") > 0 and count(tab, "DiagnosticReport") >= made.studies
    captions = tab.locator("figure.chart figcaption").all_inner_texts()
    assert captions == ["Studies by modality", "Studies per year", "Top diagnoses"]
    assert tab.locator("svg.bar-chart").count() == 3
    assert tab.locator("svg.bar-chart rect").count() >= 3
    for link in ("/studies", "/fhir/metadata", "/docs", "/sync/status"):
        assert tab.locator(f'a[href="{link}"]').count() >= 1, link
    assert watch.errors == []


def test_study_list_to_viewer(hospital: Hospital, page: tuple[Any, Watch]) -> None:
    tab, watch = page
    tab.goto(hospital.base + "/")
    tab.click("nav >> text=Studies")
    tab.wait_for_url("**/studies")
    assert tab.locator("tr[data-study-uid]").count() == hospital.generated.studies
    tab.fill('input[name="Modality"]', "CT")
    tab.click('button[type="submit"]')
    tab.wait_for_url("**/studies?*Modality=CT*")
    rows = tab.locator("tr[data-study-uid]")
    assert 0 < rows.count() < hospital.generated.studies
    assert "CT" in rows.first.inner_text()
    rows.first.locator("a.study-link").click()
    tab.wait_for_url("**/studies/*.*")
    assert tab.inner_text("#patient-name").strip()
    assert tab.locator("#imaging-study").count() == 1  # the sync's ImagingStudy, linked
    assert tab.locator("article.report").count() >= 1  # the radiology report of the accession

    tab.wait_for_function(ALL_THUMBNAILS_DONE)
    sizes = tab.eval_on_selector_all("img.thumbnail", "(all) => all.map((i) => i.naturalWidth)")
    assert sizes and all(width > 0 for width in sizes)

    data = json.loads(tab.inner_text("#viewer-data"))
    series = data["series"][0]
    instances = [i["uid"] for i in series["instances"]]
    n = len(instances)
    assert n > 2
    tab.wait_for_function(IMAGE_SHOWN)
    assert tab.inner_text("#viewer-position") == f"instance 1 / {n}"
    assert instances[0] in tab.get_attribute("#viewer-image", "src")

    tab.keyboard.press("ArrowDown")
    tab.wait_for_function(IMAGE_SHOWN)
    assert tab.inner_text("#viewer-position") == f"instance 2 / {n}"
    src = tab.get_attribute("#viewer-image", "src")
    assert f"/instances/{instances[1]}/frames/1/rendered?viewport=" in src
    assert any(instances[1] in url and "/rendered" in url for url in watch.requests)

    tab.hover("#viewer-stage")
    tab.mouse.wheel(0, 120)
    tab.wait_for_function(f"() => document.getElementById('viewer-position').textContent"
                          f" === 'instance 3 / {n}'")  # fmt: skip
    tab.wait_for_function(IMAGE_SHOWN)
    assert instances[2] in tab.get_attribute("#viewer-image", "src")
    tab.keyboard.press("ArrowUp")
    assert tab.inner_text("#viewer-position") == f"instance 2 / {n}"
    assert watch.errors == []


def test_viewer_window_zoom_and_series(hospital: Hospital, page: tuple[Any, Watch]) -> None:
    tab, watch = page
    studies = httpx.get(f"{hospital.base}/dicomweb/studies", params={"ModalitiesInStudy": "CT"})
    study = studies.json()[0]["0020000D"]["Value"][0]
    tab.goto(f"{hospital.base}/studies/{study}")
    tab.wait_for_function(IMAGE_SHOWN)
    data = json.loads(tab.inner_text("#viewer-data"))

    with tab.expect_request(lambda r: "window=50,350,linear" in r.url) as typed:
        tab.fill("#window-center", "50")
        tab.fill("#window-width", "350")
        tab.press("#window-width", "Enter")
    assert "/rendered?" in typed.value.url
    tab.wait_for_function(IMAGE_SHOWN)
    assert "window=50,350,linear" in tab.get_attribute("#viewer-image", "src")

    stage = tab.locator("#viewer-stage")
    stage.scroll_into_view_if_needed()
    box = stage.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    with tab.expect_request(lambda r: "/rendered" in r.url and "window=" in r.url
                            and "window=50,350,linear" not in r.url):  # fmt: skip
        tab.mouse.move(x, y)
        tab.mouse.down()
        tab.mouse.move(x + 40, y + 20, steps=4)
        tab.mouse.up()
    tab.wait_for_function(IMAGE_SHOWN)
    assert float(tab.input_value("#window-width")) > 350  # dragged right: wider
    assert float(tab.input_value("#window-center")) > 50  # dragged down: higher

    header = data["series"][0]["presets"][0]
    with tab.expect_request(lambda r: "/rendered" in r.url and "window=" in r.url):
        tab.select_option("#window-preset", "0")
    assert float(tab.input_value("#window-center")) == header["center"]
    assert float(tab.input_value("#window-width")) == header["width"]

    tab.click("#zoom-in")
    assert tab.inner_text("#zoom-level") == "125%"
    assert "scale(1.25)" in tab.get_attribute("#viewer-image", "style")
    tab.hover("#viewer-stage")
    tab.keyboard.down("Control")
    tab.mouse.wheel(0, -100)
    tab.keyboard.up("Control")
    assert tab.inner_text("#zoom-level") == "138%"
    assert tab.inner_text("#viewer-position").startswith("instance 1 /")  # zoom, not scroll
    tab.keyboard.press("0")
    assert tab.inner_text("#zoom-level") == "100%"

    last = data["series"][-1]
    tab.click(f'button.series-card[data-series-uid="{last["uid"]}"]')
    assert tab.get_attribute(f'[data-series-uid="{last["uid"]}"]', "aria-pressed") == "true"
    assert tab.inner_text("#viewer-position") == f"instance 1 / {len(last['instances'])}"
    tab.wait_for_function(IMAGE_SHOWN)
    assert last["instances"][0]["uid"] in tab.get_attribute("#viewer-image", "src")
    tab.keyboard.press("End")
    n = len(last["instances"])
    assert tab.inner_text("#viewer-position") == f"instance {n} / {n}"
    tab.wait_for_function(IMAGE_SHOWN)
    assert watch.errors == []


def test_unknown_study_page(hospital: Hospital, page: tuple[Any, Watch]) -> None:
    tab, _ = page
    response = tab.goto(f"{hospital.base}/studies/1.2.3.4.5.6.7")
    assert response.status == 404
    assert "no such study" in tab.inner_text("#not-found")
