"""WADO-RS (PS3.18 §10.4) over the real app: retrieve, metadata, bulk data, frames, rendered."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import encaps
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from medflow.core.settings import BlobSettings
from medflow.dicom.multipart import parse_media_type
from medflow.store.service import StoreService
from medflow.store.spool import SpoolWriter
from tests.factories import make_instance, store_datasets, to_bytes

pytestmark = pytest.mark.integration

ELE = "1.2.840.10008.1.2.1"
BASE = "http://testserver/dicomweb"
DICOM_MP = 'multipart/related; type="application/dicom"'
OCTET_MP = 'multipart/related; type="application/octet-stream"'
OHIF_FRAMES = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def data_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(path)


def store_files(store: StoreService, names: list[str]) -> list[Dataset]:
    """Store pydicom test files byte for byte; returns their parsed data sets."""
    objects = []
    for name in names:
        writer = SpoolWriter(store.spool_dir)
        writer.write(data_file(name).read_bytes())
        objects.append(writer.finish(fsync=False))
    outcomes = store.store(objects=objects)
    assert all(o.ok for o in outcomes), [o.message for o in outcomes]
    return [pydicom.dcmread(data_file(n)) for n in names]


def parts_of(response: object) -> list[tuple[dict[str, str], bytes]]:
    """Split a multipart/related response (RFC 2046 §5.1.1) into (headers, body) parts."""
    ctype = parse_media_type(response.headers["content-type"])  # type: ignore[attr-defined]
    assert ctype.type == "multipart/related"
    boundary = ctype.param("boundary")
    assert boundary
    body: bytes = response.content  # type: ignore[attr-defined]
    dash = b"--" + boundary.encode()
    assert body.startswith(dash + b"\r\n"), body[:100]
    chunks = body[len(dash) :].split(b"\r\n" + dash)
    assert chunks[-1] == b"--\r\n"
    out = []
    for chunk in chunks[:-1]:
        head, sep, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        assert sep
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        out.append((headers, data))
    return out


def url(ds: Dataset, suffix: str = "") -> str:
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}{suffix}"
    )


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------
# Retrieve instances
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["CT_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"],
)
def test_retrieve_as_stored_is_byte_for_byte(
    client: TestClient, store: StoreService, name: str
) -> None:
    (ds,) = store_files(store, [name])
    r = client.get(url(ds), headers={"Accept": DICOM_MP + "; transfer-syntax=*"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(DICOM_MP + "; boundary=")
    ((headers, body),) = parts_of(r)
    ts = str(ds.file_meta.TransferSyntaxUID)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={ts}"
    assert sha(body) == sha(data_file(name).read_bytes())


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "SC_rgb_rle.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "SC_rgb_rle_2frame.dcm",
        "rtdose_expb.dcm",
    ],
)
def test_retrieve_default_transcodes_to_explicit_le(
    client: TestClient, store: StoreService, name: str
) -> None:
    (ds,) = store_files(store, [name])
    for accept in (None, DICOM_MP, DICOM_MP + f"; transfer-syntax={ELE}", "*/*"):
        r = client.get(url(ds), headers={"Accept": accept} if accept else {})
        assert r.status_code == 200, r.text
        ((headers, body),) = parts_of(r)
        assert headers["content-type"] == f"application/dicom; transfer-syntax={ELE}"
        out = pydicom.dcmread(io.BytesIO(body))
        assert out.file_meta.TransferSyntaxUID == ELE
        assert out.SOPInstanceUID == ds.SOPInstanceUID
        np.testing.assert_array_equal(out.pixel_array, ds.pixel_array)


def test_retrieve_ele_passes_through_and_jpeg_ybr_becomes_rgb(
    client: TestClient, store: StoreService
) -> None:
    ct, ybr = store_files(store, ["CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
    ((_, body),) = parts_of(client.get(url(ct)))
    assert sha(body) == sha(data_file("CT_small.dcm").read_bytes())
    ((_, body),) = parts_of(client.get(url(ybr)))
    out = pydicom.dcmread(io.BytesIO(body))
    assert out.PhotometricInterpretation == "RGB"
    assert out.file_meta.TransferSyntaxUID == ELE
    assert out.pixel_array.shape == (100, 100, 3)
    assert np.abs(out.pixel_array.astype(int) - ybr.pixel_array.astype(int)).max() <= 2


def test_retrieve_bare_application_dicom_for_one_instance(
    client: TestClient, store: StoreService
) -> None:
    (ds,) = store_files(store, ["CT_small.dcm"])
    r = client.get(url(ds), headers={"Accept": "application/dicom"})
    assert r.status_code == 200
    assert r.headers["content-type"] == f"application/dicom; transfer-syntax={ELE}"
    assert r.content == data_file("CT_small.dcm").read_bytes()
    r = client.get(
        f"/dicomweb/studies/{ds.StudyInstanceUID}", headers={"Accept": "application/dicom"}
    )
    assert r.status_code == 406


def test_retrieve_study_and_series_in_order(client: TestClient, store: StoreService) -> None:
    study = generate_uid()
    s1, s2 = generate_uid(), generate_uid()
    dss = [
        make_instance(study_uid=study, series_uid=s1, series_number=1, instance_number=i)
        for i in (2, 1)
    ]
    dss.append(make_instance(study_uid=study, series_uid=s2, series_number=2, instance_number=1))
    store_datasets(store, dss)
    r = client.get(f"/dicomweb/studies/{study}")
    assert r.status_code == 200
    uids = [pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for _, b in parts_of(r)]
    assert uids == [dss[1].SOPInstanceUID, dss[0].SOPInstanceUID, dss[2].SOPInstanceUID]
    r = client.get(
        f"/dicomweb/studies/{study}/series/{s2}",
        headers={"Accept": DICOM_MP + "; transfer-syntax=*"},
    )
    assert [pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for _, b in parts_of(r)] == [
        dss[2].SOPInstanceUID
    ]
    assert "warning" not in r.headers


def _video_instance(study: str) -> Dataset:
    """An MPEG-2 object: stored as is, but no decoder exists to transcode it."""
    ds = make_instance(study_uid=study)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.100")
    ds.PixelData = encaps.encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].VR = "OB"
    ds.NumberOfFrames = 1
    return ds


def test_untranscodable_instance_is_406_alone_and_a_warning_in_a_study(
    client: TestClient, store: StoreService
) -> None:
    study = generate_uid()
    good, video = make_instance(study_uid=study), _video_instance(study)
    outcomes = store_datasets(store, [good, video])
    assert all(o.ok for o in outcomes)
    r = client.get(url(video))
    assert r.status_code == 406
    assert "transfer syntax" in r.json()["detail"]
    r = client.get(f"/dicomweb/studies/{study}")
    assert r.status_code == 200
    assert r.headers["warning"].startswith('299 medflow "1 instance(s) omitted')
    assert len(parts_of(r)) == 1
    r = client.get(url(video), headers={"Accept": DICOM_MP + "; transfer-syntax=*"})
    assert r.status_code == 200


def test_decoding_failure_is_406_with_reason(client: TestClient, store: StoreService) -> None:
    ds = make_instance()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.50")
    ds.PixelData = encaps.encapsulate([b"\xff\xd8 not really a jpeg \xff\xd9"])
    ds["PixelData"].VR = "OB"
    store_datasets(store, [ds])
    r = client.get(url(ds))
    assert r.status_code == 406
    assert "cannot transcode" in r.json()["detail"]
    r = client.get(url(ds, "/frames/1"))
    assert r.status_code == 406
    r = client.get(url(ds, "/rendered"))
    assert r.status_code == 406


@pytest.mark.parametrize(
    "accept",
    [
        "application/zip",
        'multipart/related; type="application/dicom+xml"',
        DICOM_MP + "; transfer-syntax=1.2.840.10008.1.2.4.90",
    ],
)
def test_unsupported_accept_is_406(client: TestClient, store: StoreService, accept: str) -> None:
    (ds,) = store_files(store, ["CT_small.dcm"])
    assert client.get(url(ds), headers={"Accept": accept}).status_code == 406


def test_retrieve_not_found_and_bad_uid(client: TestClient, store: StoreService) -> None:
    (ds,) = store_files(store, ["CT_small.dcm"])
    assert client.get(f"/dicomweb/studies/{generate_uid()}").status_code == 404
    assert client.get(url(ds).replace(ds.SOPInstanceUID, generate_uid())).status_code == 404
    assert client.get("/dicomweb/studies/not-a-uid").status_code == 400


# ------------------------------------------------------------------------------------------
# Metadata
# ------------------------------------------------------------------------------------------
def test_metadata_absolute_bulkdata_etag_and_304(client: TestClient, store: StoreService) -> None:
    (ds,) = store_files(store, ["CT_small.dcm"])
    study_url = f"/dicomweb/studies/{ds.StudyInstanceUID}"
    for path in (study_url, f"{study_url}/series/{ds.SeriesInstanceUID}", url(ds)):
        r = client.get(path + "/metadata")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/dicom+json")
        assert r.headers["cache-control"] == "private, no-cache"
        (item,) = r.json()
        assert item["00080018"]["Value"] == [ds.SOPInstanceUID]
        assert item["7FE00010"]["BulkDataURI"] == BASE + url(ds, "/bulkdata/7FE00010").removeprefix(
            "/dicomweb"
        )
        etag = r.headers["etag"]
        assert etag.startswith('"')
        r2 = client.get(path + "/metadata", headers={"If-None-Match": etag})
        assert r2.status_code == 304
        assert r2.headers["etag"] == etag
        assert r2.content == b""
        assert (
            client.get(path + "/metadata", headers={"If-None-Match": '"other"'}).status_code == 200
        )
    r = client.get(study_url + "/metadata", headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406
    assert client.get(f"/dicomweb/studies/{generate_uid()}/metadata").status_code == 404


def test_metadata_etag_changes_when_an_instance_is_added(
    client: TestClient, store: StoreService
) -> None:
    study = generate_uid()
    store_datasets(store, [make_instance(study_uid=study)])
    etag = client.get(f"/dicomweb/studies/{study}/metadata").headers["etag"]
    store_datasets(store, [make_instance(study_uid=study)])
    r = client.get(f"/dicomweb/studies/{study}/metadata", headers={"If-None-Match": etag})
    assert r.status_code == 200
    assert len(r.json()) == 2


@pytest.mark.slow
def test_metadata_of_700_instances_is_fast(client: TestClient, store: StoreService) -> None:
    study, series = generate_uid(), generate_uid()
    dss = [
        make_instance(study_uid=study, series_uid=series, rows=4, columns=4, instance_number=i)
        for i in range(700)
    ]
    for i in range(0, 700, 100):
        store_datasets(store, dss[i : i + 100])
    path = f"/dicomweb/studies/{study}/series/{series}/metadata"
    client.get(path)
    start = time.perf_counter()
    r = client.get(path)
    elapsed = time.perf_counter() - start
    assert r.status_code == 200
    assert len(r.json()) == 700
    assert elapsed < 0.5, elapsed


# ------------------------------------------------------------------------------------------
# Bulk data
# ------------------------------------------------------------------------------------------
def test_bulkdata_pixel_data_and_other_values(client: TestClient, store: StoreService) -> None:
    (ds,) = store_files(store, ["CT_small.dcm"])
    r = client.get(url(ds, "/bulkdata/7FE00010"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(OCTET_MP + "; boundary=")
    ((headers, body),) = parts_of(r)
    assert headers["content-type"] == f"application/octet-stream; transfer-syntax={ELE}"
    assert body == ds.PixelData
    # a long binary value named by the stored metadata
    item = client.get(url(ds, "/metadata")).json()[0]
    uris = [
        v["BulkDataURI"]
        for k, v in item.items()
        if isinstance(v, dict) and "BulkDataURI" in v and k != "7FE00010"
    ]
    for uri in uris:
        r = client.get(uri.removeprefix("http://testserver"))
        assert r.status_code == 200, (uri, r.text)
        tag = int(uri.rsplit("/", 1)[1].split(".")[-1], 16)
        ((_, body),) = parts_of(r)
        assert body == ds[tag].value


def test_bulkdata_errors(client: TestClient, store: StoreService) -> None:
    (ds,) = store_files(store, ["CT_small.dcm"])
    assert client.get(url(ds, "/bulkdata/00091234")).status_code == 404
    assert client.get(url(ds, "/bulkdata/00540016.0.00181072")).status_code == 404
    assert client.get(url(ds, "/bulkdata/zz")).status_code == 400
    assert client.get(url(ds, "/bulkdata/7FE00010.x")).status_code == 400
    r = client.get(url(ds, "/bulkdata/7FE00010"), headers={"Accept": "image/png"})
    assert r.status_code == 406


def test_bulkdata_big_endian_pixel_data_is_little_endian(
    client: TestClient, store: StoreService
) -> None:
    (ds,) = store_files(store, ["MR_small_bigendian.dcm"])
    ((_, body),) = parts_of(client.get(url(ds, "/bulkdata/7FE00010")))
    assert body == ds.pixel_array.astype("<i2").tobytes()


# ------------------------------------------------------------------------------------------
# Frames
# ------------------------------------------------------------------------------------------
def test_native_frames(client: TestClient, store: StoreService) -> None:
    ds = make_instance(frames=3, rows=8, columns=6)
    store_datasets(store, [ds])
    arr = ds.pixel_array
    for accept in (None, OCTET_MP, OHIF_FRAMES, OCTET_MP + f"; transfer-syntax={ELE}"):
        r = client.get(url(ds, "/frames/3,1"), headers={"Accept": accept} if accept else {})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith(OCTET_MP + "; boundary=")
        parts = parts_of(r)
        assert [h["content-type"] for h, _ in parts] == [
            f"application/octet-stream; transfer-syntax={ELE}"
        ] * 2
        assert [b for _, b in parts] == [arr[2].tobytes(), arr[0].tobytes()]


@pytest.mark.parametrize(
    "frames,status",
    [("0", 400), ("-1", 400), ("a", 400), ("1,,2", 400), ("1.5", 400), ("4", 404), ("1,4", 404)],
)
def test_bad_frame_lists(client: TestClient, store: StoreService, frames: str, status: int) -> None:
    ds = make_instance(frames=3)
    store_datasets(store, [ds])
    r = client.get(url(ds, f"/frames/{frames}"))
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_frames_of_non_image_is_400(client: TestClient, store: StoreService) -> None:
    (sr,) = store_files(store, ["test-SR.dcm"])
    assert client.get(url(sr, "/frames/1")).status_code == 400


def test_compressed_frames_decoded_and_as_stored(client: TestClient, store: StoreService) -> None:
    (ds,) = store_files(store, ["SC_rgb_rle_2frame.dcm"])
    arr = ds.pixel_array
    r = client.get(url(ds, "/frames/2,1"))
    assert r.status_code == 200
    assert [b for _, b in parts_of(r)] == [arr[1].tobytes(), arr[0].tobytes()]
    stored = list(encaps.generate_frames(ds.PixelData, number_of_frames=2))
    for accept, media in (
        (OHIF_FRAMES, "image/dicom-rle"),
        ('multipart/related; type="image/x-dicom-rle"', "image/x-dicom-rle"),
        (
            'multipart/related; type="image/dicom-rle"; transfer-syntax=1.2.840.10008.1.2.5',
            "image/dicom-rle",
        ),
    ):
        r = client.get(url(ds, "/frames/1,2"), headers={"Accept": accept})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith(f'multipart/related; type="{media}"')
        parts = parts_of(r)
        assert parts[0][0]["content-type"] == f"{media}; transfer-syntax=1.2.840.10008.1.2.5"
        assert [b for _, b in parts] == stored
    r = client.get(url(ds, "/frames/1"), headers={"Accept": 'multipart/related; type="image/jls"'})
    assert r.status_code == 406


def test_jpeg2000_frames(client: TestClient, store: StoreService) -> None:
    (j2k,) = store_files(store, ["MR_small_jp2klossless.dcm"])
    r = client.get(url(j2k, "/frames/1"), headers={"Accept": 'multipart/related; type="image/jp2"'})
    assert r.status_code == 200
    ((headers, body),) = parts_of(r)
    assert headers["content-type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.90"
    assert body == next(encaps.generate_frames(j2k.PixelData, number_of_frames=1))
    ((_, body),) = parts_of(client.get(url(j2k, "/frames/1")))
    assert body == j2k.pixel_array.astype("<i2").tobytes()


def test_big_endian_frames(client: TestClient, store: StoreService) -> None:
    (be,) = store_files(store, ["MR_small_bigendian.dcm"])
    ((_, body),) = parts_of(client.get(url(be, "/frames/1"), headers={"Accept": OHIF_FRAMES}))
    assert body == be.pixel_array.astype("<i2").tobytes()


def test_implicit_and_deflated_frames(client: TestClient, store: StoreService) -> None:
    imp, dfl = store_files(store, ["MR_small_implicit.dcm", "image_dfl.dcm"])
    ((_, body),) = parts_of(client.get(url(imp, "/frames/1")))
    assert body == imp.pixel_array.tobytes()
    ((_, body),) = parts_of(client.get(url(dfl, "/frames/1")))
    assert body == dfl.pixel_array.tobytes()


# ------------------------------------------------------------------------------------------
# Rendered and thumbnails
# ------------------------------------------------------------------------------------------
def image_of(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def test_rendered_instance_jpeg_png_and_viewport(client: TestClient, store: StoreService) -> None:
    ct, rgb = store_files(store, ["CT_small.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
    r = client.get(url(ct, "/rendered"))
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/jpeg"
    img = image_of(r.content)
    assert img.format == "JPEG" and img.size == (128, 128) and img.mode == "L"
    r = client.get(
        url(ct, "/rendered"), params={"viewport": "64,64"}, headers={"Accept": "image/png"}
    )
    img = image_of(r.content)
    assert r.headers["content-type"] == "image/png" and img.format == "PNG"
    assert img.size == (64, 64)
    r = client.get(
        url(ct, "/rendered"),
        params={
            "viewport": "100,50,0,0,64,32",
            "window": "100,400,linear-exact",
            "quality": "50",
            "accept": "image/png",
        },
    )
    assert r.status_code == 200, r.text
    assert image_of(r.content).size == (100, 50)
    r = client.get(url(rgb, "/rendered"), headers={"Accept": "image/*"})
    img = image_of(r.content)
    assert img.mode == "RGB" and img.size == (100, 100)
    assert client.get(url(ct, "/rendered"), headers={"Accept": "image/gif"}).status_code == 200


@pytest.mark.parametrize(
    "params",
    [
        {"window": "abc,1"},
        {"window": "40"},
        {"window": "40,0"},
        {"window": "40,400,cubic"},
        {"viewport": "0,10"},
        {"viewport": "10"},
        {"viewport": "10,10,0,0,0,5"},
        {"viewport": "10,10,500,500,10,10"},
        {"quality": "0"},
        {"quality": "101"},
        {"quality": "x"},
    ],
)
def test_rendered_bad_parameters_are_400(
    client: TestClient, store: StoreService, params: dict[str, str]
) -> None:
    (ct,) = store_files(store, ["CT_small.dcm"])
    r = client.get(url(ct, "/rendered"), params=params)
    assert r.status_code == 400, r.text
    assert r.json()["detail"]


def test_rendered_window_changes_the_image(client: TestClient, store: StoreService) -> None:
    (ct,) = store_files(store, ["CT_small.dcm"])
    narrow = np.asarray(
        image_of(
            client.get(
                url(ct, "/rendered"), params={"window": "0,1", "accept": "image/png"}
            ).content
        )
    )
    assert set(np.unique(narrow)) <= {0, 255}
    wide = np.asarray(
        image_of(
            client.get(
                url(ct, "/rendered"), params={"window": "1000,10000", "accept": "image/png"}
            ).content
        )
    )
    assert len(np.unique(wide)) > 2


def test_rendered_non_image_and_unacceptable(client: TestClient, store: StoreService) -> None:
    ct, sr = store_files(store, ["CT_small.dcm", "test-SR.dcm"])
    r = client.get(url(sr, "/rendered"))
    assert r.status_code == 406
    assert "pixel data" in r.json()["detail"]
    assert client.get(url(sr, "/thumbnail")).status_code == 406
    assert client.get(url(ct, "/rendered"), headers={"Accept": "image/webp"}).status_code == 406


def test_rendered_frames_and_multiframe(client: TestClient, store: StoreService) -> None:
    ds = make_instance(frames=3, rows=8, columns=12)
    store_datasets(store, [ds])
    r = client.get(url(ds, "/frames/2/rendered"), headers={"Accept": "image/png"})
    assert r.status_code == 200
    assert image_of(r.content).size == (12, 8)
    r = client.get(url(ds, "/frames/1,3/rendered"), headers={"Accept": "image/png"})
    assert r.headers["content-type"].startswith('multipart/related; type="image/png"')
    parts = parts_of(r)
    assert len(parts) == 2 and all(h["content-type"] == "image/png" for h, _ in parts)
    assert image_of(parts[1][1]).size == (12, 8)
    assert client.get(url(ds, "/frames/4/rendered")).status_code == 404
    assert client.get(url(ds, "/frames/0/rendered")).status_code == 400


def test_rendered_study_and_series_are_multipart(client: TestClient, store: StoreService) -> None:
    study, series = generate_uid(), generate_uid()
    dss = [make_instance(study_uid=study, series_uid=series, instance_number=i) for i in (1, 2, 3)]
    store_datasets(store, dss)
    for path in (
        f"/dicomweb/studies/{study}/rendered",
        f"/dicomweb/studies/{study}/series/{series}/rendered",
    ):
        r = client.get(path)
        assert r.status_code == 200
        assert r.headers["content-type"].startswith('multipart/related; type="image/jpeg"')
        parts = parts_of(r)
        assert len(parts) == 3
        assert all(image_of(b).format == "JPEG" for _, b in parts)


def test_thumbnails(client: TestClient, store: StoreService) -> None:
    (rgb,) = store_files(store, ["SC_rgb_rle.dcm"])
    study, series = generate_uid(), generate_uid()
    dss = [
        make_instance(study_uid=study, series_uid=series, rows=300, columns=200, instance_number=i)
        for i in (1, 2, 3)
    ]
    store_datasets(store, dss)
    for path in (
        f"/dicomweb/studies/{study}/thumbnail",
        f"/dicomweb/studies/{study}/series/{series}/thumbnail",
        url(dss[0], "/thumbnail"),
        url(dss[0], "/frames/1/thumbnail"),
    ):
        r = client.get(path)
        assert r.status_code == 200, (path, r.text)
        assert r.headers["content-type"] == "image/jpeg"
        assert image_of(r.content).size == (85, 128)
    r = client.get(
        url(rgb, "/thumbnail"), params={"viewport": "50,20"}, headers={"Accept": "image/png"}
    )
    assert image_of(r.content).size == (20, 20)


def test_monochrome1_is_inverted(client: TestClient, store: StoreService) -> None:
    mono2 = make_instance(rows=4, columns=4, WindowCenter=2048, WindowWidth=4096)
    mono1 = make_instance(
        rows=4,
        columns=4,
        WindowCenter=2048,
        WindowWidth=4096,
        PhotometricInterpretation="MONOCHROME1",
    )
    mono1.PixelData = mono2.PixelData
    store_datasets(store, [mono2, mono1])
    a = np.asarray(
        image_of(client.get(url(mono2, "/rendered"), params={"accept": "image/png"}).content)
    ).astype(int)
    b = np.asarray(
        image_of(client.get(url(mono1, "/rendered"), params={"accept": "image/png"}).content)
    ).astype(int)
    np.testing.assert_array_equal(a, 255 - b)


# ------------------------------------------------------------------------------------------
# Streaming: batches, large instances and large frame requests
# ------------------------------------------------------------------------------------------
def test_large_instances_and_frame_requests_stream_in_pieces(
    client: TestClient, store: StoreService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the buffer caps the same bytes come in pieces: instances in chunks, frames in
    batches with the instance held open."""
    from medflow.dicomweb import wado_frames, wado_stream

    monkeypatch.setattr(wado_stream, "READ_CAP", 4000)
    monkeypatch.setattr(wado_stream, "CHUNK", 1000)
    monkeypatch.setattr(wado_stream, "BATCH_BYTES", 3000)
    monkeypatch.setattr(wado_frames, "FRAME_BUDGET", 700)
    study, series = generate_uid(), generate_uid()
    dss = [
        make_instance(
            study_uid=study, series_uid=series, instance_number=i, rows=r, columns=r, frames=f
        )
        for i, (r, f) in enumerate([(8, 1), (32, 3), (8, 1), (16, 2)], start=1)
    ]
    store_datasets(store, dss)
    stored = [to_bytes(ds) for ds in dss]
    assert len(stored[1]) > 4000 > len(stored[0])
    for accept in (DICOM_MP + "; transfer-syntax=*", None):
        r = client.get(f"/dicomweb/studies/{study}", headers={"Accept": accept} if accept else {})
        assert r.status_code == 200
        assert [sha(b) for _, b in parts_of(r)] == [sha(b) for b in stored]
    big = dss[1]
    r = client.get(url(big), headers={"Accept": DICOM_MP + "; transfer-syntax=*"})
    ((headers, body),) = parts_of(r)
    assert headers["content-type"] == f"application/dicom; transfer-syntax={ELE}"
    assert body == stored[1]
    r = client.get(url(big), headers={"Accept": "application/dicom"})
    assert r.headers["content-type"] == f"application/dicom; transfer-syntax={ELE}"
    assert r.content == stored[1]
    arr = big.pixel_array
    for path in ("/frames/3,1,2,3", "/bulkdata/7FE00010"):
        r = client.get(url(big, path), headers={"Accept": OHIF_FRAMES})
        assert r.status_code == 200, r.text
        frames = [arr[2], arr[0], arr[1], arr[2]] if "frames" in path else list(arr)
        assert [b for _, b in parts_of(r)] == [f.tobytes() for f in frames]


# ------------------------------------------------------------------------------------------
# S3 blobs and a real client over a real server
# ------------------------------------------------------------------------------------------
class TestOverS3:
    @pytest.fixture
    def blob_settings(self, s3_blob_settings: BlobSettings) -> BlobSettings:
        return s3_blob_settings

    def test_retrieve_study_as_stored(self, client: TestClient, store: StoreService) -> None:
        study = generate_uid()
        dss = [make_instance(study_uid=study, instance_number=i) for i in (1, 2)]
        store_datasets(store, dss)
        r = client.get(
            f"/dicomweb/studies/{study}", headers={"Accept": DICOM_MP + "; transfer-syntax=*"}
        )
        assert [b for _, b in parts_of(r)] == [to_bytes(ds) for ds in dss]

    def test_retrieve_frames_and_rendered(self, client: TestClient, store: StoreService) -> None:
        ct, rle = store_files(store, ["CT_small.dcm", "SC_rgb_rle_2frame.dcm"])
        r = client.get(url(ct), headers={"Accept": DICOM_MP + "; transfer-syntax=*"})
        ((_, body),) = parts_of(r)
        assert sha(body) == sha(data_file("CT_small.dcm").read_bytes())
        ((_, body),) = parts_of(client.get(url(rle, "/frames/2")))
        assert body == rle.pixel_array[1].tobytes()
        assert image_of(client.get(url(ct, "/thumbnail")).content).size == (128, 128)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dicomweb_client_against_live_server(live_server: str, store: StoreService) -> None:
    from dicomweb_client.api import DICOMwebClient

    ct, rle = store_files(store, ["CT_small.dcm", "SC_rgb_rle_2frame.dcm"])
    dw = DICOMwebClient(url=f"{live_server}/dicomweb")
    meta = dw.retrieve_instance_metadata(
        ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID
    )
    assert meta["00080018"]["Value"] == [ct.SOPInstanceUID]
    inst = dw.retrieve_instance(ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID)
    np.testing.assert_array_equal(inst.pixel_array, ct.pixel_array)
    frames = dw.retrieve_instance_frames(
        rle.StudyInstanceUID, rle.SeriesInstanceUID, rle.SOPInstanceUID, frame_numbers=[1, 2]
    )
    assert frames == [rle.pixel_array[0].tobytes(), rle.pixel_array[1].tobytes()]
    frames = dw.retrieve_instance_frames(
        rle.StudyInstanceUID,
        rle.SeriesInstanceUID,
        rle.SOPInstanceUID,
        frame_numbers=[2],
        media_types=(("application/octet-stream", "*"),),
    )
    assert frames == [list(encaps.generate_frames(rle.PixelData, number_of_frames=2))[1]]
    series = dw.retrieve_series(ct.StudyInstanceUID, ct.SeriesInstanceUID)
    assert [d.SOPInstanceUID for d in series] == [ct.SOPInstanceUID]
