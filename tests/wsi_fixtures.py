"""Whole slide images for tests: a synthetic Aperio-style TIFF (``synthetic.pathology``)
converted to DICOM VL Whole Slide Microscopy by wsidicomizer (JPEG tiles copied, not
re-encoded), with the offset table asked for, and stored through ``StoreService``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import tifffile
from numpy.typing import NDArray
from pydicom import config

from medflow.store.service import StoreService
from medflow.store.spool import SpoolWriter
from medflow.synthetic import pathology
from medflow.synthetic.plan import plan_hospital


@dataclass
class Slide:
    tiff: Path
    files: list[Path]
    study_uid: str
    series_uid: str

    def datasets(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(f) for f in self.files]

    def levels(self) -> list[pydicom.Dataset]:
        """The VOLUME levels, largest first."""
        volume = [d for d in self.datasets() if d.ImageType[2] == "VOLUME"]
        return sorted(volume, key=lambda d: -int(d.TotalPixelMatrixColumns))

    def base_rgb(self) -> NDArray[np.uint8]:
        return np.asarray(tifffile.imread(self.tiff, key=0))


def write_tiff(folder: Path, size: int, index: int = 0) -> Path:
    plans = [p for p in plan_hospital(0, 40) if p.biopsy is not None]
    return pathology.write_slide(plans[index], folder, size=size)


@contextlib.contextmanager
def pydicom_config_kept() -> Iterator[None]:
    """Importing wsidicomizer switches pydicom to ``future_behavior()`` and strict values for
    the whole process; the other tests in the session run under pydicom's defaults."""
    saved = (config.enforce_valid_values, config._use_future, config.INVALID_KEYWORD_BEHAVIOR,
             config.settings._writing_validation_mode,
             config.settings._reading_validation_mode)  # fmt: skip
    try:
        yield
    finally:
        (config.enforce_valid_values, config._use_future, config.INVALID_KEYWORD_BEHAVIOR,
         config.settings._writing_validation_mode,
         config.settings._reading_validation_mode) = saved  # fmt: skip


def convert(tiff: Path, folder: Path, *, offset_table: str = "bot") -> Slide:
    with pydicom_config_kept():
        from wsidicomizer import WsiDicomizer

        with WsiDicomizer.open(tiff, tile_size=256) as wsi:
            saved = wsi.save(folder, offset_table=offset_table, workers=1)
            files = [Path(str(f)) for f in saved]
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return Slide(tiff, sorted(files), str(first.StudyInstanceUID), str(first.SeriesInstanceUID))


def store_files(store: StoreService, files: list[Path]) -> None:
    objects = []
    for path in files:
        writer = SpoolWriter(store.spool_dir)
        writer.write(path.read_bytes())
        objects.append(writer.finish(fsync=False))
    outcomes = store.store(objects=objects)
    assert all(o.ok for o in outcomes), [o.message for o in outcomes]
