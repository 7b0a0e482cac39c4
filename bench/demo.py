"""Demo hospital benchmark (issue 6): what `make run` does on first start, timed step by step,
and the metadata-only generator rate that benchmarks at 100k patients rely on.

1. ``generate`` ``--patients`` patients with ``--workers`` processes (default: one per CPU, as
   ``make run``) (the default of ``make run``: 200, images 256 px, slides
   2048 px) into a temporary folder, in this process.
2. Start ``medflow serve`` (SQLite, sync on) and ``load`` the folder through FHIR transaction
   Bundles and STOW-RS (one request a study), as ``medflow serve --demo-patients`` does.
3. Wait until the sync has made every ImagingStudy.
4. ``generate --metadata-only`` for ``--metadata-patients`` patients (8x8 pixels, 256 px
   slides) and extrapolate to 100,000.

    .venv/bin/python bench/demo.py                     # 200 patients, 2,000 metadata-only
    .venv/bin/python bench/demo.py --patients 50 --metadata-patients 500   # quick

Target (issue 6): generate + load of ~200 patients under 3 minutes on 2 cores. No peer runs
here; run by hand, never by tests.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _servers
from medflow.synthetic.loader import load
from medflow.synthetic.writer import generate


def wait_synced(base: str, studies: int, timeout: float = 600) -> float:
    start = time.perf_counter()
    while True:
        r = httpx.get(f"{base}/fhir/ImagingStudy", params={"_summary": "count"}, timeout=60)
        if int(r.json()["total"]) >= studies:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise RuntimeError("the sync did not finish")
        time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--metadata-patients", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="generator processes")
    args = ap.parse_args()
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="medflow-bench-demo-") as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        done = generate(work / "hospital", patients=args.patients, seed=0, workers=args.workers)
        gen = time.perf_counter() - t
        rows.append(("generate", f"{gen:.1f} s", f"{done.instances} instances, {done.slides} "
                     f"slides, {done.resources} FHIR resources"))  # fmt: skip
        server = _servers.start_medflow(work)
        try:
            t = time.perf_counter()
            loaded = load(work / "hospital", url=server.base_url)
            sent = time.perf_counter() - t
            rows.append(("load (FHIR + STOW-RS)", f"{sent:.1f} s",
                         f"{loaded.instances / sent:.0f} instances/s"))  # fmt: skip
            tail = wait_synced(server.base_url, loaded.studies)
            rows.append(("sync tail after load", f"{tail:.1f} s", f"{loaded.studies} studies"))
        finally:
            server.stop()
        total = gen + sent + tail
        rows.append(("first start, total", f"{total:.1f} s",
                     f"target < 180 s: {'met' if total < 180 else 'MISSED'}"))  # fmt: skip
        t = time.perf_counter()
        meta = generate(
            work / "meta",
            patients=args.metadata_patients,
            seed=0,
            metadata_only=True,
            workers=args.workers,
        )
        rate = args.metadata_patients / (time.perf_counter() - t)
        rows.append(("metadata-only generate", f"{rate:.0f} patients/s",
                     f"{meta.instances} instances; 100k patients ~ "
                     f"{100_000 / rate / 60:.0f} min"))  # fmt: skip
    width = max(len(r[0]) for r in rows)
    print(
        f"\ndemo hospital: {args.patients} patients (seed 0), {args.workers} generator "
        "processes, SQLite, sync on"
    )
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>16}  {note}")


if __name__ == "__main__":
    main()
