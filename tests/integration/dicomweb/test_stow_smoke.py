from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.factories import make_instance, multipart, to_bytes

pytestmark = pytest.mark.integration


def test_stow_then_changefeed(client: TestClient) -> None:
    ds = make_instance()
    mp = multipart([to_bytes(ds)])
    r = client.post("/dicomweb/studies", content=mp.body, headers={"Content-Type": mp.content_type})
    assert r.status_code == 200, r.text
    feed = client.get("/dicomweb/changefeed").json()
    assert [e["SOPInstanceUID"] for e in feed] == [ds.SOPInstanceUID]
