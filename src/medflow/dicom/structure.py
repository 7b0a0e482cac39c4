"""Structural check of a Part 10 file: every element, item and delimiter complete (PS3.5 7.1, 7.5).

pydicom stops quietly at an early end of file; an archive must not accept a truncated object as
stored. This walk reads only element headers and seeks over values, so it is cheap for large files.
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

from medflow.core.errors import InvalidInput

UNDEFINED = 0xFFFFFFFF
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = frozenset({"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"})


class _Truncated(Exception):
    pass


def check_structure(fp: BinaryIO, *, size: int, transfer_syntax_uid: str) -> None:
    """Raise ``InvalidInput`` if the file ends inside an element, item or sequence."""
    try:
        fp.seek(132)
        _walk(fp, size, explicit=True, little=True, top=True, meta=True)
        if transfer_syntax_uid in DEFLATED:
            _check_deflate_stream(fp)
            return
        explicit = transfer_syntax_uid != IMPLICIT_LE
        _walk(fp, size, explicit=explicit, little=transfer_syntax_uid != EXPLICIT_BE, top=True)
    except _Truncated:
        raise InvalidInput("file is truncated: it ends inside a data element") from None


def _check_deflate_stream(fp: BinaryIO) -> None:
    """A deflated data set (PS3.5 A.5) must be a complete raw deflate stream."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        while chunk := fp.read(1 << 20):
            inflater.decompress(chunk, 1 << 20)
            while inflater.unconsumed_tail:
                inflater.decompress(inflater.unconsumed_tail, 1 << 20)
    except zlib.error:
        raise _Truncated from None
    if not inflater.eof:
        raise _Truncated


def _walk(
    fp: BinaryIO, size: int, *, explicit: bool, little: bool, top: bool, meta: bool = False
) -> None:
    endian = "<" if little else ">"
    while True:
        pos = fp.tell()
        if pos >= size:
            if top:
                return
            raise _Truncated
        header = fp.read(8)
        if len(header) < 8:
            raise _Truncated
        group, element = struct.unpack(endian + "HH", header[:4])
        if meta and group != 0x0002:
            fp.seek(pos)
            return
        if group == 0xFFFE:
            length = struct.unpack(endian + "L", header[4:])[0]
            if element in (0xE00D, 0xE0DD):
                if top:
                    raise _Truncated  # a delimiter outside any sequence: structure is broken
                return
            vr = b"  "
        elif explicit and header[4:6].isalpha() and header[4:6].isupper():
            # pydicom also reads data sets whose VR encoding contradicts the transfer syntax;
            # an element whose "VR" bytes are not letters is taken as implicit VR, as it does.
            vr = header[4:6]
            if vr in LONG_VRS:
                ext = fp.read(4)
                if len(ext) < 4:
                    raise _Truncated
                length = struct.unpack(endian + "L", ext)[0]
            else:
                length = struct.unpack(endian + "H", header[6:])[0]
        else:
            vr = b"  "
            length = struct.unpack(endian + "L", header[4:])[0]
        if length == UNDEFINED:
            # Undefined-length SQ, item, encapsulated pixel data or UN: walk to its delimiter.
            # The content of an undefined-length UN is implicit VR little endian (PS3.5 6.2.2).
            inner_explicit = explicit and vr != b"UN"
            _walk(fp, size, explicit=inner_explicit, little=little, top=False)
            continue
        end = fp.tell() + length
        if end > size:
            raise _Truncated
        fp.seek(end)
