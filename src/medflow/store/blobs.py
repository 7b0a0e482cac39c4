"""Blob stores for instance files: filesystem (default) and S3-compatible object storage.

Durability rule (DESIGN.md, Storage): a blob is complete and durable before its index row is
committed. The filesystem store moves an fsync'd spool file into place with an atomic rename and
fsyncs the directory; the S3 store uploads the spool file (a PUT is atomic).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from medflow.core.errors import InvalidInput, NotFound, StorageFailure
from medflow.core.settings import BlobSettings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


class BlobStore(Protocol):
    is_local: bool
    """Whether blobs are local files (``local_path`` gives a path)."""

    def put_file(self, key: str, src: Path) -> None:
        """Make ``src`` (a complete, fsync'd spool file, consumed) durable under ``key``."""

    def put_files(self, items: list[tuple[str, Path]]) -> None:
        """``put_file`` for many blobs at once (one directory fsync per folder)."""

    def open(self, key: str) -> BinaryIO:
        """A readable binary stream (seekable for the filesystem store)."""

    def local_path(self, key: str) -> Path | None:
        """The file's path when the store is a local filesystem, else None."""

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end of the blob), without reading the
        rest: a whole slide image's tile out of a large object."""

    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is already gone."""

    def exists(self, key: str) -> bool: ...

    def iter_keys(self) -> Iterator[str]:
        """Every stored key (for ``medflow verify``)."""


def _check_key(key: str) -> None:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidInput("invalid blob key")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSystemBlobStore:
    is_local = True

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        _check_key(key)
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise InvalidInput("invalid blob key")
        return path

    def put_file(self, key: str, src: Path) -> None:
        self.put_files([(key, src)])

    def put_files(self, items: list[tuple[str, Path]]) -> None:
        """Rename each fsync'd spool file into place, then fsync every touched directory once
        (and the parents of new ones), so that the names are durable before the index commit."""
        dirty: set[Path] = set()
        try:
            for key, src in items:
                dest = self._path(key)
                if not dest.parent.is_dir():
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    parent = dest.parent
                    while parent != self.root:
                        dirty.add(parent.parent)
                        parent = parent.parent
                try:
                    src.replace(dest)
                except OSError as exc:
                    if exc.errno != 18:  # EXDEV: spool on another filesystem
                        raise
                    shutil.move(src, dest)
                dirty.add(dest.parent)
            for folder in sorted(dirty, key=lambda p: -len(p.parts)):
                fsync_dir(folder)
        except OSError as exc:
            raise StorageFailure(f"cannot write blob: {exc.strerror}") from exc

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise NotFound("blob is missing") from None

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        with self.open(key) as fp:
            fp.seek(offset)
            return fp.read(length)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Remove now-empty parent folders up to the root.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def iter_keys(self) -> Iterator[str]:
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                yield (Path(dirpath) / name).relative_to(self.root).as_posix()


class S3BlobStore:
    """Blobs as objects in one bucket under an optional prefix (boto3, any S3-compatible API)."""

    is_local = False

    def __init__(self, client: S3Client, bucket: str, prefix: str = "") -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @classmethod
    def from_settings(cls, settings: BlobSettings) -> S3BlobStore:
        import boto3  # only needed when S3 is configured

        client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region or "us-east-1",
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=settings.s3_secret_access_key,
        )
        return cls(client, settings.s3_bucket, settings.s3_prefix)

    def _key(self, key: str) -> str:
        _check_key(key)
        return self.prefix + key

    def ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_file(self, key: str, src: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(str(src), self.bucket, self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise StorageFailure(f"cannot upload blob: {type(exc).__name__}") from exc
        src.unlink(missing_ok=True)

    def put_files(self, items: list[tuple[str, Path]]) -> None:
        for key, src in items:
            self.put_file(key, src)

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            raise NotFound("blob is missing") from exc
        return obj["Body"]  # type: ignore[return-value]

    def local_path(self, key: str) -> Path | None:
        return None

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        from botocore.exceptions import ClientError

        if length <= 0:
            return b""
        try:
            obj = self.client.get_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Range=f"bytes={offset}-{offset + length - 1}",
            )
        except ClientError as exc:
            raise NotFound("blob is missing") from exc
        data: bytes = obj["Body"].read()
        return data

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError:
            return False
        return True

    def iter_keys(self) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"][len(self.prefix) :]


def blob_store_from_settings(settings: BlobSettings, default_root: Path) -> BlobStore:
    if settings.backend == "s3":
        store = S3BlobStore.from_settings(settings)
        store.ensure_bucket()
        return store
    return FileSystemBlobStore(settings.path or default_root)
