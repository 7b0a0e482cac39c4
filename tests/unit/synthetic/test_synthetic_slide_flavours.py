"""The synthetic slide's other flavours: an OME-TIFF (JPEG tiles, SubIFD pyramid, physical
pixel size in the OME-XML, label and macro images) and an Aperio SVS with its label and macro
pages; both deterministic, the plain SVS unchanged by them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from medflow.synthetic import ome, pathology
from tests.slides import biopsied


def test_the_ome_tiff_is_a_subifd_pyramid_of_jpeg_tiles(tmp_path: Path) -> None:
    (plan,) = biopsied()
    path = ome.write_ome_slide(plan, tmp_path, size=2048)
    assert path.name == f"{plan.slide_id}.ome.tiff"
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        names = [s.name for s in tif.series]
        assert names == [plan.slide_id, "label", "macro"]
        base = tif.series[0]
        assert [level.shape for level in base.levels] == [(2048, 2048, 3), (1024, 1024, 3)]
        for level in base.levels:
            page = level.keyframe
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.JPEG
        assert len(tif.pages[0].subifds or ()) == 1
        xml = tif.ome_metadata or ""
        assert 'PhysicalSizeX="0.5"' in xml and 'PhysicalSizeXUnit="µm"' in xml
        same = tifffile.imread(pathology.write_slide(plan, tmp_path / "svs", size=2048))
        assert np.array_equal(base.asarray(), same)  # the same pixels as the SVS flavour
    sidecar = (tmp_path / f"{plan.slide_id}.json").read_text()
    assert '"format": "ome-tiff"' in sidecar


def test_the_ome_tiff_is_deterministic(tmp_path: Path) -> None:
    (plan,) = biopsied()
    a = ome.write_ome_slide(plan, tmp_path / "a", size=512)
    b = ome.write_ome_slide(plan, tmp_path / "b", size=512)
    assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("associated", [False, True])
def test_svs_label_and_macro_pages_only_when_asked(tmp_path: Path, associated: bool) -> None:
    (plan,) = biopsied()
    plain = pathology.write_slide(plan, tmp_path / "plain", size=512)
    path = pathology.write_slide(plan, tmp_path / "x", size=512, associated=associated)
    with tifffile.TiffFile(path) as tif:
        names = [s.name for s in tif.series]
        if associated:
            assert names == ["Baseline", "Thumbnail", "Label", "Macro"]
            assert tif.series[2].shape == (*pathology.LABEL_SIZE, 3)
            assert tif.series[3].shape == (*pathology.MACRO_SIZE, 3)
        else:
            assert names == ["Baseline", "Thumbnail"]
    assert (path.read_bytes() == plain.read_bytes()) is not associated
