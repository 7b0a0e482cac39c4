"""Triage end to end against ``medflow serve`` (issue 11): a tiny chest X-ray model trained in
the test on a synthetic hospital and promoted; the server runs with its triage worker; two new
chest X-ray studies are sent over STOW-RS and within seconds they are on the worklist, ranked
(priority, then probability), each with its AI result SR in the study (QIDO-RS) and its
RiskAssessment in FHIR (REST search). In headless Chromium the worklist page shows them in
that order and a reader's finding button marks one read (FHIR Observation)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from medflow.bootstrap import build
from medflow.core.settings import Settings
from medflow.ml.train.service import TrainConfig, train_model
from medflow.synthetic.writer import generate
from tests.conftest import load_data_dir, need_peer
from tests.e2e.test_cli import serving
from tests.e2e.test_web_ui import CHROMIUM, Watch, have_browser
from tests.ml_data import cr_rows, write_manifest

pytestmark = pytest.mark.e2e
AI_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("triage-e2e")
    generate(tmp / "hospital", patients=30, seed=4, size=32, slides=False)
    data = load_data_dir(tmp / "hospital", tmp / "data")
    container = build(Settings(data_dir=data))
    try:
        manifest = write_manifest(cr_rows(tmp / "hospital"), tmp / "manifest.parquet")
        config = TrainConfig(arch="small", size=32, epochs=1, batch_size=4, bootstrap=20,
                             seed=5, max_steps=2)  # fmt: skip
        result = train_model(store=container.store, manifest=manifest, config=config,
                             registry=container.registry, name="cxr")  # fmt: skip
        assert result.model is not None
        container.registry.promote(name="cxr", version=result.model.version, stage="production")
    finally:
        container.close()
    extra = {"MEDFLOW_TRIAGE__SETTLE_SECONDS": "1", "MEDFLOW_TRIAGE__POLL_SECONDS": "0.2"}
    with serving(data, extra_env=extra) as base:
        yield base, tmp / "hospital"


def _stow(base: str, hospital: Path, n: int) -> list[str]:
    """``n`` new chest X-ray studies of existing patients, sent over STOW-RS."""
    paths = [p for p in sorted((hospital / "dicom").glob("*/*.dcm"))
             if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CR"][:n]  # fmt: skip
    studies = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        body = (b"--b1\r\nContent-Type: application/dicom\r\n\r\n" + buf.getvalue()
                + b"\r\n--b1--\r\n")  # fmt: skip
        r = httpx.post(
            f"{base}/dicomweb/studies",
            content=body,
            timeout=30,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b1'},
        )
        assert r.status_code == 200, r.text
        studies.append(str(ds.StudyInstanceUID))
    return studies


def _wait_on_worklist(base: str, studies: list[str], seconds: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while True:
        entries = httpx.get(f"{base}/api/worklist", params={"status": "all"}, timeout=10).json()
        found = [e for e in entries["entries"] if e["study_uid"] in studies]
        if len(found) == len(studies):
            return list(entries["entries"])
        assert time.monotonic() < deadline, f"not on the worklist in {seconds} s: {found}"
        time.sleep(0.5)


def test_stow_to_worklist_sr_and_risk_assessment(served: tuple[str, Path]) -> None:
    base, hospital = served
    started = time.monotonic()
    studies = _stow(base, hospital, 2)
    entries = _wait_on_worklist(base, studies)
    took = time.monotonic() - started
    assert took < 60
    ranked = sorted(entries, key=lambda e: (e["priority"], -e["probability"]))
    assert [e["study_uid"] for e in entries] == [e["study_uid"] for e in ranked]
    for study in studies:
        (entry,) = [e for e in entries if e["study_uid"] == study]
        found = httpx.get(f"{base}/dicomweb/studies/{study}/instances",
                          params={"SOPClassUID": AI_SR}, timeout=10).json()  # fmt: skip
        assert [o["00080018"]["Value"][0] for o in found] == [entry["sr_uid"]]
        risks = httpx.get(
            f"{base}/fhir/RiskAssessment",
            timeout=10,
            params={"identifier": f"urn:medflow:ai-result|{study}/{entry['model']}"},
        ).json()
        (risk,) = [e["resource"] for e in risks.get("entry", [])]
        assert risk["prediction"][0]["probabilityDecimal"] == pytest.approx(entry["probability"])
    status = httpx.get(f"{base}/api/triage/status", timeout=10).json()
    assert status["running"] is True and status["pending"] == 0


def test_worklist_page_ranks_and_records_a_read(served: tuple[str, Path]) -> None:
    need_peer(have_browser(), f"playwright (Python) and {CHROMIUM} are needed for the UI tests")
    from playwright.sync_api import sync_playwright

    base, _ = served
    api = httpx.get(f"{base}/api/worklist", timeout=10).json()["entries"]
    assert api, "the first test put studies on the worklist"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = chromium.new_page()
        tab.set_default_timeout(20_000)
        watch = Watch()
        tab.on("console", lambda m: watch.errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: watch.errors.append(f"uncaught: {e}"))
        try:
            assert tab.goto(f"{base}/worklist").status == 200
            rows = tab.locator("#worklist-table tbody tr")
            assert [rows.nth(i).get_attribute("data-study-uid") for i in range(rows.count())] == [
                e["study_uid"] for e in api]  # fmt: skip
            first = rows.nth(0)
            tab.fill("#worklist-reader", "Reader^One")
            first.locator('.read-button[data-finding="normal"]').click()
            tab.wait_for_function("() => document.getElementById('worklist-message')"
                                  ".textContent !== ''")  # fmt: skip
            message = tab.locator("#worklist-message").inner_text()
            assert message.startswith("recorded: normal"), message
            assert "read" in (first.get_attribute("class") or "")
            assert "Reader^One: normal" in first.locator(".status").inner_text()
            assert watch.errors == []
        finally:
            chromium.close()
    study = api[0]["study_uid"]
    entry = httpx.get(f"{base}/api/worklist/{study}", timeout=10).json()
    assert (entry["status"], entry["reader_finding"]) == ("read", "normal")
    observation = httpx.get(f"{base}/fhir/Observation/{entry['reader_observation_id']}",
                            timeout=10).json()  # fmt: skip
    assert observation["valueBoolean"] is False and observation["performer"][0]["display"] == (
        "Reader^One")  # fmt: skip
