"""DICOMweb benchmark: medflow against Orthanc in the same run, on the same corpus and client.

Measures STOW-RS (1 and 4 clients, 50 instances per request) beside the raw fsync'd disk write
rate of the same bytes; QIDO-RS p50/p95 at ~10k instances (both servers) and on a 1M-instance
metadata-only index (medflow only); WADO-RS study MB/s; series /metadata latency for a
700-instance series; frame latency. Prints one table with medflow/Orthanc ratios and targets.

    .venv/bin/python bench/dicomweb.py --quick                      # smoke run, < 2 min
    .venv/bin/python bench/dicomweb.py --ct 500 --small 2000 --json out.json
    .venv/bin/python bench/dicomweb.py --only qido1m --million 1000000

Run by hand, never by tests. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pydicom

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _corpus
import _measure as m
import _million
import _servers

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
MEASUREMENTS = ("disk", "stow", "qido", "qido1m", "wado", "metadata", "frames")
SERVERS = ("medflow", "orthanc")
PER_REQUEST = 50
Requests = list[tuple[bytes, int, int]]
QIDO_DATE_RANGE = "20190101-20190331"
QIDO_MODALITY = "NM"
QIDO_LIMIT = "100"


@dataclass
class Row:
    """One measurement: a number per server (None = n/a), how to show it, and its target."""

    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: str = ""
    check: Callable[[float | None, float | None], bool | None] | None = None
    values: dict[str, float | None] = field(default_factory=dict)
    shown: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def ratio(self) -> float | None:
        a, b = self.values.get("medflow"), self.values.get("orthanc")
        if a is None or b is None or b == 0:
            return None
        return a / b

    def met(self) -> bool | None:
        return self.check(self.values.get("medflow"), self.ratio()) if self.check else None


def ratio_at_least(x: float) -> Callable[[float | None, float | None], bool | None]:
    return lambda _v, r: None if r is None else r >= x


def ratio_at_most(x: float) -> Callable[[float | None, float | None], bool | None]:
    return lambda _v, r: None if r is None else r <= x


def value_below(x: float) -> Callable[[float | None, float | None], bool | None]:
    return lambda v, _r: None if v is None else v < x


class Results:
    def __init__(self) -> None:
        self.rows: dict[str, Row] = {}
        self.extra_info: dict[str, Any] = {}

    def row(
        self,
        key: str,
        label: str,
        unit: str,
        *,
        higher: bool,
        target: str = "",
        check: Callable[[float | None, float | None], bool | None] | None = None,
    ) -> Row:
        if key not in self.rows:
            self.rows[key] = Row(key, label, unit, higher, target, check)
        return self.rows[key]

    def na(self, key: str, server: str, err: BaseException | str) -> None:
        row = self.rows[key]
        row.values[server] = None
        row.shown[server] = f"n/a ({str(err).splitlines()[0][:70]})"


# -- corpus -------------------------------------------------------------------------------


@dataclass
class Data:
    ct: _corpus.Corpus
    small: _corpus.Corpus
    topup: _corpus.Corpus
    ct_blobs: list[bytes]
    small_blobs: list[bytes]
    ct_reqs: list[tuple[bytes, int, int]]
    small_reqs: list[tuple[bytes, int, int]]
    topup_reqs: list[tuple[bytes, int, int]]
    qido: dict[str, dict[str, str]]


def qido_queries(patient_id: str, patient_name: str) -> dict[str, dict[str, str]]:
    """The four study-level queries (each with limit=100, as viewers page)."""
    prefix = patient_name.split("^")[0][:3] + "*"
    lim = {"limit": QIDO_LIMIT}
    return {
        "PatientID": {"PatientID": patient_id, **lim},
        "PatientName": {"PatientName": prefix, **lim},
        "StudyDate": {"StudyDate": QIDO_DATE_RANGE, **lim},
        "ModalitiesInStudy": {"ModalitiesInStudy": QIDO_MODALITY, **lim},
    }


def prepare(args: argparse.Namespace) -> Data:
    t0 = time.perf_counter()
    ct = _corpus.build_corpus(CACHE, seed=args.seed, kind="ct", indices=range(args.ct))
    small = _corpus.build_corpus(CACHE, seed=args.seed, kind="small", indices=range(args.small))
    extra = max(0, args.qido_n - args.ct - args.small) if "qido" in args.only else 0
    topup = _corpus.build_corpus(
        CACHE, seed=args.seed, kind="small", indices=range(args.small, args.small + extra)
    )
    ct_blobs, small_blobs = _corpus.read_bytes(ct.items), _corpus.read_bytes(small.items)
    pool = small.items or ct.items
    pid, pname = "NONE", "NONE"
    if pool:
        probe = pydicom.dcmread(pool[len(pool) // 2].path, stop_before_pixels=True)
        pid, pname = str(probe.PatientID), str(probe.PatientName)
    data = Data(
        ct,
        small,
        topup,
        ct_blobs,
        small_blobs,
        m.build_requests(ct_blobs, PER_REQUEST),
        m.build_requests(small_blobs, PER_REQUEST),
        m.build_requests(_corpus.read_bytes(topup.items), PER_REQUEST),
        qido_queries(pid, pname),
    )
    print(
        f"corpus: {len(ct.items)} CT ({ct.total_bytes / 1e6:.0f} MB), {len(small.items)} small "
        f"({small.total_bytes / 1e6:.0f} MB), {len(topup.items)} QIDO top-up; "
        f"{time.perf_counter() - t0:.1f} s",
        flush=True,
    )
    return data


# -- per-server measurements ----------------------------------------------------------------


def start(name: str, work: Path) -> _servers.Server:
    return _servers.start_medflow(work) if name == "medflow" else _servers.start_orthanc(work)


def declare_rows(res: Results, args: argparse.Namespace, data: Data) -> None:
    for kind, n in (("ct", len(data.ct.items)), ("small", len(data.small.items))):
        what = "CT 512x512" if kind == "ct" else "small 64x64"
        res.row(f"disk.{kind}", f"raw disk write+fsync, {what} x{n}", "MB/s", higher=True)
        for c in (1, 4):
            res.row(
                f"stow.{kind}.c{c}",
                f"STOW {what} x{n}, {c} client{'s' * (c > 1)}",
                "MB/s",
                higher=True,
                target=">= 1.5x",
                check=ratio_at_least(1.5),
            )
    total = len(data.ct.items) + len(data.small.items) + len(data.topup.items)
    for q in data.qido:
        res.row(
            f"qido.{q}",
            f"QIDO {q} @ {total:,} inst (p95)",
            "ms",
            higher=False,
            target="<= 0.5x",
            check=ratio_at_most(0.5),
        )
    for q in data.qido:
        res.row(
            f"qido1m.{q}",
            f"QIDO {q} @ {args.million:,} inst (p95)",
            "ms",
            higher=False,
            target="< 20 ms",
            check=value_below(20.0),
        )
    res.row(
        "wado.study",
        "WADO-RS study retrieve (1 client)",
        "MB/s",
        higher=True,
        target=">= 1.5x",
        check=ratio_at_least(1.5),
    )
    n_meta = min(len(data.ct.items), _corpus.METADATA_SERIES_SIZE)
    res.row(
        "metadata.series",
        f"series /metadata, {n_meta} instances (p95)",
        "s",
        higher=False,
        target="< 0.5 s",
        check=value_below(0.5),
    )
    res.row("frames", "frame 1 of a CT instance (p95)", "ms", higher=False)


def record_rate(res: Results, key: str, server: str, r: m.StowResult) -> None:
    row = res.rows[key]
    row.values[server] = r.mb_per_s
    note = f" ({r.failed_requests} failed req)" if r.failed_requests else ""
    row.shown[server] = f"{r.mb_per_s:.1f} ({r.inst_per_s:.0f} inst/s){note}"
    row.extra[server] = {
        "seconds": r.seconds,
        "instances": r.instances,
        "bytes": r.bytes,
        "inst_per_s": r.inst_per_s,
        "failed_requests": r.failed_requests,
        "errors": r.errors,
    }


def record_latency(res: Results, key: str, server: str, lat: m.Latency, scale: float) -> None:
    row = res.rows[key]
    row.values[server] = lat.p95 * scale
    fmt = "{:.1f}" if scale > 1 else "{:.3f}"
    row.shown[server] = f"{fmt.format(lat.p50 * scale)} / {fmt.format(lat.p95 * scale)}"
    if lat.detail:
        row.shown[server] += f" [{lat.detail}]"
    row.extra[server] = {
        "p50": lat.p50 * scale,
        "p95": lat.p95 * scale,
        "n": len(lat.samples),
        "detail": lat.detail,
    }


def attempt(res: Results, key: str, server: str, fn: Callable[[], None]) -> bool:
    """Run one measurement; on failure mark it n/a with the error and go on."""
    try:
        fn()
        return True
    except (m.EndpointError, OSError, ValueError, RuntimeError) as exc:
        res.na(key, server, exc)
        print(f"  {server} {key}: n/a: {exc}", flush=True)
        return False
    except Exception as exc:  # an unfinished endpoint may fail in any way: report, go on
        res.na(key, server, f"{type(exc).__name__}: {exc}")
        print(f"  {server} {key}: n/a: {type(exc).__name__}: {exc}", flush=True)
        return False


def bench_stow(
    res: Results, name: str, work: Path, data: Data, keep: bool
) -> _servers.Server | None:
    """STOW with 1 then 4 clients, each into a fresh server; returns the loaded 4-client one."""
    kept = None
    for clients in (1, 4):
        srv = start(name, work)
        try:
            for kind, reqs in (("ct", data.ct_reqs), ("small", data.small_reqs)):
                key = f"stow.{kind}.c{clients}"
                print(f"  {name}: {key} ...", flush=True)
                attempt(res, key, name, partial(stow_once, res, key, name, srv, reqs, clients))
        finally:
            if clients == 4 and keep:
                kept = srv
            else:
                srv.stop()
    return kept


def stow_once(
    res: Results, key: str, name: str, srv: _servers.Server, reqs: Requests, clients: int
) -> None:
    record_rate(res, key, name, m.stow(srv.dicomweb, reqs, clients))


def load_untimed(srv: _servers.Server, reqs: list[tuple[bytes, int, int]]) -> None:
    if reqs:
        r = m.stow(srv.dicomweb, reqs, 4)
        if r.failed_requests:
            raise m.EndpointError(f"loading: {r.failed_requests} requests failed: {r.errors[:1]}")


def bench_reads(
    res: Results, name: str, srv: _servers.Server, data: Data, args: argparse.Namespace
) -> None:
    if "qido" in args.only:
        print(f"  {name}: QIDO x{args.qido_reps} per query ...", flush=True)
        for q, params in data.qido.items():
            attempt(
                res,
                f"qido.{q}",
                name,
                lambda q=q, p=params: record_latency(
                    res, f"qido.{q}", name, m.qido(srv.dicomweb, p, args.qido_reps), 1000
                ),
            )
    ct_studies = data.ct.studies()
    if "wado" in args.only and ct_studies:
        print(f"  {name}: WADO studies ...", flush=True)
        targets = [(uid, len(it), sum(i.size for i in it)) for uid, it in ct_studies.items()]
        attempt(
            res,
            "wado.study",
            name,
            lambda: record_rate(res, "wado.study", name, m.wado_studies(srv.dicomweb, targets)),
        )
    if "metadata" in args.only and data.ct.items:
        first = data.ct.items[0]
        print(f"  {name}: series metadata ...", flush=True)
        attempt(
            res,
            "metadata.series",
            name,
            lambda: record_latency(
                res,
                "metadata.series",
                name,
                m.series_metadata(srv.dicomweb, first.study_uid, first.series_uid, args.meta_reps),
                1,
            ),
        )
    if "frames" in args.only and data.ct.items:
        rnd = random.Random(args.seed)
        picks = [rnd.choice(data.ct.items) for _ in range(args.frame_reps + 1)]
        targets3 = [(it.study_uid, it.series_uid, it.sop_uid) for it in picks]
        print(f"  {name}: frames ...", flush=True)
        attempt(
            res,
            "frames",
            name,
            lambda: record_latency(
                res, "frames", name, m.frames(srv.dicomweb, targets3, 512 * 512 * 2), 1000
            ),
        )


def bench_server(res: Results, name: str, work: Path, data: Data, args: argparse.Namespace) -> None:
    reads = bool({"qido", "wado", "metadata", "frames"} & set(args.only))
    if not reads and "stow" not in args.only:
        return
    print(f"[{name}]", flush=True)
    srv: _servers.Server | None = None
    try:
        if "stow" in args.only:
            srv = bench_stow(res, name, work, data, keep=reads)
        if not reads:
            return
        if srv is None:
            srv = start(name, work)
            load_untimed(srv, data.ct_reqs + data.small_reqs)
        if "qido" in args.only:
            load_untimed(srv, data.topup_reqs)
        bench_reads(res, name, srv, data, args)
        if name == "orthanc":
            res.extra_info["orthanc"] = srv.info
    except Exception as exc:  # the server could not start or load: every read is n/a
        print(f"  {name}: {type(exc).__name__}: {exc}", flush=True)
        for key, row in res.rows.items():
            if name not in row.values and not key.startswith(("disk", "qido1m")):
                res.na(key, name, exc)
    finally:
        if srv is not None:
            srv.stop()


def bench_million(res: Results, work: Path, args: argparse.Namespace) -> None:
    print(f"[medflow @ {args.million:,} instances]", flush=True)
    folder, stats = _million.ensure(CACHE, n=args.million, seed=args.seed)
    res.extra_info["million"] = {"data_dir": str(folder), "load": stats}
    if stats:
        print(f"  loaded: {stats}", flush=True)
    n_studies = max(1, args.million // 100)
    pid = _million.query_values(args.seed, _million.KIND, n_studies)["PatientID"]
    info = _corpus.study_info(
        args.seed, _million.KIND, n_studies // 2, _corpus.patient_pool_size(n_studies)
    )
    queries = qido_queries(pid, info.patient_name)
    srv = None
    try:
        srv = _servers.start_medflow(work, data_dir=folder)
        for q, params in queries.items():
            attempt(
                res,
                f"qido1m.{q}",
                "medflow",
                lambda q=q, p=params: record_latency(
                    res, f"qido1m.{q}", "medflow", m.qido(srv.dicomweb, p, args.qido_reps), 1000
                ),
            )
    except Exception as exc:
        for q in queries:
            res.na(f"qido1m.{q}", "medflow", exc)
    finally:
        if srv is not None:
            srv.stop(remove=False)


def bench_disk(res: Results, work: Path, data: Data) -> None:
    for kind, blobs in (("ct", data.ct_blobs), ("small", data.small_blobs)):
        if blobs:
            folder = work / f"disk-{kind}"
            record_rate(res, f"disk.{kind}", "medflow", m.disk_rate(folder, blobs))
            res.rows[f"disk.{kind}"].shown["orthanc"] = "(same disk)"
            shutil.rmtree(folder, ignore_errors=True)


# -- output ---------------------------------------------------------------------------------


def _fmt_ratio(r: float | None) -> str:
    return "" if r is None or math.isnan(r) else f"{r:.2f}x"


def print_table(res: Results, args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="DICOMweb: medflow vs Orthanc (latency cells: p50 / p95)")
    for col in ("measurement", "unit", "medflow", "Orthanc", "medflow/Orthanc", "target", "met?"):
        table.add_column(col, overflow="fold")
    for row in res.rows.values():
        if not row.values and not row.shown:
            continue
        met = row.met()
        table.add_row(
            row.label,
            row.unit,
            row.shown.get("medflow", "-"),
            row.shown.get("orthanc", "-"),
            _fmt_ratio(row.ratio()),
            row.target,
            "" if not row.target else ("yes" if met else "NO" if met is False else "n/a"),
        )
    Console(width=args.width).print(table)


def to_json(res: Results, args: argparse.Namespace) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH
    ).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": commit,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "args": {k: (list(v) if isinstance(v, tuple | list) else v) for k, v in vars(args).items()},
        "info": getattr(res, "extra_info", {}),
        "rows": [
            {
                "key": r.key,
                "label": r.label,
                "unit": r.unit,
                "values": r.values,
                "shown": r.shown,
                "ratio": r.ratio(),
                "target": r.target,
                "met": r.met(),
                "detail": r.extra,
            }
            for r in res.rows.values()
            if r.values or r.shown
        ],
    }


# -- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--ct", type=int, default=2000, help="CT-like 512x512 instances (0.5 MB)")
    p.add_argument("--small", type=int, default=5000, help="small 64x64 instances")
    p.add_argument("--qido-n", type=int, default=10_000, help="instances stored for the QIDO run")
    p.add_argument("--million", type=int, default=1_000_000, help="metadata-only index size")
    p.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help=f"comma-separated subset of {','.join(MEASUREMENTS)}",
    )
    p.add_argument("--servers", default=",".join(SERVERS), help="medflow,orthanc")
    p.add_argument("--qido-reps", type=int, default=50, help="timed repetitions per query")
    p.add_argument("--meta-reps", type=int, default=10, help="timed series /metadata calls")
    p.add_argument("--frame-reps", type=int, default=100, help="timed frame requests")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke run: small sizes, < 2 min")
    p.add_argument("--install", action="store_true", help="apt-get install Orthanc if missing")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--width", type=int, default=160, help="table width")
    args = p.parse_args(argv)
    if args.quick:
        args.ct, args.small, args.qido_n, args.million = 120, 300, 600, 100_000
        args.meta_reps, args.frame_reps = 5, 30
    args.only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    if set(args.only) <= {"qido1m"}:
        args.ct = args.small = args.qido_n = 0  # no corpus needed
    args.servers = tuple(x.strip() for x in args.servers.split(",") if x.strip())
    bad = set(args.only) - set(MEASUREMENTS) or set(args.servers) - set(SERVERS)
    if bad:
        p.error(f"unknown: {sorted(bad)}")
    if args.qido_reps < 50:
        print("note: fewer than 50 QIDO repetitions; percentiles are rough", flush=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "orthanc" in args.servers and _servers.orthanc_available():
        if args.install:
            _servers.install_orthanc()
        else:
            print(f"error: {_servers.orthanc_available()}", file=sys.stderr)
            return 2
    (CACHE / "work").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE / "work"))
    res = Results()
    t0 = time.perf_counter()
    try:
        data = prepare(args)
        declare_rows(res, args, data)
        if "disk" in args.only:
            print("[disk]", flush=True)
            bench_disk(res, work, data)
        for name in args.servers:
            bench_server(res, name, work, data, args)
        if "qido1m" in args.only and args.million > 0 and "medflow" in args.servers:
            bench_million(res, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"total {time.perf_counter() - t0:.0f} s")
    print_table(res, args)
    if args.json:
        args.json.write_text(json.dumps(to_json(res, args), indent=2, default=str))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
