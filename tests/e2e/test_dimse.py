"""The DIMSE SCP against pynetdicom as SCU, on a free port: C-ECHO, C-STORE into the archive
(visible over DICOMweb and in the change feed at once), C-FIND at every level with the QIDO-RS
matching rules, failure statuses, concurrent associations (PS3.4 B, C.4.1; PS3.7 9.1)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from medflow.bootstrap import Container
from medflow.core.settings import DimseSettings
from medflow.dimse.server import DimseServer
from tests.factories import make_instance

pytestmark = pytest.mark.e2e


@pytest.fixture
def scp(container: Container) -> Iterator[tuple[str, int]]:
    server = DimseServer(container.store, DimseSettings(port=0, ae_title="MEDFLOW"), "127.0.0.1")
    port = server.start()
    try:
        yield "127.0.0.1", port
    finally:
        server.stop()


def scu(datasets: list[Dataset] = ()) -> AE:  # type: ignore[assignment]
    """An SCU proposing the datasets' own SOP classes and transfer syntaxes (else the common
    storage contexts), Verification and the two C-FIND models."""
    ae = AE(ae_title="TESTSCU")
    pairs = {(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}
    for sop_class, syntax in sorted(pairs):
        ae.add_requested_context(sop_class, syntax)
    if not pairs:
        ae.requested_contexts = StoragePresentationContexts[:120]
    ae.add_requested_context(Verification)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
    return ae


def send(peer: tuple[str, int], datasets: list[Dataset]) -> list[int]:
    assoc = scu(datasets).associate(*peer, ae_title="MEDFLOW")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def find(peer: tuple[str, int], identifier: Dataset, model: object = None) -> list[Dataset]:
    assoc = scu().associate(*peer, ae_title="MEDFLOW")
    assert assoc.is_established
    try:
        out = []
        for status, answer in assoc.send_c_find(
            identifier, model or StudyRootQueryRetrieveInformationModelFind
        ):
            assert status.Status in (0xFF00, 0xFF01, 0x0000), hex(status.Status)
            if status.Status in (0xFF00, 0xFF01):
                out.append(answer)
        return out
    finally:
        assoc.release()


def test_echo(scp: tuple[str, int]) -> None:
    assoc = scu().associate(*scp, ae_title="MEDFLOW")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


def test_store_is_visible_over_dicomweb_and_the_change_feed(
    scp: tuple[str, int], client: TestClient
) -> None:
    ds = make_instance(patient_id="DIMSE-1")
    assert send(scp, [ds]) == [0x0000]
    studies = client.get("/dicomweb/studies", params={"PatientID": "DIMSE-1"}).json()
    assert [s["0020000D"]["Value"][0] for s in studies] == [ds.StudyInstanceUID]
    feed = client.get("/dicomweb/changefeed").json()
    assert feed[-1]["SOPInstanceUID"] == ds.SOPInstanceUID and feed[-1]["Action"] == "create"
    assert send(scp, [ds]) == [0x0000]  # the same instance again: idempotent
    assert len(client.get("/dicomweb/changefeed").json()) == len(feed)


def test_store_pydicom_files_in_their_transfer_syntaxes(
    scp: tuple[str, int], client: TestClient
) -> None:
    names = [
        "CT_small.dcm",
        "MR_small.dcm",
        "JPEG2000.dcm",
        "SC_rgb_rle.dcm",
        "image_dfl.dcm",
        "JPEG-LL.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
        "MR_small_implicit.dcm",
    ]
    data_dir = Path(pydicom.data.__file__).parent / "test_files"
    datasets = [pydicom.dcmread(data_dir / n) for n in names if (data_dir / n).exists()]
    datasets = [ds for ds in datasets if "StudyInstanceUID" in ds]
    statuses = send(scp, datasets)
    # MR_small_implicit.dcm is MR_small.dcm's instance in another encoding: different bytes
    # under a stored SOP Instance UID, so 0x0111 (as STOW-RS), everything else stored.
    seen: set[str] = set()
    expected = []
    for ds in datasets:
        expected.append(0x0111 if ds.SOPInstanceUID in seen else 0x0000)
        seen.add(ds.SOPInstanceUID)
    assert statuses == expected
    for ds in datasets:
        r = client.get(
            f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/metadata"
        )
        assert r.status_code == 200


def test_store_failures_have_dimse_statuses(scp: tuple[str, int]) -> None:
    no_study = make_instance()
    del no_study.StudyInstanceUID
    original = make_instance()
    changed = make_instance(sop_uid=original.SOPInstanceUID, seed=99)
    statuses = send(scp, [no_study, original, changed])
    assert statuses == [0xA900, 0x0000, 0x0111]
    assert send(scp, [make_instance()]) == [0x0000]  # the server goes on


def test_find_at_every_level_with_qido_matching(scp: tuple[str, int]) -> None:
    study, series = generate_uid(), generate_uid()
    datasets = [
        make_instance(
            study_uid=study,
            series_uid=series,
            patient_id="FIND-1",
            patient_name="Müller^Hans",
            study_date="20240301",
            seed=i,
        )
        for i in range(3)
    ]
    datasets.append(
        make_instance(
            patient_id="FIND-2", patient_name="Doe^Jane", study_date="20230101", modality="MR"
        )
    )
    assert send(scp, datasets) == [0] * 4

    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.PatientName = "MULLER*"
    q.StudyDate = "20240101-20241231"
    q.StudyInstanceUID = ""
    q.NumberOfStudyRelatedInstances = ""
    q.ModalitiesInStudy = ""
    answers = find(scp, q)
    assert [a.StudyInstanceUID for a in answers] == [study]
    assert answers[0].NumberOfStudyRelatedInstances == 3
    assert list(answers[0].ModalitiesInStudy) == ["CT"] or answers[0].ModalitiesInStudy == "CT"
    assert answers[0].PatientName == "Müller^Hans"

    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = study
    q.SeriesInstanceUID = ""
    q.Modality = ""
    assert [a.SeriesInstanceUID for a in find(scp, q)] == [series]

    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = study
    q.SeriesInstanceUID = series
    q.SOPInstanceUID = ""
    assert sorted(a.SOPInstanceUID for a in find(scp, q)) == sorted(
        d.SOPInstanceUID for d in datasets[:3]
    )

    q = Dataset()
    q.QueryRetrieveLevel = "PATIENT"
    q.PatientID = "FIND-*"
    q.PatientName = ""
    answers = find(scp, q, PatientRootQueryRetrieveInformationModelFind)
    assert sorted(a.PatientID for a in answers) == ["FIND-1", "FIND-2"]


def test_find_with_a_malformed_key_is_refused(scp: tuple[str, int]) -> None:
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyDate = "2024-13-45"
    assoc = scu().associate(*scp, ae_title="MEDFLOW")
    statuses = [
        int(s.Status) for s, _ in assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind)
    ]
    assoc.release()
    assert statuses == [0xA900]


def test_concurrent_associations_into_one_study(scp: tuple[str, int], client: TestClient) -> None:
    study = generate_uid()
    batches = [
        [make_instance(study_uid=study, seed=t * 10 + i) for i in range(5)] for t in range(8)
    ]
    results: list[list[int]] = []

    def run(batch: list[Dataset]) -> None:
        results.append(send(scp, batch))

    threads = [threading.Thread(target=run, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(s for r in results for s in r) == [0] * 40
    r = client.get(f"/dicomweb/studies/{study}/instances", params={"limit": "1000"})
    assert len(r.json()) == 40
