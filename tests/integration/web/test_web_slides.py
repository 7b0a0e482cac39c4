"""The slide viewer page and the study page's link to it, over the real app (no browser):
the pyramid embedded as JSON (levels largest first, tile sizes, frames), 404s."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from medflow.bootstrap import build, create_app
from medflow.core.settings import Settings
from tests.conftest import database_url
from tests.wsi_fixtures import Slide, convert, store_files, write_tiff

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Slide]]:
    root = tmp_path_factory.mktemp("web-slides")
    slide = convert(write_tiff(root / "tiff", 1024), root / "dcm")
    container = build(
        Settings(data_dir=root / "data", database_url=next(database_url("sqlite", root)))
    )
    try:
        store_files(container.store, slide.files)
        with TestClient(create_app(container)) as client:
            yield client, slide
    finally:
        container.close()


def test_slide_page_embeds_the_pyramid(served: tuple[TestClient, Slide]) -> None:
    client, slide = served
    r = client.get(f"/slides/{slide.study_uid}/{slide.series_uid}")
    assert r.status_code == 200
    found = re.search(r'<script type="application/json" id="slide-data">(.*?)</script>', r.text)
    assert found
    data = json.loads(found.group(1))
    assert (data["study"], data["series"], data["dicomweb"]) == (
        slide.study_uid,
        slide.series_uid,
        "/dicomweb",
    )
    levels = slide.levels()
    assert [lv["uid"] for lv in data["levels"]] == [str(d.SOPInstanceUID) for d in levels]
    first = data["levels"][0]
    assert (first["width"], first["height"], first["tileWidth"], first["frames"]) == (
        1024,
        1024,
        256,
        16,
    )
    assert first["spacing"] == pytest.approx(0.0005)
    assert 'src="/static/slides.js' in r.text
    assert client.get("/static/slides.js").status_code == 200


def test_study_page_links_slide_series(served: tuple[TestClient, Slide]) -> None:
    client, slide = served
    r = client.get(f"/studies/{slide.study_uid}")
    assert r.status_code == 200
    assert f'href="/slides/{slide.study_uid}/{slide.series_uid}"' in r.text
    assert 'id="viewer-data"' not in r.text  # slides are not in the stack viewer
    assert "no images to view" not in r.text


def test_unknown_slides_are_404(served: tuple[TestClient, Slide]) -> None:
    client, slide = served
    assert client.get(f"/slides/{slide.study_uid}/1.2.3").status_code == 404
    assert client.get("/slides/x/y").status_code == 404
