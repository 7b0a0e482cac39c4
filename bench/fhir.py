"""FHIR benchmark (issue 4): transaction-Bundle import rate, then search latency at scale.

Import: a deterministic synthetic population (``_fhir_population.py``: ~100 resources a patient,
Patient, Encounter, Condition, Observation, MedicationRequest, Procedure, ServiceRequest,
DiagnosticReport; ``urn:uuid:`` references) is posted as transaction Bundles (``POST /fhir``,
one patient a Bundle by default) by ``--clients`` threads, one keep-alive httpx client each.
The Bundles are serialized before the clock starts. Reported: resources/s, Bundles/s, the
server's CPU seconds per 1,000 resources and peak RSS, errors (must be 0). One warm-up
transaction is sent first and rolled back by the server (its last entry holds a conditional
reference that matches nothing: 412), so the timed import does not pay for loading the
structure definitions and compiling the FHIRPath of the search parameters.

Searches, each over HTTP against the running server, one client, values drawn from the
population and different on every call (3 warm-ups, then ``--reps`` timed):

    identifier   Patient?identifier=urn:medflow:mrn|MRN-0001234
    condition    Condition?code=<SNOMED>&onset-date=ge<Y>-01-01&onset-date=lt<Y+2>-01-01
    observation  Observation?code=<LOINC>&value-quantity=gt<v>|<UCUM system>|<unit>&_count=20
    chain        Condition?code=<SNOMED>&subject:Patient.birthdate=lt<1940..1960>-01-01&_count=20
    revinclude   Patient?identifier=<MRN>&_revinclude=Condition:subject
                 &_revinclude=Encounter:subject
    has          Patient?_has:Condition:subject:code=<SNOMED>&_count=20

Codes are ``system|code`` tokens (``http://snomed.info/sct|38341003``); the condition code is
drawn by prevalence, the onset window is two years in 2000-2025, the value threshold lies near
the code's 90th-98th percentile.
No ``_total`` is sent (``--total`` can add one): what a client that pages through results
does; medflow then counts nothing beyond what the page shows (``--total accurate`` adds a
``COUNT(*)`` over all matches to every query with more than one page). A throughput line follows:
searches/s of ``--throughput-clients`` threads over the mixed set for ``--throughput-seconds``.

    .venv/bin/python bench/fhir.py --quick                         # 200 patients (~20k), ~1 min
    .venv/bin/python bench/fhir.py --patients 1000                 # ~100k resources
    .venv/bin/python bench/fhir.py --json bench/.cache/fhir.json   # full: 10k patients, ~1M
    .venv/bin/python bench/fhir.py --reuse --only import           # import once, keep the data
    .venv/bin/python bench/fhir.py --reuse --only search           # then rerun the searches
    .venv/bin/python bench/fhir.py --database-url postgresql://u:p@localhost/medflow_bench

Published anchor: HAPI FHIR JPA imports ~2,200 resources/s and serves ~1,000 searches/s on
8 vCPUs. Targets (issue 4), on this 2-core machine: import >= 1,000 resources/s; every search
p95 < 50 ms at 1M resources. Run by hand, never by tests. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fhir_population as pop
import _measure as m
import _servers

BENCH = Path(__file__).resolve().parent
CACHE = BENCH / ".cache"
MARKER = "bench-fhir-population.json"
PARTS = ("import", "search")
FHIR_JSON = "application/fhir+json"
IMPORT_TARGET = 1000.0
"""resources/s (issue 4)."""
SEARCH_TARGET = 0.050
"""p95 seconds of every search (issue 4)."""
HAPI_IMPORT = 2200.0
HAPI_SEARCHES = 1000.0
HAPI_VCPUS = 8


# -- the searches ------------------------------------------------------------------------------

Params = list[tuple[str, str]]
Query = Callable[[random.Random, int], tuple[str, Params]]


def _mrn(rng: random.Random, patients: int) -> str:
    return f"{pop.MRN_SYSTEM}|{pop.mrn(pop.random_patient(rng, patients))}"


def q_identifier(rng: random.Random, patients: int) -> tuple[str, Params]:
    return "Patient", [("identifier", _mrn(rng, patients))]


def q_condition(rng: random.Random, patients: int) -> tuple[str, Params]:
    kind = pop.condition_code(rng)
    ge, lt = pop.onset_window(rng)
    return "Condition", [
        ("code", f"{pop.SNOMED}|{kind.snomed}"),
        ("onset-date", f"ge{ge}"),
        ("onset-date", f"lt{lt}"),
    ]


def q_observation(rng: random.Random, patients: int) -> tuple[str, Params]:
    kind, value = pop.observation_threshold(rng)
    return "Observation", [
        ("code", f"{pop.LOINC}|{kind.loinc}"),
        ("value-quantity", f"gt{value}|{pop.UCUM}|{kind.unit}"),
        ("_count", "20"),
    ]


def q_chain(rng: random.Random, patients: int) -> tuple[str, Params]:
    kind = pop.condition_code(rng)
    return "Condition", [
        ("code", f"{pop.SNOMED}|{kind.snomed}"),
        ("subject:Patient.birthdate", f"lt{pop.birthdate_cutoff(rng)}"),
        ("_count", "20"),
    ]


def q_revinclude(rng: random.Random, patients: int) -> tuple[str, Params]:
    return "Patient", [
        ("identifier", _mrn(rng, patients)),
        ("_revinclude", "Condition:subject"),
        ("_revinclude", "Encounter:subject"),
    ]


def q_has(rng: random.Random, patients: int) -> tuple[str, Params]:
    kind = pop.condition_code(rng)
    return "Patient", [
        ("_has:Condition:subject:code", f"{pop.SNOMED}|{kind.snomed}"),
        ("_count", "20"),
    ]


QUERIES: dict[str, Query] = {
    "identifier": q_identifier,
    "condition": q_condition,
    "observation": q_observation,
    "chain": q_chain,
    "revinclude": q_revinclude,
    "has": q_has,
}
LABELS = {
    "identifier": "Patient by identifier",
    "condition": "Condition by code + onset range",
    "observation": "Observation by code + value-quantity",
    "chain": "Condition chain subject:Patient.birthdate",
    "revinclude": "Patient + _revinclude Condition, Encounter",
    "has": "Patient _has:Condition:subject:code",
}


def query_url(rtype: str, params: Params) -> str:
    """The query as a client writes it (for the table; httpx percent-encodes what it sends)."""
    return f"{rtype}?" + "&".join(f"{k}={v}" for k, v in params)


# -- results -----------------------------------------------------------------------------------


@dataclass
class ImportRun:
    patients: int
    first_patient: int
    bundles: int
    resources: int
    bytes: int
    clients: int
    per_bundle: int
    seconds: float
    server_cpu_s: float
    client_cpu_s: float
    hwm_bytes: int
    rss_bytes: int
    build_seconds: float
    errors: int = 0
    """Bundles that failed (their resources are not counted as imported)."""
    first_error: str | None = None
    stored: dict[str, int] = field(default_factory=dict)
    """Resources per type on the server after the import (``_summary=count``)."""

    @property
    def res_per_s(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0

    @property
    def bundles_per_s(self) -> float:
        return self.bundles / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_1k(self) -> float:
        return self.server_cpu_s * 1000 / self.resources if self.resources else 0.0


@dataclass
class SearchRun:
    name: str
    example: str
    latency: m.Latency
    totals: list[int | None]
    """``Bundle.total`` of each timed call (None when the server sent none)."""
    page: list[int]
    """Entries with ``search.mode`` match on the first page."""
    included: list[int]

    @property
    def mean_matches(self) -> float:
        values = [t if t is not None else p for t, p in zip(self.totals, self.page, strict=True)]
        return sum(values) / len(values) if values else 0.0

    @property
    def has_totals(self) -> bool:
        return all(t is not None for t in self.totals)


@dataclass
class Throughput:
    clients: int
    searches: int
    seconds: float
    errors: int
    server_cpu_s: float
    client_cpu_s: float
    """CPU of this process (the HTTP clients) meanwhile: it shares the cores with the server."""
    first_error: str | None = None

    @property
    def per_s(self) -> float:
        return self.searches / self.seconds if self.seconds else 0.0


@dataclass
class Results:
    imported: ImportRun | str | None = None
    searches: dict[str, SearchRun | str] = field(default_factory=dict)
    throughput: Throughput | str | None = None
    population: int = 0
    """Patients on the server when the searches ran."""
    resources: int = 0
    """Resources on the server when the searches ran."""
    info: dict[str, Any] = field(default_factory=dict)


# -- helpers -----------------------------------------------------------------------------------


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def client() -> httpx.Client:
    return httpx.Client(timeout=600, headers={"Accept-Encoding": "identity", "Accept": FHIR_JSON})


def fail_message(exc: BaseException) -> str:
    text = str(exc).splitlines()[0][:90] if str(exc) else ""
    return f"n/a ({type(exc).__name__}: {text})"


def _reset_peak(pid: int) -> None:
    """Reset VmHWM to the current RSS (``clear_refs`` 5, Linux >= 4.0); best effort."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _mask(url: str | None) -> str | None:
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url) if url else None


def count(c: httpx.Client, base: str, rtype: str) -> int:
    resp = c.get(f"{base}/fhir/{rtype}", params={"_summary": "count"})
    if resp.status_code != 200:
        raise m.EndpointError(f"count {rtype}: HTTP {resp.status_code} {resp.text[:200]!r}")
    return int(resp.json().get("total", 0))


RESOURCE_TYPES = (
    "Patient",
    "Encounter",
    "Condition",
    "Observation",
    "MedicationRequest",
    "Procedure",
    "ServiceRequest",
    "DiagnosticReport",
)


def counts(base: str) -> dict[str, int]:
    with client() as c:
        return {t: count(c, base, t) for t in RESOURCE_TYPES}


# -- import ------------------------------------------------------------------------------------


def build_bundles(args: argparse.Namespace, start: int, stop: int) -> list[tuple[bytes, int]]:
    """Every Bundle of patients ``start..stop-1``, serialized, before the clock."""
    out: list[tuple[bytes, int]] = []
    total = max(1, stop - start)
    step = max(1, total // 10)
    next_mark = step
    for body, n in pop.bundles(args.seed, start, stop, args.patients_per_bundle):
        out.append((body, n))
        done = min(total, len(out) * args.patients_per_bundle)
        if done >= next_mark and done < total:
            log(f"  built {done:,}/{total:,} patients")
            next_mark += step
    return out


def warm_up(base: str, seed: int) -> None:
    """A transaction with one patient's resources whose last entry holds a conditional
    reference that matches nothing: the server validates, indexes and writes them, then fails
    the entry (412) and rolls everything back. Loads the definitions before the clock."""
    entries = pop.patient_entries(seed, 10**8 - 1)
    entries.append(
        {
            "fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000ff",
            "resource": {
                "resourceType": "Condition",
                "subject": {
                    "reference": "Patient?identifier=urn:medflow:bench-warmup|no-such-patient"
                },
            },
            "request": {"method": "POST", "url": "Condition"},
        }
    )
    body = json.dumps(pop.transaction(entries), separators=(",", ":")).encode()
    with client() as c:
        resp = c.post(f"{base}/fhir", content=body, headers={"Content-Type": FHIR_JSON})
    if resp.status_code < 400:
        raise RuntimeError(
            f"the warm-up transaction was not rolled back (HTTP {resp.status_code}): "
            "the population now holds an extra patient; use a fresh data dir"
        )


def post_bundles(
    base: str,
    work: Iterator[tuple[bytes, int]] | list[tuple[bytes, int]],
    total_bundles: int,
    clients: int,
) -> tuple[float, int, int, int, int, str | None]:
    """POST every Bundle with ``clients`` threads; returns (seconds, bundles ok, resources ok,
    bytes, failed bundles, first error)."""
    q: queue.Queue[tuple[bytes, int] | None] = queue.Queue(maxsize=8 * clients)
    lock = threading.Lock()
    state = {"bundles": 0, "resources": 0, "bytes": 0, "failed": 0, "sent": 0}
    first_error: list[str] = []
    step = max(1, total_bundles // 10)
    start = time.perf_counter()

    def run() -> None:
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=minimal"}
        with client() as c:
            while True:
                item = q.get()
                if item is None:
                    return
                body, n = item
                error = None
                try:
                    resp = c.post(f"{base}/fhir", content=body, headers=headers)
                    created = resp.content.count(b'"201 Created"')
                    if resp.status_code != 200 or created != n:
                        error = (
                            f"HTTP {resp.status_code}, {created}/{n} created: {resp.text[:2000]}"
                        )
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                with lock:
                    state["sent"] += 1
                    if error is None:
                        state["bundles"] += 1
                        state["resources"] += n
                        state["bytes"] += len(body)
                    else:
                        state["failed"] += 1
                        if not first_error:
                            first_error.append(error)
                    sent = state["sent"]
                    if sent % step == 0 and sent < total_bundles:
                        dt = time.perf_counter() - start
                        log(
                            f"  {sent:,}/{total_bundles:,} Bundles, {state['resources']:,} "
                            f"resources, {state['resources'] / dt:,.0f} res/s, "
                            f"{state['failed']} failed"
                        )

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for item in work:  # a list is prebuilt; a generator produces while the threads post
        q.put(item)
    for _ in threads:
        q.put(None)
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return (
        elapsed,
        state["bundles"],
        state["resources"],
        state["bytes"],
        state["failed"],
        first_error[0] if first_error else None,
    )


def py_spy_start(pid: int, path: Path) -> subprocess.Popen[bytes] | None:
    """Attach py-spy to the server (and its workers) until stopped; None if not installed."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(exe).exists():
        log("  --profile: py-spy is not installed (pip install py-spy); not profiling")
        return None
    fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(path.suffix, "raw")
    argv = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--rate",
        "100",
        "--format",
        fmt,
        "--output",
        str(path),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    return proc


def py_spy_stop(proc: subprocess.Popen[bytes] | None, path: Path) -> None:
    if proc is None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    if path.exists():
        log(f"  py-spy profile: {path}")
    else:
        log(f"  py-spy wrote nothing: {err.decode(errors='replace')[-300:]}")


def bench_import(
    res: Results, srv: _servers.Server, args: argparse.Namespace, start: int, stop: int
) -> ImportRun:
    n_patients = stop - start
    bundles_n = -(-n_patients // args.patients_per_bundle)
    t0 = time.perf_counter()
    work: Iterator[tuple[bytes, int]] | list[tuple[bytes, int]]
    if args.stream:
        work = pop.bundles(args.seed, start, stop, args.patients_per_bundle)
        log(f"import: patients {start:,}..{stop - 1:,} generated while posting (--stream)")
    else:
        log(f"import: building {bundles_n:,} Bundles of patients {start:,}..{stop - 1:,} ...")
        work = build_bundles(args, start, stop)
        size = sum(len(b) for b, _ in work)
        n_res = sum(n for _, n in work)
        log(
            f"  built {n_res:,} resources, {size / 1e6:.0f} MB of JSON in "
            f"{time.perf_counter() - t0:.1f} s"
        )
    build_s = time.perf_counter() - t0
    warm_up(srv.base_url, args.seed)
    assert srv.proc is not None
    spy = py_spy_start(srv.proc.pid, args.profile) if args.profile else None
    _reset_peak(srv.proc.pid)
    before = srv.usage()
    cpu0 = time.process_time()
    log(f"import: posting {bundles_n:,} Bundles with {args.clients} client(s) ...")
    seconds, ok, resources, size, failed, first = post_bundles(
        srv.base_url, work, bundles_n, args.clients
    )
    cpu1 = time.process_time()
    after = srv.usage()
    if args.profile:
        py_spy_stop(spy, args.profile)
    run = ImportRun(
        patients=n_patients,
        first_patient=start,
        bundles=ok,
        resources=resources,
        bytes=size,
        clients=args.clients,
        per_bundle=args.patients_per_bundle,
        seconds=seconds,
        server_cpu_s=after.cpu_seconds - before.cpu_seconds,
        client_cpu_s=cpu1 - cpu0,
        hwm_bytes=after.hwm_bytes,
        rss_bytes=after.rss_bytes,
        build_seconds=build_s,
        errors=failed,
        first_error=first,
    )
    log(
        f"  {resources:,} resources in {seconds:.1f} s: {run.res_per_s:,.0f} res/s, "
        f"{run.bundles_per_s:.1f} Bundles/s, server CPU {run.cpu_per_1k:.2f} s/1k res, "
        f"peak RSS {run.hwm_bytes / 2**20:.0f} MiB, {failed} failed Bundles"
    )
    if first:
        log(f"  first error: {first}")
    run.stored = counts(srv.base_url)
    return run


# -- searches ----------------------------------------------------------------------------------


def _matches(body: dict[str, Any]) -> tuple[int | None, int, int]:
    entries = body.get("entry") or []
    page = sum(1 for e in entries if (e.get("search") or {}).get("mode", "match") == "match")
    total = body.get("total")
    return (int(total) if total is not None else None), page, len(entries) - page


def _params(params: Params, args: argparse.Namespace) -> httpx.QueryParams:
    extra = [("_total", str(args.total))] if args.total else []
    return httpx.QueryParams(tuple([*params, *extra]))


def search_latency(
    base: str, name: str, args: argparse.Namespace, patients: int, warmup: int = 3
) -> SearchRun:
    rng = random.Random(f"fhir-search:{args.seed}:{name}")
    make = QUERIES[name]
    samples: list[float] = []
    totals: list[int | None] = []
    pages: list[int] = []
    included: list[int] = []
    example = ""
    with client() as c:
        for i in range(warmup + args.reps):
            rtype, params = make(rng, patients)
            query = _params(params, args)
            t0 = time.perf_counter()
            resp = c.get(f"{base}/fhir/{rtype}", params=query)
            body = resp.content
            dt = time.perf_counter() - t0
            if resp.status_code != 200:
                raise m.EndpointError(f"HTTP {resp.status_code}: {body[:300]!r}")
            bundle = json.loads(body)
            if any(
                iss.get("severity") in ("error", "warning")
                for e in bundle.get("entry") or []
                if (e.get("search") or {}).get("mode") == "outcome"
                for iss in e["resource"].get("issue", [])
            ):
                raise m.EndpointError(f"the server ignored part of {query_url(rtype, params)}")
            if i >= warmup:
                if not example:
                    example = query_url(rtype, list(query.multi_items()))
                samples.append(dt)
                total, page, inc = _matches(bundle)
                totals.append(total)
                pages.append(page)
                included.append(inc)
    return SearchRun(name, example, m.Latency(samples), totals, pages, included)


def throughput(srv: _servers.Server, args: argparse.Namespace, patients: int) -> Throughput:
    """``clients`` threads, each cycling through the six queries (fresh values every call)."""
    names = list(QUERIES)
    lock = threading.Lock()
    state = {"n": 0, "errors": 0}
    first_error: list[str] = []
    stop_at = [0.0]

    def run(k: int) -> None:
        rng = random.Random(f"fhir-throughput:{args.seed}:{k}")
        j = k
        with client() as c:
            while time.perf_counter() < stop_at[0]:
                rtype, params = QUERIES[names[j % len(names)]](rng, patients)
                j += 1
                try:
                    resp = c.get(f"{srv.base_url}/fhir/{rtype}", params=_params(params, args))
                    ok = resp.status_code == 200
                    err = None if ok else f"HTTP {resp.status_code}: {resp.text[:300]}"
                except httpx.HTTPError as exc:
                    ok, err = False, f"{type(exc).__name__}: {exc}"
                with lock:
                    state["n" if ok else "errors"] += 1
                    if err and not first_error:
                        first_error.append(err)

    before = srv.usage()
    cpu0 = time.process_time()
    threads = [
        threading.Thread(target=run, args=(k,), daemon=True) for k in range(args.throughput_clients)
    ]
    start = time.perf_counter()
    stop_at[0] = start + args.throughput_seconds
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    after = srv.usage()
    return Throughput(
        args.throughput_clients,
        state["n"],
        elapsed,
        state["errors"],
        after.cpu_seconds - before.cpu_seconds,
        time.process_time() - cpu0,
        first_error[0] if first_error else None,
    )


def bench_search(res: Results, srv: _servers.Server, args: argparse.Namespace) -> None:
    patients = res.population
    log(
        f"search: {args.reps} timed calls per query (after 3 warm-ups) at {patients:,} "
        f"patients, {res.resources:,} resources ..."
    )
    for name in QUERIES:
        try:
            run = search_latency(srv.base_url, name, args, patients)
            res.searches[name] = run
            inc = (
                f", {sum(run.included) / len(run.included):.1f} included"
                if any(run.included)
                else ""
            )
            log(
                f"  {name}: p50 {run.latency.p50 * 1e3:.1f} ms, p95 "
                f"{run.latency.p95 * 1e3:.1f} ms, {run.mean_matches:.1f} matches{inc}"
            )
        except Exception as exc:
            res.searches[name] = fail_message(exc)
            log(f"  {name}: {fail_message(exc)}")
    if args.throughput_seconds > 0:
        log(
            f"search: throughput, {args.throughput_clients} clients for "
            f"{args.throughput_seconds:.0f} s over the mixed set ..."
        )
        try:
            tp = throughput(srv, args, patients)
            res.throughput = tp
            log(
                f"  {tp.per_s:.0f} searches/s, server CPU {tp.server_cpu_s / tp.seconds:.2f} "
                f"cores, clients' CPU {tp.client_cpu_s / tp.seconds:.2f} cores, "
                f"{tp.errors} errors"
            )
            if tp.first_error:
                log(f"  first error: {tp.first_error}")
        except Exception as exc:
            res.throughput = fail_message(exc)
            log(f"  throughput: {fail_message(exc)}")


# -- data dir and population marker ------------------------------------------------------------


def read_marker(data_dir: Path) -> dict[str, Any] | None:
    path = data_dir / MARKER
    if not path.exists():
        return None
    marker: dict[str, Any] = json.loads(path.read_text())
    return marker


def write_marker(data_dir: Path, args: argparse.Namespace, patients: int, resources: int) -> None:
    marker = {
        "version": pop.VERSION,
        "seed": args.seed,
        "patients": patients,
        "resources": resources,
        "database_url": _mask(args.database_url),
        "written": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }
    (data_dir / MARKER).write_text(json.dumps(marker, indent=2))


def plan_population(args: argparse.Namespace, data_dir: Path, existing: int) -> tuple[int, int]:
    """(first patient to import, patients wanted): what the data dir has decides the start."""
    marker = read_marker(data_dir)
    if marker is not None:
        if marker.get("version") != pop.VERSION or marker.get("seed") != args.seed:
            raise SystemExit(
                f"error: {data_dir} holds population v{marker.get('version')} seed "
                f"{marker.get('seed')}, not v{pop.VERSION} seed {args.seed}"
            )
        if marker.get("database_url") != _mask(args.database_url):
            raise SystemExit(
                f"error: {data_dir} was filled with database "
                f"{marker.get('database_url') or 'SQLite'}"
            )
        have = int(marker["patients"])
        if existing != have:
            raise SystemExit(
                f"error: {data_dir}: the marker says {have} patients, the server "
                f"has {existing}; use a fresh data dir"
            )
        if not args.reuse and "import" in args.only:
            raise SystemExit(f"error: {data_dir} already holds a population: pass --reuse")
        return have, max(have, args.patients)
    if existing:
        raise SystemExit(
            f"error: the server already holds {existing} patients that this "
            "benchmark did not record; use a fresh data dir / database"
        )
    return 0, args.patients


# -- output ------------------------------------------------------------------------------------


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "NO")


def _n(x: float) -> str:
    return f"{x:,.0f}"


def import_table(run: ImportRun) -> Any:
    from rich.table import Table

    table = Table(
        title=f"FHIR import: transaction Bundles (POST /fhir), {run.per_bundle} "
        f"patient(s) a Bundle, {run.clients} client(s)"
    )
    cols = (
        "patients",
        "Bundles",
        "resources",
        "seconds",
        "res/s",
        "Bundles/s",
        "server CPU s/1k res",
        "client CPU s",
        "peak RSS MiB",
        "stored",
        "failed Bundles",
    )
    for col in cols:
        table.add_column(col, overflow="fold")
    stored = sum(run.stored.values())
    first = f" (from {run.first_patient:,})" if run.first_patient else ""
    table.add_row(
        f"{run.patients:,}{first}",
        _n(run.bundles),
        _n(run.resources),
        f"{run.seconds:.1f}",
        _n(run.res_per_s),
        f"{run.bundles_per_s:.1f}",
        f"{run.cpu_per_1k:.2f}",
        f"{run.client_cpu_s:.1f}",
        f"{run.hwm_bytes / 2**20:.0f}",
        _n(stored),
        str(run.errors),
    )
    return table


def search_table(res: Results) -> Any:
    from rich.table import Table

    table = Table(
        title=f"FHIR search over HTTP, one client, ms (population: "
        f"{res.population:,} patients, {res.resources:,} resources)"
    )
    cols = (
        "query",
        "example (first timed call)",
        "p50",
        "p95",
        "mean matches",
        "mean included",
        f"target p95 < {SEARCH_TARGET * 1e3:.0f}",
        "met?",
    )
    for col in cols:
        table.add_column(col, overflow="fold")
    for name, run in res.searches.items():
        if not isinstance(run, SearchRun):
            table.add_row(LABELS[name], run, "", "", "", "", "", "")
            continue
        matches = f"{run.mean_matches:,.1f}" + ("" if run.has_totals else " (page)")
        inc = sum(run.included) / len(run.included) if run.included else 0.0
        table.add_row(
            LABELS[name],
            run.example,
            f"{run.latency.p50 * 1e3:.1f}",
            f"{run.latency.p95 * 1e3:.1f}",
            matches,
            f"{inc:.1f}" if inc else "",
            f"< {SEARCH_TARGET * 1e3:.0f}",
            _met(run.latency.p95 < SEARCH_TARGET),
        )
    return table


def summary_table(res: Results) -> Any:
    from rich.table import Table

    cores = os.cpu_count() or 1
    table = Table(
        title=f"medflow on this machine ({cores} cores) vs the published HAPI FHIR "
        f"JPA anchor ({HAPI_VCPUS} vCPUs) and the targets of issue 4"
    )
    cols = (
        "measure",
        f"medflow ({cores} cores)",
        "per core",
        f"HAPI JPA ({HAPI_VCPUS} vCPUs)",
        "HAPI per vCPU",
        "target (issue 4)",
        "met?",
    )
    for col in cols:
        table.add_column(col, overflow="fold")
    run = res.imported
    if isinstance(run, ImportRun):
        ok = run.res_per_s >= IMPORT_TARGET and run.errors == 0
        table.add_row(
            "import resources/s",
            _n(run.res_per_s),
            _n(run.res_per_s / cores),
            _n(HAPI_IMPORT),
            _n(HAPI_IMPORT / HAPI_VCPUS),
            f">= {_n(IMPORT_TARGET)}, 0 errors",
            _met(ok),
        )
    elif run is not None:
        table.add_row("import resources/s", run, "", _n(HAPI_IMPORT), "", "", "n/a")
    runs = [r for r in res.searches.values() if isinstance(r, SearchRun)]
    if res.searches:
        worst = max(runs, key=lambda r: r.latency.p95) if runs else None
        all_ok = len(runs) == len(res.searches) and all(r.latency.p95 < SEARCH_TARGET for r in runs)
        table.add_row(
            "worst search p95 ms",
            f"{worst.latency.p95 * 1e3:.1f} ({worst.name})" if worst else "n/a",
            "",
            "",
            "",
            f"< {SEARCH_TARGET * 1e3:.0f} (all six)",
            _met(all_ok if runs else None),
        )
    tp = res.throughput
    if isinstance(tp, Throughput):
        table.add_row(
            f"searches/s ({tp.clients} clients, mixed; CPU cores: server "
            f"{tp.server_cpu_s / tp.seconds:.1f}, clients {tp.client_cpu_s / tp.seconds:.1f})",
            _n(tp.per_s),
            _n(tp.per_s / cores),
            _n(HAPI_SEARCHES),
            _n(HAPI_SEARCHES / HAPI_VCPUS),
            "-",
            "n/a",
        )
    elif tp is not None:
        table.add_row("searches/s", tp, "", _n(HAPI_SEARCHES), "", "-", "n/a")
    return table


def print_tables(res: Results, args: argparse.Namespace) -> None:
    from rich.console import Console

    console = Console(width=args.width)
    if isinstance(res.imported, ImportRun):
        console.print(import_table(res.imported))
        if res.imported.first_error:
            console.print(f"first error: {res.imported.first_error[:2000]}", markup=False)
    if res.searches:
        console.print(search_table(res))
    console.print(summary_table(res))


def to_json(res: Results, args: argparse.Namespace) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=BENCH
    ).stdout.strip()
    imported: dict[str, Any] | str | None = None
    run = res.imported
    if isinstance(run, ImportRun):
        imported = {
            "patients": run.patients,
            "first_patient": run.first_patient,
            "bundles": run.bundles,
            "resources": run.resources,
            "bytes": run.bytes,
            "clients": run.clients,
            "patients_per_bundle": run.per_bundle,
            "seconds": run.seconds,
            "resources_per_s": run.res_per_s,
            "bundles_per_s": run.bundles_per_s,
            "server_cpu_s": run.server_cpu_s,
            "server_cpu_s_per_1k": run.cpu_per_1k,
            "client_cpu_s": run.client_cpu_s,
            "peak_rss_bytes": run.hwm_bytes,
            "rss_bytes": run.rss_bytes,
            "build_seconds": run.build_seconds,
            "failed_bundles": run.errors,
            "first_error": run.first_error,
            "stored": run.stored,
            "target": IMPORT_TARGET,
            "met": run.res_per_s >= IMPORT_TARGET and run.errors == 0,
        }
    else:
        imported = run
    searches: dict[str, Any] = {}
    for name, s in res.searches.items():
        if isinstance(s, SearchRun):
            searches[name] = {
                "example": s.example,
                "p50_ms": s.latency.p50 * 1e3,
                "p95_ms": s.latency.p95 * 1e3,
                "n": len(s.latency.samples),
                "mean_matches": s.mean_matches,
                "totals_sent": s.has_totals,
                "mean_included": sum(s.included) / len(s.included) if s.included else 0,
                "met": s.latency.p95 < SEARCH_TARGET,
            }
        else:
            searches[name] = {"error": s}
    tp: dict[str, Any] | str | None
    if isinstance(res.throughput, Throughput):
        t = res.throughput
        tp = {
            "clients": t.clients,
            "searches": t.searches,
            "seconds": t.seconds,
            "searches_per_s": t.per_s,
            "errors": t.errors,
            "server_cpu_s": t.server_cpu_s,
            "client_cpu_s": t.client_cpu_s,
            "first_error": t.first_error,
        }
    else:
        tp = res.throughput
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": commit,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_end": os.getloadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "args": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k != "database_url"
        }
        | {"database_url": _mask(args.database_url)},
        "info": res.info,
        "population": {"patients": res.population, "resources": res.resources},
        "anchors": {
            "hapi_import_res_per_s": HAPI_IMPORT,
            "hapi_searches_per_s": HAPI_SEARCHES,
            "hapi_vcpus": HAPI_VCPUS,
        },
        "targets": {"import_res_per_s": IMPORT_TARGET, "search_p95_ms": SEARCH_TARGET * 1e3},
        "import": imported,
        "search": searches,
        "throughput": tp,
    }


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--patients", type=int, default=10_000, help="patients (~100 resources each)")
    p.add_argument("--clients", type=int, default=2, help="concurrent HTTP clients posting")
    p.add_argument("--patients-per-bundle", type=int, default=1, help="patients a transaction")
    p.add_argument("--reps", type=int, default=50, help="timed calls per query (after 3 warm-ups)")
    p.add_argument("--throughput-clients", type=int, default=2)
    p.add_argument("--throughput-seconds", type=float, default=20, help="0 skips throughput")
    p.add_argument(
        "--total",
        choices=("none", "estimate", "accurate"),
        help="send _total=<this> with every search (default: none sent)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, help="medflow data dir (kept); default: a temp dir")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="keep the data dir (default bench/.cache/fhir-v<V>-seed<S>) and import "
        "only the patients it lacks",
    )
    p.add_argument("--only", default=",".join(PARTS), help="import,search")
    p.add_argument(
        "--database-url",
        help="index database of the server (MEDFLOW_DATABASE_URL), e.g. "
        "postgresql://user:pw@localhost/db (must be empty, or --reuse)",
    )
    p.add_argument("--workers", type=int, help="medflow serve --workers (MEDFLOW_BENCH_WORKERS)")
    p.add_argument(
        "--stream",
        action="store_true",
        help="generate Bundles while posting instead of before the clock",
    )
    p.add_argument(
        "--profile",
        type=Path,
        help="py-spy the server during the import into this file (.svg flamegraph, "
        ".json speedscope, else raw collapsed stacks)",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 200 patients, 20 reps")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--width", type=int, default=180, help="table width")
    args = p.parse_args(argv)
    if args.quick:
        args.patients, args.reps = 200, 20
        args.throughput_seconds = min(args.throughput_seconds, 5)
    args.only = tuple(x.strip() for x in args.only.split(",") if x.strip())
    if set(args.only) - set(PARTS):
        p.error(f"--only: unknown {sorted(set(args.only) - set(PARTS))}")
    if min(args.patients, args.clients, args.patients_per_bundle, args.reps) < 1:
        p.error("--patients, --clients, --patients-per-bundle, --reps: positive integers")
    if args.only == ("search",) and not (args.reuse or args.data_dir):
        p.error("--only search needs a kept population: --reuse (or --data-dir with one)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.workers:
        os.environ["MEDFLOW_BENCH_WORKERS"] = str(args.workers)
    (CACHE / "work").mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=CACHE / "work"))
    keep = bool(args.reuse or args.data_dir)
    kept = CACHE / f"fhir-v{pop.VERSION}-seed{args.seed}{'-db' if args.database_url else ''}"
    data_dir = args.data_dir or (kept if args.reuse else work / "medflow-fhir")
    data_dir = Path(os.path.realpath(data_dir))
    env = {"MEDFLOW_DATABASE_URL": args.database_url} if args.database_url else None
    res = Results()
    res.info.update(
        {
            "data_dir": str(data_dir),
            "kept": keep,
            "medflow_src": medflow_source(),
            "loadavg_start": os.getloadavg(),
        }
    )
    t0 = time.perf_counter()
    log(
        f"load average at start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores); "
        f"data dir {data_dir}{' (kept)' if keep else ''}"
    )
    srv = None
    try:
        srv = _servers.start_medflow(work, data_dir=data_dir, env=env)
        with client() as c:
            existing = count(c, srv.base_url, "Patient")
        start, wanted = plan_population(args, data_dir, existing)
        res.population = start
        if "import" in args.only and wanted > start:
            try:
                run = bench_import(res, srv, args, start, wanted)
                res.imported = run
                if run.errors == 0:
                    res.population = wanted
                    write_marker(data_dir, args, wanted, sum(run.stored.values()))
            except Exception as exc:
                res.imported = fail_message(exc)
                log(f"import: {fail_message(exc)}")
        elif "import" in args.only:
            log(f"import: {data_dir} already holds {start:,} patients (nothing to import)")
        if "search" in args.only:
            if res.population == 0:
                log("search: no population on the server; nothing to search")
            else:
                res.resources = sum(counts(srv.base_url).values())
                bench_search(res, srv, args)
        if srv.proc is not None:
            res.info["server_rss_end_bytes"] = srv.usage().rss_bytes
    finally:
        if srv is not None:
            srv.stop(remove=not keep)
        shutil.rmtree(work, ignore_errors=True)
    res.info["seconds"] = time.perf_counter() - t0
    log(f"total {res.info['seconds']:.0f} s, load average {os.getloadavg()[0]:.2f}")
    print_tables(res, args)
    if args.json:
        args.json.write_text(json.dumps(to_json(res, args), indent=2, default=str))
        print(f"wrote {args.json}")
    failed = isinstance(res.imported, str) or (
        isinstance(res.imported, ImportRun) and res.imported.errors > 0
    )
    return 1 if failed else 0


def medflow_source() -> str:
    """Where ``medflow serve`` imports medflow from (PYTHONPATH can point at another tree)."""
    code = "import medflow; print(medflow.__file__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()[-200:]


if __name__ == "__main__":
    raise SystemExit(main())
