"""The slide viewer in headless Chromium against ``medflow serve`` holding one converted
synthetic slide: the study page links the SM series to ``/slides/{study}/{series}``, whose
canvas draws the tiles of the coarse level (WADO-RS frames, JPEG parts cut from the
multipart/related bodies in JS); zooming in loads the base level's tiles. No console errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from medflow.bootstrap import build
from medflow.core.settings import Settings
from tests.conftest import need_peer
from tests.e2e.test_cli import serving
from tests.e2e.test_web_ui import CHROMIUM, Watch, have_browser
from tests.wsi_fixtures import Slide, convert, store_files, write_tiff

pytestmark = pytest.mark.e2e

SETTLED = (  # every visible tile of the level drawn, nothing in flight
    "() => { const s = document.getElementById('slide-stage');"
    " return s.dataset.visible && s.dataset.pending === '0'"
    " && s.dataset.drawn === s.dataset.visible; }"
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Slide]]:
    need_peer(have_browser(), f"playwright (Python) and {CHROMIUM} are needed for the UI tests")
    root = tmp_path_factory.mktemp("slide-ui")
    slide = convert(write_tiff(root / "tiff", 2048), root / "dcm", offset_table="bot")
    container = build(Settings(data_dir=root / "data"))
    try:
        store_files(container.store, slide.files)
    finally:
        container.close()
    with serving(root / "data") as base:
        yield base, slide


@pytest.fixture
def page(served: tuple[str, Slide]) -> Iterator[tuple[Any, Watch]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        context = chromium.new_context(viewport={"width": 1280, "height": 900})
        tab = context.new_page()
        tab.set_default_timeout(20_000)
        watch = Watch()
        tab.on("console", lambda m: watch.errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: watch.errors.append(f"uncaught: {e}"))
        tab.on("request", lambda r: watch.requests.append(r.url))
        try:
            yield tab, watch
        finally:
            chromium.close()


def _center_is_tissue_or_glass(tab: Any) -> bool:
    rgba = tab.evaluate(
        "() => { const c = document.getElementById('slide-canvas');"
        " const d = c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data;"
        " return Array.from(d); }"
    )
    return bool(rgba[3] == 255 and rgba[:3] != [242, 242, 242])


def test_study_page_links_the_slide_viewer(
    served: tuple[str, Slide], page: tuple[Any, Watch]
) -> None:
    base, slide = served
    tab, watch = page
    assert tab.goto(f"{base}/studies/{slide.study_uid}").status == 200
    card = tab.locator(f'a[data-slide-series="{slide.series_uid}"]')
    assert card.count() == 1
    tab.wait_for_function(
        "() => [...document.querySelectorAll('img.thumbnail')].every((i) => i.complete"
        " && i.naturalWidth > 0)"
    )
    card.click()
    tab.wait_for_url(f"**/slides/{slide.study_uid}/{slide.series_uid}")
    tab.wait_for_function(SETTLED)
    assert watch.errors == []


def test_tiles_drawn_and_zoom_loads_a_finer_level(
    served: tuple[str, Slide], page: tuple[Any, Watch]
) -> None:
    base, slide = served
    tab, watch = page
    levels = slide.levels()
    assert tab.goto(f"{base}/slides/{slide.study_uid}/{slide.series_uid}").status == 200
    tab.wait_for_function(SETTLED)
    stage = tab.locator("#slide-stage")
    assert stage.get_attribute("data-level") == "1"  # the whole slide fits: the coarse level
    assert int(stage.get_attribute("data-drawn") or 0) == 16
    assert _center_is_tissue_or_glass(tab)
    coarse = [u for u in watch.requests if f"/instances/{levels[1].SOPInstanceUID}/frames/" in u]
    assert len(coarse) == 16 and not any(levels[0].SOPInstanceUID in u for u in watch.requests)

    stage.focus()
    for _ in range(5):
        tab.keyboard.press("+")
    tab.wait_for_function("() => document.getElementById('slide-stage').dataset.level === '0'")
    tab.wait_for_function(SETTLED)
    fine = [u for u in watch.requests if f"/instances/{levels[0].SOPInstanceUID}/frames/" in u]
    drawn = int(stage.get_attribute("data-drawn") or 0)
    assert 0 < drawn < 64 and drawn <= len(fine) < 64  # the visible tiles (zoom steps too)
    assert len(set(fine)) == len(fine)  # each tile fetched once (cached)
    assert _center_is_tissue_or_glass(tab)
    box = stage.bounding_box()
    assert box is not None
    tab.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    tab.mouse.down()
    tab.mouse.move(box["x"] + box["width"] / 2 - 300, box["y"] + box["height"] / 2, steps=5)
    tab.mouse.up()
    tab.wait_for_function(SETTLED)
    assert watch.errors == []


def test_unknown_slide_is_404(served: tuple[str, Slide], page: tuple[Any, Watch]) -> None:
    base, slide = served
    tab, _ = page
    assert tab.goto(f"{base}/slides/{slide.study_uid}/1.2.3").status == 404
    assert tab.goto(f"{base}/slides/not-a-uid/1.2.3").status == 404
