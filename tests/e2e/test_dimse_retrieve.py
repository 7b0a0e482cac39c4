"""C-MOVE and C-GET from the archive (PS3.4 C.4.2, C.4.3) with pynetdicom as the requester and
as the move destination: destinations from the remote AE table (seen without restart), unknown
destination 0xA801, sub-operation counts and Failed SOP Instance UID List, instances sent as
stored (data set bytes equal) or decompressed for a peer that accepts only native syntaxes."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, StoragePresentationContexts, build_role, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    SecondaryCaptureImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from medflow.bootstrap import Container
from medflow.core.settings import DimseSettings
from medflow.dimse.server import DimseServer
from medflow.store.service import StoreService
from medflow.store.spool import spool_stream
from tests.factories import make_instance, store_datasets

pytestmark = pytest.mark.e2e
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def parse(data: bytes, syntax: str) -> Dataset:
    """A data set from its encoded bytes in a native transfer syntax."""
    implicit = syntax == ImplicitVRLittleEndian
    return read_dataset(io.BytesIO(data), implicit, True)


def dataset_bytes(path: Path) -> bytes:
    """The encoded data set of a Part 10 file (what follows the file meta information)."""
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


@dataclass
class Received:
    """What a storage SCP received: SOP Instance UID → (transfer syntax, data set bytes)."""

    items: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, event: Any) -> int:
        if event.dataset_path is not None:  # chunked receive (medflow sets it process-wide)
            path = Path(event.dataset_path)
            data = dataset_bytes(path)
            ds = pydicom.dcmread(path)
        else:
            data = event.request.DataSet.getvalue()
            ds = event.dataset
        uid = str(ds.SOPInstanceUID)
        with self.lock:
            self.items[uid] = (str(event.context.transfer_syntax), data)
        return self.statuses.get(uid, 0x0000)


@pytest.fixture
def destination() -> Iterator[tuple[int, Received, list[str]]]:
    """A storage SCP on a free port; the list holds the transfer syntaxes it accepts
    (set before an association; default: every syntax pynetdicom knows)."""
    received = Received()
    syntaxes: list[str] = []
    ae = AE(ae_title="DEST")
    server = None

    def start(accept: list[str]) -> Any:
        ae.supported_contexts = []
        for cx in StoragePresentationContexts:
            if accept:
                ae.add_supported_context(cx.abstract_syntax, accept)
            else:
                ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
        return ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, received.handle)]
        )

    server = start([])
    port = int(server.server_address[1])
    try:
        yield port, received, syntaxes
    finally:
        server.shutdown()


def restricted_destination(accept: list[str], received: Received) -> Any:
    ae = AE(ae_title="NATIVE")
    for cx in StoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, accept)
    return ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, received.handle)]
    )


@pytest.fixture
def scp(container: Container) -> Iterator[int]:
    server = DimseServer(container.store, DimseSettings(port=0, ae_title="MEDFLOW"), "127.0.0.1")
    port = server.start()
    try:
        yield port
    finally:
        server.stop()


def move(
    port: int,
    identifier: Dataset,
    dest: str,
    model: Any = StudyRootQueryRetrieveInformationModelMove,
) -> list[Dataset]:
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDFLOW")
    assert assoc.is_established
    try:
        return [status for status, _ in assoc.send_c_move(identifier, dest, model)]
    finally:
        assoc.release()


def ident(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def stored_bytes(store: StoreService, sop_uid: str) -> bytes:
    (record,) = store.select_instances(sop_uids=[sop_uid])
    path = store.local_path(record)
    assert path is not None
    return dataset_bytes(path)


def two_studies(store: StoreService) -> tuple[list[Dataset], list[Dataset]]:
    a_study, b_study = generate_uid(), generate_uid()
    a_series = [generate_uid(), generate_uid()]
    a = [
        make_instance(study_uid=a_study, series_uid=a_series[i % 2], instance_number=i, seed=i)
        for i in range(6)
    ]
    b = [
        make_instance(study_uid=b_study, patient_id="PAT-002", instance_number=i, seed=10 + i)
        for i in range(3)
    ]
    assert all(o.ok for o in store_datasets(store, a + b))
    return a, b


def test_move_study_series_image_patient(
    container: Container, scp: int, destination: tuple[int, Received, list[str]]
) -> None:
    dest_port, received, _ = destination
    container.aes.put("DEST", "127.0.0.1", dest_port)  # after the server started
    a, b = two_studies(container.store)
    study_uid = str(a[0].StudyInstanceUID)

    statuses = move(scp, ident("STUDY", StudyInstanceUID=study_uid), "DEST")
    final = statuses[-1]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 6
    assert final.NumberOfFailedSuboperations == 0
    pending = [s for s in statuses if s.Status == 0xFF00]
    assert [s.NumberOfRemainingSuboperations for s in pending] == [5, 4, 3, 2, 1, 0]
    assert set(received.items) == {str(d.SOPInstanceUID) for d in a}
    for uid, (syntax, data) in received.items.items():  # sent as stored, byte for byte
        assert syntax == ExplicitVRLittleEndian
        assert data == stored_bytes(container.store, uid)

    received.items.clear()
    series_uid = str(a[1].SeriesInstanceUID)
    final = move(
        scp, ident("SERIES", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid), "DEST"
    )[-1]
    assert final.NumberOfCompletedSuboperations == 3
    assert {str(d.SOPInstanceUID) for d in a if d.SeriesInstanceUID == series_uid} == set(
        received.items
    )

    received.items.clear()
    two = [str(a[0].SOPInstanceUID), str(a[3].SOPInstanceUID)]
    image = ident("IMAGE", StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid)
    image.SOPInstanceUID = two  # a UID list (PS3.4 C.4.2.2.1)
    image.SeriesInstanceUID = [str(a[0].SeriesInstanceUID), series_uid]
    final = move(scp, image, "DEST")[-1]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 2
    assert set(received.items) == set(two)

    received.items.clear()
    final = move(
        scp,
        ident("PATIENT", PatientID="PAT-002"),
        "DEST",
        PatientRootQueryRetrieveInformationModelMove,
    )[-1]
    assert final.NumberOfCompletedSuboperations == 3
    assert set(received.items) == {str(d.SOPInstanceUID) for d in b}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_move_unknown_or_unreachable_destination(container: Container, scp: int) -> None:
    a, _ = two_studies(container.store)
    identifier = ident("STUDY", StudyInstanceUID=str(a[0].StudyInstanceUID))
    assert move(scp, identifier, "NOBODY")[-1].Status == 0xA801
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    container.aes.put("GONE", "127.0.0.1", dead)
    assert move(scp, identifier, "GONE")[-1].Status == 0xA801
    container.aes.remove("GONE")
    assert move(scp, identifier, "GONE")[-1].Status == 0xA801


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_move_nothing_and_bad_identifiers(
    container: Container, scp: int, destination: tuple[int, Received, list[str]]
) -> None:
    container.aes.put("DEST", "127.0.0.1", destination[0])
    final = move(scp, ident("STUDY", StudyInstanceUID=generate_uid()), "DEST")[-1]
    assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 0
    final = move(scp, ident("STUDY", PatientID="X"), "DEST")[-1]  # no unique key
    assert final.Status == 0xA900
    assert "StudyInstanceUID" in str(final.get("ErrorComment", ""))
    final = move(scp, ident("FRAME", StudyInstanceUID=generate_uid()), "DEST")[-1]
    assert final.Status == 0xA900


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_move_partial_failure_lists_failed_instances(
    container: Container, scp: int, destination: tuple[int, Received, list[str]]
) -> None:
    dest_port, received, _ = destination
    container.aes.put("DEST", "127.0.0.1", dest_port)
    a, _ = two_studies(container.store)
    refused = str(a[2].SOPInstanceUID)
    received.statuses[refused] = 0xA700  # the destination is out of resources for one
    final = move(scp, ident("STUDY", StudyInstanceUID=str(a[0].StudyInstanceUID)), "DEST")[-1]
    assert final.Status == 0xB000  # warning: some sub-operations failed
    assert final.NumberOfCompletedSuboperations == 5
    assert final.NumberOfFailedSuboperations == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_move_compressed_to_native_only_peer_is_decompressed(
    container: Container, scp: int
) -> None:
    path = Path(str(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm")))
    original = pydicom.dcmread(path)
    assert original.file_meta.TransferSyntaxUID == JPEG_BASELINE
    with path.open("rb") as fp:
        outcome = container.store.store(objects=[spool_stream(fp, container.store.spool_dir)])
    assert outcome[0].ok, outcome
    uid = str(original.SOPInstanceUID)
    identifier = ident("IMAGE", SOPInstanceUID=uid)
    identifier.StudyInstanceUID = str(original.StudyInstanceUID)
    identifier.SeriesInstanceUID = str(original.SeriesInstanceUID)

    received = Received()
    native = restricted_destination([ExplicitVRLittleEndian, ImplicitVRLittleEndian], received)
    jpeg_received = Received()
    jpeg = restricted_destination([JPEG_BASELINE, ExplicitVRLittleEndian], jpeg_received)
    try:
        container.aes.put("NATIVE", "127.0.0.1", int(native.server_address[1]))
        container.aes.put("JPEG", "127.0.0.1", int(jpeg.server_address[1]))
        assert move(scp, identifier, "NATIVE")[-1].Status == 0x0000
        assert move(scp, identifier, "JPEG")[-1].Status == 0x0000
    finally:
        native.shutdown()
        jpeg.shutdown()
    syntax, data = received.items[uid]
    assert syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    got = parse(data, syntax)  # decompressed, same instance
    assert str(got.SOPInstanceUID) == uid
    assert (got.Rows, got.Columns, got.SamplesPerPixel) == (original.Rows, original.Columns, 3)
    assert len(got.PixelData) == original.Rows * original.Columns * 3
    syntax_jpeg, data_jpeg = jpeg_received.items[uid]
    assert syntax_jpeg == JPEG_BASELINE
    assert data_jpeg == dataset_bytes(path)  # the peer takes JPEG: sent as stored


def get(
    port: int, identifier: Dataset, model: Any, accept: list[str] | None = None
) -> tuple[list[Dataset], Received]:
    """C-GET with pynetdicom, SCP role on the storage contexts (PS3.4 C.4.3)."""
    received = Received()
    ae = AE(ae_title="GETSCU")
    ae.add_requested_context(model)
    roles = []
    for sop_class in (CTImageStorage, SecondaryCaptureImageStorage):
        ae.add_requested_context(sop_class, accept or [ExplicitVRLittleEndian])
        roles.append(build_role(sop_class, scp_role=True))
    assoc = ae.associate(
        "127.0.0.1",
        port,
        ae_title="MEDFLOW",
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, received.handle)],
    )
    assert assoc.is_established
    try:
        return [status for status, _ in assoc.send_c_get(identifier, model)], received
    finally:
        assoc.release()


def test_get_study_and_patient(container: Container, scp: int) -> None:
    a, _ = two_studies(container.store)
    statuses, received = get(
        scp,
        ident("STUDY", StudyInstanceUID=str(a[0].StudyInstanceUID)),
        StudyRootQueryRetrieveInformationModelGet,
    )
    assert statuses[-1].Status == 0x0000
    assert statuses[-1].NumberOfCompletedSuboperations == 6
    assert set(received.items) == {str(d.SOPInstanceUID) for d in a}
    for uid, (_, data) in received.items.items():
        assert data == stored_bytes(container.store, uid)
    statuses, received = get(
        scp, ident("PATIENT", PatientID="PAT-002"), PatientRootQueryRetrieveInformationModelGet
    )
    assert statuses[-1].NumberOfCompletedSuboperations == 3
    assert len(received.items) == 3


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_get_sop_class_not_negotiated_fails_that_instance(container: Container, scp: int) -> None:
    a, _ = two_studies(container.store)
    sc = make_instance(
        study_uid=str(a[0].StudyInstanceUID),
        sop_class_uid="1.2.840.10008.5.1.4.1.1.7",
        modality="OT",
    )
    mr = make_instance(
        study_uid=str(a[0].StudyInstanceUID), sop_class_uid="1.2.840.10008.5.1.4.1.1.4"
    )
    assert all(o.ok for o in store_datasets(container.store, [sc, mr]))
    statuses, received = get(
        scp,
        ident("STUDY", StudyInstanceUID=str(a[0].StudyInstanceUID)),
        StudyRootQueryRetrieveInformationModelGet,
    )
    final = statuses[-1]
    assert final.Status == 0xB000  # MR was not negotiated in the SCP role: one failure
    assert final.NumberOfCompletedSuboperations == 7
    assert final.NumberOfFailedSuboperations == 1
    assert str(mr.SOPInstanceUID) not in received.items


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_move_with_a_missing_blob_fails_only_that_instance(
    container: Container, scp: int, destination: tuple[int, Received, list[str]]
) -> None:
    dest_port, received, _ = destination
    container.aes.put("DEST", "127.0.0.1", dest_port)
    a, _ = two_studies(container.store)
    lost = str(a[4].SOPInstanceUID)
    (record,) = container.store.select_instances(sop_uids=[lost])
    path = container.store.local_path(record)
    assert path is not None
    path.unlink()  # the blob vanished (disk fault): that sub-operation fails, not the server
    ae = AE(ae_title="MOVESCU")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", scp, ae_title="MEDFLOW")
    try:
        responses = list(
            assoc.send_c_move(
                ident("STUDY", StudyInstanceUID=str(a[0].StudyInstanceUID)),
                "DEST",
                StudyRootQueryRetrieveInformationModelMove,
            )
        )
    finally:
        assoc.release()
    final, identifier = responses[-1]
    assert final.Status == 0xB000
    assert final.NumberOfCompletedSuboperations == 5
    assert final.NumberOfFailedSuboperations == 1
    assert identifier is not None
    failed = identifier.FailedSOPInstanceUIDList
    assert (failed if isinstance(failed, str) else list(failed)) in (lost, [lost])
    assert lost not in received.items and len(received.items) == 5
