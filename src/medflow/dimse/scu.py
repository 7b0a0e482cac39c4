"""Storage service class user: stored instances to a remote AE by C-STORE (PS3.4 B; PS3.7
9.1.1), for ``medflow send`` and for the C-MOVE and C-GET sub-operations (PS3.4 C.4.2, C.4.3).

Instances go out as stored whenever the peer accepts their transfer syntax. Each SOP class is
proposed in a context per stored syntax (PS3.8 9.3.2.2) and in one more with Explicit and
Implicit VR Little Endian. When the peer accepts only the second (dcmtk's ``storescp`` by
default), compressed pixel data are decoded first (pydicom's codecs), keeping the SOP Instance
UID as archives do when they transcode for a peer. ``medflow send`` streams each file from disk
(pynetdicom's chunked send); sub-operations of C-MOVE/C-GET hand pynetdicom a data set read
without decoding its values, so it is written back byte for byte.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from medflow.core.errors import MedflowError, StorageFailure, Unsupported
from medflow.core.settings import DimseSettings
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService

log = logging.getLogger(__name__)

# A file path given to send_c_store is streamed from disk as encoded (no decode, no copy).
_config.STORE_SEND_CHUNKED_DATASET = True

NATIVE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
UNCOMPRESSED = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian}
)
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: odd context IDs 1..255


def set_nodelay(event: Any) -> None:
    """EVT_CONN_OPEN/EVT_ESTABLISHED handler: TCP_NODELAY on the association's socket, so a
    small PDU (a C-STORE response) is not held back by Nagle's algorithm."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def proposal(records: Iterable[InstanceRecord]) -> list[PresentationContext]:
    """Presentation contexts for the records: per SOP class, one per stored syntax (an
    acceptor picks one syntax per context, often by its own preference: a context of one
    syntax is the way to have it accepted), then one with both native syntaxes (at most 128
    in all: the native contexts first, as they can carry any instance of the class)."""
    syntaxes: dict[str, set[str]] = {}
    for record in records:
        syntaxes.setdefault(record.sop_class_uid, set()).add(record.transfer_syntax_uid)
    native = [build_context(sop_class, list(NATIVE)) for sop_class in sorted(syntaxes)]
    stored = [
        build_context(sop_class, [syntax])
        for sop_class, found in sorted(syntaxes.items())
        for syntax in sorted(found)
    ]
    if len(native) > MAX_CONTEXTS:
        log.warning("%d SOP classes: only %d can be proposed", len(native), MAX_CONTEXTS)
    return (native + stored)[:MAX_CONTEXTS]


def batches(records: Sequence[InstanceRecord]) -> Iterator[list[InstanceRecord]]:
    """Records split so that each batch's proposal fits in one association."""
    batch: list[InstanceRecord] = []
    keys: set[tuple[str, str]] = set()
    for record in records:
        key = (record.sop_class_uid, record.transfer_syntax_uid)
        grown = keys | {key}
        if batch and _context_count(grown) > MAX_CONTEXTS:
            yield batch
            batch, keys = [], set()
            grown = {key}
        batch.append(record)
        keys = grown
    if batch:
        yield batch


def _context_count(keys: set[tuple[str, str]]) -> int:
    return len(keys) + len({k[0] for k in keys})


def accepted_syntaxes(assoc: Association, *, as_scp: bool = False) -> dict[str, set[str]]:
    """SOP class → transfer syntaxes the peer accepted for us to send with C-STORE
    (``as_scp``: the C-GET case, where we are the SCP of the association but the SCU of the
    storage contexts after role selection, PS3.7 D.3.3.4)."""
    out: dict[str, set[str]] = {}
    for cx in assoc.accepted_contexts:
        if as_scp and not cx.as_scu:
            continue
        if cx.abstract_syntax and cx.transfer_syntax:
            out.setdefault(str(cx.abstract_syntax), set()).add(str(cx.transfer_syntax[0]))
    return out


def failed_placeholder(record: InstanceRecord) -> Dataset:
    """A data set pynetdicom cannot send (no SOP Class UID): it counts a failed
    sub-operation and lists the SOP Instance UID in Failed SOP Instance UID List."""
    ds = Dataset()
    ds.SOPInstanceUID = record.sop_instance_uid
    return ds


def load_for_peer(
    store: StoreService, record: InstanceRecord, accepted: dict[str, set[str]]
) -> Dataset:
    """The stored instance as a data set the peer accepted: as stored when its syntax was
    accepted (values left encoded), else converted to a native syntax (decompressed)."""
    offered = accepted.get(record.sop_class_uid, set())
    if not offered:
        raise Unsupported("the peer accepted no presentation context for the SOP class")
    with store.open_instance(record) as fp:
        ds = dcmread(io.BytesIO(fp.read()))
    stored = UID(record.transfer_syntax_uid)
    if stored in offered:
        return ds
    if not offered & {ExplicitVRLittleEndian, ImplicitVRLittleEndian}:
        raise Unsupported(f"the peer accepted neither {stored.name} nor a native syntax")
    if stored == ExplicitVRBigEndian:
        raise Unsupported("retired big endian instances are only sent as stored")
    if stored.is_compressed:
        try:
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # no decoder for this syntax: this sub-operation fails
            raise Unsupported(f"cannot decompress {stored.name}: {exc}") from exc
    else:  # deflated: pynetdicom re-encodes the inflated data set in the accepted syntax
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@dataclass
class SendReport:
    """Outcome of C-STORE sub-operations (PS3.4 C.4.2.1.4 counts)."""

    completed: int = 0
    warning: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    """(SOP Instance UID, reason) per failed instance."""

    @property
    def ok(self) -> bool:
        return not self.failed


class AssociationFailed(MedflowError):
    """The remote AE could not be reached or rejected the association."""

    dicom_reason = 0xA801


class StoreScu:
    """Sends stored instances to a remote storage SCP."""

    def __init__(self, store: StoreService, settings: DimseSettings) -> None:
        self.store = store
        self.settings = settings

    def _ae(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.acse_timeout = self.settings.acse_timeout
        ae.dimse_timeout = self.settings.dimse_timeout
        ae.network_timeout = self.settings.network_timeout
        return ae

    def send(
        self,
        records: Sequence[InstanceRecord],
        host: str,
        port: int,
        called_ae_title: str,
        *,
        on_sent: Callable[[InstanceRecord, int | None], None] | None = None,
    ) -> SendReport:
        """C-STORE every record (several associations when more than 128 presentation
        contexts are needed). Raises ``AssociationFailed`` when no association is made."""
        report = SendReport()
        for batch in batches(records):
            assoc = self._ae().associate(
                host,
                port,
                contexts=proposal(batch),
                ae_title=called_ae_title,
                max_pdu=0,
                evt_handlers=[(evt.EVT_CONN_OPEN, set_nodelay)],
            )
            if not assoc.is_established:
                raise AssociationFailed(
                    f"no association with {called_ae_title}@{host}:{port} "
                    f"({'rejected' if assoc.is_rejected else 'unreachable or aborted'})"
                )
            try:
                accepted = accepted_syntaxes(assoc)
                for record in batch:
                    status, reason = self._send_one(assoc, record, accepted)
                    if status is not None and status == 0x0000:
                        report.completed += 1
                    elif status is not None and (status & 0xF000) == 0xB000:
                        report.warning += 1
                    else:
                        report.failed.append((record.sop_instance_uid, reason))
                    if on_sent is not None:
                        on_sent(record, status)
                    if not assoc.is_established:
                        break
            finally:
                if assoc.is_established:
                    assoc.release()
        return report

    def _send_one(
        self, assoc: Association, record: InstanceRecord, accepted: dict[str, set[str]]
    ) -> tuple[int | None, str]:
        try:
            if record.transfer_syntax_uid in accepted.get(record.sop_class_uid, set()):
                with self._local_file(record) as path:
                    rsp = assoc.send_c_store(path)
            else:
                rsp = assoc.send_c_store(load_for_peer(self.store, record, accepted))
        except MedflowError as exc:
            return None, exc.message
        except Exception as exc:  # one bad instance does not stop the others
            log.warning("C-STORE of an instance failed", exc_info=True)
            return None, f"{type(exc).__name__}: {exc}"
        status = rsp.get("Status")
        if status is None:
            return None, "no response (timeout or abort)"
        return int(status), "" if int(status) == 0 else f"status 0x{int(status):04X}"

    @contextlib.contextmanager
    def _local_file(self, record: InstanceRecord) -> Iterator[Path]:
        """The stored file on local disk (S3 blobs are downloaded to the spool first)."""
        path = self.store.local_path(record)
        if path is not None:
            if not path.exists():
                raise StorageFailure("blob is missing", retryable=False)
            yield path
            return
        with tempfile.NamedTemporaryFile(dir=self.store.spool_dir, suffix=".dcm") as tmp:
            with self.store.open_instance(record) as src:
                while chunk := src.read(1 << 20):
                    tmp.write(chunk)
            tmp.flush()
            yield Path(tmp.name)
