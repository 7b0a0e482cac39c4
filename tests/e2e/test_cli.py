"""The ``medflow`` console script run as a real process: ingest (folder, zip, bad files; local
and ``--url``), verify, serve."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.data import get_testdata_file

from medflow.bootstrap import build
from medflow.core.settings import Settings
from tests.conftest import free_port
from tests.factories import make_instance, to_bytes

pytestmark = pytest.mark.e2e

MEDFLOW = Path(sys.executable).parent / "medflow"


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MEDFLOW_")}
    return {**clean, "COLUMNS": "500", "NO_COLOR": "1", "TERM": "dumb"}


def medflow(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MEDFLOW), *map(str, args)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
        check=False,
    )


def medflow_here(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``medflow ARGS`` in this process (Typer's runner over the same app and environment as
    :func:`medflow`, without the seconds a new process spends importing): for tests that run
    many commands, after one real process has shown the path works."""
    from typer.testing import CliRunner

    from medflow.cli.main import app

    terminal = {k: v for k, v in env().items() if k in ("COLUMNS", "NO_COLOR", "TERM")}
    done = CliRunner().invoke(app, [str(a) for a in args], env=terminal)
    return subprocess.CompletedProcess(["medflow", *map(str, args)], done.exit_code,
                                       done.stdout, done.stderr)  # fmt: skip


@contextmanager
def serving(
    data_dir: Path, *, dimse_port: int = 0, extra_env: dict[str, str] | None = None
) -> Iterator[str]:
    """``medflow serve`` as a real process on a free port until the block ends; yields its
    base URL once ``/healthz`` answers (60 s at most)."""
    port = free_port()
    proc = subprocess.Popen(
        [str(MEDFLOW), "serve", "--data-dir", str(data_dir), "--port", str(port),
         "--dimse-port", str(dimse_port)],
        env={**env(), **(extra_env or {})}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(20)


def counts(data_dir: Path) -> dict[str, int]:
    container = build(Settings(data_dir=data_dir))
    try:
        return container.store.counts()
    finally:
        container.close()


@pytest.fixture
def inbox(tmp_path: Path) -> dict[str, Any]:
    """A folder with good files (also in a subfolder and a zip) and bad ones."""
    folder = tmp_path / "inbox"
    (folder / "sub").mkdir(parents=True)
    good = [make_instance() for _ in range(5)]
    (folder / "a.dcm").write_bytes(to_bytes(good[0]))
    (folder / "sub" / "b.dcm").write_bytes(to_bytes(good[1]))
    truncated = to_bytes(good[2])
    (folder / "truncated.dcm").write_bytes(truncated[: len(truncated) - 64])
    (folder / "notes.txt").write_text("not a DICOM file\n")
    (folder / "empty.dcm").write_bytes(b"")
    dicomdir = Path(get_testdata_file("DICOMDIR")).read_bytes()  # type: ignore[arg-type]
    (folder / "sub" / "DICOMDIR").write_bytes(dicomdir)
    with zipfile.ZipFile(folder / "batch.zip", "w") as z:
        z.writestr("x/c.dcm", to_bytes(good[3]))
        z.writestr("d.dcm", to_bytes(good[4]))
        z.writestr("x/garbage.bin", b"\x00garbage" * 40)
    bad = {
        str(folder / "truncated.dcm"): "0xC000",
        str(folder / "notes.txt"): "0xC000",
        str(folder / "empty.dcm"): "0xC000",
        str(folder / "sub" / "DICOMDIR"): "0x0122",
        f"{folder / 'batch.zip'}!x/garbage.bin": "0xC000",
    }
    return {"folder": folder, "good": good, "bad": bad}


def assert_listed(output: str, bad: dict[str, str]) -> None:
    rows = [line for line in output.splitlines() if "0x" in line]
    for label, code in bad.items():
        matching = [r for r in rows if label in r.split()]
        assert len(matching) == 1, (label, output)
        assert code in matching[0], (label, matching[0])


def test_ingest_local_then_verify(tmp_path: Path, inbox: dict[str, Any]) -> None:
    data_dir = tmp_path / "data"
    result = medflow("ingest", inbox["folder"], "--data-dir", data_dir)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "4 stored, 5 failed" in out, out
    assert_listed(out, inbox["bad"])
    assert "Traceback" not in out
    assert counts(data_dir)["instances"] == 4

    clean = medflow("verify", "--data-dir", data_dir)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "checked 4 instances" in clean.stdout
    assert "corrupted: 0" in clean.stdout
    blob = next(p for p in (data_dir / "blobs").rglob("*") if p.is_file())
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    bad = medflow("verify", "--data-dir", data_dir)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "corrupted: 1" in bad.stdout
    assert "missing: 0" in bad.stdout and "orphaned: 0" in bad.stdout


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_ingest_url(live_server: str, store: Any, inbox: dict[str, Any]) -> None:
    result = medflow("ingest", inbox["folder"], "--url", live_server + "/dicomweb")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "4 stored, 5 failed" in out, out
    assert "Traceback" not in out
    assert out.count("0x0122") == 1 and out.count("0xC000") == 4
    assert store.counts()["instances"] == 4
    assert {
        r.sop_instance_uid
        for r in store.find_instances(study_uid=inbox["good"][0].StudyInstanceUID)
    } == {inbox["good"][0].SOPInstanceUID}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_ingest_url_names_each_bad_file(live_server: str, inbox: dict[str, Any]) -> None:
    result = medflow("ingest", inbox["folder"], "--url", live_server)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert_listed(out, inbox["bad"])


def test_serve_answers_healthz(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            str(MEDFLOW),
            "serve",
            "--data-dir",
            str(tmp_path / "data"),
            "--port",
            str(port),
            "--dimse-port",
            "0",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    try:
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                status = r.status_code
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert status == 200
        assert r.json() == {"status": "ok"}
        feed = httpx.get(f"http://127.0.0.1:{port}/dicomweb/changefeed", timeout=5)
        assert feed.status_code == 200 and feed.json() == []
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
