"""Helpers for the whole-slide tests: synthetic slides, their source tiles, DICOM frames and
dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pydicom
import tifffile
from pydicom.encaps import generate_frames

from medflow.synthetic.plan import PatientPlan, plan_hospital
from tests.conftest import need_peer


def biopsied(n: int = 1, seed: int = 0) -> list[PatientPlan]:
    """The first ``n`` patients of seed ``seed`` with a biopsy (and so a slide)."""
    return [p for p in plan_hospital(seed, 40) if p.biopsy is not None][:n]


def source_tiles(path: Path) -> dict[int, list[bytes]]:
    """The raw tiles of every tiled pyramid level of a TIFF (SVS pages or OME SubIFDs),
    keyed by the level's width, in TIFF tile order (row-major)."""
    levels: dict[int, list[bytes]] = {}
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        for level in series.levels:
            page = level.keyframe
            assert page.is_tiled and page.jpegtables is None  # complete JPEGs per tile
            fh = tif.filehandle
            tiles = []
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                fh.seek(offset)
                tiles.append(fh.read(count))
            levels[page.imagewidth] = tiles
    return levels


def frames(fp: BinaryIO | Path) -> tuple[pydicom.Dataset, list[bytes]]:
    """The dataset (pixel data included) and its encapsulated frames."""
    ds = pydicom.dcmread(fp)
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return ds, list(generate_frames(ds.PixelData, number_of_frames=n))


def same_tile(frame: bytes, tile: bytes) -> bool:
    """A frame copied from a tile: the same bytes, save the one 0x00 that pads an odd-length
    JPEG to the even length of a DICOM fragment (PS3.5 A.4). The synthetic TIFFs keep no
    separate JPEGTables (each tile is a complete JPEG), so nothing is spliced in and the bytes
    must be equal; a real SVS with JPEGTables would need decoded pixels compared instead."""
    return frame == tile or (len(tile) % 2 == 1 and frame == tile + b"\0")


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy reports for a file (skip, or fail with
    MEDFLOW_REQUIRE_PEERS=1, when dciodvfy is not installed)."""
    tool = shutil.which("dciodvfy")
    need_peer(tool is not None, "dciodvfy (Debian dicom3tools) is not installed")
    assert tool is not None
    run = subprocess.run([tool, "-new", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def image_types(paths: list[Path]) -> Iterator[tuple[Path, str]]:
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        yield path, str(ds.ImageType[2])
