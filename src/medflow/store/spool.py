"""Spool files: incoming objects are written to disk (hashed on the way) before they are stored.

Nothing is held in memory: a 2 GB STOW-RS request or a large C-STORE is streamed here first.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from medflow.core.errors import StorageFailure

_COUNTER = itertools.count()
_PREFIX = secrets.token_hex(4)


@dataclass(frozen=True)
class SpooledObject:
    """A complete, fsync'd file waiting to be stored; ``sha256`` is of its bytes."""

    path: Path
    size: int
    sha256: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


def _disk_failure(exc: OSError) -> StorageFailure:
    """A spool write that failed (disk full, I/O error) is out of resources (0xA700): the
    sender may retry, unlike "cannot understand"."""
    return StorageFailure(f"cannot write the spool file: {exc.strerror or type(exc).__name__}")


class SpoolWriter:
    """Write one object to a spool file, hashing as it goes. Disk errors raise
    ``StorageFailure``."""

    def __init__(self, spool_dir: Path) -> None:
        # A process-unique counter names the file (cheaper than mkstemp's random probing);
        # O_EXCL still guarantees the file is new.
        self.path = spool_dir / f"in-{os.getpid()}-{_PREFIX}-{next(_COUNTER)}.part"
        try:
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileNotFoundError:
                spool_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise _disk_failure(exc) from exc
        self._file = os.fdopen(fd, "wb", buffering=1 << 20)
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise _disk_failure(exc) from exc
        self._hash.update(data)
        self.size += len(data)

    def finish(self, *, fsync: bool = True) -> SpooledObject:
        try:
            self._file.flush()
            if fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            self.abort()
            raise _disk_failure(exc) from exc
        self._file.close()
        return SpooledObject(self.path, self.size, self._hash.hexdigest())

    def abort(self) -> None:
        if not self._file.closed:
            with contextlib.suppress(OSError):  # closing flushes: the disk may still be full
                self._file.close()
        self.path.unlink(missing_ok=True)


def finish_all(writers: list[SpoolWriter], *, threads: int = 8) -> list[SpooledObject]:
    """Finish many spool files, fsync'ing them concurrently: a disk absorbs parallel flushes
    far better than a sequence of them (one STOW-RS request carries dozens of instances)."""
    if len(writers) <= 1:
        return [w.finish() for w in writers]
    with ThreadPoolExecutor(max_workers=min(threads, len(writers))) as pool:
        return list(pool.map(lambda w: w.finish(), writers))


def spool_stream(src: BinaryIO, spool_dir: Path) -> SpooledObject:
    """Copy a readable stream (a file, a zip member) into the spool, hashed and fsync'd."""
    writer = SpoolWriter(spool_dir)
    try:
        while chunk := src.read(1 << 20):
            writer.write(chunk)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise
