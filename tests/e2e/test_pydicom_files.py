"""Every file pydicom ships for its own tests (many vendors, encodings, transfer syntaxes, broken
files), sent one per STOW-RS request to a real server: what can be stored is stored and comes
back byte for byte through WADO-RS; everything else is refused with the right FailureReason,
never a 500. The expected outcome of each file is derived from facts about the file, not from a
list."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement

pytestmark = [pytest.mark.e2e, pytest.mark.filterwarnings("ignore::UserWarning")]

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"
DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1"}
UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
BOUNDARY = "pydicom-file-boundary"
ROOT = Path(get_testdata_file("CT_small.dcm")).parent  # type: ignore[arg-type]


@dataclass
class Expected:
    stored: bool
    reason: int | None = None
    why: str = ""
    uids: tuple[str, str, str] | None = None


def _valid_uid(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(UID.match(value))


def _runs_past_end(ds: Any, size: int) -> bool:
    last = ds.get_item(sorted(ds.keys())[-1], keep_deferred=True)
    return (
        isinstance(last, RawDataElement)
        and last.length != 0xFFFFFFFF
        and last.value_tell + last.length > size
    )


def expected(path: Path) -> Expected:
    """The outcome a Part 10 archive owes this file, from independent facts about it."""
    data = path.read_bytes()
    if data[128:132] != b"DICM":
        return Expected(False, 0xC000, "no DICM prefix at offset 128: not a Part 10 file")
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        return Expected(False, 0xC000, f"pydicom cannot parse it: {type(exc).__name__}")
    meta = ds.file_meta
    ts = str(meta.get("TransferSyntaxUID") or "")
    sop_class_meta = str(meta.get("MediaStorageSOPClassUID") or "")
    if not ts or "MediaStorageSOPClassUID" not in meta:
        return Expected(False, 0xC000, "file meta lacks TransferSyntaxUID/MediaStorageSOPClassUID")
    if sop_class_meta == DICOMDIR_CLASS:
        return Expected(False, 0x0122, "a DICOMDIR")
    uids = {
        k: str(ds.get(k, "") or "")
        for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
    }
    bad = [k for k, v in uids.items() if not _valid_uid(v)]
    if bad:
        return Expected(False, 0xA900, f"{bad[0]} missing or invalid")
    if ts not in DEFLATED and _runs_past_end(ds, len(data)):
        return Expected(False, 0xC000, "truncated: last element runs past the end of the file")
    return Expected(
        True, uids=(uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"])
    )


def stow(http: httpx.Client, data: bytes) -> httpx.Response:
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    return http.post(
        "/dicomweb/studies",
        content=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
            "Accept": "application/dicom+json",
        },
    )


def split_multipart(body: bytes, content_type: str) -> list[tuple[str, bytes]]:
    """A minimal multipart/related splitter (independent of medflow's reader)."""
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    assert m, content_type
    delim = b"--" + m.group(1).encode()
    assert body.startswith(delim), body[:80]
    parts = []
    for chunk in body[len(delim) :].split(b"\r\n" + delim):
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk[2:].partition(b"\r\n\r\n")
        parts.append((head.decode("latin-1"), data))
    return parts


def retrieve(http: httpx.Client, uids: tuple[str, str, str]) -> bytes:
    """WADO-RS retrieve of one instance in the transfer syntax it was stored in."""
    study, series, sop = uids
    r = http.get(
        f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
    )
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("multipart/related")
    ((head, data),) = split_multipart(r.content, r.headers["content-type"])
    assert "application/dicom" in head.lower()
    return data


def all_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*") if p.is_file())


# One database is enough here (the index paths run on both in the integration tests); the files
# are what varies.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_pydicom_test_file(live_server: str, container: Any) -> None:
    files = all_files()
    assert len(files) > 150
    problems: list[str] = []
    tally = {"stored": 0, "refused": 0}
    reasons_seen: set[int] = set()
    with httpx.Client(base_url=live_server, timeout=60) as http:
        for path in files:
            name = str(path.relative_to(ROOT))
            data = path.read_bytes()
            exp = expected(path)
            r = stow(http, data)
            if r.status_code >= 500:
                problems.append(f"{name}: HTTP {r.status_code} {r.text[:200]}")
                continue
            body = r.json()
            failed = body.get("00081198", {}).get("Value", [])
            if exp.stored:
                if r.status_code != 200:
                    problems.append(f"{name}: expected stored, got {r.status_code} {body}")
                    continue
                assert exp.uids
                got = retrieve(http, exp.uids)
                if got != data:
                    problems.append(
                        f"{name}: retrieved {len(got)} bytes, sent {len(data)}, "
                        f"sha {hashlib.sha256(got).hexdigest()[:12]}"
                    )
                # Delete it again: several files share a SOP Instance UID with other content.
                d = http.delete(
                    f"/dicomweb/studies/{exp.uids[0]}/series/{exp.uids[1]}/instances/{exp.uids[2]}"
                )
                if d.status_code != 204:
                    problems.append(f"{name}: DELETE gave {d.status_code}")
                tally["stored"] += 1
            else:
                got_reasons = [i.get("00081197", {}).get("Value", [None])[0] for i in failed]
                if r.status_code != 409 or got_reasons != [exp.reason]:
                    problems.append(
                        f"{name}: expected refusal 0x{exp.reason:04X} ({exp.why}), "
                        f"got {r.status_code} {got_reasons}"
                    )
                    continue
                reasons_seen.add(exp.reason)  # type: ignore[arg-type]
                tally["refused"] += 1
        assert http.get("/healthz").status_code == 200
    assert problems == []
    assert reasons_seen == {0xC000, 0xA900, 0x0122}
    assert tally["stored"] > 100 and tally["refused"] > 20
    assert container.store.counts()["instances"] == 0
    assert container.store.verify().ok


def test_expected_outcomes_cover_the_interesting_files() -> None:
    """Guard the derivation itself against silently classifying everything one way."""
    by_name = {str(p.relative_to(ROOT)): expected(p) for p in all_files()}
    assert by_name["CT_small.dcm"].stored
    assert by_name["image_dfl.dcm"].stored
    assert by_name["no_meta.dcm"].reason == 0xC000
    assert by_name["meta_missing_tsyntax.dcm"].reason == 0xC000
    assert by_name["dicomdirtests/DICOMDIR"].reason == 0x0122
    assert by_name["MR_truncated.dcm"].reason == 0xC000
    assert by_name["rtplan_truncated.dcm"].reason == 0xC000
    assert by_name["JPEGLSNearLossless_08.dcm"].reason == 0xA900
    assert by_name["README.txt"].reason == 0xC000
