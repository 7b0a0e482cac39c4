"""The patient page in headless Chromium against ``medflow serve`` (issue 12), on a small
synthetic hospital loaded over the public APIs: find a patient with osteosarcoma by MRN, open
their record; see the biopsy, the pathology report, the knee MR and staging chest CT studies
with their thumbnails (loaded lazily), the chemotherapy after the biopsy and before surgery,
newest first; the kind and date filters hide and show events at once and survive a reload;
the chest CT opens in the image viewer. A full-page screenshot is saved as a test artifact
(``$MEDFLOW_TEST_ARTIFACTS``, default ``test-artifacts/``). Nothing of the patient reaches
the console."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from medflow.synthetic.writer import generate
from tests.conftest import load_data_dir, need_peer
from tests.e2e.test_cli import serving
from tests.e2e.test_web_ui import CHROMIUM, IMAGE_SHOWN, Watch, chromium_tab, have_browser

pytestmark = pytest.mark.e2e
ARTIFACTS = Path(os.environ.get("MEDFLOW_TEST_ARTIFACTS", "test-artifacts"))
VISIBLE = "(all) => all.filter((li) => !li.hidden).map((li) => [li.dataset.kind, li.dataset.date])"


@dataclass(frozen=True)
class Hospital:
    base: str
    osteo: dict[str, Any]


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hospital]:
    need_peer(have_browser(), f"playwright (Python) and {CHROMIUM} are needed for the UI tests")
    tmp = tmp_path_factory.mktemp("patient-ui")
    generate(tmp / "hospital", patients=8, seed=6, size=32, slides=False)
    truth = json.loads((tmp / "hospital" / "truth.json").read_text())
    osteo = next(t for t in truth if t["disease"] == "osteosarcoma")
    data = load_data_dir(tmp / "hospital", tmp / "data")
    with serving(data) as base:
        deadline = time.monotonic() + 60
        studies = len(httpx.get(f"{base}/dicomweb/studies", timeout=10).json())
        while httpx.get(f"{base}/fhir/ImagingStudy?_summary=count",
                        timeout=10).json()["total"] < studies:  # fmt: skip
            assert time.monotonic() < deadline, "the sync did not make the ImagingStudies"
            time.sleep(0.3)
        yield Hospital(base, osteo)


@pytest.fixture
def page(hospital: Hospital) -> Iterator[tuple[Any, Watch, list[str]]]:
    """A tab, what it did, and every console message (of any type)."""
    with chromium_tab() as opened:
        yield opened


def _events(tab: Any) -> list[tuple[str, str]]:
    return [tuple(e) for e in tab.eval_on_selector_all("#timeline > li.event", VISIBLE)]


def test_an_osteosarcoma_patients_history(
    hospital: Hospital, page: tuple[Any, Watch, list[str]]
) -> None:
    tab, watch, console = page
    osteo = hospital.osteo
    assert tab.goto(f"{hospital.base}/patients").status == 200
    tab.fill("input[name=identifier]", osteo["mrn"])
    tab.click("#patient-search button[type=submit]")
    tab.wait_for_selector("#patients-table")
    name = tab.inner_text("#patients-table a.patient-link")
    tab.click("#patients-table a.patient-link")
    tab.wait_for_selector("#timeline")
    assert tab.inner_text("#patient-header h1") == name
    assert osteo["mrn"] in tab.inner_text("#patient-header .demographics")

    events = _events(tab)
    dates = [d for _, d in events]
    assert dates == sorted(dates, reverse=True)  # newest first
    biopsy = tab.locator("li.kind-procedure", has_text="Biopsy")
    assert biopsy.count() == 1 and osteo["biopsy"] in biopsy.inner_text()
    pathology = tab.locator("li.kind-pathology")
    assert pathology.count() == 1 and "osteosarcoma" in pathology.inner_text().lower()
    studies = tab.locator("li.kind-imaging")
    assert studies.count() == len(osteo["studies"]) == 4
    titles = [studies.nth(i).locator("a.study-link").inner_text() for i in range(4)]
    assert sorted(t[:2] for t in titles) == ["CT", "MR", "MR", "MR"]  # the staging chest CT
    for i in range(studies.count()):
        study = studies.nth(i)
        assert "Report:" in study.inner_text()
        img = study.locator("img")
        assert img.get_attribute("loading") == "lazy"
        img.scroll_into_view_if_needed()
        tab.wait_for_function("(i) => i.complete && i.naturalWidth > 0", arg=img.element_handle())
    thumbnails = [u for u in watch.requests if u.endswith("/thumbnail?viewport=128,128")]
    assert len(thumbnails) >= 4

    chemo = tab.locator("li.kind-medication")
    drugs = [chemo.nth(i).locator(".event-title").inner_text() for i in range(chemo.count())]
    assert sorted(drugs) == ["cisplatin", "doxorubicin", "methotrexate"]
    kinds = [k for k, _ in events]
    surgery = tab.locator("li.kind-procedure", has_text="Surgical procedure")
    surgery_day = surgery.get_attribute("data-date") or ""
    chemo_days = [chemo.nth(i).get_attribute("data-date") or "" for i in range(chemo.count())]
    assert all(osteo["biopsy"] < d < surgery_day for d in chemo_days)  # in order
    assert kinds.index("medication") > events.index(("procedure", surgery_day))
    assert tab.locator("#trends li.trend").count() >= 1

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "patient-osteosarcoma.png"
    tab.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    # filters: at once in the page, and in the address
    for kind in ("encounter", "condition", "procedure", "observation", "report", "pathology",
                 "imaging", "slide", "ai-result", "finding", "outcome"):  # fmt: skip
        tab.uncheck(f"#timeline-filters input[value={kind}]")
    shown = _events(tab)
    assert shown and {k for k, _ in shown} == {"medication"} and len(shown) == 3
    assert "3 events" in tab.inner_text("#timeline-summary")
    assert "kind=medication" in tab.url
    tab.check("#timeline-filters input[value=procedure]")
    tab.fill("#timeline-filters input[name=from]", osteo["biopsy"])
    tab.fill("#timeline-filters input[name=to]", osteo["biopsy"])
    tab.dispatch_event("#timeline-filters input[name=to]", "change")
    assert _events(tab) == [("procedure", osteo["biopsy"])]
    tab.reload()  # the server filters the same
    assert _events(tab) == [("procedure", osteo["biopsy"])]
    assert tab.locator("li.event").count() == 1
    with tab.expect_navigation():
        tab.click("#timeline-filters a:has-text('Reset')")
    assert len(_events(tab)) == len(events)

    # a study (the chest CT) opens in the image viewer
    chest = tab.locator("li.kind-imaging a.study-link", has_text="CT").first
    uid = chest.get_attribute("href").rsplit("/", 1)[-1]  # type: ignore[union-attr]
    chest.click()
    tab.wait_for_url(f"**/studies/{uid}")
    tab.wait_for_function(IMAGE_SHOWN)
    assert tab.inner_text("#patient-name").strip()
    assert watch.errors == []
    family = name.split(" ")[-1]
    assert not any(osteo["mrn"] in m or family in m for m in console), console
