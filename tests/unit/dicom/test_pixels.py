"""Pure pixel helpers: frame lists, media types, frame extraction, transcoding, rendering."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import encaps
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import UID

from medflow.core.errors import InvalidInput, NotFound, Unsupported
from medflow.dicom import pixels, rendering
from medflow.dicom.attributes import read_part10
from tests.factories import make_instance, to_bytes

ELE = pixels.EXPLICIT_LE


def data_bytes(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path is not None
    return Path(path).read_bytes()


def open_info(data: bytes) -> tuple[io.BytesIO, Dataset, pixels.FrameInfo]:
    parsed = read_part10(io.BytesIO(data), size=len(data))
    fp = io.BytesIO(data)
    header = pixels.read_header(fp)
    info = pixels.frame_info(
        header,
        pixel_data_offset=parsed.pixel_data_offset,
        pixel_data_length=parsed.pixel_data_length,
    )
    return fp, header, info


# ------------------------------------------------------------------------------------------
# Frame lists and media types
# ------------------------------------------------------------------------------------------
def test_parse_frame_list() -> None:
    assert pixels.parse_frame_list("1") == [1]
    assert pixels.parse_frame_list("3, 1,2") == [3, 1, 2]
    for bad in ("", "0", "-1", "a", "1,,2", "1.0", "+1", "1;2"):
        with pytest.raises(InvalidInput):
            pixels.parse_frame_list(bad)


def test_media_types_follow_ps3_18_table_8_7_3_5() -> None:
    assert pixels.media_type_of("1.2.840.10008.1.2.4.50") == "image/jpeg"
    assert pixels.media_type_of("1.2.840.10008.1.2.4.70") == "image/jpeg"
    assert pixels.media_type_of("1.2.840.10008.1.2.4.80") == "image/jls"
    assert pixels.media_type_of("1.2.840.10008.1.2.4.90") == "image/jp2"
    assert pixels.media_type_of("1.2.840.10008.1.2.4.92") == "image/jpx"
    assert pixels.media_type_of("1.2.840.10008.1.2.5") == "image/dicom-rle"
    assert pixels.media_type_of("1.2.840.10008.1.2.4.201") == "image/jphc"
    assert pixels.media_type_of(ELE) == "application/octet-stream"
    assert pixels.COMPRESSED_MEDIA_TYPES["image/jpeg"][0] == "1.2.840.10008.1.2.4.70"


def test_can_decode() -> None:
    for ts in (
        ELE,
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
    ):
        assert pixels.can_decode(ts), ts
    assert not pixels.can_decode("1.2.840.10008.1.2.4.100")
    assert not pixels.can_decode("1.2.3.4")
    assert pixels.can_transcode_to_explicit_le("1.2.840.10008.1.2.4.100", has_pixels=False)
    assert not pixels.can_transcode_to_explicit_le("1.2.840.10008.1.2.4.100", has_pixels=True)


# ------------------------------------------------------------------------------------------
# Frames
# ------------------------------------------------------------------------------------------
def test_native_frames_read_at_their_offset() -> None:
    ds = make_instance(frames=4, rows=5, columns=7)
    fp, _, info = open_info(to_bytes(ds))
    assert info.number_of_frames == 4 and info.frame_size == 5 * 7 * 2
    frames = list(pixels.iter_frames(fp, info, [4, 2], as_stored=True))
    assert frames == [ds.pixel_array[3].tobytes(), ds.pixel_array[1].tobytes()]
    pixels.check_frame_numbers([1, 4], info)
    with pytest.raises(NotFound):
        pixels.check_frame_numbers([5], info)


def test_big_endian_native_frame_is_swapped() -> None:
    fp, _, info = open_info(data_bytes("MR_small_bigendian.dcm"))
    ref = pydicom.dcmread(io.BytesIO(data_bytes("MR_small_bigendian.dcm"))).pixel_array
    (frame,) = pixels.iter_frames(fp, info, [1], as_stored=False)
    assert frame == ref.astype("<i2").tobytes()


def test_encapsulated_frames_as_stored_and_decoded() -> None:
    data = data_bytes("SC_rgb_rle_2frame.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    fp, _, info = open_info(data)
    stored = list(encaps.generate_frames(ds.PixelData, number_of_frames=2))
    assert list(pixels.iter_frames(fp, info, [2, 1], as_stored=True)) == stored[::-1]
    decoded = list(pixels.iter_frames(fp, info, [2], as_stored=False))
    assert decoded == [ds.pixel_array[1].tobytes()]


def test_frame_info_of_non_image() -> None:
    data = data_bytes("test-SR.dcm")
    header = pixels.read_header(io.BytesIO(data))
    assert not pixels.has_pixel_data(header, None)
    with pytest.raises(Unsupported):
        pixels.frame_info(header, pixel_data_offset=None, pixel_data_length=None)


def test_element_bytes_swaps_big_endian_words() -> None:
    elem = pydicom.DataElement(0x00091010, "OW", b"\x01\x02\x03\x04")
    assert pixels.element_bytes(elem, big_endian=True) == b"\x02\x01\x04\x03"
    assert pixels.element_bytes(elem, big_endian=False) == b"\x01\x02\x03\x04"
    with pytest.raises(Unsupported):
        pixels.element_bytes(pydicom.DataElement(0x00100010, "PN", "A^B"), big_endian=False)


# ------------------------------------------------------------------------------------------
# Transcoding
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    [
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "image_dfl.dcm",
        "MR_small_RLE.dcm",
        "SC_rgb_rle_16bit.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "rtdose_expb.dcm",
        "SC_rgb_small_odd_big_endian.dcm",
    ],
)
def test_transcode_to_explicit_le_keeps_pixels(name: str) -> None:
    data = data_bytes(name)
    ref = pydicom.dcmread(io.BytesIO(data))
    out = pydicom.dcmread(io.BytesIO(pixels.transcode_to_explicit_le(io.BytesIO(data))))
    assert out.file_meta.TransferSyntaxUID == ELE
    assert out.SOPInstanceUID == ref.SOPInstanceUID
    np.testing.assert_array_equal(out.pixel_array, ref.pixel_array)


def test_transcode_big_endian_swaps_other_words() -> None:
    data = data_bytes("rtdose_expb.dcm")
    out = pydicom.dcmread(io.BytesIO(pixels.transcode_to_explicit_le(io.BytesIO(data))))
    ref = pydicom.dcmread(io.BytesIO(data_bytes("rtdose.dcm")))
    assert out.PixelData == ref.PixelData


def test_transcode_failure_has_a_reason() -> None:
    ds = make_instance()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.50")
    ds.PixelData = encaps.encapsulate([b"\xff\xd8 nope \xff\xd9"])
    ds["PixelData"].VR = "OB"
    with pytest.raises(Unsupported, match="cannot transcode from JPEG Baseline"):
        pixels.transcode_to_explicit_le(io.BytesIO(to_bytes(ds)))
    with pytest.raises(Unsupported, match="cannot be parsed"):
        pixels.transcode_to_explicit_le(io.BytesIO(b"garbage"))


# ------------------------------------------------------------------------------------------
# Rendering parameters (PS3.18 §8.3.5.1)
# ------------------------------------------------------------------------------------------
def test_parse_window() -> None:
    assert rendering.parse_window(None) is None
    assert rendering.parse_window("40,400") == rendering.Window(40, 400, "LINEAR")
    assert rendering.parse_window("40,400,SIGMOID").function == "SIGMOID"  # type: ignore[union-attr]
    assert rendering.parse_window("-5.5,0.5,linear-exact") == rendering.Window(
        -5.5, 0.5, "LINEAR_EXACT"
    )
    for bad in ("40", "a,1", "1,0", "1,0.5", "1,10,cubic", "1,2,3,4", "nan,1", "1,inf"):
        with pytest.raises(InvalidInput):
            rendering.parse_window(bad)


def test_parse_viewport_and_quality() -> None:
    assert rendering.parse_viewport("512,256") == rendering.Viewport(512, 256)
    assert rendering.parse_viewport("10,20,1,2,-3,4") == rendering.Viewport(10, 20, 1, 2, -3, 4)
    assert rendering.parse_viewport("10,20,,,,") == rendering.Viewport(10, 20, 0, 0, None, None)
    for bad in ("1", "0,1", "1,99999", "a,b", "1,1,-1,0,1,1", "1,1,0,0,0,1", "1,2,3"):
        with pytest.raises(InvalidInput):
            rendering.parse_viewport(bad)
    assert rendering.parse_quality(None) == rendering.DEFAULT_QUALITY
    assert rendering.parse_quality("1") == 1
    for bad in ("0", "101", "x"):
        with pytest.raises(InvalidInput):
            rendering.parse_quality(bad)


def test_window_functions_follow_ps3_3_c_11_2_1_2() -> None:
    x = np.array([-1000.0, 40 - 0.5 - 199.5, 40.0, 40 - 0.5 + 199.5 + 0.01, 1000.0])
    y = rendering.apply_window(x, rendering.Window(40, 400, "LINEAR"))
    assert y[0] == 0 and y[1] == 0 and y[-1] == 255 and y[-2] == 255
    assert abs(y[2] - 127.82) < 0.01  # ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    exact = rendering.apply_window(
        np.array([-160.0, 40.0, 240.0]), rendering.Window(40, 400, "LINEAR_EXACT")
    )
    np.testing.assert_allclose(exact, [0, 127.5, 255])
    sig = rendering.apply_window(np.array([40.0, -1e6, 1e6]), rendering.Window(40, 400, "SIGMOID"))
    np.testing.assert_allclose(sig, [127.5, 0, 255], atol=1e-6)
    step = rendering.apply_window(np.array([0.0, 1.0]), rendering.Window(1, 1, "LINEAR"))
    np.testing.assert_array_equal(step, [0, 255])


def test_default_window_from_object_or_functional_groups() -> None:
    ds = Dataset()
    ds.WindowCenter = [40, 400]
    ds.WindowWidth = [400, 2000]
    assert rendering.default_window(ds, 0) == rendering.Window(40, 400, "LINEAR")
    enhanced = Dataset()
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth, voi.VOILUTFunction = 10, 20, "SIGMOID"
    group = Dataset()
    group.FrameVOILUTSequence = [voi]
    enhanced.SharedFunctionalGroupsSequence = [group]
    assert rendering.default_window(enhanced, 3) == rendering.Window(10, 20, "SIGMOID")
    assert rendering.default_window(Dataset(), 0) is None


def test_fit_size() -> None:
    assert rendering.fit_size(200, 300, 128, 128) == (85, 128)
    assert rendering.fit_size(64, 64, 512, 256) == (256, 256)
    assert rendering.fit_size(1000, 1, 10, 10) == (10, 1)


# ------------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------------
def render(data: bytes, opts: rendering.RenderOptions, number: int = 1) -> Image.Image:
    fp = io.BytesIO(data)
    header = pixels.read_header(fp)
    img = Image.open(io.BytesIO(rendering.render_frame(fp, header, number, opts)))
    img.load()
    return img


def test_render_grayscale_uses_rescale_and_window() -> None:
    ds = make_instance(
        rows=2, columns=2, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=0, WindowWidth=2
    )
    ds.PixelData = np.array([[0, 1023], [1025, 4000]], dtype=np.uint16).tobytes()
    img = render(to_bytes(ds), rendering.RenderOptions(media_type="image/png"))
    assert img.mode == "L"
    np.testing.assert_array_equal(np.asarray(img), [[0, 0], [255, 255]])
    img = render(
        to_bytes(ds),
        rendering.RenderOptions(
            media_type="image/png", window=rendering.Window(1000, 8000, "LINEAR_EXACT")
        ),
    )
    assert 0 < np.asarray(img)[0, 0] < np.asarray(img)[1, 1] < 255


def test_render_min_max_without_window_and_monochrome1() -> None:
    ds = make_instance(rows=1, columns=3)
    del ds.WindowCenter, ds.WindowWidth
    ds.PixelData = np.array([[100, 200, 300]], dtype=np.uint16).tobytes()
    opts = rendering.RenderOptions(media_type="image/png")
    mono2 = np.asarray(render(to_bytes(ds), opts)).astype(int)
    np.testing.assert_allclose(mono2, [[0, 127.5, 255]], atol=0.5)
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(np.asarray(render(to_bytes(ds), opts)), 255 - mono2)


def test_render_color_palette_and_16_bit_rgb() -> None:
    img = render(data_bytes("examples_palette.dcm"), rendering.RenderOptions("image/png"))
    assert img.mode == "RGB"
    img = render(data_bytes("SC_rgb_rle_16bit.dcm"), rendering.RenderOptions("image/png"))
    ref = pydicom.dcmread(io.BytesIO(data_bytes("SC_rgb_rle_16bit.dcm"))).pixel_array
    np.testing.assert_array_equal(np.asarray(img), (ref >> 8).astype(np.uint8))


def test_render_region_flip_and_viewport() -> None:
    ds = make_instance(rows=4, columns=4, WindowCenter=7.5, WindowWidth=16)
    ds.PixelData = np.arange(16, dtype=np.uint16).reshape(4, 4).tobytes()
    data = to_bytes(ds)
    full = np.asarray(render(data, rendering.RenderOptions("image/png")))
    region = rendering.Viewport(2, 2, 0, 0, 2, 2)
    part = np.asarray(render(data, rendering.RenderOptions("image/png", viewport=region)))
    np.testing.assert_array_equal(part, full[:2, :2])
    flipped = rendering.Viewport(2, 2, 2, 0, -2, 2)
    part = np.asarray(render(data, rendering.RenderOptions("image/png", viewport=flipped)))
    np.testing.assert_array_equal(part, full[:2, :2][:, ::-1])
    big = render(data, rendering.RenderOptions("image/jpeg", viewport=rendering.Viewport(40, 20)))
    assert big.size == (20, 20) and big.format == "JPEG"
    thumb = render(data, rendering.RenderOptions("image/gif", max_side=2))
    assert thumb.size == (2, 2) and thumb.format == "GIF"
    with pytest.raises(InvalidInput):
        render(data, rendering.RenderOptions(viewport=rendering.Viewport(2, 2, 10, 10, 2, 2)))


def test_render_decoding_failure_is_unsupported() -> None:
    ds = make_instance()
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.5")
    ds.PixelData = encaps.encapsulate([b"\x00" * 10])
    ds["PixelData"].VR = "OB"
    with pytest.raises(Unsupported, match="cannot be decoded"):
        render(to_bytes(ds), rendering.RenderOptions())


# ------------------------------------------------------------------------------------------
# Frame geometry from the index (no header read)
# ------------------------------------------------------------------------------------------
def _indexed(data: bytes) -> pixels.FrameInfo | None:
    parsed = read_part10(io.BytesIO(data), size=len(data))
    a = parsed.attrs
    return pixels.indexed_frame_info(
        transfer_syntax_uid=parsed.transfer_syntax_uid,
        rows=a["Rows"],
        columns=a["Columns"],
        bits_allocated=a["BitsAllocated"],
        number_of_frames=a["NumberOfFrames"],
        pixel_data_offset=parsed.pixel_data_offset,
        pixel_data_length=parsed.pixel_data_length,
    )


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",
        "MR_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "SC_rgb_small_odd.dcm",
        "SC_rgb_small_odd_big_endian.dcm",
        "examples_rgb_color.dcm",
        "rtdose.dcm",
        "rtdose_expb.dcm",
    ],
)
def test_indexed_frame_info_gives_the_same_frames_as_the_header(name: str) -> None:
    data = data_bytes(name)
    fp, _, from_header = open_info(data)
    info = _indexed(data)
    assert info is not None
    assert info.frame_size == from_header.frame_size
    assert info.number_of_frames == from_header.number_of_frames
    numbers = list(range(1, info.number_of_frames + 1))
    assert list(pixels.iter_frames(fp, info, numbers, as_stored=False)) == list(
        pixels.iter_frames(fp, from_header, numbers, as_stored=False)
    )


@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",
        "SC_rgb_rle.dcm",
        "image_dfl.dcm",
        "liver_1frame.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        "MR_small_padded.dcm",
    ],
)
def test_indexed_frame_info_leaves_the_rest_to_the_header(name: str) -> None:
    """Encapsulated, deflated, bit-packed (BitsAllocated 1) and YBR_FULL_422 pixel data, and
    a Pixel Data value longer than its frames, need the header."""
    assert _indexed(data_bytes(name)) is None


def test_indexed_frame_info_needs_a_consistent_length() -> None:
    base = {
        "transfer_syntax_uid": ELE,
        "rows": 4,
        "columns": 3,
        "bits_allocated": 8,
        "number_of_frames": None,
        "pixel_data_offset": 100,
    }
    mono = pixels.indexed_frame_info(**base, pixel_data_length=12)
    assert mono is not None and mono.samples_per_pixel == 1 and mono.number_of_frames == 1
    rgb = pixels.indexed_frame_info(**base, pixel_data_length=36)
    assert rgb is not None and rgb.samples_per_pixel == 3 and rgb.frame_size == 36
    odd = dict(base, rows=3, columns=3)
    assert pixels.indexed_frame_info(**odd, pixel_data_length=10) is not None  # 9, padded
    assert pixels.indexed_frame_info(**base, pixel_data_length=24) is None  # YBR_FULL_422
    assert pixels.indexed_frame_info(**base, pixel_data_length=13) is None
    assert pixels.indexed_frame_info(**base, pixel_data_length=None) is None  # undefined
    assert pixels.indexed_frame_info(**dict(base, rows=None), pixel_data_length=12) is None
    assert pixels.indexed_frame_info(**dict(base, bits_allocated=1), pixel_data_length=2) is None
    three = pixels.indexed_frame_info(**dict(base, number_of_frames=3), pixel_data_length=36)
    assert three is not None and three.number_of_frames == 3 and three.samples_per_pixel == 1
    # 1 frame of 3 samples or 3 frames of 1 sample: the indexed frame count decides
    assert (
        pixels.indexed_frame_info(
            **dict(base, number_of_frames=0), pixel_data_length=36
        ).samples_per_pixel
        == 3
    )  # type: ignore[union-attr]


def test_read_header_with_tags_keeps_only_those() -> None:
    header = pixels.read_header(io.BytesIO(data_bytes("CT_small.dcm")), tags=pixels.FRAME_TAGS)
    assert header.Rows == 128 and header.Columns == 128
    assert "PatientName" not in header
    assert str(header.file_meta.TransferSyntaxUID) == ELE
