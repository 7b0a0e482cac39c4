"""Start and stop the servers under test on loopback: medflow (``medflow serve``) and Orthanc.

Each server gets a fresh data directory under the run's work directory (same filesystem as the
fsync'd disk-rate measurement), a free port picked first (bind port 0, read it, pass it), and
its log in that directory. Processes are started in their own session and ended by their id.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN_CANDIDATES = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/libOrthancDicomWeb.so"),
)
REPO = Path(__file__).resolve().parent.parent


class ServerMissing(RuntimeError):
    """The server's program is not installed."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A running server: where its DICOMweb root is, and how to stop it."""

    name: str
    base_url: str
    dicomweb: str
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    info: dict[str, str] = field(default_factory=dict)

    def stop(self, *, remove: bool = True) -> None:
        """SIGTERM the process group we started, SIGKILL after 20 s; optionally drop the data."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        if remove:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def log_tail(self, n: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _wait_ready(server: Server, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = str(exc)
        time.sleep(0.2)
    server.stop(remove=False)
    raise RuntimeError(
        f"{server.name} not ready after {timeout:.0f} s ({last}):\n{server.log_tail()}"
    )


def _spawn(
    cmd: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    try:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    finally:
        log.close()


def dicomweb_plugin() -> Path | None:
    return next((p for p in DICOMWEB_PLUGIN_CANDIDATES if p.exists()), None)


def orthanc_available() -> str | None:
    """None when Orthanc and its DICOMweb plugin are installed, else what to do about it."""
    if not ORTHANC_BIN.exists() or dicomweb_plugin() is None:
        return (
            "Orthanc is not installed: run `apt-get update && apt-get install -y orthanc "
            "orthanc-dicomweb` (or pass --install), or `--servers medflow` to skip it"
        )
    return None


def install_orthanc() -> None:
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "orthanc", "orthanc-dicomweb"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def orthanc_config(data_dir: Path, port: int, plugin: Path) -> dict[str, object]:
    """A self-contained config: DICOMweb on, DIMSE off, the Orthanc Book's scalability advice.

    KeepAlive/TcpNoDelay on, StorageAccessOnFind "Never" and SaveJobs off follow the Orthanc
    Book's "Scalability" FAQ; SyncStorageArea stays on (fsync of stored files, like medflow).
    """
    return {
        "Name": "bench-orthanc",
        "StorageDirectory": str(data_dir / "storage"),
        "IndexDirectory": str(data_dir / "index"),
        "StorageCompression": False,
        "HttpPort": port,
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": True,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": False,
        "HttpCompressionEnabled": False,
        "KeepAlive": True,
        "TcpNoDelay": True,
        "HttpThreadsCount": 50,
        "StorageAccessOnFind": "Never",
        "SaveJobs": False,
        "SyncStorageArea": True,
        "OverwriteInstances": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": ""},
    }


def start_orthanc(work: Path, *, timeout: float = 60) -> Server:
    """Start Orthanc with a temp config on a free loopback port; wait until /system answers."""
    missing = orthanc_available()
    if missing:
        raise ServerMissing(missing)
    plugin = dicomweb_plugin()
    assert plugin is not None
    data_dir = Path(os.path.realpath(work)) / f"orthanc-{time.monotonic_ns()}"
    data_dir.mkdir(parents=True)
    port = free_port()
    cfg = data_dir / "orthanc.json"
    cfg.write_text(json.dumps(orthanc_config(data_dir, port, plugin), indent=2))
    log_path = data_dir / "orthanc.log"
    base = f"http://127.0.0.1:{port}"
    server = Server("orthanc", base, f"{base}/dicom-web", data_dir, log_path=log_path)
    server.proc = _spawn([str(ORTHANC_BIN), str(cfg)], log_path)
    _wait_ready(server, f"{base}/system", timeout)
    system = httpx.get(f"{base}/system", timeout=5).json()
    plugins = httpx.get(f"{base}/plugins/dicom-web", timeout=5)
    server.info = {
        "version": str(system.get("Version")),
        "dicomweb": str(plugins.json().get("Version")) if plugins.status_code == 200 else "?",
    }
    return server


def medflow_command() -> list[str]:
    exe = REPO / ".venv" / "bin" / "medflow"
    return [str(exe)] if exe.exists() else ["medflow"]


def start_medflow(
    work: Path, *, data_dir: Path | None = None, timeout: float = 120, keep: bool = False
) -> Server:
    """Start ``medflow serve`` on a free loopback port (DIMSE off); wait for /healthz."""
    cmd = medflow_command()
    if shutil.which(cmd[0]) is None and not Path(cmd[0]).exists():
        raise ServerMissing("the `medflow` console script is not installed in .venv")
    own = data_dir is None
    data_dir = data_dir or Path(os.path.realpath(work)) / f"medflow-{time.monotonic_ns()}"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = (work if not own else data_dir) / f"medflow-{port}.log"
    base = f"http://127.0.0.1:{port}"
    server = Server("medflow", base, f"{base}/dicomweb", data_dir, log_path=log_path)
    argv = [
        *cmd, "serve", "--data-dir", str(data_dir),
        "--host", "127.0.0.1", "--port", str(port), "--dimse-port", "0", "--log-level", "warning",
        "--workers", os.environ.get("MEDFLOW_BENCH_WORKERS", "1"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDFLOW_")}
    server.proc = _spawn(argv, log_path, env=env)
    _wait_ready(server, f"{base}/healthz", timeout)
    server.info = {"command": " ".join(argv[1:2])}
    if keep:
        server.info["keep"] = "1"
    return server
