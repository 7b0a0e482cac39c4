"""The measurements: STOW-RS, QIDO-RS, WADO-RS (study, series metadata, frame), fsync'd disk rate.

The same code and the same HTTP client (httpx, keep-alive, no compression) talk to every server;
only the DICOMweb root differs. Multipart bodies are built once in memory before the clock starts.
"""

from __future__ import annotations

import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx

BOUNDARY = "medflow-bench-8f2d0c4a1b"
DICOM_MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
JSON_ACCEPT = "application/dicom+json"
MB = 1_000_000


class EndpointError(RuntimeError):
    """An endpoint answered with an unexpected status (e.g. not implemented yet)."""


def client() -> httpx.Client:
    return httpx.Client(timeout=600, headers={"Accept-Encoding": "identity"})


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def multipart_body(blobs: Sequence[bytes]) -> bytes:
    """A multipart/related STOW-RS body of Part 10 objects (PS3.18 10.5.1.2)."""
    head = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    parts: list[bytes] = []
    for blob in blobs:
        parts += [head, blob, b"\r\n"]
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts)


@dataclass
class StowResult:
    seconds: float
    instances: int
    bytes: int
    failed_requests: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def inst_per_s(self) -> float:
        return self.instances / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.seconds


def _check(resp: httpx.Response, what: str) -> None:
    if resp.status_code >= 300:
        raise EndpointError(f"{what}: HTTP {resp.status_code} {resp.text[:200]!r}")


def stow(dicomweb: str, requests: Sequence[tuple[bytes, int, int]], clients: int) -> StowResult:
    """POST every prebuilt body (body, n instances, payload bytes) with ``clients`` threads."""
    work: queue.SimpleQueue[tuple[bytes, int, int]] = queue.SimpleQueue()
    for req in requests:
        work.put(req)
    errors: list[str] = []
    lock = threading.Lock()
    done = {"n": 0, "bytes": 0, "failed": 0}

    def run() -> None:
        with client() as c:
            while True:
                try:
                    body, n, size = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    resp = c.post(
                        f"{dicomweb}/studies",
                        content=body,
                        headers={"Content-Type": DICOM_MULTIPART, "Accept": JSON_ACCEPT},
                    )
                    _check(resp, "STOW")
                    with lock:
                        done["n"] += n
                        done["bytes"] += size
                except (httpx.HTTPError, EndpointError) as exc:
                    with lock:
                        done["failed"] += 1
                        errors.append(str(exc))

    threads = [threading.Thread(target=run, daemon=True) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if done["n"] == 0:
        raise EndpointError(errors[0] if errors else "STOW stored nothing")
    return StowResult(elapsed, done["n"], done["bytes"], done["failed"], errors[:3])


def build_requests(blobs: Sequence[bytes], per_request: int) -> list[tuple[bytes, int, int]]:
    out = []
    for i in range(0, len(blobs), per_request):
        chunk = blobs[i : i + per_request]
        out.append((multipart_body(chunk), len(chunk), sum(len(b) for b in chunk)))
    return out


@dataclass
class Latency:
    samples: list[float]
    detail: str = ""

    @property
    def p50(self) -> float:
        return percentile(self.samples, 50)

    @property
    def p95(self) -> float:
        return percentile(self.samples, 95)


def query_string(params: dict[str, str]) -> str:
    """Encode a QIDO query leaving ``* ^ - , .`` literal.

    Orthanc 1.10 does not percent-decode query values (``KOB%2A`` matches nothing), and PS3.18
    examples write wildcards and name separators literally; every server gets the same string.
    """
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='*^-,._')}" for k, v in params.items())


def qido(dicomweb: str, params: dict[str, str], reps: int, warmup: int = 3) -> Latency:
    """Time ``GET /studies?params`` ``reps`` times (after ``warmup``); detail = match count."""
    samples: list[float] = []
    count = -1
    url = f"{dicomweb}/studies?{query_string(params)}"
    with client() as c:
        for i in range(warmup + reps):
            t0 = time.perf_counter()
            resp = c.get(url, headers={"Accept": JSON_ACCEPT})
            body = resp.content
            dt = time.perf_counter() - t0
            if resp.status_code == 204:
                count = 0
            else:
                _check(resp, "QIDO")
                count = len(resp.json()) if body.strip() else 0
            if i >= warmup:
                samples.append(dt)
    return Latency(samples, f"{count} studies")


def wado_studies(dicomweb: str, studies: Sequence[tuple[str, int, int]]) -> StowResult:
    """Retrieve whole studies (uid, n instances, bytes) one after the other, one client.

    The client is curl when it is installed: a Python client (httpx) tops out near 500 MB/s
    on this machine, which is what both servers reached, so it would measure itself. Both
    servers are measured with the same client either way."""
    if shutil.which("curl"):
        return _wado_studies_curl(dicomweb, studies)
    total = 0
    n = 0
    with client() as c:
        start = time.perf_counter()
        for study_uid, count, _size in studies:
            got = 0
            with c.stream(
                "GET", f"{dicomweb}/studies/{study_uid}", headers={"Accept": WADO_ACCEPT}
            ) as resp:
                if resp.status_code >= 300:
                    resp.read()
                    _check(resp, "WADO study")
                for chunk in resp.iter_raw(1 << 20):
                    got += len(chunk)
            total += got
            n += count
        elapsed = time.perf_counter() - start
    return StowResult(elapsed, n, total)


def _wado_studies_curl(dicomweb: str, studies: Sequence[tuple[str, int, int]]) -> StowResult:
    """One curl process fetching every study over one kept-alive connection."""
    urls = [f"{dicomweb}/studies/{uid}" for uid, _n, _size in studies]
    cmd = [
        "curl",
        "--silent",
        "--show-error",
        "--fail",
        "-H",
        f"Accept: {WADO_ACCEPT}",
        "--write-out",
        "%{size_download}\\n",
    ]
    for url in urls:
        cmd += [url, "-o", "/dev/null"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"WADO study (curl): {done.stderr.strip()[:300]}")
    total = sum(int(line) for line in done.stdout.split())
    return StowResult(elapsed, sum(n for _uid, n, _size in studies), total)


def series_metadata(dicomweb: str, study: str, series: str, reps: int) -> Latency:
    samples = []
    count = 0
    with client() as c:
        for i in range(reps + 1):
            t0 = time.perf_counter()
            resp = c.get(
                f"{dicomweb}/studies/{study}/series/{series}/metadata",
                headers={"Accept": JSON_ACCEPT},
            )
            _check(resp, "series metadata")
            count = len(resp.json())
            if i:
                samples.append(time.perf_counter() - t0)
    return Latency(samples, f"{count} instances")


def frames(dicomweb: str, targets: Sequence[tuple[str, str, str]], expect: int) -> Latency:
    """GET frame 1 of each (study, series, sop); checks the payload is at least ``expect``."""
    samples = []
    with client() as c:
        for i, (st, se, sop) in enumerate(targets):
            t0 = time.perf_counter()
            resp = c.get(
                f"{dicomweb}/studies/{st}/series/{se}/instances/{sop}/frames/1",
                headers={"Accept": FRAME_ACCEPT},
            )
            body = resp.content
            dt = time.perf_counter() - t0
            _check(resp, "frame")
            if len(body) < expect:
                raise EndpointError(f"frame: {len(body)} bytes, expected >= {expect}")
            if i:
                samples.append(dt)
    return Latency(samples, f"{expect} B frame")


def disk_rate(folder: Path, blobs: Sequence[bytes]) -> StowResult:
    """Write each blob as a file with fsync (and the directory once at the end); MB/s."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, blob in enumerate(blobs):
        fd = os.open(folder / f"{i:07d}.dcm", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, blob)
            os.fsync(fd)
        finally:
            os.close(fd)
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    elapsed = time.perf_counter() - start
    return StowResult(elapsed, len(blobs), sum(len(b) for b in blobs))
