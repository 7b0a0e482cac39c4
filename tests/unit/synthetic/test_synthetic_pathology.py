"""The synthetic hospital's slides: Aperio SVS-flavoured tiled JPEG pyramids (what opentile and
wsidicomizer read), deterministic to the byte, with tissue, identifiers in a sidecar and no
diagnosis anywhere but the ground truth; malignant slides differ from benign ones in their
nuclei, not in a global mean; every biopsied patient of a generated hospital gets one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from numpy.typing import NDArray
from tifffile.tifffile import svs_description_metadata

from medflow.core.errors import InvalidInput
from medflow.synthetic import pathology
from medflow.synthetic.clinical import SLIDE_SYSTEM, SPECIMEN_SYSTEM, patient_bundle
from medflow.synthetic.plan import PatientPlan, plan_hospital, plan_patient
from medflow.synthetic.writer import generate

SEED = 0
DIAGNOSIS_WORDS = ("malignan", "benign", "tumor", "tumour", "cancer", "carcinoma", "sarcoma",
                   "fibroadenoma", "hamartoma", "nodule", "lesion", "neoplasm")  # fmt: skip


@pytest.fixture(scope="module")
def biopsied() -> list[PatientPlan]:
    return [p for p in plan_hospital(SEED, 40) if p.biopsy is not None]


def _pick(plans: list[PatientPlan], malignant: bool, n: int = 1) -> list[PatientPlan]:
    return [p for p in plans if p.disease.malignant == malignant][:n]


def _rgb(path: Path, page: int = 0) -> NDArray[np.int16]:
    return np.asarray(tifffile.imread(path, key=page), dtype=np.int16)


def test_the_same_plan_gives_the_same_bytes(tmp_path: Path, biopsied: list[PatientPlan]) -> None:
    plan, other = biopsied[:2]
    a = pathology.write_slide(plan, tmp_path / "a", size=512)
    b = pathology.write_slide(plan, tmp_path / "b", size=512)
    assert a.name == f"{plan.slide_id}.tiff"
    assert a.read_bytes() == b.read_bytes()
    assert (tmp_path / "a" / f"{plan.slide_id}.json").read_bytes() == (
        tmp_path / "b" / f"{plan.slide_id}.json"
    ).read_bytes()
    c = pathology.write_slide(other, tmp_path / "c", size=512)
    assert not np.array_equal(_rgb(a), _rgb(c))


def test_pyramid_is_an_aperio_svs_of_jpeg_tiles(
    tmp_path: Path, biopsied: list[PatientPlan]
) -> None:
    plan = biopsied[0]
    path = pathology.write_slide(plan, tmp_path, size=2048)
    assert pathology.levels(2048) == [2048, 1024] and pathology.levels(8192)[-1] == 1024
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs
        base, thumbnail, *lower = tif.pages
        assert [p.shape for p in [base, *lower]] == [(2048, 2048, 3), (1024, 1024, 3)]
        assert [s.name for s in tif.series] == ["Baseline", "Thumbnail"]
        assert len(tif.series[0].levels) == 2
        for page in (base, *lower):
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
            assert page.compression == tifffile.COMPRESSION.JPEG
            assert page.photometric == tifffile.PHOTOMETRIC.YCBCR
            assert not page.is_reduced  # SVS levels are plain pages after the thumbnail
        assert not thumbnail.is_tiled and max(thumbnail.shape[:2]) <= 512
        assert thumbnail.compression == tifffile.COMPRESSION.JPEG
        for page in tif.pages:
            meta = svs_description_metadata(page.description)
            assert meta["Header"].startswith("Aperio Image Library")
            assert (meta["MPP"], meta["AppMag"]) == (0.5, 20)  # base micrometres per pixel
            assert meta["Filename"] == plan.slide_id
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            x, one = page.tags["XResolution"].value
            assert x / one == pytest.approx(1e4 / 0.5 * page.shape[1] / 2048)  # pixels per cm
            text = page.description.lower()
            assert not any(word in text for word in DIAGNOSIS_WORDS)
        scanned = pathology.sidecar(plan, 2048)["scanned"]  # the plan's day, not the clock's
        assert base.tags["DateTime"].value == scanned.replace("-", ":") + " 12:00:00"
        level1 = lower[0].asarray()
    assert level1.shape == (1024, 1024, 3) and level1.dtype == np.uint8


def test_slides_hold_tissue_on_white_glass(tmp_path: Path, biopsied: list[PatientPlan]) -> None:
    for plan in biopsied[:4]:
        rgb = _rgb(pathology.write_slide(plan, tmp_path, size=512))
        gray = rgb.mean(axis=-1)
        tissue = gray < 225
        assert 0.02 < tissue.mean() < 0.8
        assert np.median(gray[~tissue]) > 235  # glass
        pink = rgb[tissue][:, 0] > rgb[tissue][:, 1] + 30  # eosin: red well above green
        assert pink.mean() > 0.3


def _large_nuclei(rgb: NDArray[np.int16], radius: int = 5) -> float:
    """Fraction of tissue pixels in purple blobs wider than 2 * radius + 1 pixels (a square
    erosion of the hematoxylin mask, by cumulative sums)."""
    gray = rgb.mean(axis=-1)
    purple = (rgb[..., 2] > rgb[..., 0]) & (gray < 0.8 * np.median(gray[gray < 225]))
    k = 2 * radius + 1
    m = np.pad(purple.astype(np.int32), radius + 1)
    c = np.cumsum(np.cumsum(m, axis=0), axis=1)
    window = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return float((window == k * k).sum() / max(1, (gray < 225).sum()))


def _features(path: Path) -> tuple[float, float]:
    rgb = _rgb(path)
    gray = rgb.mean(axis=-1)
    return float(gray[gray < 225].mean()), _large_nuclei(rgb)


def test_malignant_and_benign_differ_in_nuclei_not_in_a_global_mean(tmp_path: Path) -> None:
    """Six slides of each kind (1,024 px): the share of tissue in large hematoxylin blobs
    (tumour nuclei are larger and crowded) is several times higher on malignant slides, while
    the mean tissue brightness (stain strength, cellularity, tumour extent vary per slide)
    does not separate them: its ranges overlap."""
    plans = [p for p in plan_hospital(SEED, 60) if p.biopsy is not None]
    chosen = _pick(plans, True, 6) + _pick(plans, False, 6)
    assert len(chosen) == 12
    feats = {p.slide_id: _features(pathology.write_slide(p, tmp_path, size=1024)) for p in chosen}
    bright = {m: [feats[p.slide_id][0] for p in _pick(chosen, m, 6)] for m in (True, False)}
    large = {m: [feats[p.slide_id][1] for p in _pick(chosen, m, 6)] for m in (True, False)}
    assert np.mean(large[True]) > 4 * np.mean(large[False]) + 0.005
    assert min(bright[True]) < max(bright[False]) and min(bright[False]) < max(bright[True])


def test_truth_boxes_hold_the_tumour(tmp_path: Path, biopsied: list[PatientPlan]) -> None:
    (malignant,) = _pick(biopsied, True)
    (benign,) = _pick(biopsied, False)
    assert pathology.slide_truth(benign, 1024)["tumor_boxes"] == []
    truth = pathology.slide_truth(malignant, 1024)
    assert truth["malignant"] is True and truth["slide_id"] == malignant.slide_id
    rgb = _rgb(pathology.write_slide(malignant, tmp_path, size=1024))
    inside = np.zeros(rgb.shape[:2], dtype=bool)
    for x0, y0, x1, y1 in truth["tumor_boxes"]:
        assert 0 <= x0 < x1 <= 1024 and 0 <= y0 < y1 <= 1024
        inside[y0:y1, x0:x1] = True
    assert inside.any()
    masked = rgb.copy()
    masked[~inside] = 255
    assert _large_nuclei(masked) > 0  # the large nuclei are in the boxes ...
    masked = rgb.copy()
    masked[inside] = 255
    assert _large_nuclei(masked) == 0  # ... and nowhere else


def _words(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False).lower()


def test_sidecar_names_the_slide_and_not_the_diagnosis(
    tmp_path: Path, biopsied: list[PatientPlan]
) -> None:
    for plan in _pick(biopsied, True, 2) + _pick(biopsied, False, 2):
        pathology.write_slide(plan, tmp_path, size=256)
        meta = json.loads((tmp_path / f"{plan.slide_id}.json").read_text())
        assert meta == pathology.sidecar(plan, 256)
        assert meta["PatientID"] == plan.mrn
        assert meta["PatientName"] == f"{plan.family}^{plan.given}"
        assert meta["PatientBirthDate"] == plan.birth_date.strftime("%Y%m%d")
        assert meta["PatientSex"] == plan.sex
        assert meta["stain"] == "H&E" and plan.slide_id in meta["label_text"]
        assert meta["body_site"]["code"] and meta["file"] == f"{plan.slide_id}.tiff"
        # the same identifiers as the FHIR record: the pathology report's accession number,
        # the Specimen's identifier, accession and container (the slide)
        entries = [e["resource"] for e in patient_bundle(plan)["entry"]]
        (report,) = [r for r in entries if r["resourceType"] == "DiagnosticReport"
                     and r["category"][0]["coding"][0]["code"] == "SP"]  # fmt: skip
        acsn = [i["value"] for i in report["identifier"] if "type" in i]
        assert acsn == [meta["AccessionNumber"]] == [plan.pathology_accession]
        (specimen,) = [r for r in entries if r["resourceType"] == "Specimen"]
        assert specimen["accessionIdentifier"]["value"] == meta["AccessionNumber"]
        ids = {i["system"]: i["value"] for i in specimen["identifier"]}
        assert ids[SPECIMEN_SYSTEM] == meta["SpecimenIdentifier"]
        container = specimen["container"][0]["identifier"][0]
        assert (container["system"], container["value"]) == (
            SLIDE_SYSTEM,
            meta["ContainerIdentifier"],
        )
        text = _words(meta)
        assert not any(word in text for word in DIAGNOSIS_WORDS)
        assert plan.disease.snomed not in text and plan.disease.icd10.lower() not in text


def test_sizes_and_plans_without_a_biopsy_are_refused(tmp_path: Path) -> None:
    plan = next(p for p in plan_hospital(SEED, 40) if p.biopsy is not None)
    for size in (128, 1000, 3072, 32768):
        with pytest.raises(InvalidInput):
            pathology.write_slide(plan, tmp_path, size=size)
    unbiopsied = next(p for p in plan_hospital(SEED, 40) if p.biopsy is None)
    with pytest.raises(InvalidInput):
        pathology.write_slide(unbiopsied, tmp_path, size=256)
    with pytest.raises(InvalidInput):
        generate(tmp_path / "h", patients=1, slide_size=1000)


def test_every_biopsied_patient_of_a_hospital_gets_a_slide(tmp_path: Path) -> None:
    plans = plan_hospital(3, 10)
    slides = sorted(f"{p.slide_id}.tiff" for p in plans if p.biopsy is not None)
    assert slides
    done = generate(tmp_path / "h", patients=10, seed=3, size=16, slide_size=256)
    assert done.slides == len(slides)
    folder = tmp_path / "h" / "pathology"
    assert sorted(p.name for p in folder.glob("*.tiff")) == slides
    assert len(list(folder.glob("*.json"))) == len(slides)
    hospital = json.loads((tmp_path / "h" / "hospital.json").read_text())
    assert (hospital["slides"], hospital["slide_size"]) == (len(slides), 256)
    truth = json.loads((tmp_path / "h" / "truth.json").read_text())
    for plan, record in zip(plans, truth, strict=True):
        if plan.biopsy is None:
            assert "slide" not in record
        else:
            assert record["slide"]["slide_id"] == plan.slide_id
            assert record["slide"]["malignant"] == plan.disease.malignant
            assert bool(record["slide"]["tumor_boxes"]) <= plan.disease.malignant


def test_slides_can_be_skipped_and_are_tiny_without_pixels(tmp_path: Path) -> None:
    done = generate(tmp_path / "none", patients=6, seed=3, size=16, slides=False)
    assert done.slides == 0 and not (tmp_path / "none" / "pathology").exists()
    hospital = json.loads((tmp_path / "none" / "hospital.json").read_text())
    assert (hospital["slides"], hospital["slide_size"]) == (0, None)
    done = generate(tmp_path / "meta", patients=6, seed=3, metadata_only=True, slide_size=4096)
    assert done.slides == sum(p.biopsy is not None for p in plan_hospital(3, 6))
    for path in (tmp_path / "meta" / "pathology").glob("*.tiff"):
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].shape == (256, 256, 3)


def test_a_slide_is_the_same_whoever_comes_before(tmp_path: Path) -> None:
    """Patient ``i``'s slide does not depend on the hospital's size."""
    plan = next(p for p in plan_hospital(5, 20) if p.biopsy is not None)
    again = plan_patient(5, plan.index)
    a = pathology.write_slide(plan, tmp_path / "a", size=256).read_bytes()
    assert pathology.write_slide(again, tmp_path / "b", size=256).read_bytes() == a
