"""C-STORE coverage of the DIMSE SCP (PS3.4 Annex B), on a free port picked by the server:

- every storage SOP class in pynetdicom's list is accepted and stored (not a sample);
- the same image in each common transfer syntax (pydicom's shipped files, what pydicom itself
  encodes, and relabelled codestreams where neither exists) is stored as received: WADO-RS with
  ``transfer-syntax=*`` returns the sent data set byte for byte;
- dcmtk's storescu sends a folder of mixed SOP classes and transfer syntaxes, each file in its
  own transfer syntax, with broken files among them;
- 8 simultaneous associations into one study and series (distinct and identical instances):
  nothing lost, no duplicate rows, one change feed entry per instance;
- the failure status table: dataset/SOP class mismatch 0xA900, unreadable data set 0xC000,
  out of resources 0xA700, SOP class not supported 0x0122; a failing handler never stops the
  server.

test_dimse.py and test_dimse_dcmtk.py cover echo, C-FIND, a few pydicom files and a small
concurrency case; this module does not repeat them.
"""

from __future__ import annotations

import copy
import errno
import io
import os
import shutil
import socket
import struct
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_file_meta_info
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSNearLossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config
from pynetdicom import sop_class as pynetdicom_sop_class
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medflow.bootstrap import Container
from medflow.core.errors import (
    AlreadyExists,
    InvalidInput,
    StorageFailure,
    Unsupported,
)
from medflow.core.settings import DimseSettings
from medflow.dimse.server import DimseServer
from medflow.store import spool
from medflow.store.models import ChangeFeedEntry, Instance, Series, Study
from medflow.store.service import StoreService
from tests.conftest import need_peer
from tests.factories import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, make_instance

pytestmark = pytest.mark.e2e

Peer = tuple[str, int]
STORAGE_CLASSES = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
MAX_CONTEXTS = 128
"""Presentation context IDs are odd numbers 1..255 (PS3.8 9.3.2.2): at most 128 a request."""
ANY_SYNTAX = "application/dicom; transfer-syntax=*"
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


# ------------------------------------------------------------------------------------------
# Fixtures and helpers
# ------------------------------------------------------------------------------------------
@pytest.fixture
def scp(container: Container) -> Iterator[Peer]:
    server = DimseServer(container.store, DimseSettings(port=0, ae_title="MEDFLOW"), "127.0.0.1")
    port = server.start()
    try:
        yield "127.0.0.1", port
    finally:
        server.stop()


@pytest.fixture
def send_from_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """pynetdicom sends a file given by path as it is on disk (the data set after the file
    meta, unparsed): exactly the bytes a modality would send in the file's transfer syntax."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


def associate(peer: Peer, contexts: list[tuple[str, str]]) -> Association:
    ae = AE(ae_title="STORAGESCU")
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    ae.add_requested_context(Verification)
    assoc = ae.associate(*peer, ae_title="MEDFLOW")
    assert assoc.is_established
    # the command and the data set go in separate writes: without TCP_NODELAY on our side
    # too, Nagle's algorithm and the peer's delayed ACK add ~40 ms to each C-STORE
    sock = assoc.dul.socket.socket if assoc.dul.socket is not None else None
    assert sock is not None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def contexts_of(items: list[Dataset] | list[Path]) -> list[tuple[str, str]]:
    pairs: set[tuple[str, str]] = set()
    for item in items:
        meta = read_file_meta_info(item) if isinstance(item, Path) else item.file_meta
        pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    assert len(pairs) < MAX_CONTEXTS
    return sorted(pairs)


def send(peer: Peer, items: list[Dataset] | list[Path]) -> list[int]:
    """C-STORE each dataset (or file, see ``send_from_files``) on one association."""
    assoc = associate(peer, contexts_of(items))
    try:
        return [int(assoc.send_c_store(item).Status) for item in items]
    finally:
        assoc.release()


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def raw_part10(meta: FileMetaDataset, body: bytes) -> bytes:
    """A Part 10 file with ``meta`` and ``body`` as its data set bytes, unchecked."""
    buf = DicomBytesIO()
    buf.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    return buf.getvalue() + body


def dataset_bytes(data: bytes) -> bytes:
    """The data set of a Part 10 file: what follows the preamble and the group 0002 elements
    (always explicit VR little endian, PS3.10 7.1)."""
    assert data[128:132] == b"DICM"
    pos = 132
    while pos + 8 <= len(data):
        group = struct.unpack_from("<H", data, pos)[0]
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return data[pos:]


def instance_url(ds: Dataset) -> str:
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def qido_instances(client: TestClient, **params: str) -> list[dict[str, Any]]:
    r = client.get("/dicomweb/instances", params={"limit": "10000", **params})
    assert r.status_code in (200, 204), r.text
    return list(r.json()) if r.status_code == 200 else []


def value(entry: dict[str, Any], tag: str) -> Any:
    return entry[tag]["Value"][0]


def shipped_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"{name} is not shipped with this pydicom"
    return Path(path)


def minimal_instance(sop_class: str, *, study_uid: str, series_uid: str) -> Dataset:
    """A small valid instance of ``sop_class``: the patient/study/series/SOP common modules,
    and a 4x4 pixel matrix for image classes only."""
    ds = make_instance(
        study_uid=study_uid,
        series_uid=series_uid,
        sop_class_uid=sop_class,
        modality="OT",
        patient_id="ALL-CLASSES",
        rows=4,
        columns=4,
    )
    if "Image" not in UID(sop_class).name:
        for keyword in (
            "SamplesPerPixel",
            "PhotometricInterpretation",
            "Rows",
            "Columns",
            "BitsAllocated",
            "BitsStored",
            "HighBit",
            "PixelRepresentation",
            "WindowCenter",
            "WindowWidth",
            "PixelData",
        ):
            delattr(ds, keyword)
    return ds


# ------------------------------------------------------------------------------------------
# 1. Every storage SOP class
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_storage_sop_class_is_stored(scp: Peer, client: TestClient) -> None:
    # pynetdicom's whole list, not a sample
    assert set(STORAGE_CLASSES) == set(pynetdicom_sop_class._STORAGE_CLASSES.values())
    assert len(STORAGE_CLASSES) == len(set(STORAGE_CLASSES)) > 100
    study, series = generate_uid(), generate_uid()
    datasets = [minimal_instance(c, study_uid=study, series_uid=series) for c in STORAGE_CLASSES]
    size = MAX_CONTEXTS - 1  # room for Verification
    statuses: dict[str, int] = {}
    for start in range(0, len(datasets), size):
        batch = datasets[start : start + size]
        for ds, status in zip(batch, send(scp, batch), strict=True):
            statuses[str(ds.SOPClassUID)] = status
    failed = {UID(c).name: hex(s) for c, s in statuses.items() if s != 0x0000}
    assert failed == {}
    assert len(statuses) == len(STORAGE_CLASSES)

    found = qido_instances(client, StudyInstanceUID=study, includefield="00080016")
    assert len(found) == len(STORAGE_CLASSES)
    assert sorted(value(f, "00080016") for f in found) == sorted(STORAGE_CLASSES)
    assert sorted(value(f, "00080018") for f in found) == sorted(
        str(ds.SOPInstanceUID) for ds in datasets
    )


# ------------------------------------------------------------------------------------------
# 2. Transfer syntaxes: stored as received
# ------------------------------------------------------------------------------------------
def _shipped(name: str) -> Callable[[Path], Path]:
    return lambda _tmp: shipped_file(name)


def _encoded(name: str, syntax: str, **kwargs: Any) -> Callable[[Path], Path]:
    """pydicom's own encoders (RLE, JPEG-LS, JPEG 2000 via pyjpegls/pylibjpeg) or writer
    (deflate) applied to a shipped file."""

    def build(tmp: Path) -> Path:
        ds = pydicom.dcmread(shipped_file(name))
        if syntax == DeflatedExplicitVRLittleEndian:
            ds.file_meta.TransferSyntaxUID = UID(syntax)
        else:
            ds.compress(UID(syntax), generate_instance_uid=False, **kwargs)
        path = tmp / f"{name}.{syntax}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    return build


def _relabelled(name: str, syntax: str) -> Callable[[Path], Path]:
    """A shipped file's encapsulated codestream under another transfer syntax UID, where
    neither pydicom nor its test files provide one offline: JPEG Lossless process 14 (the SV1
    stream is valid process 14) and the HTJ2K syntaxes (a JPEG 2000 codestream; C-STORE
    stores bytes and never decodes them, which is what is tested here)."""

    def build(tmp: Path) -> Path:
        ds = pydicom.dcmread(shipped_file(name))
        ds.file_meta.TransferSyntaxUID = UID(syntax)
        path = tmp / f"{name}.{syntax}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    return build


TRANSFER_SYNTAX_CASES: dict[str, Callable[[Path], Path]] = {
    # MR_small.dcm's image in every syntax pydicom ships or can produce
    "1.2 implicit VR little endian": _shipped("MR_small_implicit.dcm"),
    "1.2.1 explicit VR little endian": _shipped("MR_small.dcm"),
    "1.2.1.99 deflated (pydicom)": _encoded("MR_small.dcm", DeflatedExplicitVRLittleEndian),
    "1.2.1.99 deflated (shipped)": _shipped("image_dfl.dcm"),
    "1.2.2 explicit VR big endian": _shipped("MR_small_bigendian.dcm"),
    "1.2.5 RLE lossless": _shipped("MR_small_RLE.dcm"),
    "1.2.5 RLE lossless (pydicom)": _encoded("MR_small.dcm", RLELossless),
    "4.80 JPEG-LS lossless": _shipped("MR_small_jpeg_ls_lossless.dcm"),
    "4.81 JPEG-LS near-lossless (pydicom)": _encoded(
        "MR_small.dcm", JPEGLSNearLossless, jls_error=3
    ),
    "4.90 JPEG 2000 lossless": _shipped("MR_small_jp2klossless.dcm"),
    "4.91 JPEG 2000 (pydicom)": _encoded("MR_small.dcm", JPEG2000, j2k_cr=[20, 5]),
    "4.91 JPEG 2000 (shipped)": _shipped("JPEG2000.dcm"),
    "4.201 HTJ2K lossless": _relabelled("MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.201"),
    "4.202 HTJ2K lossless RPCL": _relabelled(
        "MR_small_jp2klossless.dcm", "1.2.840.10008.1.2.4.202"
    ),
    "4.203 HTJ2K": _relabelled("JPEG2000.dcm", "1.2.840.10008.1.2.4.203"),
    # 8-bit colour images for the JPEG family (pydicom has no JPEG encoder)
    "4.50 JPEG baseline": _shipped("SC_rgb_jpeg_dcmtk.dcm"),
    "4.51 JPEG extended": _shipped("JPGExtended.dcm"),
    "4.57 JPEG lossless": _relabelled("SC_rgb_jpeg_gdcm.dcm", "1.2.840.10008.1.2.4.57"),
    "4.70 JPEG lossless SV1": _shipped("SC_rgb_jpeg_gdcm.dcm"),
}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_each_transfer_syntax_is_stored_as_received(
    scp: Peer, client: TestClient, container: Container, tmp_path: Path, send_from_files: None
) -> None:
    files = {label: build(tmp_path) for label, build in TRANSFER_SYNTAX_CASES.items()}
    syntaxes = {str(read_file_meta_info(p).TransferSyntaxUID) for p in files.values()}
    assert len(syntaxes) == 16  # every syntax the issue names, HTJ2K's three included

    problems: dict[str, str] = {}
    assoc = associate(scp, contexts_of(list(files.values())))
    try:
        for label, path in files.items():
            sent = path.read_bytes()
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            syntax = str(ds.file_meta.TransferSyntaxUID)
            status = int(assoc.send_c_store(path).Status)
            if status != 0x0000:
                problems[label] = f"C-STORE status {status:#06x}"
                continue
            r = client.get(instance_url(ds), headers={"Accept": ANY_SYNTAX})
            if r.status_code != 200:
                problems[label] = f"WADO-RS {r.status_code}: {r.text[:200]}"
            elif f"transfer-syntax={syntax}" not in r.headers["content-type"]:
                problems[label] = f"served as {r.headers['content-type']}"
            elif (
                pydicom.dcmread(
                    io.BytesIO(r.content), stop_before_pixels=True
                ).file_meta.TransferSyntaxUID
                != syntax
            ):
                problems[label] = "file meta transfer syntax changed"
            elif dataset_bytes(r.content) != dataset_bytes(sent):
                problems[label] = "data set bytes differ from what was sent"
            # the next case is the same image (same SOP Instance UID) in another syntax
            container.store.delete(
                study_uid=ds.StudyInstanceUID,
                series_uid=ds.SeriesInstanceUID,
                sop_uid=ds.SOPInstanceUID,
            )
    finally:
        assoc.release()
    assert problems == {}


# ------------------------------------------------------------------------------------------
# 3. dcmtk storescu: a folder of mixed SOP classes and transfer syntaxes
# ------------------------------------------------------------------------------------------
DCMTK_SHIPPED = (
    "CT_small.dcm",  # CT, explicit VR little endian
    "rtplan.dcm",  # RT Plan, implicit VR little endian
    "test-SR.dcm",  # Comprehensive SR
    "waveform_ecg.dcm",  # 12-lead ECG
    "image_dfl.dcm",  # deflated
    "ExplVR_BigEnd.dcm",  # US, explicit VR big endian
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "JPGExtended.dcm",  # JPEG extended
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless SV1
    "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless
    "examples_jpeg2k.dcm",  # JPEG 2000 lossless
    "JPEG2000.dcm",  # JPEG 2000
)
"""Shipped files with distinct SOP Instance UIDs (several others share one) that dcmtk 3.6.7
reads (rtdose_rle*.dcm has an odd-length Pixel Data it refuses); RLE and JPEG-LS
near-lossless are encoded by pydicom below. dcmtk 3.6.7 does not know the HTJ2K UIDs."""


def storescu_config(files: list[Path]) -> str:
    """A storescu association profile (``-xf FILE Files``) proposing exactly each file's
    (SOP class, transfer syntax): storescu then sends each file as stored. Without one it
    proposes uncompressed syntaxes only (``-R`` included) and must decompress."""
    pairs = contexts_of(files)
    syntaxes = sorted({ts for _, ts in pairs})
    lines = ["[[TransferSyntaxes]]"]
    for i, ts in enumerate(syntaxes):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {ts}"]
    lines += ["[[PresentationContexts]]", "[Contexts]"]
    for i, (sop_class, ts) in enumerate(pairs, 1):
        lines.append(f"PresentationContext{i} = {sop_class}\\TS{syntaxes.index(ts)}")
    lines += ["[[Profiles]]", "[Files]", "PresentationContexts = Contexts", ""]
    return "\n".join(lines)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_storescu_folder_of_mixed_classes_and_syntaxes(
    scp: Peer, container: Container, client: TestClient, tmp_path: Path
) -> None:
    need_peer(shutil.which("storescu") is not None, "dcmtk (storescu) is not installed")
    folder = tmp_path / "inbox"
    (folder / "nested").mkdir(parents=True)
    good: list[Path] = []
    for name in DCMTK_SHIPPED:
        shutil.copy(shipped_file(name), folder / name)
        good.append(folder / name)
    study = generate_uid()
    made = [make_instance(study_uid=study, patient_id="DCMTK-MIX", seed=i) for i in range(4)]
    made[1].file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    made[2].compress(RLELossless, generate_instance_uid=False)
    mr = make_instance(study_uid=study, sop_class_uid=MR_IMAGE_STORAGE, modality="MR", seed=7)
    mr.compress(JPEGLSNearLossless, jls_error=2, generate_instance_uid=False)
    made.append(mr)
    for i, ds in enumerate(made):
        path = folder / "nested" / f"made{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        good.append(path)

    # broken: not DICOM; a Part 10 file cut inside Pixel Data (storescu skips both); a file
    # that storescu sends but the archive must refuse (no Study Instance UID: 0xA900)
    (folder / "notes.txt").write_text("not a DICOM file\n")
    whole = part10(make_instance(study_uid=study))
    (folder / "nested" / "truncated.dcm").write_bytes(whole[: len(whole) - 200])
    no_study = make_instance()
    del no_study.StudyInstanceUID
    no_study.save_as(folder / "no_study.dcm", enforce_file_format=True)
    config = tmp_path / "storescu.cfg"
    config.write_text(storescu_config(good))

    host, port = scp
    done = subprocess.run(
        [
            *("storescu", "-aec", "MEDFLOW", "-xf", str(config), "Files"),
            *("+sd", "+r", "-nh", "-v", host, str(port), str(folder)),
        ],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=120,
        check=False,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    # every readable file went in its own syntax, none was converted (no_study.dcm included)
    sent = [line for line in log.splitlines() if "Converting transfer syntax: " in line]
    assert len(sent) == len(good) + 1
    for line in sent:
        source, _, target = line.split("Converting transfer syntax: ")[1].partition(" -> ")
        assert source == target, line
    # storescu skipped the unreadable two; the archive refused the one without a study
    assert sum("Bad DICOM file" in line for line in log.splitlines()) == 2
    assert log.count("Received Store Response (Error: DataSetDoesNotMatchSOPClass)") == 1

    expected = {}
    for path in good:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        expected[str(ds.SOPInstanceUID)] = str(ds.file_meta.TransferSyntaxUID)
    assert len(expected) == len(good)
    with container.engine.connect() as conn:
        stored = dict(
            conn.execute(sa.select(Instance.sop_instance_uid, Instance.transfer_syntax_uid)).all()
        )
    assert stored == expected
    assert len(qido_instances(client)) == len(good)
    assert str(no_study.SOPInstanceUID) not in stored


# ------------------------------------------------------------------------------------------
# 4. Concurrency: 8 associations into one study and series (sqlite and postgresql)
# ------------------------------------------------------------------------------------------
ASSOCIATIONS, PER_ASSOCIATION = 8, 25


def send_concurrently(peer: Peer, batches: list[list[Dataset]]) -> list[int]:
    results: list[list[int]] = [[] for _ in batches]
    errors: list[BaseException] = []
    start = threading.Barrier(len(batches))

    def run(i: int) -> None:
        try:
            start.wait(30)
            results[i] = send(peer, batches[i])
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return [s for r in results for s in r]


def row_counts(container: Container) -> dict[str, int]:
    with container.engine.connect() as conn:
        return {
            name: int(conn.execute(sa.select(sa.func.count()).select_from(model)).scalar_one())
            for name, model in (("study", Study), ("series", Series), ("instance", Instance))
        }


def feed(container: Container) -> list[tuple[str, str]]:
    with container.engine.connect() as conn:
        rows = conn.execute(
            sa.select(ChangeFeedEntry.sop_instance_uid, ChangeFeedEntry.action).order_by(
                ChangeFeedEntry.seq
            )
        ).all()
    return [(r[0], r[1]) for r in rows]


def test_concurrent_associations_store_distinct_instances_into_one_series(
    scp: Peer, client: TestClient, container: Container
) -> None:
    study, series = generate_uid(), generate_uid()
    batches = [
        [
            make_instance(
                study_uid=study,
                series_uid=series,
                instance_number=t * PER_ASSOCIATION + i + 1,
                rows=8,
                columns=8,
                seed=t * PER_ASSOCIATION + i,
            )
            for i in range(PER_ASSOCIATION)
        ]
        for t in range(ASSOCIATIONS)
    ]
    total = ASSOCIATIONS * PER_ASSOCIATION
    sent = {str(ds.SOPInstanceUID) for batch in batches for ds in batch}

    statuses = send_concurrently(scp, batches)
    assert statuses == [0x0000] * total

    found = qido_instances(client, StudyInstanceUID=study)
    assert {value(f, "00080018") for f in found} == sent and len(found) == total
    (study_row,) = client.get(
        "/dicomweb/studies", params={"StudyInstanceUID": study, "includefield": "all"}
    ).json()
    assert value(study_row, "00201208") == total  # NumberOfStudyRelatedInstances
    assert value(study_row, "00201206") == 1  # NumberOfStudyRelatedSeries
    (series_row,) = client.get(f"/dicomweb/studies/{study}/series").json()
    assert value(series_row, "0020000E") == series
    assert value(series_row, "00201209") == total  # NumberOfSeriesRelatedInstances

    assert row_counts(container) == {"study": 1, "series": 1, "instance": total}
    entries = feed(container)
    assert len(entries) == total
    assert {uid for uid, _ in entries} == sent
    assert Counter(action for _, action in entries) == {"create": total}
    over_http = client.get("/dicomweb/changefeed", params={"limit": str(total + 10)}).json()
    assert [e["SOPInstanceUID"] for e in over_http] == [uid for uid, _ in entries]


def test_concurrent_associations_restoring_the_same_instances_are_idempotent(
    scp: Peer, client: TestClient, container: Container
) -> None:
    study, series = generate_uid(), generate_uid()
    same = [
        make_instance(study_uid=study, series_uid=series, rows=8, columns=8, seed=i)
        for i in range(PER_ASSOCIATION)
    ]
    # each association gets its own copies, in its own order: the same bytes, re-encoded
    batches = [
        [copy.deepcopy(same[(i + t) % PER_ASSOCIATION]) for i in range(PER_ASSOCIATION)]
        for t in range(ASSOCIATIONS)
    ]
    statuses = send_concurrently(scp, batches)
    # an identical re-store is a success without change (as STOW-RS), never 0x0111
    assert statuses == [0x0000] * (ASSOCIATIONS * PER_ASSOCIATION)

    assert row_counts(container) == {"study": 1, "series": 1, "instance": PER_ASSOCIATION}
    entries = feed(container)
    assert sorted(uid for uid, _ in entries) == sorted(str(ds.SOPInstanceUID) for ds in same)
    assert Counter(action for _, action in entries) == {"create": PER_ASSOCIATION}
    (study_row,) = client.get(
        "/dicomweb/studies", params={"StudyInstanceUID": study, "includefield": "all"}
    ).json()
    assert value(study_row, "00201208") == PER_ASSOCIATION
    assert container.store.verify().orphaned == []  # the losing writers' blobs are gone


# ------------------------------------------------------------------------------------------
# 5. Failure statuses (PS3.4 B.2.3) and a handler that fails
# ------------------------------------------------------------------------------------------
def echo_on_new_association(peer: Peer) -> int:
    assoc = associate(peer, [])
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_dataset_not_matching_the_sop_class_is_a900(
    scp: Peer, client: TestClient, tmp_path: Path, send_from_files: None
) -> None:
    # negotiated and announced as CT Image Storage; the data set is an MR image
    mr = make_instance(sop_class_uid=MR_IMAGE_STORAGE, modality="MR")
    mr.file_meta.MediaStorageSOPClassUID = UID(CT_IMAGE_STORAGE)
    path = tmp_path / "mismatch.dcm"
    path.write_bytes(raw_part10(mr.file_meta, dataset_bytes(part10(mr))))
    assert read_file_meta_info(path).MediaStorageSOPClassUID == CT_IMAGE_STORAGE

    ok = tmp_path / "ok.dcm"
    ok.write_bytes(part10(make_instance()))
    assert send(scp, [path, ok]) == [0xA900, 0x0000]
    r = client.get(instance_url(mr) + "/metadata")
    assert r.status_code == 404  # not stored


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_unreadable_data_sets_are_c000_and_the_server_goes_on(
    scp: Peer, client: TestClient, tmp_path: Path, send_from_files: None
) -> None:
    good = make_instance()
    body = dataset_bytes(part10(good))
    meta = good.file_meta
    cases = {
        # a value length running past the end of the data set
        "truncated": body[: len(body) - 100],
        # bytes that are no data set at all
        "garbage": bytes((i * 37 + 11) % 256 for i in range(4096)),
        # trailing bytes: the data set ends inside an element header
        "trailing bytes": body + body[:6],
    }
    paths = []
    for name, data in cases.items():
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(raw_part10(meta, data))
        paths.append(path)
    ok = tmp_path / "ok.dcm"
    ok.write_bytes(part10(make_instance()))
    statuses = send(scp, [*paths, ok])
    assert dict(zip([*cases, "ok"], statuses, strict=True)) == {
        **dict.fromkeys(cases, 0xC000),
        "ok": 0x0000,
    }
    assert client.get(instance_url(good) + "/metadata").status_code == 404
    assert echo_on_new_association(scp) == 0x0000


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (StorageFailure("index transaction failed"), 0xA700),
        (InvalidInput("cannot parse"), 0xC000),
        (Unsupported("not a storage SOP instance"), 0x0122),
        (AlreadyExists("different content"), 0x0111),
        (RuntimeError("a bug in the store"), 0xC000),
    ],
    ids=["StorageFailure", "InvalidInput", "Unsupported", "AlreadyExists", "bug"],
)
def test_store_errors_map_to_one_status_table(
    scp: Peer,
    container: Container,
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    expected: int,
) -> None:
    """The store raising (once) gives the table's status; the association, the next C-STORE
    and a new association still work."""
    real = StoreService.store
    calls = 0

    def failing_once(self: StoreService, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            for obj in kwargs.get("objects", args[0] if args else []):
                obj.discard()
            raise error
        return real(self, *args, **kwargs)

    monkeypatch.setattr(StoreService, "store", failing_once)
    first, second = make_instance(), make_instance()
    assert send(scp, [first, second]) == [expected, 0x0000]
    assert client.get(instance_url(first) + "/metadata").status_code == 404
    assert client.get(instance_url(second) + "/metadata").status_code == 200
    assert send(scp, [make_instance()]) == [0x0000]
    assert echo_on_new_association(scp) == 0x0000


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_full_spool_disk_is_out_of_resources(
    scp: Peer, client: TestClient, container: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full while the received data set is copied into the spool: 0xA700 (out of
    resources, the peer may retry), not 0xC000 (cannot understand, the peer gives up)."""
    real_fdopen = os.fdopen
    calls = 0

    class FullDisk(io.BufferedWriter):
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fdopen_full_once(fd: int, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:  # the first spool file sits on a full disk
            return FullDisk(io.FileIO(fd, "wb"))
        return real_fdopen(fd, *args, **kwargs)

    monkeypatch.setattr(spool.os, "fdopen", fdopen_full_once)
    first, second = make_instance(), make_instance()
    assert send(scp, [first, second]) == [0xA700, 0x0000]
    assert container.store.counts()["instances"] == 1
    assert not list(container.store.spool_dir.glob("*.part"))  # nothing left behind
