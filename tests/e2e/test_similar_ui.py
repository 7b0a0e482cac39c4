"""The similar images panel of the study page in headless Chromium against ``medflow serve``
(issue 11): a tiny chest X-ray model (32 px, two steps) trained on a small synthetic hospital
and promoted; the server's embedding worker embeds every CR image at start. On a chest X-ray's
study page the panel fills, after the viewer's first image, with the images the API answers
(thumbnails, similarity, patient and study), each linking to its study page at that image; a
cohort restricts them. On a CT study the panel says plainly that the model does not read the
image. Nothing of the patients reaches the console."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

from medflow.bootstrap import build
from medflow.cohort.schema import parse_definition
from medflow.core.settings import Settings
from medflow.ml.train.service import TrainConfig, train_model
from medflow.synthetic.writer import generate
from tests.conftest import load_data_dir, need_peer
from tests.e2e.test_cli import serving
from tests.e2e.test_web_ui import CHROMIUM, IMAGE_SHOWN, Watch, chromium_tab, have_browser
from tests.ml_data import cr_rows, write_manifest

pytestmark = pytest.mark.e2e
MODEL = "cxr:1"
SETTLED = ("() => ['results', 'empty', 'not-read', 'no-model', 'unavailable', 'failed', 'error']"
           ".includes(document.getElementById('similar-panel').dataset.state)")  # fmt: skip
THUMBNAILS_SHOWN = (
    "() => { const all = [...document.querySelectorAll('#similar-results img.thumbnail')];"
    " return all.length > 0 && all.every((i) => i.complete && i.naturalWidth > 0); }"
)


@dataclass(frozen=True)
class Hospital:
    base: str
    cr: list[pydicom.Dataset]
    """The chest X-rays' headers (the model reads them)."""
    ct: pydicom.Dataset
    """A CT slice's header (the model does not read it)."""


def _trim(folder: Path) -> tuple[list[pydicom.Dataset], pydicom.Dataset]:
    """Keep the chest X-rays and two CT slices (the test stays small and fast)."""
    cr: list[pydicom.Dataset] = []
    other: list[pydicom.Dataset] = []
    for path in sorted((folder / "dicom").glob("*/*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == "CR":
            cr.append(ds)
        elif ds.Modality == "CT" and len(other) < 2:
            other.append(ds)
        else:
            path.unlink()
    for study in (folder / "dicom").iterdir():
        if not any(study.iterdir()):
            study.rmdir()
    assert len(cr) >= 4 and other
    return cr, other[0]


def _manifest(folder: Path, path: Path) -> Path:
    """The chest X-rays by patient: per class the first patient validates, the second tests
    (both splits need both classes), the rest train."""
    rows = cr_rows(folder)
    split_of: dict[str, str] = {}
    for value in (0, 1):
        patients = dict.fromkeys(r["patient_id"] for r in rows if r["value"] == value)
        for i, patient in enumerate(patients):
            split_of.setdefault(patient, "val" if i == 0 else "test" if i == 1 else "train")
    return write_manifest([dict(r, split=split_of[r["patient_id"]]) for r in rows], path)


def _wait_embedded(base: str, count: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        status = httpx.get(f"{base}/api/similar/status", timeout=10).json()
        found = {m["model"]: m["embeddings"] for m in status["models"]}
        if found.get(MODEL) == count and status["embedding"]["backlog"].get(MODEL) == 0:
            return
        assert time.monotonic() < deadline, f"not embedded in {seconds} s: {status}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    need_peer(have_browser(), f"playwright (Python) and {CHROMIUM} are needed for the UI tests")
    tmp = tmp_path_factory.mktemp("similar-ui")
    generate(tmp / "hospital", patients=10, seed=4, size=32, slides=False)
    cr, ct = _trim(tmp / "hospital")
    data = load_data_dir(tmp / "hospital", tmp / "data")
    container = build(Settings(data_dir=data))
    try:
        config = TrainConfig(arch="small", size=32, epochs=1, batch_size=4, bootstrap=20,
                             seed=5, max_steps=2)  # fmt: skip
        result = train_model(store=container.store, registry=container.registry, name="cxr",
                             manifest=_manifest(tmp / "hospital", tmp / "manifest.parquet"),
                             config=config)  # fmt: skip
        assert result.model is not None and result.model.ref == MODEL
        container.registry.promote(name="cxr", version=1, stage="production")
        container.cohorts.save(definition=parse_definition({
            "name": "women", "evaluation_date": "2030-01-01",
            "criteria": [{"demographics": {"gender": ["female"]}}]}))  # fmt: skip
    finally:
        container.close()
    # the triage worker stays idle (the studies never settle): this test is about embeddings
    with serving(data, extra_env={"MEDFLOW_TRIAGE__SETTLE_SECONDS": "86400"}) as base:
        _wait_embedded(base, len(cr))
        yield Hospital(base, cr, ct)


@pytest.fixture
def page(hospital: Hospital) -> Iterator[tuple[Any, Watch, list[str]]]:
    """A tab, what it did, and every console message (of any type)."""
    with chromium_tab() as opened:
        yield opened


def _no_phi(console: list[str], hospital: Hospital) -> None:
    for ds in [*hospital.cr, hospital.ct]:
        family = str(ds.PatientName).split("^", 1)[0]
        assert not any(ds.PatientID in m or family in m for m in console), console


def _cards(tab: Any) -> list[str]:
    """The SOP Instance UIDs of the panel's cards, in order."""
    script = "(all) => all.map((c) => c.dataset.instanceUid)"
    return list(tab.eval_on_selector_all("#similar-results li.similar-card", script))


def test_panel_shows_similar_images_that_open_their_study(
    hospital: Hospital, page: tuple[Any, Watch, list[str]]
) -> None:
    tab, watch, console = page
    query = hospital.cr[0]
    api = httpx.get(f"{hospital.base}/api/similar", timeout=10,
                    params={"instance": query.SOPInstanceUID, "k": 10}).json()  # fmt: skip
    assert api["model"] == MODEL and api["results"]

    assert tab.goto(f"{hospital.base}/studies/{query.StudyInstanceUID}").status == 200
    assert tab.inner_text("#similar-heading") == "Similar images"
    tab.wait_for_function(IMAGE_SHOWN)
    tab.wait_for_function(SETTLED)
    assert tab.get_attribute("#similar-panel", "data-state") == "results"
    # asked after the viewer's first image, for the image shown
    asked = [u for u in watch.requests if "/api/similar?" in u]
    assert len(asked) == 1 and f"instance={query.SOPInstanceUID}" in asked[0]
    first_image = next(i for i, u in enumerate(watch.requests) if "/rendered" in u)
    assert watch.requests.index(asked[0]) > first_image

    assert _cards(tab) == [r["sop_instance_uid"] for r in api["results"]]
    tab.wait_for_function(THUMBNAILS_SHOWN)
    first = api["results"][0]
    card = tab.locator("#similar-results li.similar-card").first
    assert card.locator(".similar-score").inner_text() == f"similarity {first['score']:.3f}"
    assert first["patient_id"] in card.locator(".similar-patient").inner_text()
    other = next(ds for ds in hospital.cr if ds.SOPInstanceUID == first["sop_instance_uid"])
    date = str(other.StudyDate)
    assert f"{date[:4]}-{date[4:6]}-{date[6:]} · CR" in card.locator(".similar-study").inner_text()
    alt = card.locator("img").get_attribute("alt") or ""
    assert alt.startswith("Similar image 1, CR") and "similarity" in alt
    src = card.locator("img").get_attribute("src") or ""
    assert src.endswith(f"/instances/{first['sop_instance_uid']}/thumbnail?viewport=128,128")
    assert f"{MODEL} · " in tab.inner_text("#similar-meta")
    assert not tab.is_visible("#similar-model")  # one model: nothing to choose

    href = card.locator("a").get_attribute("href") or ""
    assert href.startswith(f"/studies/{first['study_uid']}?series={first['series_uid']}")
    card.locator("a").click()
    tab.wait_for_url(f"**/studies/{first['study_uid']}?*")
    tab.wait_for_function(IMAGE_SHOWN)  # that study's page, at the image
    assert first["sop_instance_uid"] in (tab.get_attribute("#viewer-image", "src") or "")
    assert tab.inner_text("#patient-name").strip()
    tab.wait_for_function(SETTLED)  # its own panel fills too (the first query's patient in it)
    assert tab.get_attribute("#similar-panel", "data-state") == "results"
    assert query.SOPInstanceUID in _cards(tab)
    assert watch.errors == []
    _no_phi(console, hospital)


def test_a_cohort_restricts_the_panel(
    hospital: Hospital, page: tuple[Any, Watch, list[str]]
) -> None:
    tab, watch, _ = page
    query = hospital.cr[1]
    tab.goto(f"{hospital.base}/studies/{query.StudyInstanceUID}")
    tab.wait_for_function(SETTLED)
    tab.wait_for_function("() => !document.getElementById('similar-cohort-label').hidden")
    tab.select_option("#similar-cohort", label="women")
    tab.wait_for_function(SETTLED)
    api = httpx.get(f"{hospital.base}/api/similar", timeout=10, params={
        "instance": query.SOPInstanceUID, "k": 10, "cohort": "women"}).json()  # fmt: skip
    assert _cards(tab) == [r["sop_instance_uid"] for r in api["results"]]
    state = tab.get_attribute("#similar-panel", "data-state")
    assert state == ("results" if api["results"] else "empty")
    assert "within women" in tab.inner_text("#similar-meta")
    assert any("cohort=" in u for u in watch.requests if "/api/similar?" in u)
    assert watch.errors == []


def test_an_image_the_model_does_not_read(
    hospital: Hospital, page: tuple[Any, Watch, list[str]]
) -> None:
    tab, watch, console = page
    tab.goto(f"{hospital.base}/studies/{hospital.ct.StudyInstanceUID}")
    tab.wait_for_function(SETTLED)
    assert tab.get_attribute("#similar-panel", "data-state") == "not-read"
    message = tab.inner_text("#similar-status")
    assert f"The model in production, {MODEL}, does not read this image (CT)" in message
    assert _cards(tab) == []
    # the 404 of /api/similar is the browser's own network line; nothing else went wrong
    assert [e for e in watch.errors if "status of 404" not in e] == []
    _no_phi(console, hospital)
