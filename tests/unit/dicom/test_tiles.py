"""Frame index of encapsulated Pixel Data (PS3.5 A.4) with tens of thousands of frames: the
Basic, the Extended or no offset table; tile geometry and region composition."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
from pydicom import encaps
from pydicom.dataset import Dataset

from medflow.core.errors import InvalidInput, Unsupported
from medflow.dicom import tiles

FRAMES = 30_000


def _frames(n: int) -> list[bytes]:
    return [b"\xff\xd8" + struct.pack("<I", i) * (1 + i % 5) + b"\xff\xd9" for i in range(n)]


def _pixel_value(frames: list[bytes], *, bot: bool, fragments: int = 1) -> bytes:
    return encaps.encapsulate(frames, fragments_per_frame=fragments, has_bot=bot)


def _stream(value: bytes) -> tuple[io.BytesIO, int]:
    prefix = b"HEADER" * 3
    return io.BytesIO(prefix + value), len(prefix)


@pytest.mark.parametrize("bot", [True, False])
def test_one_fragment_per_frame(bot: bool) -> None:
    frames = _frames(FRAMES)
    fp, start = _stream(_pixel_value(frames, bot=bot))
    began = time.perf_counter()
    index = tiles.build_frame_index(fp, Dataset(), start, FRAMES)
    assert time.perf_counter() - began < 2.0
    assert index.frames == FRAMES
    for n in (1, 2, 777, FRAMES):
        assert index.read(fp, n) == frames[n - 1]
    with pytest.raises(Unsupported):
        index.read(fp, FRAMES + 1)


def test_several_fragments_per_frame_by_the_basic_offset_table() -> None:
    frames = [f * 4 for f in _frames(300)]
    value = encaps.encapsulate(frames, fragments_per_frame=2, has_bot=True)
    fp, start = _stream(value)
    index = tiles.build_frame_index(fp, Dataset(), start, 300)
    assert [index.read(fp, n) for n in (1, 150, 300)] == [frames[0], frames[149], frames[299]]


def test_several_fragments_per_frame_by_the_extended_offset_table() -> None:
    frames = [f * 4 for f in _frames(200)]
    value, offsets, lengths = encaps.encapsulate_extended(frames)
    # split each frame into two fragments, keeping the frame offsets right
    items = [b"\xfe\xff\x00\xe0" + struct.pack("<I", 0)]
    new_offsets = []
    position = 0
    for f in frames:
        new_offsets.append(position)
        half = (len(f) // 2) & ~1
        for part in (f[:half], f[half:]):
            items.append(b"\xfe\xff\x00\xe0" + struct.pack("<I", len(part)) + part)
            position += 8 + len(part)
    items.append(b"\xfe\xff\xdd\xe0" + b"\0\0\0\0")
    header = Dataset()
    header.ExtendedOffsetTable = struct.pack(f"<{len(new_offsets)}Q", *new_offsets)
    fp, start = _stream(b"".join(items))
    index = tiles.build_frame_index(fp, header, start, 200)
    assert [index.read(fp, n) for n in (1, 100, 200)] == [frames[0], frames[99], frames[199]]
    del value, offsets, lengths
    with pytest.raises(Unsupported):
        tiles.build_frame_index(fp, Dataset(), start, 200)  # no table: ambiguous


def test_region_composition_crops_edge_tiles() -> None:
    grid = tiles.TileGrid(total_columns=600, total_rows=300, tile_columns=256, tile_rows=256)
    assert (grid.across, grid.down) == (3, 2)
    full = np.arange(512 * 768 * 3, dtype=np.uint32).reshape(512, 768, 3)

    def tile(n: int) -> np.ndarray:
        r, c = divmod(n - 1, grid.across)
        return full[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256]

    region, fx, fy = tiles.clip_region(grid, 100, 50, 450, 1000)
    assert (region.x0, region.y0, region.x1, region.y1, fx, fy) == (100, 50, 550, 300, False, False)
    out = tiles.compose_region(grid, region, tile)
    assert np.array_equal(out, full[50:300, 100:550])
    with pytest.raises(InvalidInput):
        tiles.clip_region(grid, 700, 0, 10, 10)
    assert tiles.clip_region(grid, 300, 0, -200, 10)[1:] == (True, False)
