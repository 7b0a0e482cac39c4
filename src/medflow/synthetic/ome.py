"""The synthetic slide as an OME-TIFF, the second format the whole-slide import's tests read.

The same pixels as :func:`medflow.synthetic.pathology.write_slide`: the first OME Image is the
pyramid, its base level tiled 256 x 256 in JPEG (YCbCr 4:2:0) with the lower levels as its
SubIFDs (NewSubfileType 1, each half the one before), PhysicalSizeX/Y the base's micrometres
per pixel (µm) in the OME-XML; OME Images named ``label`` and ``macro`` follow (JPEG, one strip
each), the names opentile looks for. The OME UUID is derived from the slide's identifier, so
the same plan gives the same bytes.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from medflow.synthetic.pathology import (
    DEFAULT_SIZE,
    MPP,
    QUALITY,
    THUMBNAIL,
    TILE,
    BaseTiles,
    _halve,
    _scan_day,
    associated_images,
    check_size,
    levels,
    sidecar,
    write_sidecar,
)
from medflow.synthetic.plan import PatientPlan


def ome_sidecar(plan: PatientPlan, size: int = DEFAULT_SIZE) -> dict[str, Any]:
    """:func:`~medflow.synthetic.pathology.sidecar` for the OME-TIFF flavour of the slide."""
    return {**sidecar(plan, size), "file": f"{plan.slide_id}.ome.tiff", "format": "ome-tiff"}


def write_ome_slide(
    plan: PatientPlan, folder: Path, *, size: int = DEFAULT_SIZE, associated: bool = True
) -> Path:
    """Write the slide of ``plan``'s biopsy as ``folder/<slide id>.ome.tiff`` (see the
    module's docstring; ``associated``: with the label and macro images) and its sidecar
    ``folder/<slide id>.json`` (:func:`ome_sidecar`); returns the TIFF's path."""
    check_size(size)
    meta = ome_sidecar(plan, size)
    sides = levels(size)
    source = BaseTiles(plan, size)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{plan.slide_id}.ome.tiff"
    common: dict[str, Any] = {
        "photometric": "rgb", "compression": "jpeg", "compressionargs": {"level": QUALITY},
        "subsampling": (2, 2), "software": "medflow synthetic",
        "datetime": f"{_scan_day(plan):%Y:%m:%d} 12:00:00",
    }  # fmt: skip
    ome_uuid = str(uuid.UUID(hashlib.sha256(f"ome:{plan.slide_id}".encode()).hexdigest()[:32]))
    physical = {"PhysicalSizeX": MPP, "PhysicalSizeXUnit": "\u00b5m",
                "PhysicalSizeY": MPP, "PhysicalSizeYUnit": "\u00b5m"}  # fmt: skip
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(source.tiles(), shape=(size, size, 3), dtype=np.uint8, tile=(TILE, TILE),
                  subifds=len(sides) - 1,
                  metadata={"UUID": ome_uuid, "Name": str(plan.slide_id), "axes": "YXS",
                            **physical}, **common)  # fmt: skip
        image = source.kept
        for _ in sides[1:]:
            tif.write(image, tile=(TILE, TILE), subfiletype=1, **common)
            image = _halve(image)
        if associated:
            thumbnail = image
            while thumbnail.shape[0] > THUMBNAIL:
                thumbnail = _halve(thumbnail)
            for name, picture in zip(("label", "macro"), associated_images(plan, thumbnail),
                                     strict=True):  # fmt: skip
                tif.write(picture, rowsperstrip=picture.shape[0],
                          metadata={"Name": name, "axes": "YXS"}, **common)  # fmt: skip
    write_sidecar(meta, folder)
    return path
