"""Start and stop the servers under test on loopback: medflow (``medflow serve``) and Orthanc.

Each server gets a fresh data directory under the run's work directory (same filesystem as the
fsync'd disk-rate measurement), a free port picked first (bind port 0, read it, pass it), and
its log in that directory. Processes are started in their own session and ended by their id.
With ``dimse=True`` each also listens for DIMSE on a free port (medflow's SCP, Orthanc's DICOM
server); ``Server.usage()`` reads the memory (VmRSS, VmHWM) and CPU time of the server's
processes from ``/proc``.
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
MEDFLOW_AET = "MEDFLOW"
ORTHANC_AET = "ORTHANC"
BENCH_SCU_AET = "BENCHSCU"
"""The calling AE title the DIMSE benchmark uses (Orthanc knows it as a modality)."""


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
    dimse_port: int | None = None
    aet: str = ""

    def usage(self) -> Usage:
        """Memory and CPU of the server's processes (the one started and its descendants)."""
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        return process_usage(self.proc.pid)

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


@dataclass(frozen=True)
class Usage:
    """Summed over a process tree: resident memory now and at its peak, CPU seconds so far."""

    rss_bytes: int
    hwm_bytes: int
    cpu_seconds: float
    processes: int


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's children file, Linux >= 3.5)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def process_usage(pid: int) -> Usage:
    """VmRSS, VmHWM (kB in /proc/PID/status) and utime+stime of ``pid`` and its descendants.

    The peak (VmHWM) of a tree is the sum of each process's own peak: an upper bound on the
    tree's peak, exact for a single process.
    """
    rss = hwm = n = 0
    cpu = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            rss += _status_kb(p, "VmRSS") * 1024
            hwm += _status_kb(p, "VmHWM") * 1024
            cpu += _cpu_seconds(p)
            n += 1
        except (OSError, ValueError, IndexError):
            continue
        todo += _children(p)
    return Usage(rss, hwm, cpu, n)


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


def _wait_dimse(server: Server, timeout: float) -> None:
    """Wait until the server's DIMSE port answers a C-ECHO (an association, released after)."""
    from pynetdicom import AE

    assert server.dimse_port is not None
    ae = AE(ae_title=BENCH_SCU_AET)
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if server.proc is not None and server.proc.poll() is not None:
                raise RuntimeError(
                    f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}"
                )
            assoc = ae.associate("127.0.0.1", server.dimse_port, ae_title=server.aet)
            if assoc.is_established:
                status = assoc.send_c_echo()
                assoc.release()
                if status and int(status.Status) == 0:
                    return
            time.sleep(0.2)
    finally:
        ae.shutdown()
    server.stop(remove=False)
    raise RuntimeError(
        f"{server.name}: no C-ECHO on port {server.dimse_port}:\n{server.log_tail()}"
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


def orthanc_available(*, dicomweb: bool = True) -> str | None:
    """None when Orthanc (and its DICOMweb plugin, unless not needed) is installed, else what
    to do about it."""
    if not ORTHANC_BIN.exists() or (dicomweb and dicomweb_plugin() is None):
        packages = "orthanc orthanc-dicomweb" if dicomweb else "orthanc"
        return (
            f"Orthanc is not installed: run `apt-get update && apt-get install -y {packages}` "
            "(or pass --install), or `--servers medflow` to skip it"
        )
    return None


def install_orthanc() -> None:
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "orthanc", "orthanc-dicomweb"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )


def orthanc_config(
    data_dir: Path, port: int, plugin: Path | None, *, dimse_port: int | None = None
) -> dict[str, object]:
    """A self-contained config: DICOMweb on (with a plugin), DIMSE off unless ``dimse_port``,
    the Orthanc Book's scalability advice.

    KeepAlive/TcpNoDelay on, StorageAccessOnFind "Never" and SaveJobs off follow the Orthanc
    Book's "Scalability" FAQ; SyncStorageArea stays on (fsync of stored files, like medflow).
    With ``dimse_port``: the DICOM server on that port (AE ``ORTHANC``, called AE not checked),
    C-ECHO/C-STORE/C-FIND allowed from any AE, the benchmark's SCU also declared as a modality
    (older Orthancs without ``DicomAlwaysAllowFind``), PDUs of 128 KiB (DCMTK's maximum; the
    default is 16 KiB). ``TcpNoDelay`` only concerns HTTP: DCMTK disables Nagle on DICOM
    sockets when ``TCP_NODELAY=1`` is in the environment, which ``start_orthanc`` sets.
    """
    cfg: dict[str, object] = {
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
    }
    if plugin is not None:
        cfg["Plugins"] = [str(plugin)]
        cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False, "Host": ""}
    if dimse_port is not None:
        cfg.update(
            {
                "DicomServerEnabled": True,
                "DicomAet": ORTHANC_AET,
                "DicomPort": dimse_port,
                "DicomCheckCalledAet": False,
                "DicomCheckModalityHost": False,
                "DicomAlwaysAllowEcho": True,
                "DicomAlwaysAllowStore": True,
                "DicomAlwaysAllowFind": True,
                "DicomModalities": {"bench": [BENCH_SCU_AET, "127.0.0.1", 104]},
                "MaximumPduLength": 131072,
                "DicomScpTimeout": 60,
            }
        )
    return cfg


def start_orthanc(
    work: Path, *, timeout: float = 60, dimse: bool = False, dicomweb: bool = True
) -> Server:
    """Start Orthanc with a temp config on a free loopback port; wait until /system answers.

    ``dimse``: also its DICOM server on a free port (``Server.dimse_port``, AE ``ORTHANC``);
    ``dicomweb=False``: without the DICOMweb plugin (not needed by the DIMSE benchmark).
    """
    missing = orthanc_available(dicomweb=dicomweb)
    if missing:
        raise ServerMissing(missing)
    plugin = dicomweb_plugin() if dicomweb else None
    data_dir = Path(os.path.realpath(work)) / f"orthanc-{time.monotonic_ns()}"
    data_dir.mkdir(parents=True)
    port = free_port()
    dimse_port = free_port() if dimse else None
    cfg = data_dir / "orthanc.json"
    cfg.write_text(
        json.dumps(orthanc_config(data_dir, port, plugin, dimse_port=dimse_port), indent=2)
    )
    log_path = data_dir / "orthanc.log"
    base = f"http://127.0.0.1:{port}"
    server = Server("orthanc", base, f"{base}/dicom-web", data_dir, log_path=log_path)
    server.dimse_port, server.aet = dimse_port, ORTHANC_AET
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK: no Nagle on DICOM sockets
    server.proc = _spawn([str(ORTHANC_BIN), str(cfg)], log_path, env=env)
    _wait_ready(server, f"{base}/system", timeout)
    system = httpx.get(f"{base}/system", timeout=5).json()
    server.info = {"version": str(system.get("Version"))}
    if plugin is not None:
        plugins = httpx.get(f"{base}/plugins/dicom-web", timeout=5)
        server.info["dicomweb"] = (
            str(plugins.json().get("Version")) if plugins.status_code == 200 else "?"
        )
    if dimse_port is not None:
        _wait_dimse(server, timeout)
    return server


def medflow_command() -> list[str]:
    exe = REPO / ".venv" / "bin" / "medflow"
    return [str(exe)] if exe.exists() else ["medflow"]


def start_medflow(
    work: Path,
    *,
    data_dir: Path | None = None,
    timeout: float = 120,
    keep: bool = False,
    dimse: bool = False,
    env: dict[str, str] | None = None,
) -> Server:
    """Start ``medflow serve`` on a free loopback port; wait for /healthz.

    DIMSE is off unless ``dimse``: then the SCP listens on a free port (``Server.dimse_port``,
    AE ``MEDFLOW``) and the benchmark waits until it answers a C-ECHO. The caller's
    ``MEDFLOW_*`` variables are not passed on; ``env`` adds variables of its own (e.g.
    ``MEDFLOW_DATABASE_URL``).
    """
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
    dimse_port = free_port() if dimse else 0
    server.dimse_port, server.aet = (dimse_port or None), MEDFLOW_AET
    argv = [
        *cmd, "serve", "--data-dir", str(data_dir),
        "--host", "127.0.0.1", "--port", str(port), "--dimse-port", str(dimse_port),
        "--log-level", "warning", "--workers", os.environ.get("MEDFLOW_BENCH_WORKERS", "1"),
    ]  # fmt: skip
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("MEDFLOW_")}
    server.proc = _spawn(argv, log_path, env={**child_env, **(env or {})})
    _wait_ready(server, f"{base}/healthz", timeout)
    if dimse_port:
        _wait_dimse(server, timeout)
    server.info = {"command": " ".join(argv[1:2])}
    if keep:
        server.info["keep"] = "1"
    return server


def start_dimse_process(
    name: str, argv: list[str], work: Path, *, port: int, aet: str, timeout: float = 60
) -> Server:
    """Start a bare DIMSE listener (``argv`` must listen on ``port`` as ``aet``); wait for it
    to answer a C-ECHO. Used for the pynetdicom no-op reference SCP."""
    data_dir = Path(os.path.realpath(work)) / f"{name}-{time.monotonic_ns()}"
    data_dir.mkdir(parents=True)
    log_path = data_dir / f"{name}.log"
    server = Server(name, "", "", data_dir, log_path=log_path, dimse_port=port, aet=aet)
    server.proc = _spawn(argv, log_path)
    _wait_dimse(server, timeout)
    return server
