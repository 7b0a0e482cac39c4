"""Shared helpers of the DICOM de-identification tests: keys and a PHI scanner."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID_dictionary

from medflow.deid.dicom import DicomDeidentifier
from medflow.deid.keys import DeidKeys
from medflow.deid.profile import ActionTable, DicomProfile, Option, load_profile

KEY = b"unit-test-key-0123456789abcdef"
TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "AE", "DA", "DT", "TM", "CS", "UR"}
LEGIT = {
    "ANONYMIZED",
    "ANONYMOUS",
    "19000101",
    "000000",
    "19000101000000",
    "MODIFIED",
    "REMOVED",
    "UNMODIFIED",
    "YES",
    "MEDFLOW",
    "medflow PS3.15 Annex E Basic Profile",
}


@pytest.fixture
def keys() -> DeidKeys:
    return DeidKeys(KEY)


@pytest.fixture
def make() -> object:
    def _make(profile: str | DicomProfile = "basic", key: bytes = KEY) -> DicomDeidentifier:
        prof = load_profile(profile) if isinstance(profile, str) else profile
        return DicomDeidentifier(prof, DeidKeys(key))

    return _make


def _strings(elem: pydicom.DataElement) -> Iterator[str]:
    value = elem.value
    items = (
        value
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue"
        else [value]
    )
    for item in items:
        if item is None:
            continue
        if isinstance(item, bytes):
            text = item.decode("latin-1").strip("\0 ")
            if text.isprintable():
                yield text
            continue
        text = str(item).strip("\0 ")
        if text:
            yield text
            if elem.VR == "PN":
                yield from (part for part in re.split(r"[\^=]+", text) if part)


def scan_values(ds: Dataset, options: frozenset[Option]) -> tuple[set[str], set[str]]:
    """(values that must not survive, values of attributes that are kept) of ``ds``."""
    table = ActionTable.standard()
    secret: set[str] = set()
    kept: set[str] = set()

    def walk(item: Dataset) -> None:
        for elem in item:
            if elem.VR == "SQ":
                for sub in elem.value or []:
                    walk(sub)
                continue
            group = elem.tag.group
            if group % 2 == 1:
                if elem.tag.element >= 0x1000 and elem.VR in TEXT_VRS | {"UN"}:
                    secret.update(_strings(elem))
                continue
            if group & 0xFF00 in (0x5000, 0x6000) or group == 0x0002:
                continue
            action = table.action(elem.tag, options)
            if elem.VR == "UI":
                for uid in _strings(elem):
                    if uid in UID_dictionary or Option.RETAIN_UIDS in options:
                        kept.add(uid)
                    else:
                        secret.add(uid)
                continue
            if elem.VR not in TEXT_VRS:
                continue
            if action in (None, "K") or (action == "C" and elem.VR not in ("DA", "DT")):
                kept.update(_strings(elem))
            else:
                secret.update(_strings(elem))

    walk(ds)
    secret = {v for v in secret if len(v) >= 4 and v not in LEGIT and not any(v in k for k in kept)}
    return secret, kept


def output_text(data: bytes) -> tuple[bytes, str]:
    """The output's bytes without pixel data and all its decoded string values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        for name in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if name in ds:
                del ds[name]
        buffer = io.BytesIO()
        ds.save_as(buffer)
        texts: list[str] = []

        def walk(item: Dataset) -> None:
            for elem in item:
                if elem.VR == "SQ":
                    for sub in elem.value or []:
                        walk(sub)
                elif elem.VR in TEXT_VRS:
                    texts.extend(_strings(elem))

        walk(ds)
    return buffer.getvalue(), "\n".join(texts)


def leaks(original: Dataset, data: bytes, options: frozenset[Option]) -> list[str]:
    """Identifying values of ``original`` found in the de-identified Part-10 ``data``."""
    secret, _ = scan_values(original, options)
    raw, text = output_text(data)
    found = []
    for value in sorted(secret):
        if (value.isascii() and value.encode() in raw) or value in text:
            found.append(value)
    return found


def shipped_file(name: str) -> Path:
    """A file shipped with pydicom (never downloaded: get_testdata_file would try)."""
    for path in pydicom.data.get_testdata_files():
        if Path(path).name == name:
            return Path(path)
    raise FileNotFoundError(name)
