"""What serving frames of a stored instance needs, kept per process: its frame geometry, the
header elements of a tiled image and the index of its encapsulated frames (PS3.18 §10.4.1.1.5
frames of whole slide images with tens of thousands of tiles: one seek and one read per frame,
no header parse per request).

Entries are keyed by blob key, which is derived from the content (SHA-256), so an entry is
never stale: a replaced instance has another key. Nothing here is needed by another process
(each builds its own entries on first use). The cache is bounded in entries (an index costs
24 bytes a fragment: about 1.2 MB for a 50,000-tile level).
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import BinaryIO

from pydicom.dataset import Dataset

from medflow.core.errors import Unsupported
from medflow.dicom import pixels, tiles
from medflow.store.records import InstanceRecord

MAX_ENTRIES = 512


@dataclass(frozen=True)
class Layout:
    """Frame geometry (``info``), the header elements of ``tiles.TILE_TAGS``, the encapsulated
    frames' index (None for native pixel data or when fragments cannot be assigned to frames
    without decoding: then pydicom finds them) and the tile grid of a TILED_FULL image."""

    info: pixels.FrameInfo
    header: Dataset
    index: tiles.FrameIndex | None
    grid: tiles.TileGrid | None

    def read_stored(self, fp: BinaryIO, number: int) -> bytes:
        """Frame ``number`` (1-based) as stored."""
        if self.index is not None:
            return self.index.read(fp, number)
        return next(pixels.iter_frames(fp, self.info, [number], as_stored=True))


_lock = threading.Lock()
_entries: OrderedDict[str, Layout] = OrderedDict()


def _build(fp: BinaryIO, record: InstanceRecord) -> Layout:
    header = pixels.read_header(fp, tags=tiles.TILE_TAGS)
    info = pixels.frame_info(
        header,
        pixel_data_offset=record.pixel_data_offset,
        pixel_data_length=record.pixel_data_length,
    )
    index = None
    if pixels.is_encapsulated(info.transfer_syntax_uid) and (
        info.transfer_syntax_uid not in pixels.VIDEO_SYNTAXES
    ):
        try:
            index = tiles.build_frame_index(
                fp, header, info.pixel_data_offset, info.number_of_frames
            )
        except (Unsupported, struct.error):
            index = None  # pydicom's frame finder (slower, per request) takes over
        fp.seek(0)
    return Layout(info, header, index, tiles.tile_grid(header))


def layout(fp: BinaryIO, record: InstanceRecord) -> Layout:
    """The layout of the instance open in ``fp`` (cached by its blob key); ``Unsupported``
    when it has no Pixel Data or its Image Pixel attributes are malformed."""
    key = record.blob_key
    with _lock:
        found = _entries.get(key)
        if found is not None:
            _entries.move_to_end(key)
            return found
    built = _build(fp, record)
    with _lock:
        _entries[key] = built
        while len(_entries) > MAX_ENTRIES:
            _entries.popitem(last=False)
    return built


def cached(key: str) -> Layout | None:
    """The layout of blob ``key`` when it is cached (nothing is read)."""
    with _lock:
        return _entries.get(key)


def clear() -> None:
    with _lock:
        _entries.clear()


__all__ = ["Layout", "cached", "clear", "layout"]
