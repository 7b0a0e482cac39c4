"""The labeling UI in headless Chromium against ``medflow serve``: a reader opens a queue of
three chest X-rays from the chooser and, with the keyboard and the mouse, labels them: image 1
pneumothorax (a KOS), image 2 a box (a TID 1500 SR), image 3 a polygon (an SR) and then the
class normal (a KOS); back on image 1 the class is changed (the new KOS replaces the old, which
leaves the archive). Then the archive is read over DICOMweb: every document is in its image's
study and references exactly that image (KOS evidence and IMAGE items; SR SCOORD on the image,
its coordinates where the box was drawn). Window/level and zoom change the image; no console
errors."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medflow.bootstrap import build
from medflow.core.settings import Settings
from medflow.labels.schemas import LabelSetDefinition
from tests import labels_fixtures as fx
from tests.conftest import need_peer
from tests.e2e.test_cli import serving
from tests.e2e.test_pydicom_files import split_multipart
from tests.e2e.test_web_ui import CHROMIUM, Watch, have_browser
from tests.wsi_fixtures import store_files

pytestmark = pytest.mark.e2e
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
SIZE = 64
SET = {
    "name": "ptx",
    "classes": [
        {"name": "pneumothorax", "code": {"scheme": "SCT", "value": "36118008",
                                          "meaning": "Pneumothorax"}},
        {"name": "normal"},
    ],
    "scope": "instance",
    "region_types": ["none", "box", "polygon"],
}  # fmt: skip


@dataclass(frozen=True)
class Archive:
    base: str
    images: list[Dataset]


def _xray(patient: str, index: int) -> Dataset:
    ds = fx.image(study=generate_uid(), patient=patient, size=SIZE)
    ramp = np.add.outer(np.arange(SIZE), np.arange(SIZE)) * 32 + index * 200
    ds.PixelData = ramp.astype(np.uint16).tobytes()
    ds.WindowCenter, ds.WindowWidth = 2000, 4000
    ds.BodyPartExamined = "CHEST"
    ds.StudyDate = f"2026010{index + 1}"
    return ds


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    need_peer(have_browser(), f"playwright (Python) and {CHROMIUM} are needed for the UI tests")
    root = tmp_path_factory.mktemp("labeling-ui")
    images = [_xray(f"P{i}", i) for i in range(3)]
    files = []
    for i, ds in enumerate(images):
        path = root / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    container = build(Settings(data_dir=root / "data"))
    try:
        store_files(container.store, files)
        container.labels.sets.save(definition=LabelSetDefinition.model_validate(SET))
    finally:
        container.close()
    with serving(root / "data") as base:
        yield Archive(base, images)


@pytest.fixture
def page(archive: Archive) -> Iterator[tuple[Any, Watch]]:
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


def _wait(tab: Any, attribute: str, value: str) -> None:
    tab.wait_for_function(
        f"() => document.getElementById('label-stage').dataset.{attribute} === {value!r}"
    )


def _canvas_point(tab: Any, x: float, y: float) -> tuple[float, float]:
    """The page position of image pixel (x, y) at the fitted, unzoomed view."""
    box = tab.locator("#label-canvas").bounding_box()
    side = min(box["width"], box["height"])
    left = box["x"] + (box["width"] - side) / 2
    top = box["y"] + (box["height"] - side) / 2
    return left + x * side / SIZE, top + y * side / SIZE


def _documents(base: str, study: str) -> list[Dataset]:
    """Every KOS and SR of a study, retrieved over WADO-RS."""
    out = []
    with httpx.Client(base_url=base, timeout=20) as http:
        found = http.get(f"/dicomweb/studies/{study}/instances")
        assert found.status_code == 200, found.text
        for obj in found.json():
            modality = obj.get("00080060", {}).get("Value", [""])[0]
            if modality not in ("KO", "SR"):
                continue
            series, sop = obj["0020000E"]["Value"][0], obj["00080018"]["Value"][0]
            accept = {"Accept": 'multipart/related; type="application/dicom"'}
            r = http.get(f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
                         headers=accept)  # fmt: skip
            assert r.status_code == 200, r.text[:200]
            ((_, body),) = split_multipart(r.content, r.headers["content-type"])
            out.append(pydicom.dcmread(io.BytesIO(body)))
    return out


def _image_refs(ds: Dataset) -> set[str]:
    """SOP Instance UIDs of the IMAGE/SCOORD references anywhere in the content tree."""
    found: set[str] = set()

    def walk(items: Any) -> None:
        for item in items:
            for ref in item.get("ReferencedSOPSequence", []):
                found.add(str(ref.ReferencedSOPInstanceUID))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


def _evidence(ds: Dataset) -> set[str]:
    return {
        str(sop.ReferencedSOPInstanceUID)
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }


def _person_names(ds: Dataset) -> set[str]:
    found: set[str] = set()

    def walk(items: Any) -> None:
        for item in items:
            if item.get("ValueType") == "PNAME":
                found.add(str(item.PersonName))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


def _scoord(ds: Dataset) -> list[float]:
    def walk(items: Any) -> list[float] | None:
        for item in items:
            if item.ValueType == "SCOORD":
                return [float(v) for v in item.GraphicData]
            found = walk(item.get("ContentSequence", []))
            if found is not None:
                return found
        return None

    data = walk(ds.ContentSequence)
    assert data is not None
    return data


def test_label_three_images(archive: Archive, page: tuple[Any, Watch]) -> None:
    tab, watch = page
    base, images = archive.base, archive.images
    assert tab.goto(f"{base}/labeling").status == 200
    tab.select_option("#queue-set", "ptx")
    tab.fill("#queue-modality", "CR")
    tab.click("#queue-open")
    tab.wait_for_url("**/labeling/ptx?modality=CR")
    assert tab.locator("#queue-count").inner_text() == "3"
    _wait(tab, "loaded", "1")
    # the queue is in (patient, study date) order: P0, P1, P2
    assert tab.locator("#label-facts").inner_text().count("P0") == 1

    # window/level and zoom: the image is fetched again with the window; the zoom shows
    stage = tab.locator("#label-stage")
    stage.focus()
    before = len(watch.requests)
    tab.fill("#label-center", "1000")
    tab.fill("#label-width", "500")
    tab.press("#label-width", "Enter")
    tab.wait_for_function("() => document.getElementById('label-stage').dataset.loaded === '1'")
    assert any("window=1000,500,linear" in u for u in watch.requests[before:])
    stage.focus()
    tab.keyboard.press("+")
    assert tab.locator("#label-zoom").inner_text() == "125%"
    tab.keyboard.press("0")

    # the reader's name, written as each document's observer
    tab.fill("#label-observer", "Reader^One")
    stage.focus()

    # image 1: a class with the keyboard -> a KOS; the queue moves on
    tab.keyboard.press("1")
    _wait(tab, "written", "1")
    _wait(tab, "index", "1")
    _wait(tab, "loaded", "1")

    # image 2: a box, then the class -> an SR; the reader stays on the image
    tab.keyboard.press("b")
    x0, y0 = _canvas_point(tab, 16, 8)
    x1, y1 = _canvas_point(tab, 40, 32)
    tab.mouse.move(x0, y0)
    tab.mouse.down()
    tab.mouse.move(x1, y1, steps=6)
    tab.mouse.up()
    _wait(tab, "draft", "ready")
    tab.click("#class-1")
    _wait(tab, "written", "2")
    assert stage.get_attribute("data-index") == "1"
    assert stage.get_attribute("data-labels") == "1"

    # image 3: a polygon (three clicks, Enter) -> an SR; then the class normal -> a KOS
    stage.focus()
    tab.keyboard.press("ArrowRight")
    _wait(tab, "index", "2")
    _wait(tab, "loaded", "1")
    tab.keyboard.press("g")
    for x, y in ((10, 10), (50, 12), (30, 50)):
        tab.mouse.click(*_canvas_point(tab, x, y))
    tab.keyboard.press("Enter")
    _wait(tab, "draft", "ready")
    tab.keyboard.press("1")
    _wait(tab, "written", "3")
    tab.keyboard.press("Escape")
    tab.keyboard.press("2")
    _wait(tab, "written", "4")
    assert stage.get_attribute("data-labels") == "2"

    # back to image 1, change its class: the new KOS replaces the first
    tab.keyboard.press("p")
    tab.keyboard.press("p")
    _wait(tab, "index", "0")
    tab.keyboard.press("2")
    _wait(tab, "written", "5")
    _wait(tab, "index", "1")  # moved on to the next image
    tab.keyboard.press("p")
    _wait(tab, "index", "0")
    assert tab.locator("#label-list li").count() == 1
    assert tab.locator("#label-list li").get_attribute("data-label") == "normal"
    assert tab.locator("#queue-labeled").inner_text() == "3"
    assert watch.errors == []

    # the archive: each document in its image's study, referencing exactly that image
    first, second, third = images
    docs = _documents(base, first.StudyInstanceUID)
    assert [(d.Modality, d.SOPClassUID) for d in docs] == [("KO", KOS)]
    (kos,) = docs
    assert _evidence(kos) == _image_refs(kos) == {first.SOPInstanceUID}
    assert "normal" in str(kos.ContentSequence[-1].get("TextValue", "")) or any(
        "normal" in str(i.get("TextValue", "")) for i in kos.ContentSequence
    )

    assert "Reader^One" in _person_names(kos)

    (sr,) = _documents(base, second.StudyInstanceUID)
    assert sr.Modality == "SR" and _image_refs(sr) == {second.SOPInstanceUID}
    assert second.SOPInstanceUID in _evidence(sr)
    data = np.asarray(_scoord(sr)).reshape(-1, 2)
    assert np.allclose(data.min(axis=0), [16, 8], atol=1.5)
    assert np.allclose(data.max(axis=0), [40, 32], atol=1.5)

    docs = _documents(base, third.StudyInstanceUID)
    assert sorted(d.Modality for d in docs) == ["KO", "SR"]
    for d in docs:
        assert _image_refs(d) == {third.SOPInstanceUID}
    (poly,) = [d for d in docs if d.Modality == "SR"]
    corners = np.asarray(_scoord(poly)).reshape(-1, 2)
    assert len(corners) == 4 and np.allclose(corners[0], corners[-1])  # closed
    assert np.allclose(corners[:3], [[10, 10], [50, 12], [30, 50]], atol=1.5)

    # the index says the same
    with httpx.Client(base_url=base, timeout=20) as http:
        rows = http.get("/api/labels", params={"set": "ptx"}).json()
    got = sorted((r["sop_instance_uid"], r["label"], r["source_kind"]) for r in rows)
    assert got == sorted([
        (first.SOPInstanceUID, "normal", "KOS"),
        (second.SOPInstanceUID, "pneumothorax", "SR"),
        (third.SOPInstanceUID, "pneumothorax", "SR"),
        (third.SOPInstanceUID, "normal", "KOS"),
    ])  # fmt: skip


def test_reload_shows_the_labels_and_takes_one_back(
    archive: Archive, page: tuple[Any, Watch]
) -> None:
    """After the first test: the page shows the saved labels (with the box drawn); the ✕ of a
    label deletes its document."""
    tab, watch = page
    second = archive.images[1]
    assert tab.goto(f"{archive.base}/labeling/ptx?modality=CR").status == 200
    _wait(tab, "loaded", "1")
    tab.locator("#label-stage").focus()
    tab.keyboard.press("n")
    _wait(tab, "index", "1")
    _wait(tab, "loaded", "1")
    item = tab.locator("#label-list li")
    assert item.count() == 1 and item.get_attribute("data-kind") == "SR"
    # the saved box is drawn over the image: its edge pixel is the class colour
    x, y = _canvas_point(tab, 16, 20)
    rgba = tab.evaluate(
        "([x, y]) => { const c = document.getElementById('label-canvas');"
        " const b = c.getBoundingClientRect(); const r = c.width / b.width;"
        " return Array.from(c.getContext('2d').getImageData((x - b.left) * r,"
        " (y - b.top) * r, 1, 1).data); }",
        [x, y],
    )
    assert rgba[:3] == [255, 210, 77], rgba
    tab.click("#label-list .remove-label")
    tab.wait_for_function("() => document.querySelector('#label-list li.empty') !== null")
    assert _documents(archive.base, second.StudyInstanceUID) == []
    assert watch.errors == []
