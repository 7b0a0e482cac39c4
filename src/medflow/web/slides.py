"""The slide viewer page's content (``/slides/{study}/{series}``): the pyramid of a whole
slide image series (VL Whole Slide Microscopy Image, PS3.3 A.32.8), one entry per VOLUME level
with its Total Pixel Matrix, tile size and frame count, largest first, read from the instances'
stored DICOM JSON (one archive query). The browser then fetches tiles as WADO-RS frames
(PS3.18 §10.4.1.1.5) with ``Accept: multipart/related; type="image/jpeg"``, and the slide's
overview as the series thumbnail (§10.4.1.1.3).

Levels whose tiles are not in row-major order over the matrix (TILED_SPARSE, or several focal
planes or optical paths) are left out: the viewer places tile ``n`` at ``(n - 1) % across,
(n - 1) // across``, which only TILED_FULL with one plane guarantees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from medflow.core.errors import NotFound
from medflow.dicom.attributes import is_valid_uid
from medflow.store.service import StoreService
from medflow.web import dicom_json as dj

VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
SOP_CLASS = "00080016"
IMAGE_TYPE = "00080008"
ROWS = "00280010"
COLUMNS = "00280011"
FRAMES = "00280008"
TOTAL_ROWS = "00480006"
TOTAL_COLUMNS = "00480007"
ORGANIZATION = "00209311"
FOCAL_PLANES = "00480003"
OPTICAL_PATHS = "00480302"
SPACING = "00280030"
SHARED_GROUPS = "52009229"
PIXEL_MEASURES = "00289110"


@dataclass(frozen=True)
class SlideLevel:
    uid: str
    width: int
    height: int
    tile_width: int
    tile_height: int
    frames: int
    spacing_mm: float | None
    """Pixel spacing (row spacing, mm) of the level, from the shared functional groups."""


@dataclass
class SlidePage:
    study_uid: str
    series_uid: str
    patient_name: str
    description: str
    levels: list[SlideLevel] = field(default_factory=list)

    def viewer(self, root: str) -> dict[str, Any]:
        """What the viewer needs, embedded in the page as JSON."""
        return {
            "dicomweb": f"{root}/dicomweb",
            "study": self.study_uid,
            "series": self.series_uid,
            "levels": [
                {
                    "uid": lv.uid,
                    "width": lv.width,
                    "height": lv.height,
                    "tileWidth": lv.tile_width,
                    "tileHeight": lv.tile_height,
                    "frames": lv.frames,
                    "spacing": lv.spacing_mm,
                }
                for lv in self.levels
            ],
        }


def _int(obj: dj.Obj, tag: str) -> int:
    value = dj.number(obj, tag)
    return int(value) if value is not None else 0


def _spacing(obj: dj.Obj) -> float | None:
    for groups in dj.values(obj, SHARED_GROUPS)[:1]:
        for measures in dj.values(groups, PIXEL_MEASURES)[:1]:
            found = dj.values(measures, SPACING)
            if found and isinstance(found[0], int | float):
                return float(found[0])
    return None


def _level(obj: dj.Obj) -> SlideLevel | None:
    """A VOLUME level the viewer can tile, or None."""
    kinds = [str(v).upper() for v in dj.values(obj, IMAGE_TYPE)]
    if dj.text(obj, SOP_CLASS) != VL_WSI or len(kinds) < 3 or kinds[2] != "VOLUME":
        return None
    level = SlideLevel(
        uid=dj.text(obj, dj.SOP_UID),
        width=_int(obj, TOTAL_COLUMNS),
        height=_int(obj, TOTAL_ROWS),
        tile_width=_int(obj, COLUMNS),
        tile_height=_int(obj, ROWS),
        frames=_int(obj, FRAMES) or 1,
        spacing_mm=_spacing(obj),
    )
    if min(level.width, level.height, level.tile_width, level.tile_height) <= 0:
        return None
    across = -(-level.width // level.tile_width)
    down = -(-level.height // level.tile_height)
    single = (_int(obj, FOCAL_PLANES) or 1) == 1 and (_int(obj, OPTICAL_PATHS) or 1) == 1
    full = dj.text(obj, ORGANIZATION) in ("TILED_FULL", "")
    if not (full and single and level.frames == across * down):
        return None
    return level


def slide_page(store: StoreService, study_uid: str, series_uid: str) -> SlidePage:
    """The viewer's levels; ``NotFound`` for an unknown series or one without tiled levels."""
    if not is_valid_uid(study_uid) or not is_valid_uid(series_uid):
        raise NotFound("no such series")
    texts, _ = store.metadata(study_uid=study_uid, series_uid=series_uid)
    objects = [json.loads(t) for t in texts]
    levels = [lv for lv in (_level(o) for o in objects) if lv is not None]
    if not levels:
        raise NotFound("the series has no whole slide image levels")
    levels.sort(key=lambda lv: (-lv.width, lv.uid))
    first = objects[0]
    return SlidePage(
        study_uid=study_uid,
        series_uid=series_uid,
        patient_name=dj.text(first, dj.PATIENT_NAME),
        description=dj.text(first, dj.SERIES_DESCRIPTION),
        levels=levels,
    )


__all__ = ["SlideLevel", "SlidePage", "slide_page"]
