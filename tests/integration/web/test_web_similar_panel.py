"""The study page's similar images panel, server side (issue 11): the panel beside the viewer
(heading, status region, result list) and the URLs the browser asks (``/api/similar``, the
cohorts, the study pages) in the viewer's JSON, under a root path too; no panel without
images; ``GET /api/similar/status`` telling the panel why an image has no embedding (the
default model, whether embeddings are computed here, each model's backlog)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient

from medflow.bootstrap import Container, create_app
from medflow.ml.similar.store import EmbeddingStore, NewEmbedding, cursor_name
from tests.factories import make_instance
from tests.integration.web.test_web_pages import page, stow, viewer_data

pytestmark = pytest.mark.integration
STUDY = "1.2.826.0.1.7.11"


def test_study_page_has_the_panel_and_its_urls(client: TestClient) -> None:
    stow(client, [make_instance(study_uid=STUDY, modality="CR")])
    html = page(client, f"/studies/{STUDY}")
    panel = html.split('id="similar-panel"', 1)[1].split("</section>", 1)[0]
    assert '<h2 id="similar-heading">Similar images</h2>' in panel
    assert 'aria-labelledby="similar-heading"' in html
    assert re.search(r'id="similar-status" role="status" aria-live="polite"', panel)
    assert 'id="similar-results" aria-label="Similar images, most similar first"' in panel
    assert html.index('id="viewer"') < html.index('id="similar-panel"')  # beside, after it
    data = viewer_data(html)
    assert (data["similar"], data["cohorts"], data["studies"]) == (
        "/api/similar", "/api/cohorts", "/studies")  # fmt: skip


def test_urls_under_a_root_path(container: Container) -> None:
    with TestClient(create_app(container), root_path="/medflow") as client:
        stow(client, [make_instance(study_uid=STUDY, modality="CR")])
        data = viewer_data(page(client, f"/studies/{STUDY}"))
    assert data["similar"] == "/medflow/api/similar" and data["studies"] == "/medflow/studies"
    assert data["dicomweb"] == "/medflow/dicomweb"


def test_no_panel_without_images(client: TestClient) -> None:
    sr = make_instance(study_uid=STUDY, modality="SR",
                       sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11")  # fmt: skip
    for keyword in ("PixelData", "Rows", "Columns"):
        if keyword in sr:
            delattr(sr, keyword)
    stow(client, [sr])
    assert 'id="similar-panel"' not in page(client, f"/studies/{STUDY}")


def test_status_tells_the_panel_why(client: TestClient, container: Container) -> None:
    status = client.get("/api/similar/status").json()
    assert status["models"] == [] and status["default_model"] is None
    assert status["embedding"] == {"enabled": True, "latest": 0, "backlog": {}}

    image = make_instance(study_uid=STUDY, modality="CR")
    stow(client, [image, make_instance(study_uid=STUDY, modality="CR")])
    embeddings, now = EmbeddingStore(container.engine), datetime.now(UTC)
    embeddings.replace(model_ref="tiny:1", now=now, rows=[NewEmbedding(
        sop_instance_uid=image.SOPInstanceUID, study_uid=STUDY,
        series_uid=image.SeriesInstanceUID, patient_id=image.PatientID, frame=1,
        vector=np.ones(8, dtype=np.float32))])  # fmt: skip
    status = client.get("/api/similar/status").json()
    latest = status["embedding"]["latest"]
    assert latest >= 2 and status["embedding"]["backlog"] == {"tiny:1": latest}
    embeddings.set_cursor(cursor_name("tiny:1"), latest, now)
    assert client.get("/api/similar/status").json()["embedding"]["backlog"] == {"tiny:1": 0}
    assert [m["model"] for m in status["models"]] == ["tiny:1"]
