"""structure.check_structure: a file cut at any offset is rejected unless the cut falls exactly
between two top-level elements (where the file is structurally complete); complete files of
every transfer syntax are accepted."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)

from medflow.core.errors import InvalidInput
from medflow.dicom.structure import check_structure
from tests.factories import make_instance

DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}


def small(ts: str) -> Dataset:
    ds = make_instance(rows=2, columns=2)
    ds.file_meta.TransferSyntaxUID = ts
    item = Dataset()
    item.CodeValue = "T-D3000"
    item.CodeMeaning = "Chest"
    inner = Dataset()
    inner.CodeValue = "X"
    item.ModifierCodeSequence = Sequence([inner])
    ds.AnatomicRegionSequence = Sequence([item, Dataset()])
    ds.add_new(0x00091010, "LO", "private")
    if ts == JPEGBaseline8Bit:
        ds.PixelData = encapsulate([b"\xff\xd8abc\xff\xd9", b"\xff\xd8defgh\xff\xd9"])
        ds["PixelData"].VR = "OB"
    return ds


def encode(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ts = ds.file_meta.TransferSyntaxUID
    ds.save_as(
        buf,
        enforce_file_format=True,
        implicit_vr=ts == ImplicitVRLittleEndian,
        little_endian=ts != ExplicitVRBigEndian,
    )
    return buf.getvalue()


def top_level_boundaries(ds: Dataset) -> set[int]:
    """Sizes of the files holding the first k data set elements: pydicom writes each of them as
    a prefix of the whole file, so these are the offsets between top-level elements."""
    out = set()
    tags = sorted(ds.keys())  # the order pydicom writes them in
    for k in range(len(tags) + 1):
        part = Dataset()
        part.file_meta = ds.file_meta
        for tag in tags[:k]:
            part[tag] = ds[tag]
        out.add(len(encode(part)))
    return out


def check(data: bytes, ts: str) -> None:
    check_structure(io.BytesIO(data), size=len(data), transfer_syntax_uid=ts)


@pytest.mark.parametrize(
    "ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit]
)
def test_truncated_at_every_offset(ts: str) -> None:
    ds = small(ts)
    data = encode(ds)
    check(data, ts)  # the complete file
    boundaries = top_level_boundaries(ds)
    assert len(data) in boundaries
    meta_end = min(boundaries)
    assert data[128:132] == b"DICM"
    wrongly_accepted, wrongly_rejected = [], []
    for cut in range(meta_end, len(data)):
        try:
            check(data[:cut], ts)
        except InvalidInput:
            if cut in boundaries:
                wrongly_rejected.append(cut)
        else:
            if cut not in boundaries:
                wrongly_accepted.append(cut)
    assert wrongly_accepted == []
    assert wrongly_rejected == []


def test_truncated_deflated_stream_at_every_offset() -> None:
    ds = small(ExplicitVRLittleEndian)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    check(data, DeflatedExplicitVRLittleEndian)
    assert data[132:138] == b"\x02\x00\x00\x00UL"  # (0002,0000) group length
    meta_end = 144 + int.from_bytes(data[140:144], "little")
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflater.decompress(data[meta_end:])
    assert inflater.eof
    stream_end = len(data) - len(inflater.unused_data)  # pydicom pads to an even length
    for cut in range(meta_end, stream_end):
        with pytest.raises(InvalidInput):
            check(data[:cut], DeflatedExplicitVRLittleEndian)
    for cut in range(stream_end, len(data) + 1):
        check(data[:cut], DeflatedExplicitVRLittleEndian)


def test_truncated_inside_the_file_meta() -> None:
    data = encode(small(ExplicitVRLittleEndian))
    for cut in (133, 136, 140, 145):
        with pytest.raises(InvalidInput):
            check(data[:cut], ExplicitVRLittleEndian)


def test_stray_delimiter_at_top_level_is_rejected() -> None:
    data = encode(small(ExplicitVRLittleEndian))
    for delim in (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"):
        with pytest.raises(InvalidInput):
            check(data + delim, ExplicitVRLittleEndian)


def test_undefined_length_sequence_without_delimiter_is_rejected() -> None:
    data = encode(small(ExplicitVRLittleEndian))
    seq = b"\x08\x00\x15\x22SQ\x00\x00\xff\xff\xff\xff"  # AnatomicRegionSequence, undefined
    with pytest.raises(InvalidInput):
        check(data + seq, ExplicitVRLittleEndian)
    item = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    with pytest.raises(InvalidInput):
        check(data + seq + item, ExplicitVRLittleEndian)
    closed = seq + item + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    check(data + closed, ExplicitVRLittleEndian)


def _last_element_runs_past_end(path: Path, ds: Dataset) -> bool:
    """Independent fact from pydicom: the last top-level element's declared length runs past
    the end of the file."""
    last = ds.get_item(list(ds.keys())[-1], keep_deferred=True)
    return (
        isinstance(last, RawDataElement)
        and last.length != 0xFFFFFFFF
        and last.value_tell + last.length > path.stat().st_size
    )


def _pydicom_files() -> list[Path]:
    root = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_pydicom_files_complete_accepted_truncated_rejected() -> None:
    checked = 0
    for path in _pydicom_files():
        data = path.read_bytes()
        if data[128:132] != b"DICM":
            continue
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # not readable by pydicom: not a structure question
            continue
        ts = ds.file_meta.get("TransferSyntaxUID")
        if not ts:
            continue
        truncated = str(ts) not in DEFLATED and _last_element_runs_past_end(path, ds)
        if truncated:
            with pytest.raises(InvalidInput):
                check(data, str(ts))
        else:
            check(data, str(ts))
        checked += 1
    assert checked > 100
