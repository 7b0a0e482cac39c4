"""DIMSE benchmark: medflow's SCP against Orthanc's DICOM server in the same run.

C-STORE: dcmtk ``storescu`` (one association per process, ``TCP_NODELAY=1``) sends the large
(512x512 16-bit, ~0.5 MB) and then the small (64x64) corpus, both Part 10 files on disk, into a
fresh server: wall time -> instances/s and MB/s, server CPU time per instance and peak RSS
(VmHWM, reset before each run). With ``--clients 1,4`` a second fresh server gets the same files
from 4 storescu processes at once. A no-op pynetdicom SCP (``--servers ...,pynetdicom``) shows
the ceiling of one pynetdicom process. C-FIND: the last server is topped up (untimed) to
``--find-instances`` and answers study-level queries (PatientID, PatientName wildcard,
StudyDate range, ModalitiesInStudy): p50/p95 from a pynetdicom SCU (one association) and from
dcmtk ``findscu`` (a process and an association per query).

    .venv/bin/python bench/dimse.py --quick                          # smoke run, ~1 min
    .venv/bin/python bench/dimse.py                                  # 2,000 large, 5,000 small, 10k
    .venv/bin/python bench/dimse.py --large 500 --small 2000 --clients 1 --json out.json
    .venv/bin/python bench/dimse.py --servers medflow --only store   # no Orthanc needed

Targets (issue 3): C-STORE instances/s >= 1.0x Orthanc; C-FIND p95 <= Orthanc's.
Run by hand, never by tests. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _corpus
import _measure as m
import _servers

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
SERVERS = ("medflow", "orthanc", "pynetdicom")
NOOP_AET = "NOOP"
PARTS = ("store", "find")
STORESCU = "storescu"
FIND_DATE_RANGE = "20190101-20190331"
FIND_MODALITY = "NM"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
RETURN_KEYS = (
    "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
    "ReferringPhysicianName", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)  # fmt: skip
FIND_CLIENTS = ("pynetdicom", "findscu")
STORE_TARGET = 1.0
FIND_TARGET = 1.0
KINDS = {"large": ("ct", "large 512x512 (0.5 MB)"), "small": ("small", "small 64x64")}


# -- results ---------------------------------------------------------------------------------


@dataclass
class StoreRun:
    """One timed storescu run (``clients`` processes) into one server."""

    kind: str
    clients: int
    instances: int
    bytes: int
    seconds: float
    server_cpu_s: float
    client_cpu_s: float
    hwm_bytes: int
    rss_bytes: int
    stored: int | None = None
    """Instances the server reports after the run (all runs into it so far)."""
    expected: int = 0
    """Instances sent into this server so far."""
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / m.MB / self.seconds


@dataclass
class Results:
    store: dict[tuple[str, int, str], StoreRun | str] = field(default_factory=dict)
    """(kind, clients, server) -> the run, or why it is n/a."""
    find: dict[tuple[str, str, str], m.Latency | str] = field(default_factory=dict)
    """(client, query, server) -> the latencies, or why they are n/a."""
    find_client_cpu: dict[tuple[str, str], float] = field(default_factory=dict)
    """(query, server) -> CPU seconds per query of this process (the pynetdicom SCU)."""
    find_n: dict[str, int] = field(default_factory=dict)
    """server -> instances stored when C-FIND was measured."""
    info: dict[str, Any] = field(default_factory=dict)


# -- corpus ----------------------------------------------------------------------------------


@dataclass
class Data:
    large: _corpus.Corpus
    small: _corpus.Corpus
    topup: _corpus.Corpus
    queries: dict[str, dict[str, str]]


def find_queries(patient_id: str, patient_name: str) -> dict[str, dict[str, str]]:
    """The four study-level queries of the DICOMweb benchmark's QIDO, as C-FIND identifiers."""
    return {
        "PatientID": {"PatientID": patient_id},
        "PatientName": {"PatientName": patient_name.split("^")[0][:3] + "*"},
        "StudyDate": {"StudyDate": FIND_DATE_RANGE},
        "ModalitiesInStudy": {"ModalitiesInStudy": FIND_MODALITY},
    }


def prepare(args: argparse.Namespace) -> Data:
    t0 = time.perf_counter()
    large = _corpus.build_corpus(CACHE, seed=args.seed, kind="ct", indices=range(args.large))
    small = _corpus.build_corpus(CACHE, seed=args.seed, kind="small", indices=range(args.small))
    extra = max(0, args.find_instances - args.large - args.small) if "find" in args.only else 0
    topup = _corpus.build_corpus(
        CACHE, seed=args.seed, kind="small", indices=range(args.small, args.small + extra)
    )
    pool = small.items or large.items
    pid, pname = "NONE", "NONE"
    if pool:
        probe = pydicom.dcmread(pool[len(pool) // 2].path, stop_before_pixels=True)
        pid, pname = str(probe.PatientID), str(probe.PatientName)
    print(
        f"corpus: {len(large.items)} large ({large.total_bytes / 1e6:.0f} MB), "
        f"{len(small.items)} small ({small.total_bytes / 1e6:.1f} MB), {len(topup.items)} "
        f"C-FIND top-up; {time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return Data(large, small, topup, find_queries(pid, pname))


# -- C-STORE with storescu -------------------------------------------------------------------


def _chunks(items: Sequence[_corpus.Item], n: int) -> list[list[_corpus.Item]]:
    """``n`` contiguous chunks (studies stay together), sizes differing by at most one."""
    n = max(1, min(n, len(items)))
    size, rest = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (i < rest)
        out.append(list(items[start:end]))
        start = end
    return out


def storescu_argv(srv: _servers.Server, names: Sequence[str]) -> list[str]:
    """One association: only the contexts the files need (-R), go on after a failure (-nh)."""
    assert srv.dimse_port is not None
    return [
        STORESCU, "-aet", _servers.BENCH_SCU_AET, "-aec", srv.aet, "-R", "-nh",
        "--max-pdu", "131072", "127.0.0.1", str(srv.dimse_port), *names,
    ]  # fmt: skip


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (``clear_refs`` 5, Linux >= 4.0); best effort."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def storescu(srv: _servers.Server, items: Sequence[_corpus.Item], clients: int) -> StoreRun:
    """Send ``items`` with ``clients`` storescu processes at once; time until all are done."""
    if not items:
        raise ValueError("nothing to send")
    folder = Path(items[0].path).parent
    if any(Path(it.path).parent != folder for it in items):
        raise ValueError("every file of a run must sit in one folder")
    assert srv.proc is not None
    env = {**os.environ, "TCP_NODELAY": "1"}  # DCMTK disables Nagle only with this
    _reset_peak(srv.proc.pid)
    before, cpu0 = srv.usage(), _children_cpu()
    chunks = _chunks(items, clients)
    with contextlib.ExitStack() as stack:
        # output to files, not pipes: a chatty run never blocks on a full pipe
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in chunks]
        start = time.perf_counter()
        procs = [
            subprocess.Popen(
                storescu_argv(srv, [Path(it.path).name for it in chunk]),
                cwd=folder,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            for chunk, log in zip(chunks, logs, strict=True)
        ]
        for proc in procs:
            proc.wait()
        elapsed = time.perf_counter() - start
        outputs = []
        for log in logs:
            log.seek(0)
            outputs.append(log.read().decode(errors="replace"))
    after, cpu1 = srv.usage(), _children_cpu()
    errors = [
        line
        for out in outputs
        for line in out.splitlines()
        if line.startswith(("E:", "F:")) or "Failed" in line
    ]
    failures = sum(("Store Failed" in e) for e in errors)
    if any(p.returncode for p in procs) and not errors:
        errors.append(f"storescu exit status {[p.returncode for p in procs]}")
    return StoreRun(
        kind="",
        clients=len(procs),
        instances=len(items),
        bytes=sum(it.size for it in items),
        seconds=elapsed,
        server_cpu_s=after.cpu_seconds - before.cpu_seconds,
        client_cpu_s=cpu1 - cpu0,
        hwm_bytes=after.hwm_bytes,
        rss_bytes=after.rss_bytes,
        failures=failures,
        errors=errors[:5],
    )


# -- C-FIND with pynetdicom ------------------------------------------------------------------


class Scu:
    """One pynetdicom association to a server's DIMSE port (Study Root C-FIND), no Nagle."""

    def __init__(self, srv: _servers.Server) -> None:
        from pynetdicom import AE

        assert srv.dimse_port is not None
        ae = AE(ae_title=_servers.BENCH_SCU_AET)
        ae.add_requested_context(STUDY_ROOT_FIND)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 120
        self.ae = ae
        self.assoc = ae.associate("127.0.0.1", srv.dimse_port, ae_title=srv.aet, max_pdu=131072)
        if not self.assoc.is_established:
            raise m.EndpointError(f"{srv.name}: association rejected or aborted")
        sock = getattr(getattr(self.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def find(self, ident: Dataset) -> list[Dataset]:
        """All matches of one C-FIND (raises on a failure status or a lost association)."""
        found: list[Dataset] = []
        for status, answer in self.assoc.send_c_find(ident, STUDY_ROOT_FIND):
            if not status:
                raise m.EndpointError("C-FIND: no response (timeout or association aborted)")
            code = int(status.Status)
            if code in (0xFF00, 0xFF01):
                if answer is not None:
                    found.append(answer)
            elif code != 0x0000:
                raise m.EndpointError(f"C-FIND failed: status 0x{code:04X}")
        return found

    def close(self) -> None:
        if self.assoc.is_established:
            self.assoc.release()
        self.ae.shutdown()


def identifier(match: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for key in RETURN_KEYS:
        setattr(ds, key, match.get(key, ""))
    for key, value in match.items():
        setattr(ds, key, value)
    return ds


def count_instances(srv: _servers.Server) -> int:
    """Instances stored, as the server reports them (sum of NumberOfStudyRelatedInstances)."""
    scu = Scu(srv)
    try:
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = ""
        ds.NumberOfStudyRelatedInstances = ""
        return sum(int(a.get("NumberOfStudyRelatedInstances") or 0) for a in scu.find(ds))
    finally:
        scu.close()


def find_latency(
    srv: _servers.Server, match: dict[str, str], reps: int, warmup: int
) -> tuple[m.Latency, float]:
    """p50/p95 of ``reps`` timed queries after ``warmup``; and the SCU's CPU s per query."""
    scu = Scu(srv)
    try:
        ident = identifier(match)
        samples: list[float] = []
        count = 0
        cpu = 0.0
        for i in range(warmup + reps):
            c0 = time.process_time()
            t0 = time.perf_counter()
            count = len(scu.find(ident))
            dt = time.perf_counter() - t0
            if i >= warmup:
                samples.append(dt)
                cpu += time.process_time() - c0
        return m.Latency(samples, f"{count} studies"), cpu / max(1, reps)
    finally:
        scu.close()


def findscu_argv(srv: _servers.Server, match: dict[str, str]) -> list[str]:
    assert srv.dimse_port is not None
    keys = ["QueryRetrieveLevel=STUDY"] + [f"{k}={match.get(k, '')}" for k in RETURN_KEYS]
    keys += [f"{k}={v}" for k, v in match.items() if k not in RETURN_KEYS]
    return [
        "findscu", "-S", "-aet", _servers.BENCH_SCU_AET, "-aec", srv.aet, "+sr",
        *[arg for key in keys for arg in ("-k", key)], "127.0.0.1", str(srv.dimse_port),
    ]  # fmt: skip


def findscu_latency(
    srv: _servers.Server, match: dict[str, str], reps: int, warmup: int
) -> m.Latency:
    """dcmtk findscu, one process and one association per query: what a C client sees,
    association negotiation included (``TCP_NODELAY=1``)."""
    argv = findscu_argv(srv, match)
    env = {**os.environ, "TCP_NODELAY": "1"}
    samples: list[float] = []
    count = 0
    for i in range(warmup + reps):
        t0 = time.perf_counter()
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        dt = time.perf_counter() - t0
        if done.returncode != 0:
            raise m.EndpointError(f"findscu exit {done.returncode}: {done.stderr.strip()[-200:]}")
        count = (done.stdout + done.stderr).count("(Pending)")
        if i >= warmup:
            samples.append(dt)
    return m.Latency(samples, f"{count} studies")


# -- per server ------------------------------------------------------------------------------


def medflow_source() -> str:
    """Where ``medflow serve`` imports medflow from (PYTHONPATH can point at another tree)."""
    code = "import medflow; print(medflow.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()[-200:]


def serve_noop(port: int) -> None:
    """The reference SCP: pynetdicom configured like medflow's (chunked receive to a temp file,
    unlimited PDU, TCP_NODELAY, every storage SOP class), whose C-STORE handler does nothing.
    Its rate is the ceiling of any handler on one pynetdicom process."""
    from pynetdicom import AE, AllStoragePresentationContexts, _config, evt

    _config.STORE_RECV_CHUNKED_DATASET = True

    def nodelay(event: Any) -> None:
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def success(event: Any) -> int:
        return 0x0000

    ae = AE(ae_title=NOOP_AET)
    ae.maximum_associations = 32
    ae.maximum_pdu_size = 0
    uncompressed = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, uncompressed)
    ae.add_supported_context("1.2.840.10008.1.1")
    handlers: list[Any] = [
        (evt.EVT_C_STORE, success),
        (evt.EVT_C_ECHO, success),
        (evt.EVT_ESTABLISHED, nodelay),
    ]
    ae.start_server(("127.0.0.1", port), block=True, evt_handlers=handlers)


def start(name: str, work: Path) -> _servers.Server:
    if name == "medflow":
        return _servers.start_medflow(work, dimse=True)
    if name == "pynetdicom":
        port = _servers.free_port()
        argv = [sys.executable, str(Path(__file__).resolve()), "--serve-noop", str(port)]
        return _servers.start_dimse_process(name, argv, work, port=port, aet=NOOP_AET)
    return _servers.start_orthanc(work, dimse=True, dicomweb=False)


def fail_message(exc: BaseException) -> str:
    return f"n/a ({type(exc).__name__}: {str(exc).splitlines()[0][:70] if str(exc) else ''})"


def bench_server(res: Results, name: str, work: Path, data: Data, args: argparse.Namespace) -> None:
    if name == "pynetdicom" and "store" not in args.only:
        return  # the no-op SCP has C-STORE only
    print(f"[{name}]", flush=True)
    clients_list = args.clients if "store" in args.only else ()
    for n, clients in enumerate(clients_list):
        last = n == len(clients_list) - 1
        srv = None
        try:
            srv = start(name, work)
            if n == 0 and name == "orthanc":
                res.info["orthanc"] = srv.info
            expected = 0
            for kind in ("large", "small"):
                corpus = data.large if kind == "large" else data.small
                if not corpus.items:
                    continue
                print(f"  {name}: C-STORE {kind} x{len(corpus.items)}, {clients} client(s)")
                try:
                    run = storescu(srv, corpus.items, clients)
                    run.kind = kind
                    expected += len(corpus.items)
                    run.expected = expected
                    if name != "pynetdicom":
                        run.stored = count_instances(srv)
                    res.store[(kind, clients, name)] = run
                    short = (
                        f" ({run.stored}/{expected} stored)"
                        if run.stored not in (None, expected)
                        else ""
                    )
                    print(
                        f"    {run.inst_per_s:.0f} inst/s, {run.mb_per_s:.1f} MB/s, "
                        f"server CPU {run.server_cpu_s:.1f} s, peak RSS "
                        f"{run.hwm_bytes / 2**20:.0f} MiB{short}",
                        flush=True,
                    )
                    if run.errors:
                        print(f"    storescu: {run.errors[:2]}", flush=True)
                except Exception as exc:
                    res.store[(kind, clients, name)] = fail_message(exc)
                    print(f"    {fail_message(exc)}", flush=True)
            if last and "find" in args.only and name != "pynetdicom":
                bench_find(res, name, srv, data, args)
        except Exception as exc:  # the server did not start: every cell of it is n/a
            print(f"  {name}: {type(exc).__name__}: {exc}", flush=True)
            for kind in ("large", "small"):
                res.store.setdefault((kind, clients, name), fail_message(exc))
        finally:
            if srv is not None:
                srv.stop()
    if not clients_list and "find" in args.only and name != "pynetdicom":
        srv = None
        try:
            srv = start(name, work)
            for corpus in (data.large, data.small):
                if corpus.items:
                    storescu(srv, corpus.items, 2)
            bench_find(res, name, srv, data, args)
        except Exception as exc:
            print(f"  {name}: {type(exc).__name__}: {exc}", flush=True)
            for q in data.queries:
                for client in FIND_CLIENTS:
                    res.find.setdefault((client, q, name), fail_message(exc))
        finally:
            if srv is not None:
                srv.stop()


def bench_find(
    res: Results, name: str, srv: _servers.Server, data: Data, args: argparse.Namespace
) -> None:
    if data.topup.items:
        print(f"  {name}: top-up x{len(data.topup.items)} (untimed) ...", flush=True)
        storescu(srv, data.topup.items, 2)
    res.find_n[name] = count_instances(srv)
    print(
        f"  {name}: C-FIND x{args.find_reps} per query at {res.find_n[name]:,} instances ...",
        flush=True,
    )
    for q, match in data.queries.items():
        try:
            lat, cpu = find_latency(srv, match, args.find_reps, args.find_warmup)
            res.find[("pynetdicom", q, name)] = lat
            res.find_client_cpu[(q, name)] = cpu
            print(
                f"    {q}: {lat.p50 * 1e3:.1f} / {lat.p95 * 1e3:.1f} ms [{lat.detail}], "
                f"SCU CPU {cpu * 1e3:.1f} ms/query",
                flush=True,
            )
        except Exception as exc:
            res.find[("pynetdicom", q, name)] = fail_message(exc)
            print(f"    {q}: {fail_message(exc)}", flush=True)
        try:
            lat = findscu_latency(srv, match, args.find_reps, args.find_warmup)
            res.find[("findscu", q, name)] = lat
            print(
                f"    {q} (findscu): {lat.p50 * 1e3:.1f} / {lat.p95 * 1e3:.1f} ms [{lat.detail}]",
                flush=True,
            )
        except Exception as exc:
            res.find[("findscu", q, name)] = fail_message(exc)
            print(f"    {q} (findscu): {fail_message(exc)}", flush=True)


# -- output ----------------------------------------------------------------------------------


def _mb(n: int) -> str:
    return f"{n / 2**20:.0f}"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def store_table(res: Results, args: argparse.Namespace) -> Any:
    from rich.table import Table

    table = Table(
        title="DIMSE C-STORE (dcmtk storescu, TCP_NODELAY=1): medflow vs Orthanc "
        "(pynetdicom no-op: the ceiling of one pynetdicom process)"
    )
    cols = (
        "corpus", "clients", "server", "inst/s", "MB/s", "server CPU ms/inst",
        "peak RSS MiB", "stored", "medflow/Orthanc", "target", "met?",
    )  # fmt: skip
    shown = {"medflow": "medflow", "orthanc": "Orthanc", "pynetdicom": "pynetdicom no-op"}
    for col in cols:
        table.add_column(col, overflow="fold")
    for kind, (_k, label) in KINDS.items():
        for clients in args.clients:
            runs = {s: res.store.get((kind, clients, s)) for s in args.servers}
            if all(r is None for r in runs.values()):
                continue
            ratio = store_ratio(res, kind, clients)
            for s in args.servers:
                r = runs[s]
                head = [label if s == args.servers[0] else "", str(clients), shown[s]]
                if not isinstance(r, StoreRun):
                    table.add_row(*head, r or "-", *[""] * 7)
                    continue
                is_med = s == "medflow"
                table.add_row(
                    *head,
                    f"{r.inst_per_s:.0f}",
                    f"{r.mb_per_s:.1f}",
                    f"{r.server_cpu_s * 1e3 / r.instances:.1f}",
                    _mb(r.hwm_bytes),
                    f"{r.stored}/{r.expected}" if r.stored is not None else "",
                    f"{ratio:.2f}x" if is_med and ratio is not None else "",
                    f">= {STORE_TARGET:.1f}x" if is_med else "",
                    _met(None if ratio is None else ratio >= STORE_TARGET) if is_med else "",
                )
    return table


def store_ratio(res: Results, kind: str, clients: int) -> float | None:
    a, b = res.store.get((kind, clients, "medflow")), res.store.get((kind, clients, "orthanc"))
    if isinstance(a, StoreRun) and isinstance(b, StoreRun):
        return a.inst_per_s / b.inst_per_s
    return None


def find_ratio(res: Results, client: str, q: str) -> float | None:
    a, b = res.find.get((client, q, "medflow")), res.find.get((client, q, "orthanc"))
    if isinstance(a, m.Latency) and isinstance(b, m.Latency) and b.p95 > 0:
        return a.p95 / b.p95
    return None


def _lat(x: m.Latency | str | None) -> str:
    if isinstance(x, m.Latency):
        return f"{x.p50 * 1e3:.1f} / {x.p95 * 1e3:.1f} [{x.detail}]"
    return x or "-"


def find_table(res: Results, args: argparse.Namespace) -> Any:
    from rich.table import Table

    sizes = ", ".join(f"{s} {n:,}" for s, n in res.find_n.items())
    table = Table(
        title=f"DIMSE C-FIND study level, ms p50 / p95 (instances: {sizes}); pynetdicom: one "
        "association for all queries; findscu: a process and an association per query"
    )
    cols = ("client", "query", "medflow", "Orthanc", "medflow/Orthanc (p95)", "target", "met?")
    for col in (*cols, "SCU CPU ms/query (medflow / Orthanc)"):
        table.add_column(col, overflow="fold")
    for client in FIND_CLIENTS:
        for q, match in res.info.get("queries", {}).items():
            cells = {s: res.find.get((client, q, s)) for s in ("medflow", "orthanc")}
            if all(c is None for c in cells.values()):
                continue
            ratio = find_ratio(res, client, q)
            cpu = [res.find_client_cpu.get((q, s)) for s in ("medflow", "orthanc")]
            table.add_row(
                client,
                f"{q}={match[q]}",
                _lat(cells["medflow"]),
                _lat(cells["orthanc"]),
                f"{ratio:.2f}x" if ratio is not None else "",
                f"<= {FIND_TARGET:.1f}x",
                _met(None if ratio is None else ratio <= FIND_TARGET),
                " / ".join("-" if c is None else f"{c * 1e3:.1f}" for c in cpu)
                if client == "pynetdicom"
                else "",
            )
    return table


def print_tables(res: Results, args: argparse.Namespace) -> None:
    from rich.console import Console

    console = Console(width=args.width)
    if res.store:
        console.print(store_table(res, args))
    if res.find:
        console.print(find_table(res, args))


def to_json(res: Results, args: argparse.Namespace) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH
    ).stdout.strip()
    store = []
    for (kind, clients, server), r in res.store.items():
        row: dict[str, Any] = {"kind": kind, "clients": clients, "server": server}
        if isinstance(r, StoreRun):
            row.update(
                {
                    "instances": r.instances,
                    "bytes": r.bytes,
                    "seconds": r.seconds,
                    "inst_per_s": r.inst_per_s,
                    "mb_per_s": r.mb_per_s,
                    "server_cpu_s": r.server_cpu_s,
                    "client_cpu_s": r.client_cpu_s,
                    "peak_rss_bytes": r.hwm_bytes,
                    "rss_bytes": r.rss_bytes,
                    "stored": r.stored,
                    "expected": r.expected,
                    "failures": r.failures,
                    "errors": r.errors,
                    "ratio": store_ratio(res, kind, clients) if server == "medflow" else None,
                }
            )
        else:
            row["error"] = r
        store.append(row)
    find = []
    for (client, q, server), lat in res.find.items():
        entry: dict[str, Any] = {"client": client, "query": q, "server": server}
        if isinstance(lat, m.Latency):
            entry.update(
                {
                    "p50_ms": lat.p50 * 1e3,
                    "p95_ms": lat.p95 * 1e3,
                    "n": len(lat.samples),
                    "detail": lat.detail,
                    "client_cpu_ms_per_query": (
                        res.find_client_cpu[(q, server)] * 1e3
                        if client == "pynetdicom" and (q, server) in res.find_client_cpu
                        else None
                    ),
                    "ratio_p95": find_ratio(res, client, q) if server == "medflow" else None,
                }
            )
        else:
            entry["error"] = lat
        find.append(entry)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": commit,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "args": {k: (list(v) if isinstance(v, tuple | list) else v) for k, v in vars(args).items()},
        "info": res.info,
        "find_instances": res.find_n,
        "store": store,
        "find": find,
    }


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--large", type=int, default=2000, help="512x512 16-bit instances (0.5 MB)")
    p.add_argument("--small", type=int, default=5000, help="64x64 instances (~9 KB)")
    p.add_argument("--find-instances", type=int, default=10_000, help="instances stored for C-FIND")
    p.add_argument("--clients", default="1,4", help="storescu processes at once, one row each")
    p.add_argument("--find-reps", type=int, default=50, help="timed C-FIND calls per query")
    p.add_argument("--find-warmup", type=int, default=3, help="untimed C-FIND calls first")
    p.add_argument("--only", default=",".join(PARTS), help="store,find")
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        help="medflow,orthanc,pynetdicom (the last: a no-op pynetdicom SCP, C-STORE only)",
    )
    p.add_argument("--serve-noop", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    p.add_argument("--install", action="store_true", help="apt-get install Orthanc if missing")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--width", type=int, default=160, help="table width")
    args = p.parse_args(argv)
    if args.quick:
        args.large, args.small, args.find_instances, args.find_reps = 100, 300, 1000, 20
        args.clients = "1,2"
    args.clients = tuple(int(x) for x in args.clients.split(",") if x.strip())
    args.only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    args.servers = tuple(x.strip() for x in args.servers.split(",") if x.strip())
    bad = set(args.only) - set(PARTS) or set(args.servers) - set(SERVERS)
    if bad:
        p.error(f"unknown: {sorted(bad)}")
    if any(c < 1 for c in args.clients):
        p.error("--clients: positive integers")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_noop:
        serve_noop(args.serve_noop)
        return 0
    if shutil.which(STORESCU) is None or shutil.which("findscu") is None:
        print("error: dcmtk (storescu, findscu) is not installed", file=sys.stderr)
        return 2
    if "orthanc" in args.servers and _servers.orthanc_available(dicomweb=False):
        if args.install:
            _servers.install_orthanc()
        else:
            print(
                f"note: {_servers.orthanc_available(dicomweb=False)}; measuring medflow only",
                flush=True,
            )
            args.servers = tuple(s for s in args.servers if s != "orthanc")
    (CACHE / "work").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE / "work"))
    res = Results()
    t0 = time.perf_counter()
    print(f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", flush=True)
    try:
        data = prepare(args)
        res.info["queries"] = data.queries
        res.info["medflow_src"] = medflow_source()
        res.info["loadavg_start"] = os.getloadavg()
        for name in args.servers:
            bench_server(res, name, work, data, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res.info["seconds"] = time.perf_counter() - t0
    print(f"total {time.perf_counter() - t0:.0f} s, load average {os.getloadavg()[0]:.2f}")
    print_tables(res, args)
    if args.json:
        args.json.write_text(json.dumps(to_json(res, args), indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
