"""Shared fixtures: a real index (SQLite file, and PostgreSQL when MEDFLOW_TEST_POSTGRES_URL is
set), a real blob store (filesystem, and S3 through moto's server on loopback), the medflow app
in process (TestClient) and as a real server on a free port (``live_server``)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from medflow.bootstrap import Container, build, create_app
from medflow.core.settings import BlobSettings, Settings

# One compute thread per test process (and the servers it starts): `make test` runs two xdist
# workers on two cores, and two torch/OpenMP pools of two busy-waiting threads each starve
# each other and every other test. Set before torch is first imported
# (medflow.bootstrap does not import it).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

PG_URL = os.environ.get("MEDFLOW_TEST_POSTGRES_URL")
REQUIRE_PEERS = os.environ.get("MEDFLOW_REQUIRE_PEERS") == "1"


def need_peer(available: bool, reason: str) -> None:
    """Skip when a peer is absent, or fail when MEDFLOW_REQUIRE_PEERS=1 (as in CI)."""
    if available:
        return
    if REQUIRE_PEERS:
        pytest.fail(f"required peer missing: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def database_url(kind: str, tmp: Path) -> Iterator[str]:
    """One database URL of ``kind``: a SQLite file in ``tmp``, or a fresh PostgreSQL database
    (created on ``MEDFLOW_TEST_POSTGRES_URL``'s server, dropped afterwards) — a generator, so a
    fixture yields from it and cleans up after its test or module."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'index.sqlite3'}"
        return
    need_peer(bool(PG_URL), "MEDFLOW_TEST_POSTGRES_URL is not set")
    assert PG_URL
    name = f"medflow_test_{uuid.uuid4().hex[:12]}"
    admin_url = PG_URL.replace("postgresql://", "postgresql+psycopg://", 1)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    base, _, _ = PG_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextlib.contextmanager
def loaded_hospital(folder: Path, kind: str, tmp: Path) -> Iterator[tuple[Container, TestClient]]:
    """A container on a ``kind`` database with the synthetic hospital written in ``folder``
    loaded through its public APIs (FHIR Bundles, then STOW-RS), and a client of its app."""
    from medflow.synthetic.loader import load

    for url in database_url(kind, tmp):
        container = build(Settings(data_dir=tmp / "data", database_url=url))
        try:
            with TestClient(create_app(container)) as client:
                load(folder, url="http://testserver", client=client)
                yield container, client
        finally:
            container.close()


def load_data_dir(folder: Path, data_dir: Path) -> Path:
    """``data_dir`` (the embedded default, as the CLI opens it with ``--data-dir``) with the
    synthetic hospital written in ``folder`` loaded through the public APIs."""
    from medflow.synthetic.loader import load

    container = build(Settings(data_dir=data_dir))
    try:
        with TestClient(create_app(container)) as client:
            load(folder, url="http://testserver", client=client)
    finally:
        container.close()
    return data_dir


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    yield from database_url(request.param, tmp_path)


@pytest.fixture
def blob_settings() -> BlobSettings:
    """Filesystem blobs; tests that want S3 too override this with ``s3_blob_settings``."""
    return BlobSettings()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:  # pragma: no cover - dev extra missing
        need_peer(False, "moto[server] is not installed")
        raise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_blob_settings(moto_endpoint: str) -> BlobSettings:
    return BlobSettings(
        backend="s3",
        s3_bucket=f"medflow-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=moto_endpoint,
        s3_region="us-east-1",
        s3_access_key_id="testing",
        s3_secret_access_key="testing",
    )


@pytest.fixture
def settings(tmp_path: Path, db_url: str, blob_settings: BlobSettings) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=db_url, blobs=blob_settings)


@pytest.fixture
def container(settings: Settings) -> Iterator[Container]:
    c = build(settings)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def store(container: Container):  # type: ignore[no-untyped-def]
    return container.store


@pytest.fixture
def client(container: Container) -> Iterator[TestClient]:
    with TestClient(create_app(container)) as c:
        yield c


@pytest.fixture
def live_server(container: Container) -> Iterator[str]:
    """A real uvicorn server on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        create_app(container), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
