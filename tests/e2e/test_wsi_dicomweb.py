"""wsidicom reads a slide back from medflow over DICOMweb (QIDO-RS, WADO-RS metadata and
frames with ``image/jpeg``): a synthetic slide converted by wsidicomizer, stored, opened with
``WsiDicom.open_web`` against a real uvicorn server on a free port; regions of two levels equal
the source TIFF's pixels (within JPEG decoders' tolerance)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from medflow.bootstrap import build, create_app
from medflow.core.settings import Settings
from tests.conftest import database_url, free_port
from tests.wsi_fixtures import Slide, convert, store_files, write_tiff

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Slide]]:
    import uvicorn

    root = tmp_path_factory.mktemp("wsi-web")
    slide = convert(write_tiff(root / "tiff", 2048), root / "dcm", offset_table="empty")
    for url in database_url("sqlite", root):
        container = build(Settings(data_dir=root / "data", database_url=url))
        store_files(container.store, slide.files)
        port = free_port()
        config = uvicorn.Config(
            create_app(container), host="127.0.0.1", port=port, log_level="warning"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{port}/dicomweb", slide
        finally:
            server.should_exit = True
            thread.join(10)
            container.close()


def test_wsidicom_reads_regions_over_dicomweb(served: tuple[str, Slide]) -> None:
    from wsidicom import WsiDicom, WsiDicomWebClient

    url, slide = served
    client = WsiDicomWebClient.create_client(url)
    base = slide.base_rgb().astype(int)
    with WsiDicom.open_web(client, slide.study_uid, slide.series_uid) as wsi:
        assert len(wsi.levels) == 2
        assert (wsi.size.width, wsi.size.height) == (2048, 2048)
        region = np.asarray(wsi.read_region((300, 500), 0, (600, 400)).convert("RGB"))
        assert np.abs(region.astype(int) - base[500:900, 300:900]).mean() < 4
        level1 = np.asarray(wsi.read_region((100, 100), 1, (300, 200)).convert("RGB"))
        expected = base[200:600, 200:800].reshape(200, 2, 300, 2, 3).mean((1, 3))
        assert np.abs(level1.astype(int) - expected).mean() < 6
        tile = wsi.read_encoded_tile(0, (1, 2))
        assert tile[:2] == b"\xff\xd8"
        levels = slide.levels()
        from pydicom import encaps

        stored = list(encaps.generate_frames(levels[0].PixelData, number_of_frames=64))
        assert tile == stored[2 * 8 + 1]
