"""The DIMSE service class provider (pynetdicom), started by ``medflow serve``.

Verification, every storage SOP class pynetdicom knows (with the common transfer syntaxes:
implicit/explicit little endian, deflated, JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000,
RLE, HTJ2K), and Patient/Study Root C-FIND, C-MOVE and C-GET. Storage contexts accept SCP/SCU
role selection (PS3.7 D.3.3.4), so a C-GET requester can be the storage SCP on them. The
calling AE allow-list, the association limit and the ACSE/DIMSE/network timeouts come from
``DimseSettings``.
TCP_NODELAY is set on the listening socket (accepted connections inherit it on Linux) and on
each association, so a C-STORE response does not wait for Nagle's algorithm (PS3.8 9.1.1
leaves transport tuning to the implementation; without it a client gets ~20 instances/s).
"""

from __future__ import annotations

import copy
import logging
import socket
from typing import Any

from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from medflow.core.settings import DimseSettings
from medflow.dimse.handlers import Handlers
from medflow.dimse.scu import set_nodelay
from medflow.store.aes import AeDirectory
from medflow.store.service import StoreService

log = logging.getLogger(__name__)

# Received data sets go to a temporary file as encoded by the peer, never whole in memory.
_config.STORE_RECV_CHUNKED_DATASET = True
# Identifiers hold PHI (names, IDs): never in logs; formatting them also cost ~4 % of C-FIND CPU.
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False
# pynetdicom deep-copies the supported presentation contexts for every association; a UID is
# an immutable str, so it can be shared: 41 -> 3 ms per association with ~170 contexts.
copy._deepcopy_dispatch[UID] = copy._deepcopy_atomic  # type: ignore[attr-defined]


class DimseServer:
    """A running SCP; ``stop()`` shuts it down."""

    def __init__(
        self,
        store: StoreService,
        settings: DimseSettings,
        host: str,
        aes: AeDirectory | None = None,
    ) -> None:
        self.settings = settings
        self.host = host
        self.handlers = Handlers(store, settings.ae_title, aes or AeDirectory(store.engine))
        self.server: ThreadedAssociationServer | None = None

    def application_entity(self) -> AE:
        s = self.settings
        ae = AE(ae_title=s.ae_title)
        ae.maximum_associations = s.max_associations
        ae.maximum_pdu_size = 0  # unlimited: large P-DATA PDUs, fewer round trips
        ae.network_timeout = s.network_timeout
        ae.acse_timeout = s.acse_timeout
        ae.dimse_timeout = s.dimse_timeout
        if s.allowed_calling_aes:  # others get A-ASSOCIATE-RJ, calling AE not recognized
            ae.require_calling_aet = [t.strip() for t in s.allowed_calling_aes]
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                ae.add_supported_context(
                    context.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True
                )
        ae.add_supported_context(Verification)
        for model in (
            PatientRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelFind,
            PatientRootQueryRetrieveInformationModelMove,
            StudyRootQueryRetrieveInformationModelMove,
            PatientRootQueryRetrieveInformationModelGet,
            StudyRootQueryRetrieveInformationModelGet,
        ):
            ae.add_supported_context(model)
        return ae

    def start(self) -> int:
        """Listen (without blocking); returns the bound port (useful with port 0)."""
        ae = self.application_entity()
        handlers: list[Any] = [
            (evt.EVT_C_ECHO, self.handlers.echo),
            (evt.EVT_C_STORE, self.handlers.store_instance),
            (evt.EVT_C_FIND, self.handlers.find),
            (evt.EVT_C_MOVE, self.handlers.move),
            (evt.EVT_C_GET, self.handlers.get),
            (evt.EVT_ESTABLISHED, set_nodelay),
        ]
        server = ae.start_server(
            (self.host, self.settings.port), block=False, evt_handlers=handlers
        )
        assert server is not None
        listening = server.socket
        assert listening is not None
        listening.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server = server
        port = int(server.server_address[1])
        log.info("DIMSE SCP %s listening on %s:%d", self.settings.ae_title, self.host, port)
        return port

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


ALL_TRANSFER_SYNTAXES = [
    # In preference order: pynetdicom accepts, per context, the first of these the peer
    # proposed. Explicit VR Little Endian first (what most archives hold, and what C-GET
    # requesters receive as stored), then each compressed syntax (a peer proposing one
    # alone in a context sends it as encoded), then the other native ones.
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
]
