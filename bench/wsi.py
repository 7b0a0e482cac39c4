"""Whole slide image benchmark (issue 9): conversion rate and peak memory of wsidicomizer on a
synthetic slide, then tile retrieval from a real ``medflow serve`` as a slide viewer does it.

1. ``write``: a synthetic Aperio SVS-style slide (``synthetic.pathology.write_slide``: 256 px
   JPEG tiles, a pyramid down to <= 1,024 px) of ``--size`` pixels a side (a power of two up to
   16,384; the generator's limit), in this process (not timed against the targets); larger
   sizes (``--size 51200``, the issue's 50k x 50k) are streamed from a pool of textured tiles
   (:func:`write_large_slide`).
2. ``convert``: ``WsiDicomizer.open(tiff, tile_size=256).save(dcm)`` in a **child process**
   (``--convert-only``), which reports its own wall time and peak RSS (VmHWM): the tiles are
   copied, not re-encoded. Rate = base level pixels / seconds (MPixels/s).
3. ``store``: the DICOM files sent to ``medflow serve`` (fresh data dir, SQLite, one worker
   unless ``MEDFLOW_BENCH_WORKERS``) by STOW-RS, one request per file.
4. ``tiles``: ``--clients`` threads (default 8), each with its own keep-alive httpx client,
   request random tiles of the base level (``frames/{n}``, ``Accept: multipart/related;
   type="image/jpeg"``, the JPEG as stored) for ``--seconds`` after a warm-up; latency p50/p95
   of every request, tiles/s over the run, and the server's RSS after it.

    .venv/bin/python bench/wsi.py --size 16384            # the run reported in the docs
    .venv/bin/python bench/wsi.py --size 4096 --seconds 5 # quick

Targets (issue 9): conversion of a 50k x 50k slide with peak RSS < 1 GB (``--size 51200``);
tile p95 < 20 ms with 8 clients. Run by hand, never by
the tests. Scratch data under ``bench/.cache/wsi/``, removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _servers
from _measure import percentile

CACHE = Path(__file__).resolve().parent / ".cache" / "wsi"
TILE_ACCEPT = 'multipart/related; type="image/jpeg"'
BOUNDARY = "medflow-bench-wsi-5c1e"


def convert_only(tiff: Path, out: Path) -> None:
    """The child process: convert, then print seconds and peak RSS as JSON."""
    from wsidicomizer import WsiDicomizer

    start = time.perf_counter()
    with WsiDicomizer.open(tiff, tile_size=256) as wsi:
        files = wsi.save(out, workers=None)
    seconds = time.perf_counter() - start
    peak = _vm_hwm()
    print(json.dumps({"seconds": seconds, "peak_rss": peak, "files": [str(f) for f in files]}))


def _vm_hwm() -> int:
    """This process's peak RSS (VmHWM, bytes). Not ``ru_maxrss``: Linux carries the parent's
    peak at fork over ``execve`` into it, so a child of a large parent would report that."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_slide(size: int, folder: Path) -> tuple[Path, float]:
    if size > 16384:
        start = time.perf_counter()
        path = write_large_slide(size, folder)
        return path, time.perf_counter() - start
    from medflow.synthetic import pathology
    from medflow.synthetic.plan import plan_hospital

    plan = next(p for p in plan_hospital(0, 40) if p.biopsy is not None)
    start = time.perf_counter()
    path = pathology.write_slide(plan, folder, size=size)
    return path, time.perf_counter() - start


def write_large_slide(size: int, folder: Path) -> Path:
    """An Aperio SVS-style slide larger than the generator writes (50k x 50k for the issue's
    memory target), streamed: every level's tiles come from a pool of 64 textured 256 px tiles
    (not true downsamples: enough for conversion and serving, which copy tiles), so neither
    this writer nor anything after it holds a level in memory."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(9)
    pool = []
    for _ in range(64):
        base = rng.integers(150, 240, size=(16, 16, 3), dtype=np.uint8)
        tile = np.kron(base, np.ones((16, 16, 1), dtype=np.uint8))
        noise = rng.integers(0, 24, size=tile.shape, dtype=np.uint8)
        pool.append((tile - noise).astype(np.uint8))

    def tiles(side: int) -> Any:
        n = -(-side // 256)
        for i in range(n * n):
            yield pool[(i * 7 + i // n) % len(pool)]

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "large.svs"
    mpp = 0.25
    common: dict[str, Any] = {"photometric": "rgb", "compression": "jpeg",
                              "compressionargs": {"level": 80}, "subsampling": (2, 2),
                              "metadata": None}  # fmt: skip
    sides = [size]
    while sides[-1] > 1024:
        sides.append(sides[-1] // 2)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, side in enumerate(sides):
            head = f"{size}x{size} [0,0 {size}x{size}] (256x256)"
            head += f" -> {side}x{side}" if i else ""
            description = (f"Aperio Image Library medflow bench\r\n{head} JPEG/YCC Q=80"
                           f"|AppMag = 40|MPP = {mpp * size / side:.4f}")  # fmt: skip
            tif.write(tiles(side), shape=(side, side, 3), dtype=np.uint8, tile=(256, 256),
                      description=description, **common)  # fmt: skip
            if i == 0:  # Aperio's second page is the thumbnail (stripped)
                thumb = np.full((512, 512, 3), 220, dtype=np.uint8)
                tif.write(thumb, rowsperstrip=16, description=(
                    f"Aperio Image Library medflow bench\r\n{size}x{size} -> 512x512 - "
                    f"|AppMag = 40|MPP = {mpp:.4f}"), **common)  # fmt: skip
    return path


def convert(tiff: Path, out: Path) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, __file__, "--convert-only", str(tiff), str(out)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    return result


def stow(dicomweb: str, files: list[Path]) -> float:
    start = time.perf_counter()
    with httpx.Client(timeout=600) as http:
        for path in files:
            body = b"".join(
                (
                    f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode(),
                    path.read_bytes(),
                    f"\r\n--{BOUNDARY}--\r\n".encode(),
                )
            )
            r = http.post(
                f"{dicomweb}/studies",
                content=body,
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={BOUNDARY}",
                    "Accept": "application/dicom+json",
                },
            )
            r.raise_for_status()
    return time.perf_counter() - start


def base_level(files: list[Path]) -> tuple[str, int]:
    """The base level's frames URL path and frame count."""
    import pydicom

    best: tuple[int, str, int] | None = None
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.ImageType[2] != "VOLUME":
            continue
        url = (
            f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/"
        )
        key = (int(ds.TotalPixelMatrixColumns), url, int(ds.NumberOfFrames))
        best = max(best, key) if best else key
    assert best is not None
    return best[1], best[2]


def tiles(dicomweb: str, path: str, frames: int, clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    begin = threading.Barrier(clients + 1)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        mine: list[float] = []
        with httpx.Client(timeout=60, headers={"Accept": TILE_ACCEPT}) as http:
            for _ in range(20):  # warm-up: connection, caches
                http.get(f"{dicomweb}{path}{rng.randint(1, frames)}")
            begin.wait()
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                url = f"{dicomweb}{path}{rng.randint(1, frames)}"
                t0 = time.perf_counter()
                r = http.get(url)
                mine.append(time.perf_counter() - t0)
                if r.status_code != 200 or b"\xff\xd8" not in r.content[:400]:
                    errors.append(f"{r.status_code}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    begin.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "tiles_per_s": len(latencies) / elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, nargs="+", default=[16384])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--convert-only", nargs=2, metavar=("TIFF", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.convert_only:
        convert_only(Path(args.convert_only[0]), Path(args.convert_only[1]))
        return
    rows = []
    for size in args.size:
        work = CACHE / f"run-{size}-{time.monotonic_ns()}"
        work.mkdir(parents=True)
        try:
            tiff, write_s = write_slide(size, work / "tiff")
            conv = convert(tiff, work / "dcm")
            files = [Path(str(f)) for f in conv["files"]]
            server = _servers.start_medflow(work)
            try:
                stow_s = stow(server.dicomweb, files)
                path, frames = base_level(files)
                cpu0, own0 = server.usage().cpu_seconds, time.process_time()
                got = tiles(server.dicomweb, path, frames, args.clients, args.seconds)
                usage = server.usage()
                rss = usage.rss_bytes
                # CPU per tile, server and this (client) process, warm-up requests included
                n = got["requests"] + 20 * args.clients
                got["server_cpu_ms"] = (usage.cpu_seconds - cpu0) / n * 1000
                got["client_cpu_ms"] = (time.process_time() - own0) / n * 1000
            finally:
                server.stop()
            seconds = float(conv["seconds"])
            rows.append(
                {
                    "size": size,
                    "write_s": write_s,
                    "tiff_mb": tiff.stat().st_size / 1e6,
                    "convert_s": seconds,
                    "mpix_s": size * size / 1e6 / seconds,
                    "convert_peak_rss_mb": int(conv["peak_rss"]) / 1e6,
                    "stow_s": stow_s,
                    "frames": frames,
                    "server_rss_mb": rss / 1e6,
                    **got,
                }
            )
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"{'size':>7} {'write s':>8} {'TIFF MB':>8} {'conv s':>7} {'MPix/s':>7} {'conv RSS MB':>11}"
        f" {'STOW s':>7} {'tiles':>6} {'clients':>7} {'req':>6} {'err':>4} {'p50 ms':>7}"
        f" {'p95 ms':>7} {'p99 ms':>7} {'tiles/s':>8} {'serve RSS MB':>12}"
        f" {'srv CPU ms/tile':>15} {'client CPU ms/tile':>18}"
    )
    for r in rows:
        print(
            f"{r['size']:>7} {r['write_s']:>8.1f} {r['tiff_mb']:>8.1f} {r['convert_s']:>7.2f}"
            f" {r['mpix_s']:>7.0f} {r['convert_peak_rss_mb']:>11.0f} {r['stow_s']:>7.2f}"
            f" {r['frames']:>6} {args.clients:>7} {r['requests']:>6} {r['errors']:>4}"
            f" {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['p99_ms']:>7.2f}"
            f" {r['tiles_per_s']:>8.0f} {r['server_rss_mb']:>12.0f}"
            f" {r['server_cpu_ms']:>15.2f} {r['client_cpu_ms']:>18.2f}"
        )
    print("targets: tile p95 < 20 ms (8 clients); conversion peak RSS < 1 GB")


if __name__ == "__main__":
    main()
