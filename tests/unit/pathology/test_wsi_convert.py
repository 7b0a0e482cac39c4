"""Slide files to DICOM VL Whole Slide Microscopy Image objects (PS3.3 A.32.8): valid for
dciodvfy, the pyramid kept (levels halve, tile size kept, JPEG tiles copied), label and
overview as instances of their own, patient/study/specimen from the metadata; clear refusals
for files that are not slides and for a missing libjpeg-turbo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.data import get_testdata_file

from medflow.core.errors import InvalidInput
from medflow.pathology import convert as convert_module
from medflow.pathology.convert import SM_SOP_CLASS, convert
from medflow.pathology.errors import ConverterUnavailable, NotASlide
from medflow.pathology.metadata import read_sidecar
from medflow.synthetic import ome, pathology
from tests.slides import biopsied, dciodvfy_errors, frames, image_types, same_tile, source_tiles

SIZE = 2048


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    (plan,) = biopsied()
    root = tmp_path_factory.mktemp("slides")
    return {
        "svs": pathology.write_slide(plan, root / "svs", size=SIZE, associated=True),
        "ome": ome.write_ome_slide(plan, root / "ome", size=SIZE),
    }


@pytest.fixture(scope="module")
def converted(
    slides: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, list[Path]]:
    out = {}
    for kind, path in slides.items():
        result = convert(path, tmp_path_factory.mktemp(kind), metadata=read_sidecar(path))
        assert result.format == {"svs": "svs", "ome": "ome_tiff"}[kind]
        assert result.pixels == SIZE * SIZE
        out[kind] = result.files
    return out


@pytest.mark.parametrize("kind", ["svs", "ome"])
def test_every_instance_is_a_valid_wsi_object(kind: str, converted: dict[str, list[Path]]) -> None:
    for path in converted[kind]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.SOPClassUID == SM_SOP_CLASS and ds.Modality == "SM"
        assert dciodvfy_errors(path) == [], path.name


@pytest.mark.parametrize("kind", ["svs", "ome"])
def test_the_pyramid_is_kept(
    kind: str, slides: dict[str, Path], converted: dict[str, list[Path]]
) -> None:
    tiles = source_tiles(slides[kind])
    volumes = [p for p, t in image_types(converted[kind]) if t == "VOLUME"]
    assert len(volumes) == len(pathology.levels(SIZE)) == len(tiles)
    widths = []
    for path in volumes:
        ds, got = frames(path)
        width = int(ds.TotalPixelMatrixColumns)
        widths.append(width)
        assert int(ds.TotalPixelMatrixRows) == width
        assert (ds.Columns, ds.Rows) == (pathology.TILE, pathology.TILE)
        assert ds.DimensionOrganizationType == "TILED_FULL"
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
        source = tiles[width]
        assert len(got) == len(source)
        assert all(same_tile(f, t) for f, t in zip(got, source, strict=True))  # copied
    widths.sort(reverse=True)
    assert widths == pathology.levels(SIZE)  # each level half the one before


@pytest.mark.parametrize("kind", ["svs", "ome"])
def test_label_and_overview_are_their_own_instances(
    kind: str, converted: dict[str, list[Path]]
) -> None:
    kinds = sorted(t for _, t in image_types(converted[kind]))
    assert kinds.count("LABEL") == 1 and kinds.count("OVERVIEW") == 1
    label = next(p for p, t in image_types(converted[kind]) if t == "LABEL")
    ds = pydicom.dcmread(label)
    assert ds.SpecimenLabelInImage == "YES" and ds.BurnedInAnnotation == "YES"
    assert (ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns) == pathology.LABEL_SIZE
    assert ds.pixel_array.shape[:2] == (ds.Rows, ds.Columns)  # decodable
    series = {pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID
              for p in converted[kind]}  # fmt: skip
    assert len(series) == 1


def test_patient_study_specimen_and_optical_path(
    slides: dict[str, Path], converted: dict[str, list[Path]]
) -> None:
    (plan,) = biopsied()
    side = pathology.sidecar(plan)
    for path in converted["svs"]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.PatientID == plan.mrn and ds.IssuerOfPatientID == side["IssuerOfPatientID"]
        assert ds.PatientName == side["PatientName"] and ds.PatientSex == plan.sex
        assert ds.AccessionNumber == plan.pathology_accession
        assert ds.StudyInstanceUID == side["StudyInstanceUID"]
        assert ds.ContainerIdentifier == plan.slide_id
        specimen = ds.SpecimenDescriptionSequence[0]
        assert specimen.SpecimenIdentifier == plan.specimen_id
        assert specimen.PrimaryAnatomicStructureSequence[0].CodeValue == side["body_site"]["code"]
        steps = specimen.SpecimenPreparationSequence[0].SpecimenPreparationStepContentItemSequence
        stains = {i.ConceptCodeSequence[0].CodeValue for i in steps if "ConceptCodeSequence" in i}
        assert {"12710003", "36879007"} <= stains
        optical = ds.OpticalPathSequence[0]
        assert optical.IlluminationTypeCodeSequence[0].CodeMeaning == "Brightfield illumination"


def test_files_that_are_not_slides_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a slide")
    png = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(png)
    for path in (text, png):
        with pytest.raises(NotASlide, match="not a whole-slide image medflow can convert"):
            convert(path, tmp_path / "out", metadata=read_sidecar(path))
    dicom = Path(str(get_testdata_file("CT_small.dcm")))
    with pytest.raises(NotASlide, match="already a DICOM file"):
        convert(dicom, tmp_path / "out", metadata=read_sidecar(dicom))
    with pytest.raises(InvalidInput, match="not a file"):
        convert(tmp_path / "missing.svs", tmp_path / "out", metadata=read_sidecar(text))


def test_a_tiled_tiff_without_a_pixel_size_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, np.zeros((512, 512, 3), np.uint8), tile=(256, 256),
                     compression="jpeg", photometric="rgb")  # fmt: skip
    with pytest.raises(InvalidInput, match="pixel size"):
        convert(path, tmp_path / "out", metadata=read_sidecar(path))


def test_a_missing_libjpeg_turbo_is_named(
    slides: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentile.jpeg import jpeg

    def missing() -> Path:
        raise FileNotFoundError("Could not find turbojpeg library.")

    monkeypatch.setattr(jpeg, "find_turbojpeg_path", missing)
    monkeypatch.setattr(convert_module, "_turbojpeg_checked", False)
    with pytest.raises(ConverterUnavailable, match="libturbojpeg0") as err:
        convert(slides["svs"], tmp_path / "out", metadata=read_sidecar(slides["svs"]))
    assert "libjpeg-turbo" in err.value.message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_pydicom_stays_as_medflow_configures_it(converted: dict[str, list[Path]]) -> None:
    """Importing wsidicomizer makes pydicom strict process-wide; the converter undoes it, so a
    conversion in ``medflow serve`` does not change how STOW-RS reads objects afterwards."""
    from pydicom import config

    assert converted  # a conversion ran in this process
    assert config.enforce_valid_values is False
    assert config._use_future is False
    assert config.settings.reading_validation_mode != config.RAISE
