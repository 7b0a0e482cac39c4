"""Response bodies of WADO-RS instance retrieval: multipart/related of stored (or transcoded)
instances, produced with few, large writes (PS3.18 §10.4, §8.7.3.4).

The body is an async generator, so the event loop sends each piece without a thread hand-off;
only the reads go to a worker thread, several instances per hop (up to ``BATCH_BYTES``). Each
instance becomes one piece: its part header, the file read in one ``readinto`` and the closing
CRLF in one buffer. An instance larger than ``READ_CAP`` streams in ``CHUNK`` pieces instead, so
memory stays bounded: at most one batch is held (plus the one being read ahead).
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from medflow.core.errors import MedflowError, StorageFailure
from medflow.dicom import pixels
from medflow.dicom.multipart import CRLF
from medflow.dicomweb.wado_common import DICOM, ELE, closing, dash_of, part_head
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService

log = logging.getLogger(__name__)

READ_CAP = 16 << 20
"""An instance up to this size is read whole into its part buffer; a larger one streams."""
BATCH_BYTES = 4 << 20
"""Instances read per worker-thread hop (by stored size)."""
CHUNK = 4 << 20
"""Read size when a large instance streams."""

Piece = bytes | memoryview


def part_type(ts: str) -> str:
    return f"{DICOM}; transfer-syntax={ts}"


def is_stored(record: InstanceRecord, mode: str) -> bool:
    """Whether the instance is served byte for byte (as stored, or already ELE)."""
    return mode == "stored" or record.transfer_syntax_uid == ELE


def transcode(store: StoreService, record: InstanceRecord) -> bytes:
    with store.open_instance(record) as fp:
        return pixels.transcode_to_explicit_le(fp)


# ------------------------------------------------------------------------------------------
# Reading stored files
# ------------------------------------------------------------------------------------------
def _open_local(path: Path) -> io.FileIO:
    try:
        return path.open("rb", buffering=0)
    except FileNotFoundError:
        raise StorageFailure("blob is missing", retryable=False) from None


def read_framed(
    store: StoreService, record: InstanceRecord, head: bytes, tail: bytes = CRLF
) -> Piece:
    """``head`` + the stored file + ``tail`` in one buffer; the file is read with one
    ``readinto`` when the store is local (the size comes from the index; a file that turns
    out shorter or longer is still returned as it is on disk)."""
    path = store.local_path(record)
    if path is None:
        return b"".join([head, *store.iter_bytes(record, CHUNK), tail])
    size = record.size
    buf = bytearray(len(head) + size + len(tail))
    buf[: len(head)] = head
    with _open_local(path) as fp:
        got = 0
        with memoryview(buf) as view:
            body = view[len(head) : len(head) + size]
            while got < size:
                n = fp.readinto(body[got:])
                if not n:
                    break
                got += n
            body.release()
        rest = b"".join(iter(lambda: fp.read(CHUNK), b""))
    if got == size and not rest:
        buf[len(head) + size :] = tail
        return memoryview(buf)
    return b"".join([bytes(buf[: len(head) + got]), rest, tail])


def iter_file(store: StoreService, record: InstanceRecord) -> Generator[bytes, None, None]:
    """The stored file in ``CHUNK`` pieces (for instances above ``READ_CAP``)."""
    path = store.local_path(record)
    if path is None:
        yield from store.iter_bytes(record, CHUNK)
        return
    with _open_local(path) as fp:
        while chunk := fp.read(CHUNK):
            yield chunk


# ------------------------------------------------------------------------------------------
# Multipart of instances
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Large:
    """A stored instance too large to be read into one buffer: streamed in chunks."""

    record: InstanceRecord
    head: bytes
    tail: bytes = CRLF


def _batches(plan: list[tuple[InstanceRecord, str]]) -> Iterator[list[tuple[InstanceRecord, str]]]:
    batch: list[tuple[InstanceRecord, str]] = []
    size = 0
    for record, mode in plan:
        batch.append((record, mode))
        size += record.size
        if size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _read_batch(
    store: StoreService, batch: list[tuple[InstanceRecord, str]], dash: bytes
) -> list[Piece | _Large]:
    """The parts of a batch of instances (runs in a worker thread). A transcoding failure
    omits the instance (the response headers are already sent): it is logged."""
    out: list[Piece | _Large] = []
    for record, mode in batch:
        if is_stored(record, mode):
            head = part_head(dash, part_type(record.transfer_syntax_uid))
            if record.size > READ_CAP:
                out.append(_Large(record, head))
            else:
                out.append(read_framed(store, record, head))
            continue
        try:
            data = transcode(store, record)
        except MedflowError as exc:
            log.warning("instance omitted from the retrieve response: %s", exc.message)
            continue
        out.append(b"".join([part_head(dash, part_type(ELE)), data, CRLF]))
    return out


async def _stream_large(store: StoreService, item: _Large) -> AsyncIterator[Piece]:
    chunks = iter_file(store, item.record)
    try:
        yield item.head
        while (chunk := await run_in_threadpool(next, chunks, None)) is not None:
            yield chunk
        yield item.tail
    finally:
        chunks.close()  # closes the file: quick, and safe in a cancelled task


async def instances_body(
    store: StoreService, plan: list[tuple[InstanceRecord, str]], boundary: str
) -> AsyncIterator[Piece]:
    """The multipart/related body of ``plan`` (instances with their serve mode). The next
    batch is read in a worker thread while the current one is being sent."""
    dash = dash_of(boundary)
    batches = _batches(plan)
    ahead: asyncio.Future[list[Piece | _Large]] | None = None
    first = next(batches, None)
    if first is not None:
        ahead = asyncio.ensure_future(run_in_threadpool(_read_batch, store, first, dash))
    try:
        while ahead is not None:
            pieces = await ahead
            following = next(batches, None)
            ahead = (
                None
                if following is None
                else asyncio.ensure_future(run_in_threadpool(_read_batch, store, following, dash))
            )
            for piece in pieces:
                if isinstance(piece, _Large):
                    async for chunk in _stream_large(store, piece):
                        yield chunk
                else:
                    yield piece
        yield closing(dash)
    finally:
        if ahead is not None and not ahead.done():
            ahead.cancel()


async def read_one(
    store: StoreService, record: InstanceRecord, head: bytes, tail: bytes
) -> Piece | None:
    """``head`` + one stored instance + ``tail`` in one buffer, or None when the instance is
    too large for one buffer (then it streams)."""
    if record.size > READ_CAP:
        return None
    return await run_in_threadpool(read_framed, store, record, head, tail)


def framed_stream(
    store: StoreService, record: InstanceRecord, head: bytes, tail: bytes
) -> AsyncIterator[Piece]:
    """``head`` + one large stored instance in chunks + ``tail``."""
    return _stream_large(store, _Large(record, head, tail))


__all__ = ["framed_stream", "instances_body", "part_type", "read_one", "transcode"]
