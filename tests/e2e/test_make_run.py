"""``make run`` end to end with a small demo hospital (the venv is reused: ``make -o`` takes it
as up to date): the first start generates and loads the hospital through the public APIs and
prints the URLs; a second start reuses the data; ``medflow demo reset`` starts over."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from medflow.synthetic.plan import plan_hospital
from tests.conftest import free_port
from tests.e2e.test_cli import env, medflow

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
PATIENTS = 3


class Console:
    """The lines a process prints, read by a thread, waited for with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self.lines, self._q = proc, [], queue.Queue[str | None]()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))
        self._q.put(None)

    def wait_for(self, text: str, timeout: float = 240) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"{text!r} not printed; output:\n" + "\n".join(self.lines[-40:]))


@contextmanager
def make_run(data: Path, port: int) -> Iterator[Console]:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    if (ROOT / ".venv").resolve() != VENV.resolve():
        pytest.skip("the tests do not run from this checkout's .venv")
    proc = subprocess.Popen(
        ["make", "-s", "-o", ".venv/.installed", "run", f"DATA={data}", f"PORT={port}",
         "DIMSE_PORT=0", f"DEMO_PATIENTS={PATIENTS}"],
        cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        yield Console(proc)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def fhir_total(base: str, resource: str) -> int:
    r = httpx.get(f"{base}/fhir/{resource}", params={"_summary": "count"}, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def wait_synced(base: str, studies: int) -> None:
    deadline = time.monotonic() + 60
    while fhir_total(base, "ImagingStudy") < studies:
        assert time.monotonic() < deadline, "the sync did not make every ImagingStudy"
        time.sleep(0.3)


def test_make_run_loads_the_demo_once_and_reset_starts_over(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    base = f"http://127.0.0.1:{port}"
    plans = plan_hospital(0, PATIENTS)
    studies = sum(len(p.studies) for p in plans)
    instances = sum(s.series * s.instances for p in plans for s in p.studies)

    with make_run(data, port) as out:
        for url in (f"{base}/", f"{base}/dicomweb", f"{base}/fhir", f"{base}/docs"):
            out.wait_for(url, timeout=120)
        ready = out.wait_for("demo hospital ready")
        assert f"{PATIENTS} patients, {studies} studies, {instances} instances" in ready
        assert fhir_total(base, "Patient") == PATIENTS
        r = httpx.get(f"{base}/dicomweb/studies", timeout=30)
        assert r.status_code == 200 and len(r.json()) == studies
        wait_synced(base, studies)
        home = httpx.get(f"{base}/", timeout=30)
        assert home.status_code == 200 and "text/html" in home.headers["content-type"]
        assert "<svg" in home.text and "Studies by modality" in home.text
        reports = fhir_total(base, "DiagnosticReport")
        assert reports >= studies  # a radiology report per study (and pathology ones)

    # The second start reuses the data: nothing is generated or sent again.
    with make_run(data, port) as out:
        out.wait_for("already loaded")
        assert not [line for line in out.lines if "generating" in line]
        assert fhir_total(base, "Patient") == PATIENTS
        assert fhir_total(base, "DiagnosticReport") == reports
        assert len(httpx.get(f"{base}/dicomweb/studies", timeout=30).json()) == studies

    (data / "notes").mkdir()  # not medflow's: reset leaves it
    (data / "notes" / "keep.txt").write_text("mine")
    done = medflow("demo", "reset", "--data-dir", data, "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (data / "index.sqlite3").exists() and not (data / "demo").exists()
    assert not (data / "blobs").exists()
    assert (data / "notes" / "keep.txt").read_text() == "mine"


def test_demo_reset_refuses_an_external_database(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "medflow"), "demo", "reset", "--data-dir",
         str(tmp_path), "--yes"],
        env={**env(), "MEDFLOW_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "external database" in proc.stdout


def test_demo_reset_touches_nothing_outside_a_medflow_data_dir(tmp_path: Path) -> None:
    for name in ("demo", "tmp", "blobs"):  # names reset would remove, in a folder not medflow's
        (tmp_path / name).mkdir()
    done = medflow("demo", "reset", "--data-dir", tmp_path, "--yes")
    assert done.returncode == 0 and "nothing to reset" in done.stdout
    assert all((tmp_path / name).is_dir() for name in ("demo", "tmp", "blobs"))
