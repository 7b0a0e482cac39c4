"""Send a generated hospital folder through medflow's public interfaces (``medflow demo
load``): the FHIR Bundles first (transactions with conditional creates: loading twice adds
nothing), then each DICOM study by STOW-RS (storing an instance again is idempotent); the sync
worker then makes the ImagingStudies and links them to the reports by accession number. The
slides under ``pathology/`` are not sent: they are TIFFs for the pathology conversion."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

FHIR_JSON = "application/fhir+json"


@dataclass
class Loaded:
    bundles: int = 0
    studies: int = 0
    instances: int = 0


def _multipart(files: list[Path], boundary: str) -> Iterator[bytes]:
    for path in files:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield path.read_bytes()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def wait_healthy(url: str, *, timeout: float) -> None:
    """Wait until the medflow at ``url`` answers ``GET /healthz`` (``RuntimeError`` after
    ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url.rstrip('/')}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"medflow did not answer at {url}/healthz")
        time.sleep(0.2)


def load(
    folder: Path,
    *,
    url: str,
    client: httpx.Client | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Loaded:
    """Load ``folder`` (written by ``medflow demo generate``) into the medflow at ``url``;
    raises ``RuntimeError`` naming the file on the first request that fails."""
    base = url.rstrip("/")
    own = client is None
    http = client or httpx.Client(timeout=300)
    done = Loaded()
    try:
        bundles = sorted((folder / "fhir").glob("*.json"))
        for n, path in enumerate(bundles, start=1):
            r = http.post(f"{base}/fhir", content=path.read_bytes(),
                          headers={"Content-Type": FHIR_JSON})  # fmt: skip
            if r.status_code >= 400:
                raise RuntimeError(f"{path.name}: FHIR answered {r.status_code}: {r.text[:300]}")
            done.bundles += 1
            if progress:
                progress("fhir", n, len(bundles))
        studies = sorted(p for p in (folder / "dicom").iterdir() if p.is_dir())
        for n, study in enumerate(studies, start=1):
            files = sorted(study.glob("*.dcm"))
            boundary = uuid.uuid4().hex
            r = http.post(f"{base}/dicomweb/studies", content=b"".join(_multipart(files, boundary)),
                          headers={"Content-Type": 'multipart/related; type="application/dicom"; '
                                                   f"boundary={boundary}"})  # fmt: skip
            if r.status_code not in (200, 202):
                raise RuntimeError(f"{study.name}: STOW-RS answered {r.status_code}")
            done.studies += 1
            done.instances += len(files)
            if progress:
                progress("dicom", n, len(studies))
    finally:
        if own:
            http.close()
    return done
