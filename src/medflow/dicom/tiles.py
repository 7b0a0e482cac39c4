"""Tiled images: where each frame of encapsulated Pixel Data lies in a stored file, and whole
slide image geometry (PS3.3 C.8.12.4 Whole Slide Microscopy Image, C.7.6.17 Multi-frame
Dimension, TILED_FULL), for WADO-RS frames and rendered regions (PS3.18 §10.4.1.1.3-5).

``FrameIndex`` is built once per stored instance (the edge caches it by blob key, which is
content-derived, so an entry never goes stale): from the Extended Offset Table (7FE0,0001/0002)
when present, else the Basic Offset Table, else by walking the item headers of the fragments
(PS3.5 A.4). A frame is then one ``seek`` and one ``read``, whatever the number of frames.

``TileGrid`` is the layout of a TILED_FULL instance: frames in row-major order over the Total
Pixel Matrix, one focal plane and optical path (the first only are used when there are more).
``compose_region`` decodes only the tiles a region covers.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset

from medflow.core.errors import InvalidInput, Unsupported

ITEM = 0xFFFEE000
SEQUENCE_DELIMITER = 0xFFFEE0DD
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
PIL_SYNTAXES = frozenset({JPEG_BASELINE, "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"})
"""Transfer syntaxes whose frames Pillow decodes straight from their bytes (8-bit JPEG
baseline, JPEG 2000): the common encodings of whole slide images."""
VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
TILE_TAGS = (
    0x00080008,  # ImageType
    0x00080016,  # SOPClassUID
    0x00209311,  # DimensionOrganizationType
    0x00280002,  # SamplesPerPixel
    0x00280004,  # PhotometricInterpretation
    0x00280008,  # NumberOfFrames
    0x00280010,  # Rows
    0x00280011,  # Columns
    0x00280100,  # BitsAllocated
    0x00280101,  # BitsStored
    0x00480006,  # TotalPixelMatrixRows
    0x00480007,  # TotalPixelMatrixColumns
    0x7FE00001,  # ExtendedOffsetTable
    0x7FE00002,  # ExtendedOffsetTableLengths
)
"""The header elements a tiled image's geometry and frame index need (all before Pixel Data;
PerFrameFunctionalGroupsSequence is not read)."""
MAX_REGION_PIXELS = 16 << 20
"""The largest source region /rendered composes (16 Mpx, ~50 MB of RGB): a whole base level
is asked for through a smaller level or a viewport region."""


@dataclass(frozen=True)
class FrameIndex:
    """Byte spans of each frame's fragments: frame ``i`` (0-based) is the concatenation of
    ``offsets[first[i]:first[i + 1]]`` spans of ``lengths``."""

    first: np.ndarray[Any, np.dtype[np.int64]]
    offsets: np.ndarray[Any, np.dtype[np.int64]]
    lengths: np.ndarray[Any, np.dtype[np.int64]]

    @property
    def frames(self) -> int:
        return len(self.first) - 1

    def spans(self, number: int) -> list[tuple[int, int]]:
        """(offset, length) of each fragment of frame ``number`` (1-based) in the file."""
        if not 1 <= number <= self.frames:
            raise Unsupported(f"frame {number} is not in the Pixel Data")
        a, b = int(self.first[number - 1]), int(self.first[number])
        return [(int(self.offsets[k]), int(self.lengths[k])) for k in range(a, b)]

    def read_with(self, read: Callable[[int, int], bytes], number: int) -> bytes:
        """Frame ``number`` as stored, its fragments read by ``read(offset, length)``."""
        pieces = []
        for offset, length in self.spans(number):
            data = read(offset, length)
            if len(data) != length:
                raise Unsupported(f"frame {number} is truncated in the stored object")
            pieces.append(data)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def read(self, fp: BinaryIO, number: int) -> bytes:
        """Frame ``number`` (1-based) as stored: one read when it is one fragment."""

        def at(offset: int, length: int) -> bytes:
            fp.seek(offset)
            return fp.read(length)

        return self.read_with(at, number)


def _item_header(fp: BinaryIO) -> tuple[int, int]:
    raw = fp.read(8)
    if not raw:
        return SEQUENCE_DELIMITER, 0  # the file ends where the delimiter would be
    if len(raw) < 8:
        raise Unsupported("the encapsulated Pixel Data ends before its sequence delimiter")
    group, element, length = struct.unpack("<HHI", raw)
    return (group << 16) | element, length


def _fragments(fp: BinaryIO, start: int) -> tuple[list[int], list[int], list[int], int]:
    """The Basic Offset Table and every fragment's value offset and length, by their item
    headers (8 bytes each; fragment values are skipped, not read)."""
    fp.seek(start)
    tag, length = _item_header(fp)
    if tag != ITEM:
        raise Unsupported("the encapsulated Pixel Data does not start with an item")
    if length % 4:
        raise Unsupported("the Basic Offset Table's length is not a multiple of 4")
    table = fp.read(length)
    if len(table) < length:
        raise Unsupported("the encapsulated Pixel Data ends inside its Basic Offset Table")
    bot = list(struct.unpack(f"<{length // 4}I", table)) if length else []
    first_fragment = start + 8 + length
    offsets: list[int] = []
    lengths: list[int] = []
    position = first_fragment
    while True:
        tag, length = _item_header(fp)
        if tag == SEQUENCE_DELIMITER:
            return bot, offsets, lengths, first_fragment
        if tag != ITEM or length == 0xFFFFFFFF:
            raise Unsupported("malformed fragment item in the encapsulated Pixel Data")
        offsets.append(position + 8)
        lengths.append(length)
        position += 8 + length
        fp.seek(position)


def _starts_of(offsets: list[int], frame_offsets: list[int], base: int) -> list[int] | None:
    """Fragment index of each frame's first fragment, from frame offsets relative to the first
    fragment's item tag; None when they do not point at fragment items."""
    where = {o - 8 - base: i for i, o in enumerate(offsets)}
    starts = [where.get(int(o), -1) for o in frame_offsets]
    return None if -1 in starts or starts != sorted(starts) else starts


def _eot(header: Dataset, name: str) -> list[int]:
    value = header.get(name)
    if value is None or not isinstance(value, bytes | bytearray) or len(value) % 8:
        return []
    return list(struct.unpack(f"<{len(value) // 8}Q", value))


def build_frame_index(fp: BinaryIO, header: Dataset, start: int, frames: int) -> FrameIndex:
    """The index of an instance's encapsulated Pixel Data whose value starts at ``start``;
    ``Unsupported`` when fragments cannot be assigned to frames without decoding them (more
    fragments than frames and neither offset table)."""
    bot, offsets, lengths, base = _fragments(fp, start)
    if not offsets:
        raise Unsupported("the encapsulated Pixel Data has no fragments")
    starts: list[int] | None = None
    if len(offsets) == frames:
        starts = list(range(frames))
    elif frames == 1:
        starts = [0]
    else:
        eot = _eot(header, "ExtendedOffsetTable")
        for table in (eot, bot):
            if len(table) == frames:
                starts = _starts_of(offsets, table, base)
                if starts is not None:
                    break
    if starts is None:
        raise Unsupported("the fragments of the Pixel Data cannot be assigned to frames")
    return FrameIndex(
        first=np.array([*starts, len(offsets)], dtype=np.int64),
        offsets=np.array(offsets, dtype=np.int64),
        lengths=np.array(lengths, dtype=np.int64),
    )


# ------------------------------------------------------------------------------------------
# Tile geometry
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TileGrid:
    """A TILED_FULL image: ``columns`` x ``rows`` tiles over the Total Pixel Matrix."""

    total_columns: int
    total_rows: int
    tile_columns: int
    tile_rows: int

    @property
    def across(self) -> int:
        return -(-self.total_columns // self.tile_columns)

    @property
    def down(self) -> int:
        return -(-self.total_rows // self.tile_rows)

    def frame_at(self, column: int, row: int) -> int:
        """The 1-based frame of the tile at (column, row) of the first plane."""
        return row * self.across + column + 1


def tile_grid(header: Dataset) -> TileGrid | None:
    """The grid of a tiled image whose frames are its tiles (TILED_FULL, or a Total Pixel
    Matrix larger than one frame without a DimensionOrganizationType), else None; TILED_SPARSE
    images (tiles placed by PerFrameFunctionalGroupsSequence) are None too."""
    try:
        total_c = int(header.get("TotalPixelMatrixColumns") or 0)
        total_r = int(header.get("TotalPixelMatrixRows") or 0)
        rows, cols = int(header.Rows), int(header.Columns)
        frames = int(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError, AttributeError):
        return None
    organization = str(header.get("DimensionOrganizationType") or "")
    if not total_c or not total_r or organization not in ("TILED_FULL", ""):
        return None
    grid = TileGrid(total_c, total_r, cols, rows)
    if organization == "" and frames != grid.across * grid.down:
        return None
    if frames < grid.across * grid.down:
        return None
    return grid


def image_type(header: Dataset) -> tuple[str, ...]:
    value = header.get("ImageType") or ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).upper() for v in values)


def wsi_flavor(header: Dataset) -> str:
    """The third value of Image Type of a whole slide image: VOLUME, THUMBNAIL, OVERVIEW, LABEL
    (PS3.3 C.8.12.4.1.1), or ``""``."""
    kind = image_type(header)
    return kind[2] if len(kind) > 2 else ""


# ------------------------------------------------------------------------------------------
# Decoding and composing
# ------------------------------------------------------------------------------------------
def decode_tile(data: bytes, transfer_syntax_uid: str) -> np.ndarray[Any, Any] | None:
    """A frame's stored bytes decoded by Pillow (RGB or grayscale), or None when Pillow is not
    the decoder for this transfer syntax (the caller falls back to pydicom)."""
    if transfer_syntax_uid not in PIL_SYNTAXES:
        return None
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.mode not in ("RGB", "L", "YCbCr"):  # 16-bit, CMYK...: pydicom decodes it
                return None
            decoded = img if img.mode in ("RGB", "L") else img.convert("RGB")
            return np.asarray(decoded)
    except (OSError, ValueError, SyntaxError) as exc:
        raise Unsupported(f"a tile cannot be decoded: {type(exc).__name__}") from exc


@dataclass(frozen=True)
class Region:
    """A source region of the Total Pixel Matrix: columns ``x0..x1``, rows ``y0..y1``."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def pixels(self) -> int:
        return (self.x1 - self.x0) * (self.y1 - self.y0)


def clip_region(
    grid: TileGrid, sx: int, sy: int, sw: int | None, sh: int | None
) -> tuple[Region, bool, bool]:
    """``viewport``'s source region (PS3.18 §8.3.5.1.3; negative sw/sh flip) clipped to the
    matrix, and whether to flip horizontally and vertically."""
    sw = grid.total_columns - sx if sw is None else sw
    sh = grid.total_rows - sy if sh is None else sh
    x0, x1 = sorted((sx, sx + sw))
    y0, y1 = sorted((sy, sy + sh))
    region = Region(max(x0, 0), max(y0, 0), min(x1, grid.total_columns), min(y1, grid.total_rows))
    if region.x1 <= region.x0 or region.y1 <= region.y0:
        raise InvalidInput("viewport source region lies outside the image")
    if region.pixels > MAX_REGION_PIXELS:
        raise InvalidInput(
            f"the source region has {region.pixels} pixels; at most {MAX_REGION_PIXELS} are "
            "rendered at once (give a smaller viewport sx,sy,sw,sh or use a lower level)"
        )
    return region, sw < 0, sh < 0


def compose_region(
    grid: TileGrid, region: Region, tile: Callable[[int], np.ndarray[Any, Any]]
) -> np.ndarray[Any, Any]:
    """The pixels of ``region`` from the decoded tiles it covers (``tile(frame_number)``);
    tiles on the right and bottom edges may be padded beyond the matrix (cropped here)."""
    out: np.ndarray[Any, Any] | None = None
    c0, c1 = region.x0 // grid.tile_columns, (region.x1 - 1) // grid.tile_columns
    r0, r1 = region.y0 // grid.tile_rows, (region.y1 - 1) // grid.tile_rows
    for r in range(r0, r1 + 1):
        for c in range(c0, c1 + 1):
            arr = tile(grid.frame_at(c, r))
            if out is None:
                shape = (region.y1 - region.y0, region.x1 - region.x0, *arr.shape[2:])
                out = np.zeros(shape, dtype=arr.dtype)
            tx, ty = c * grid.tile_columns, r * grid.tile_rows
            x0, y0 = max(region.x0, tx), max(region.y0, ty)
            x1 = min(region.x1, tx + grid.tile_columns, tx + arr.shape[1])
            y1 = min(region.y1, ty + grid.tile_rows, ty + arr.shape[0])
            if x1 > x0 and y1 > y0:
                out[y0 - region.y0 : y1 - region.y0, x0 - region.x0 : x1 - region.x0] = arr[
                    y0 - ty : y1 - ty, x0 - tx : x1 - tx
                ]
    assert out is not None
    return out


__all__ = [
    "MAX_REGION_PIXELS",
    "TILE_TAGS",
    "VL_WSI",
    "FrameIndex",
    "Region",
    "TileGrid",
    "build_frame_index",
    "clip_region",
    "compose_region",
    "decode_tile",
    "image_type",
    "tile_grid",
    "wsi_flavor",
]
