"""Pixel data access for DICOMweb retrieval: frames, transfer syntaxes, transcoding to ELE.

Pure helpers (pydicom, numpy) over a seekable binary stream of a stored Part 10 file; nothing
here knows HTTP. They implement the data side of PS3.18 §10.4 (WADO-RS):

- media types of compressed bulk data and their transfer syntaxes (PS3.18 Table 8.7.3-5);
- frame extraction (PS3.18 §10.4.1.1.5 frames, §8.6.1 bulk data payloads): native frames are
  read straight from the file at ``offset + i * frame_size`` (a large multi-frame object is never
  read whole); encapsulated frames with ``pydicom.encaps.get_frame`` on the stream positioned at
  the Pixel Data value; decoded frames with ``pydicom.pixels.pixel_array(fp, index=i)``;
- transcoding a whole instance to Explicit VR Little Endian, the default transfer syntax of
  ``application/dicom`` (PS3.18 §8.7.3.5.2 and Table 8.7.3-2).

Decoding failures raise ``Unsupported`` with a reason (no PHI); the edge maps them to 406.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom import encaps
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pack_bits, pixel_array
from pydicom.uid import UID

from medflow.core.errors import InvalidInput, NotFound, Unsupported
from medflow.dicom.multipart import MediaType

log = logging.getLogger(__name__)

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
NATIVE_SYNTAXES = frozenset({IMPLICIT_LE, EXPLICIT_LE, DEFLATED_LE, EXPLICIT_BE})
PIXEL_DATA = 0x7FE00010

OCTET_STREAM = "application/octet-stream"
RLE_MEDIA_TYPES = ("image/dicom-rle", "image/x-dicom-rle")
"""``image/dicom-rle`` since PS3.18 2019; ``image/x-dicom-rle`` as older clients ask for it."""

COMPRESSED_MEDIA_TYPES: dict[str, tuple[str, ...]] = {
    "image/jpeg": (
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
    ),
    "image/dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/x-dicom-rle": ("1.2.840.10008.1.2.5",),
    "image/jls": ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"),
    "image/jp2": ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"),
    "image/jpx": ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"),
    "image/jphc": ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"),
    "image/jxl": ("1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111", "1.2.840.10008.1.2.4.112"),
}
"""PS3.18 Table 8.7.3-5: media type -> transfer syntaxes, the default (D) first."""

VIDEO_SYNTAXES = frozenset({f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)})
"""MPEG-2, MPEG-4 AVC and HEVC: a video stream, not individually addressable frames."""


def media_type_of(transfer_syntax_uid: str) -> str:
    """The bulk data media type of a stored frame's encoding (PS3.18 Table 8.7.3-5)."""
    if transfer_syntax_uid in NATIVE_SYNTAXES:
        return OCTET_STREAM
    for media, syntaxes in COMPRESSED_MEDIA_TYPES.items():
        if transfer_syntax_uid in syntaxes and media != "image/x-dicom-rle":
            return media
    return OCTET_STREAM


def is_encapsulated(transfer_syntax_uid: str) -> bool:
    return transfer_syntax_uid not in NATIVE_SYNTAXES


def can_decode(transfer_syntax_uid: str) -> bool:
    """Whether pixel data in this transfer syntax can be decoded with the installed plugins."""
    if transfer_syntax_uid in NATIVE_SYNTAXES:
        return True
    try:
        return bool(get_decoder(UID(transfer_syntax_uid)).is_available)
    except (NotImplementedError, ValueError):
        return False


def can_transcode_to_explicit_le(transfer_syntax_uid: str, *, has_pixels: bool) -> bool:
    """Whether ``transcode_to_explicit_le`` can be attempted for an instance (decided up front
    per instance, before any response header is sent)."""
    if transfer_syntax_uid in NATIVE_SYNTAXES:
        return True
    return not has_pixels or can_decode(transfer_syntax_uid)


# ------------------------------------------------------------------------------------------
# Frame geometry
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameInfo:
    """What frame extraction needs, read once from the header of a stored instance."""

    transfer_syntax_uid: str
    number_of_frames: int
    rows: int
    columns: int
    samples_per_pixel: int
    bits_allocated: int
    photometric_interpretation: str
    pixel_data_offset: int
    pixel_data_length: int | None

    @property
    def frame_bits(self) -> int:
        samples = self.samples_per_pixel
        if self.photometric_interpretation == "YBR_FULL_422":
            samples = 2  # two samples per pixel in native YBR_FULL_422 (PS3.3 C.7.6.3.1.2)
        return self.rows * self.columns * samples * self.bits_allocated

    @property
    def frame_size(self) -> int:
        """Bytes per native frame (bit-packed frames of BitsAllocated 1 are not byte-aligned)."""
        return (self.frame_bits + 7) // 8


FRAME_TAGS = (
    0x00280002,  # SamplesPerPixel
    0x00280004,  # PhotometricInterpretation
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
)
"""What ``frame_info`` reads from a header (``read_header(fp, tags=FRAME_TAGS)``)."""


def read_header(fp: BinaryIO, *, tags: Sequence[int] | None = None) -> Dataset:
    """The data set up to (not including) Pixel Data, with file meta; ``fp`` is rewound.
    With ``tags``, only those elements are kept (the others are skipped, not decoded)."""
    fp.seek(0)
    try:
        ds = pydicom.dcmread(
            fp, stop_before_pixels=True, specific_tags=list(tags) if tags else None
        )
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise Unsupported(f"stored object cannot be parsed: {type(exc).__name__}") from exc
    finally:
        fp.seek(0)
    return ds


def has_pixel_data(header: Dataset, pixel_data_offset: int | None) -> bool:
    return pixel_data_offset is not None and "Rows" in header and "Columns" in header


def frame_info(
    header: Dataset, *, pixel_data_offset: int | None, pixel_data_length: int | None
) -> FrameInfo:
    """Frame geometry of an image instance; ``Unsupported`` when it has no Pixel Data."""
    if not has_pixel_data(header, pixel_data_offset):
        raise Unsupported("the instance has no Pixel Data (7FE0,0010)")
    assert pixel_data_offset is not None
    try:
        frames = int(header.get("NumberOfFrames") or 1)
        return FrameInfo(
            transfer_syntax_uid=str(header.file_meta.TransferSyntaxUID),
            number_of_frames=max(frames, 1),
            rows=int(header.Rows),
            columns=int(header.Columns),
            samples_per_pixel=int(header.get("SamplesPerPixel") or 1),
            bits_allocated=int(header.get("BitsAllocated") or 8),
            photometric_interpretation=str(header.get("PhotometricInterpretation") or ""),
            pixel_data_offset=pixel_data_offset,
            pixel_data_length=pixel_data_length,
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise Unsupported("the Image Pixel Module attributes are malformed") from exc


def indexed_frame_info(
    *,
    transfer_syntax_uid: str,
    rows: int | None,
    columns: int | None,
    bits_allocated: int | None,
    number_of_frames: int | None,
    pixel_data_offset: int | None,
    pixel_data_length: int | None,
) -> FrameInfo | None:
    """Frame geometry of native pixel data from indexed values alone (no header read), or
    None when they do not settle it and the header has to be read (``frame_info``).

    Samples per pixel are not indexed: they are inferred from the Pixel Data length, which
    must be exactly that of 1 or of 3 samples (``NumberOfFrames`` x ``Rows`` x ``Columns`` x
    samples x ``BitsAllocated`` / 8, padded to even). Anything else — encapsulated, deflated
    or bit-packed pixel data, YBR_FULL_422 (two samples' worth), an undefined or inconsistent
    length, a missing value — is None. The photometric interpretation is left empty: for
    native data other than YBR_FULL_422 it does not change the frame size."""
    if (
        transfer_syntax_uid not in NATIVE_SYNTAXES
        or transfer_syntax_uid == DEFLATED_LE
        or pixel_data_offset is None
        or not pixel_data_length
        or not rows
        or not columns
        or bits_allocated not in (8, 16, 32, 64)
    ):
        return None
    frames = max(number_of_frames or 1, 1)
    matches = []
    for samples in (1, 3):
        size = frames * rows * columns * samples * bits_allocated // 8
        if size + size % 2 == pixel_data_length:
            matches.append(samples)
    if len(matches) != 1:
        return None
    return FrameInfo(
        transfer_syntax_uid=transfer_syntax_uid,
        number_of_frames=frames,
        rows=rows,
        columns=columns,
        samples_per_pixel=matches[0],
        bits_allocated=bits_allocated,
        photometric_interpretation="",
        pixel_data_offset=pixel_data_offset,
        pixel_data_length=pixel_data_length,
    )


def check_frame_numbers(numbers: list[int], info: FrameInfo) -> None:
    """PS3.18 §8.2 frame lists are 1-based; a frame beyond NumberOfFrames does not exist."""
    for n in numbers:
        if n > info.number_of_frames:
            raise NotFound(
                f"frame {n} does not exist (the instance has {info.number_of_frames} frame(s))"
            )


def parse_frame_list(text: str) -> list[int]:
    """``1,3,5`` -> [1, 3, 5]; ``InvalidInput`` for empty, zero, negative or non-integers."""
    numbers: list[int] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1:
            raise InvalidInput(
                f"frame list {text!r} is malformed: frame numbers are positive integers "
                "separated by commas (PS3.18 §8.2)"
            )
        numbers.append(int(piece))
    if len(numbers) > 65536:
        raise InvalidInput("frame list is too long")
    return numbers


# ------------------------------------------------------------------------------------------
# Frames
# ------------------------------------------------------------------------------------------
def _swap(data: bytes, width: int) -> bytes:
    if width <= 1:
        return data
    arr = np.frombuffer(data[: len(data) - len(data) % width], dtype=f">u{width}")
    return arr.astype(f"<u{width}").tobytes()


def native_frame(fp: BinaryIO, info: FrameInfo, number: int) -> bytes:
    """Frame ``number`` (1-based) of native pixel data as little-endian bytes, reading only its
    bytes from the file. Bit-packed (BitsAllocated 1) frames are re-packed to start at a byte."""
    if info.transfer_syntax_uid == DEFLATED_LE:
        return decoded_frame(fp, info, number)
    if info.bits_allocated == 1 and info.frame_bits % 8:
        fp.seek(0)
        arr = pixel_array(fp, index=number - 1, raw=True)
        return bytes(pack_bits(arr))
    size = info.frame_size
    fp.seek(info.pixel_data_offset + (number - 1) * size)
    data = fp.read(size)
    if len(data) != size:
        raise Unsupported(f"frame {number} is truncated in the stored object")
    if info.transfer_syntax_uid == EXPLICIT_BE and info.bits_allocated > 8:
        data = _swap(data, info.bits_allocated // 8)
    return data


def encapsulated_frame(fp: BinaryIO, info: FrameInfo, number: int) -> bytes:
    """Frame ``number`` (1-based) of encapsulated pixel data as stored (fragments joined,
    PS3.5 A.4), found through the Basic Offset Table or by walking the fragments."""
    fp.seek(info.pixel_data_offset)
    try:
        return encaps.get_frame(fp, number - 1, number_of_frames=info.number_of_frames)
    except Exception as exc:  # pydicom raises ValueError/KeyError/struct.error on bad data
        raise Unsupported(
            f"frame {number} cannot be read from the encapsulated Pixel Data: {exc}"
        ) from exc


def _to_little_endian(arr: np.ndarray[Any, Any]) -> bytes:
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _HOST_LE):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


_HOST_LE = np.little_endian


def decode_array(
    fp: BinaryIO, number: int, transfer_syntax_uid: str | None = None
) -> np.ndarray[Any, Any]:
    """Frame ``number`` (1-based) decoded to an array (YCbCr converted to RGB). Only that
    frame is read, except for a deflated data set, which has to be inflated whole."""
    fp.seek(0)
    try:
        if transfer_syntax_uid == DEFLATED_LE:
            return pixel_array(pydicom.dcmread(fp), index=number - 1, as_rgb=True)
        return pixel_array(fp, index=number - 1, as_rgb=True)
    except Exception as exc:  # decoder plugins raise RuntimeError, ValueError, ...
        raise Unsupported(f"pixel data cannot be decoded: {_reason(exc)}") from exc
    finally:
        fp.seek(0)


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def decoded_frame(fp: BinaryIO, info: FrameInfo, number: int) -> bytes:
    """Frame ``number`` decoded to native little-endian bytes (interleaved RGB for color)."""
    arr = decode_array(fp, number, info.transfer_syntax_uid)
    if info.bits_allocated == 1:
        return bytes(pack_bits(arr))
    return _to_little_endian(arr)


def iter_frames(
    fp: BinaryIO, info: FrameInfo, numbers: list[int], *, as_stored: bool
) -> Iterator[bytes]:
    """Frames in request order: as stored (compressed stays compressed) or native LE."""
    for n in numbers:
        if not is_encapsulated(info.transfer_syntax_uid):
            yield native_frame(fp, info, n)
        elif as_stored:
            yield encapsulated_frame(fp, info, n)
        else:
            yield decoded_frame(fp, info, n)


# ------------------------------------------------------------------------------------------
# Bulk data media type negotiation (PS3.18 §8.7.3.5, Table 8.7.3-5)
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameMode:
    """How frames are served: as stored or decoded, and the parts' media type."""

    as_stored: bool
    part_media_type: str
    transfer_syntax: str

    @property
    def content_type(self) -> str:
        return f"{self.part_media_type}; transfer-syntax={self.transfer_syntax}"


def frame_mode(media: MediaType, info: FrameInfo) -> FrameMode | None:
    """How one Accept range can be served for this pixel data, or None. Octet-stream without
    a transfer syntax (or ELE) is native little endian, decoded if need be; ``*`` or the stored
    UID keeps stored frames; an image media type matches when the stored transfer syntax is
    one of its family (PS3.18 Table 8.7.3-5); stored frames are never re-encoded."""
    stored = info.transfer_syntax_uid
    native = FrameMode(False, OCTET_STREAM, EXPLICIT_LE)
    multipart = media.type == "multipart/related"
    part = (media.param("type") or OCTET_STREAM).lower() if multipart else media.type
    wanted = media.param("transfer-syntax")
    if media.type in ("*/*", "multipart/*") or part in (OCTET_STREAM, "*/*"):
        if not is_encapsulated(stored):
            return native if wanted in (None, "*", EXPLICIT_LE, stored) else None
        if wanted in ("*", stored):
            return FrameMode(True, media_type_of(stored), stored)
        return native if wanted in (None, EXPLICIT_LE) and can_decode(stored) else None
    if stored in COMPRESSED_MEDIA_TYPES.get(part, ()) and wanted in (None, "*", stored):
        return FrameMode(True, part, stored)
    return None


# ------------------------------------------------------------------------------------------
# Other bulk data
# ------------------------------------------------------------------------------------------
SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def element_bytes(elem: Any, *, big_endian: bool) -> bytes:
    """The raw little-endian value of a binary element (PS3.18 §8.7.3.3.1 uncompressed bulk
    data); ``Unsupported`` for a value that is not binary."""
    value = elem.value
    if isinstance(value, bytes | bytearray):
        data = bytes(value)
        vr = str(elem.VR).split(" ")[0]
        if big_endian and vr in SWAP_WIDTH:
            data = _swap(data, SWAP_WIDTH[vr])
        return data
    raise Unsupported("the element has no binary value")


# ------------------------------------------------------------------------------------------
# Transcoding to Explicit VR Little Endian
# ------------------------------------------------------------------------------------------
def _swap_dataset(ds: Dataset) -> None:
    """Swap OW/OF/OL/OD/OV values of a big-endian data set to little endian (recursively);
    Pixel Data is handled separately."""
    for elem in ds.iterall():
        vr = str(elem.VR).split(" ")[0]
        if elem.tag == PIXEL_DATA or vr not in SWAP_WIDTH:
            continue
        if isinstance(elem.value, bytes | bytearray):
            elem.value = _swap(bytes(elem.value), SWAP_WIDTH[vr])


def _native_pixels_le(ds: Dataset) -> None:
    """Re-encode native big-endian Pixel Data as little endian."""
    if PIXEL_DATA not in ds:
        return
    arr = pixel_array(ds, raw=True)
    bits = int(ds.BitsAllocated)
    data = bytes(pack_bits(arr)) if bits == 1 else _to_little_endian(arr)
    if len(data) % 2:
        data += b"\x00"
    ds.PixelData = data
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"


def transcode_to_explicit_le(fp: BinaryIO) -> bytes:
    """The stored instance re-encoded in Explicit VR Little Endian (PS3.18 §8.7.3.5.2 default):
    implicit/deflated/big-endian data sets are re-written, encapsulated Pixel Data is decoded
    (YCbCr to RGB, PhotometricInterpretation updated) by pydicom's ``Dataset.decompress``.
    The SOP Instance UID is kept. ``Unsupported`` with a reason when it cannot be done."""
    fp.seek(0)
    try:
        ds = pydicom.dcmread(fp)
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise Unsupported(f"stored object cannot be parsed: {_reason(exc)}") from exc
    ts = str(ds.file_meta.TransferSyntaxUID)
    try:
        if is_encapsulated(ts):
            if PIXEL_DATA in ds:
                ds.decompress(as_rgb=True, generate_instance_uid=False)
        elif ts == EXPLICIT_BE:
            _swap_dataset(ds)
            _native_pixels_le(ds)
    except Exception as exc:  # decoder plugins raise RuntimeError, ValueError, ...
        name = UID(ts).name or ts
        raise Unsupported(
            f"cannot transcode from {name} to Explicit VR Little Endian: {_reason(exc)}"
        ) from exc
    ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
    buf = io.BytesIO()
    try:
        dcmwrite(buf, ds, enforce_file_format=True, implicit_vr=False, little_endian=True)
    except Exception as exc:  # pydicom raises ValueError/TypeError for unwritable values
        raise Unsupported(f"cannot write Explicit VR Little Endian: {_reason(exc)}") from exc
    return buf.getvalue()


__all__ = [
    "COMPRESSED_MEDIA_TYPES",
    "EXPLICIT_LE",
    "FRAME_TAGS",
    "OCTET_STREAM",
    "FrameInfo",
    "FrameMode",
    "can_decode",
    "can_transcode_to_explicit_le",
    "check_frame_numbers",
    "decode_array",
    "element_bytes",
    "frame_info",
    "frame_mode",
    "has_pixel_data",
    "indexed_frame_info",
    "iter_frames",
    "media_type_of",
    "parse_frame_list",
    "read_header",
    "transcode_to_explicit_le",
]
