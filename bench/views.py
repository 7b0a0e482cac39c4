"""Views materialization benchmark (issue 7, "tables for BI tools"): rows/s of the shipped
SQL-on-FHIR views (and the DICOM index tables) written by ``medflow views run``.

1. ``medflow demo generate --metadata-only --no-slides`` for ``--patients`` patients.
2. ``medflow fhir load`` of their Bundles into a fresh data dir (embedded SQLite), timed.
3. ``medflow views run --out FILE.duckdb`` and ``--out DIR`` (Parquet), each timed as a whole
   process (its start, ~1-2 s, included); rows counted in the outputs with DuckDB.

    .venv/bin/python bench/views.py                  # 1,000 patients (~21k resources)
    .venv/bin/python bench/views.py --patients 200   # quick

The issue names no target for this rate; no peer runs here. Run by hand, never by tests.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

REPO = Path(__file__).resolve().parents[1]
MEDFLOW = str(REPO / ".venv" / "bin" / "medflow")


def timed(*args: str, show: bool = False) -> float:
    start = time.perf_counter()
    done = subprocess.run([MEDFLOW, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1"})  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"medflow {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    if show:  # the command's own table: rows, seconds and rows/s per view, start excluded
        print(done.stdout.rstrip())
    return time.perf_counter() - start


def duckdb_rows(path: Path) -> dict[str, int]:
    con = duckdb.connect(str(path), read_only=True)
    tables = [
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    ]
    rows = {
        t: int(con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]) for t in sorted(tables)
    }  # type: ignore[index]
    con.close()
    return rows


def parquet_rows(folder: Path) -> int:
    con = duckdb.connect()
    total = 0
    for path in sorted(folder.glob("*.parquet")):
        total += int(con.execute("SELECT count(*) FROM read_parquet(?)", [str(path)]).fetchone()[0])  # type: ignore[index]
    con.close()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--patients", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medflow-bench-views-") as tmp:
        work = Path(tmp)
        timed("demo", "generate", "--out", str(work / "h"), "--patients", str(args.patients),
              "--metadata-only", "--no-slides")  # fmt: skip
        data = work / "data"
        load = timed("fhir", "load", str(work / "h" / "fhir"), "--data-dir", str(data))
        duck = timed("views", "run", "--out", str(work / "out.duckdb"), "--data-dir", str(data),
                     show=True)  # fmt: skip
        rows = duckdb_rows(work / "out.duckdb")
        parquet = timed("views", "run", "--out", str(work / "parquet"), "--data-dir", str(data))
        total, in_parquet = sum(rows.values()), parquet_rows(work / "parquet")
    print(f"\nviews: {args.patients} synthetic patients, SQLite, one process each step")
    for table, n in rows.items():
        print(f"  {table:<22} {n:>9} rows")
    print(f"{'fhir load':<24} {load:>9.1f} s")
    print(f"{'views -> DuckDB':<24} {duck:>9.1f} s  {total / duck:>9.0f} rows/s ({total} rows)")
    print(f"{'views -> Parquet':<24} {parquet:>9.1f} s  {in_parquet / parquet:>9.0f} rows/s "
          f"({in_parquet} rows)")  # fmt: skip


if __name__ == "__main__":
    main()
