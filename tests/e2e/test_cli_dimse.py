"""``medflow aet`` and ``medflow send`` (a real process first, then in process), next to a
running ``medflow serve``:
an AE added or removed by the CLI is seen by the server's C-MOVE without restart; remote AEs
are seeded from ``MEDFLOW_DIMSE__REMOTE_AES``; ``send`` pushes studies by UID or by query."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove  # type: ignore[attr-defined]

from medflow.bootstrap import build
from medflow.core.settings import Settings
from tests.conftest import free_port
from tests.e2e.test_cli import MEDFLOW, env, medflow, medflow_here, serving
from tests.factories import make_instance, store_datasets

pytestmark = pytest.mark.e2e


class Sink:
    """A pynetdicom storage SCP that records the SOP Instance UIDs it receives."""

    def __init__(self, title: str = "DEST") -> None:
        self.uids: set[str] = set()
        self.lock = threading.Lock()
        ae = AE(ae_title=title)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, cx.transfer_syntax)
        self.server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self.handle)]
        )
        self.port = int(self.server.server_address[1])

    def handle(self, event: Any) -> int:
        with self.lock:
            self.uids.add(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    try:
        yield s
    finally:
        s.server.shutdown()


def seed(data_dir: Path, patient_id: str, n: int) -> tuple[str, set[str]]:
    container = build(Settings(data_dir=data_dir))
    try:
        study = generate_uid()
        made = [make_instance(study_uid=study, patient_id=patient_id, seed=i) for i in range(n)]
        assert all(o.ok for o in store_datasets(container.store, made))
        return study, {str(d.SOPInstanceUID) for d in made}
    finally:
        container.close()


def c_move(port: int, study: str, destination: str) -> Dataset:
    ae = AE(ae_title="REQUESTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", port, ae_title="MEDFLOW")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    try:
        statuses = [
            s
            for s, _ in assoc.send_c_move(
                identifier, destination, StudyRootQueryRetrieveInformationModelMove
            )
        ]
        return statuses[-1]
    finally:
        assoc.release()


def test_aet_changes_reach_a_running_server(tmp_path: Path, sink: Sink) -> None:
    data = tmp_path / "data"
    study, uids = seed(data, "CLI-1", 3)
    dimse = free_port()
    with serving(data, dimse_port=dimse):
        assert c_move(dimse, study, "DEST").Status == 0xA801  # not known yet
        added = medflow("aet", "add", "DEST", "127.0.0.1", str(sink.port), "--data-dir", data)
        assert added.returncode == 0, added.stdout + added.stderr
        listed = medflow_here("aet", "list", "--data-dir", data)
        assert "DEST" in listed.stdout and str(sink.port) in listed.stdout
        final = c_move(dimse, study, "DEST")
        assert final.Status == 0x0000 and final.NumberOfCompletedSuboperations == 3
        assert sink.uids == uids
        removed = medflow_here("aet", "remove", "DEST", "--data-dir", data)
        assert removed.returncode == 0
        assert c_move(dimse, study, "DEST").Status == 0xA801
        again = medflow_here("aet", "remove", "DEST", "--data-dir", data)
        assert again.returncode == 2 and "no remote AE" in again.stdout


def test_remote_aes_seeded_from_settings(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = subprocess.run(
        [str(MEDFLOW), "aet", "list", "--data-dir", str(data)],
        env={**env(), "MEDFLOW_DIMSE__REMOTE_AES": '{"PACS_A": "10.1.2.3:104"}'},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "PACS_A" in done.stdout and "10.1.2.3" in done.stdout and "104" in done.stdout
    bad = medflow_here("aet", "add", "MUCH_TOO_LONG_AE_TITLE", "h", "104", "--data-dir", data)
    assert bad.returncode == 2 and "invalid AE title" in bad.stdout


def test_send_by_uid_and_by_query(tmp_path: Path, sink: Sink) -> None:
    data = tmp_path / "data"
    study, uids = seed(data, "CLI-2", 4)
    _, other = seed(data, "CLI-3", 2)
    done = medflow("send", "--ae", f"127.0.0.1:{sink.port}:DEST", study, "--data-dir", data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 completed, 0 warning, 0 failed" in done.stdout
    assert sink.uids == uids

    sink.uids.clear()
    added = medflow_here("aet", "add", "DEST", "127.0.0.1", str(sink.port), "--data-dir", data)
    assert added.returncode == 0, added.stdout
    done = medflow_here("send", "--ae", "DEST", "--query", "PatientID=CLI-3", "--data-dir", data)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sink.uids == other

    with_free = free_port()  # nobody listens there
    done = medflow_here("send", "--ae", f"127.0.0.1:{with_free}:NOBODY", study, "--data-dir", data)
    assert done.returncode == 2 and "no association" in done.stdout
    done = medflow_here("send", "--ae", "UNKNOWN", study, "--data-dir", data)
    assert done.returncode == 2 and "unknown AE" in done.stdout
    done = medflow_here("send", "--ae", "DEST", generate_uid(), "--data-dir", data)
    assert done.returncode == 2 and "no study, series or instance" in done.stdout
