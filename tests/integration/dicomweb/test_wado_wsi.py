"""WADO-RS over whole slide images (PS3.18 §10.4.1.1.3-5, §8.3.5.1.3): a synthetic slide
converted by wsidicomizer (JPEG tiles copied from the TIFF) with a Basic, an Extended or an
empty offset table; every tile of two levels served byte for byte as stored; rendered regions
composed from the tiles they cover; the slide's thumbnail; metadata of tiled images."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import encaps

from medflow.bootstrap import Container, build, create_app
from medflow.core.settings import BlobSettings, Settings
from medflow.dicomweb import frame_cache
from tests.conftest import database_url
from tests.integration.dicomweb.test_wado import parts_of
from tests.wsi_fixtures import Slide, convert, store_files, write_tiff

pytestmark = pytest.mark.integration

BASE = "http://testserver/dicomweb"
JPEG_MP = 'multipart/related; type="image/jpeg"'
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
SIZE = 2048
TABLES = ("bot", "eot", "empty")


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Slide]:
    root = tmp_path_factory.mktemp("wsi")
    tiff = write_tiff(root / "tiff", SIZE)
    return {t: convert(tiff, root / t, offset_table=t) for t in TABLES}


@pytest.fixture(scope="module")
def app(
    slides: dict[str, Slide], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Container, TestClient]]:
    tmp = tmp_path_factory.mktemp("wsi-app")
    for url in database_url("sqlite", tmp):
        container = build(Settings(data_dir=tmp / "data", database_url=url))
        try:
            for slide in slides.values():
                store_files(container.store, slide.files)
            with TestClient(create_app(container)) as client:
                yield container, client
        finally:
            container.close()


def _url(ds: pydicom.Dataset) -> str:
    return (
        f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


@pytest.mark.parametrize("table", TABLES)
def test_every_tile_of_two_levels_is_served_as_stored(
    app: tuple[Container, TestClient], slides: dict[str, Slide], table: str
) -> None:
    _, client = app
    frame_cache.clear()
    for level in slides[table].levels()[:2]:
        n = int(level.NumberOfFrames)
        stored = list(encaps.generate_frames(level.PixelData, number_of_frames=n))
        for number in range(1, n + 1):
            r = client.get(f"{_url(level)}/frames/{number}", headers={"Accept": JPEG_MP})
            assert r.status_code == 200, r.text
            (headers, body), *more = parts_of(r)
            assert not more
            assert headers["content-type"].startswith("image/jpeg")
            assert f"transfer-syntax={JPEG_BASELINE}" in headers["content-type"]
            assert body == stored[number - 1], (table, number)
        several = client.get(f"{_url(level)}/frames/3,1,{n}", headers={"Accept": JPEG_MP})
        assert [b for _, b in parts_of(several)] == [stored[2], stored[0], stored[n - 1]]
    cached = list(frame_cache._entries.values())
    assert len(cached) == 2 and all(c.index is not None and c.grid for c in cached)


def test_frames_as_stored_with_any_transfer_syntax_and_decoded_otherwise(
    app: tuple[Container, TestClient], slides: dict[str, Slide]
) -> None:
    _, client = app
    level = slides["empty"].levels()[1]
    tile = next(encaps.generate_frames(level.PixelData, number_of_frames=level.NumberOfFrames))
    star = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
    r = client.get(f"{_url(level)}/frames/1", headers={"Accept": star})
    assert parts_of(r)[0][1] == tile
    native = client.get(
        f"{_url(level)}/frames/1",
        headers={"Accept": 'multipart/related; type="application/octet-stream"'},
    )
    ((headers, body),) = parts_of(native)
    assert headers["content-type"].startswith("application/octet-stream")
    decoded = np.frombuffer(body, np.uint8).reshape(256, 256, 3).astype(int)
    expected = np.asarray(Image.open(io.BytesIO(tile)).convert("RGB")).astype(int)
    assert np.abs(decoded - expected).mean() < 3


def test_frame_errors(app: tuple[Container, TestClient], slides: dict[str, Slide]) -> None:
    _, client = app
    level = slides["bot"].levels()[0]
    url = _url(level)
    n = int(level.NumberOfFrames)
    assert client.get(f"{url}/frames/{n + 1}", headers={"Accept": JPEG_MP}).status_code == 404
    for bad in ("0", "-1", "a", "1,,2"):
        assert client.get(f"{url}/frames/{bad}", headers={"Accept": JPEG_MP}).status_code == 400
    png = 'multipart/related; type="image/png"'
    assert client.get(f"{url}/frames/1", headers={"Accept": png}).status_code == 406
    unknown = f"{BASE}/studies/{level.StudyInstanceUID}/series/{level.SeriesInstanceUID}"
    assert client.get(f"{unknown}/instances/1.2.3/frames/1").status_code == 404


def _decoded(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def test_rendered_region_is_composed_from_the_tiles_it_covers(
    app: tuple[Container, TestClient], slides: dict[str, Slide]
) -> None:
    _, client = app
    slide = slides["eot"]
    base = slide.base_rgb().astype(int)
    level = slide.levels()[0]
    sx, sy, sw, sh = 200, 330, 400, 300  # across 2 x 3 tiles' edges
    r = client.get(
        f"{_url(level)}/rendered",
        params={"viewport": f"{sw},{sh},{sx},{sy},{sw},{sh}"},
        headers={"Accept": "image/png"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    got = _decoded(r.content)
    assert got.shape == (sh, sw, 3)
    assert np.abs(got - base[sy : sy + sh, sx : sx + sw]).mean() < 4  # JPEG decoders differ
    half = client.get(
        f"{_url(level)}/rendered",
        params={"viewport": f"{sw // 2},{sh // 2},{sx},{sy},{sw},{sh}", "accept": "image/png"},
    )
    small = _decoded(half.content)
    assert small.shape == (sh // 2, sw // 2, 3)
    expected = base[sy : sy + sh, sx : sx + sw].reshape(sh // 2, 2, sw // 2, 2, 3).mean((1, 3))
    assert np.abs(small - expected).mean() < 6
    flipped = client.get(
        f"{_url(level)}/rendered",
        params={"viewport": f"{sw},{sh},{sx + sw},{sy},{-sw},{sh}", "accept": "image/png"},
    )
    assert np.abs(_decoded(flipped.content) - got[:, ::-1]).mean() < 1


def test_rendered_errors_and_whole_small_levels(
    app: tuple[Container, TestClient], slides: dict[str, Slide]
) -> None:
    _, client = app
    level = slides["bot"].levels()[-1]
    outside = client.get(f"{_url(level)}/rendered", params={"viewport": "10,10,5000,5000,10,10"})
    assert outside.status_code == 400
    whole = client.get(f"{_url(level)}/rendered", params={"viewport": "512,512"})
    assert whole.status_code == 200
    assert Image.open(io.BytesIO(whole.content)).size == (512, 512)
    tile = client.get(f"{_url(level)}/frames/2/rendered", headers={"Accept": "image/png"})
    assert Image.open(io.BytesIO(tile.content)).size == (256, 256)
    expected = slides["bot"].base_rgb()[::2, ::2][0:256, 256:512].astype(int)
    assert np.abs(_decoded(tile.content) - expected).mean() < 8


def test_thumbnail_of_a_slide_is_its_overview(
    app: tuple[Container, TestClient], slides: dict[str, Slide]
) -> None:
    _, client = app
    slide = slides["bot"]
    series = f"{BASE}/studies/{slide.study_uid}/series/{slide.series_uid}"
    thumbs = [
        client.get(f"{series}/thumbnail", headers={"Accept": "image/png"}),
        client.get(f"{BASE}/studies/{slide.study_uid}/thumbnail", params={"accept": "image/png"}),
    ]
    base = slide.base_rgb()
    expected = np.asarray(Image.fromarray(base).resize((128, 128), Image.Resampling.BOX))
    for r in thumbs:
        assert r.status_code == 200, r.text
        got = _decoded(r.content)
        assert got.shape == (128, 128, 3)
        assert np.abs(got - expected.astype(int)).mean() < 8


def test_metadata_of_tiled_images(
    app: tuple[Container, TestClient], slides: dict[str, Slide]
) -> None:
    _, client = app
    slide = slides["eot"]
    r = client.get(f"{BASE}/studies/{slide.study_uid}/series/{slide.series_uid}/metadata")
    assert r.status_code == 200
    by_uid = {i["00080018"]["Value"][0]: i for i in r.json()}
    for ds in slide.datasets():
        item = by_uid[ds.SOPInstanceUID]
        assert item["00480006"]["Value"] == [ds.TotalPixelMatrixRows]
        assert item["00480007"]["Value"] == [ds.TotalPixelMatrixColumns]
        assert item["00209311"]["Value"] == ["TILED_FULL"]
        assert "BulkDataURI" in item["7FE00010"]
        eot = item["7FE00001"]  # the Extended Offset Table: bulk data beyond 1,024 bytes
        assert ("BulkDataURI" in eot) == (len(ds.ExtendedOffsetTable) > 1024)


def test_metadata_keeps_per_frame_functional_groups(
    app: tuple[Container, TestClient], slides: dict[str, Slide], tmp_path: Path
) -> None:
    """A TILED_SPARSE image's PerFrameFunctionalGroupsSequence (tile positions) is in the
    metadata as a sequence, not a bulk data reference; its frames are still served."""
    container, client = app
    ds = slides["bot"].levels()[-1]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.DimensionOrganizationType = "TILED_SPARSE"
    items = []
    for row in range(4):
        for col in range(4):
            pos = pydicom.Dataset()
            pos.XOffsetInSlideCoordinateSystem = 0.0
            pos.YOffsetInSlideCoordinateSystem = 0.0
            pos.ColumnPositionInTotalImagePixelMatrix = col * 256 + 1
            pos.RowPositionInTotalImagePixelMatrix = row * 256 + 1
            item = pydicom.Dataset()
            item.PlanePositionSlideSequence = [pos]
            items.append(item)
    ds.PerFrameFunctionalGroupsSequence = items
    path = tmp_path / "sparse.dcm"
    ds.save_as(path, enforce_file_format=True)
    store_files(container.store, [path])
    r = client.get(f"{_url(ds)}/metadata")
    meta = r.json()[0]
    groups = meta["52009230"]["Value"]
    assert len(groups) == 16
    pos = groups[5]["0048021A"]["Value"][0]
    assert pos["0048021E"]["Value"] == [257] and pos["0048021F"]["Value"] == [257]
    assert json.dumps(meta).count("BulkDataURI") == 1  # Pixel Data only
    tile = client.get(f"{_url(ds)}/frames/6", headers={"Accept": JPEG_MP})
    stored = list(encaps.generate_frames(ds.PixelData, number_of_frames=16))
    assert parts_of(tile)[0][1] == stored[5]


def test_tiles_from_s3_are_read_by_range_requests(
    slides: dict[str, Slide], s3_blob_settings: BlobSettings, tmp_path: Path
) -> None:
    """With S3 blobs, the first request downloads the object once to build its layout; later
    tiles are range reads of their bytes only."""
    slide = slides["empty"]
    level = slide.levels()[0]
    n = int(level.NumberOfFrames)
    stored = list(encaps.generate_frames(level.PixelData, number_of_frames=n))
    frame_cache.clear()  # the same content (blob key) was served from files before
    url = next(database_url("sqlite", tmp_path))
    container = build(
        Settings(data_dir=tmp_path / "data", database_url=url, blobs=s3_blob_settings)
    )
    ranges: list[tuple[int, int]] = []
    read_range = container.store.blobs.read_range

    def counted(key: str, offset: int, length: int) -> bytes:
        ranges.append((offset, length))
        return read_range(key, offset, length)

    try:
        store_files(container.store, slide.files)
        container.store.blobs.read_range = counted  # type: ignore[method-assign]
        with TestClient(create_app(container)) as client:
            for number in (1, n, 7, 1):
                r = client.get(f"{_url(level)}/frames/{number}", headers={"Accept": JPEG_MP})
                assert parts_of(r)[0][1] == stored[number - 1]
            r = client.get(f"{_url(level)}/frames/2,3", headers={"Accept": JPEG_MP})
            assert [b for _, b in parts_of(r)] == stored[1:3]
    finally:
        container.close()
    assert [length for _, length in ranges] == [len(stored[i]) for i in (n - 1, 6, 0, 1, 2)]


def _restored(ds: pydicom.Dataset, tmp: Path, name: str) -> Path:
    """``ds`` as a new instance of a new series (new UIDs) written to ``tmp/name``."""
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    path = tmp / name
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_slide_thumbnail_never_shows_its_label(
    app: tuple[Container, TestClient], slides: dict[str, Slide], tmp_path: Path
) -> None:
    """A series whose only image is a LABEL (or an OVERVIEW, which shows the label too) has no
    thumbnail: 406, never the identifiers in its pixels."""
    container, client = app
    smallest = slides["bot"].levels()[-1]
    for flavor in ("LABEL", "OVERVIEW"):
        ds = next(d for d in slides["bot"].datasets()
                  if d.SOPInstanceUID == smallest.SOPInstanceUID)  # fmt: skip
        ds.ImageType = ["ORIGINAL", "PRIMARY", flavor, "NONE"]
        path = _restored(ds, tmp_path, f"{flavor}.dcm")
        store_files(container.store, [path])
        series = f"{BASE}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        r = client.get(f"{series}/thumbnail", headers={"Accept": "image/jpeg"})
        assert r.status_code == 406, (flavor, r.status_code)


def test_a_malformed_offset_table_is_no_server_error(
    app: tuple[Container, TestClient], slides: dict[str, Slide], tmp_path: Path
) -> None:
    """A Basic Offset Table whose length is no multiple of 4 (STOW accepts the file): its
    frames are found by pydicom instead, or refused with 406, never a 500."""
    container, client = app
    level = slides["empty"].levels()[-1]
    ds = next(d for d in slides["empty"].datasets()
              if d.SOPInstanceUID == level.SOPInstanceUID)  # fmt: skip
    data = bytes(ds.PixelData)
    assert data[:8] == b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # an empty Basic Offset Table
    ds.PixelData = b"\xfe\xff\x00\xe0\x06\x00\x00\x00" + b"\x00" * 6 + data[8:]
    path = _restored(ds, tmp_path, "bad-bot.dcm")
    store_files(container.store, [path])
    frames = f"{_url(ds)}/frames/2"
    r = client.get(frames, headers={"Accept": JPEG_MP})
    assert r.status_code in (200, 406), r.text
