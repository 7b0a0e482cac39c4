"""Association policy of the SCP from ``DimseSettings``: the calling AE allow-list (others get
A-ASSOCIATE-RJ, calling AE title not recognised, PS3.8 9.3.4), the association limit (local
limit exceeded) and the network timeout (an idle association is aborted)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from medflow.bootstrap import Container
from medflow.core.settings import DimseSettings
from medflow.dimse.server import DimseServer

pytestmark = pytest.mark.e2e


def start(container: Container, **settings: object) -> Iterator[int]:
    server = DimseServer(
        container.store,
        DimseSettings(port=0, **settings),
        "127.0.0.1",  # type: ignore[arg-type]
    )
    port = server.start()
    try:
        yield port
    finally:
        server.stop()


def associate(port: int, title: str = "ANYSCU") -> object:
    ae = AE(ae_title=title)
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="MEDFLOW")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_calling_ae_allow_list(container: Container, caplog: pytest.LogCaptureFixture) -> None:
    for port in start(container, allowed_calling_aes=["MODALITY1", "PACS "]):
        bad = associate(port, "INTRUDER")
        assert bad.is_rejected  # type: ignore[attr-defined]
        assert "Calling AE title not recognised" in caplog.text
        for title in ("MODALITY1", "PACS"):
            good = associate(port, title)
            assert good.is_established  # type: ignore[attr-defined]
            assert good.send_c_echo().Status == 0x0000  # type: ignore[attr-defined]
            good.release()  # type: ignore[attr-defined]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_association_limit_and_idle_timeout(container: Container) -> None:
    for port in start(container, max_associations=1, network_timeout=1):
        first = associate(port)
        assert first.is_established  # type: ignore[attr-defined]
        second = associate(port)
        assert second.is_rejected  # type: ignore[attr-defined]  # local limit exceeded
        time.sleep(2.5)  # idle past the network timeout: the SCP aborts the association
        assert not first.is_established  # type: ignore[attr-defined]
        third = associate(port)
        assert third.is_established  # type: ignore[attr-defined]
        third.release()  # type: ignore[attr-defined]
