"""Whole-slide import into a real archive: an 8k x 8k slide stored tile for tile, the slide
joining the study of its accession number, the sync's ImagingStudy with its SM series and the
pathology report linked, and the REST edge ``POST /api/wsi/import``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from medflow.bootstrap import Container
from medflow.core.settings import SyncSettings
from medflow.pathology import convert as convert_module
from medflow.sync.worker import EmbeddedFhir, SyncWorker
from medflow.synthetic import ome, pathology
from medflow.synthetic.clinical import patient_bundle
from tests.factories import make_instance, store_datasets
from tests.slides import biopsied, frames, same_tile, source_tiles

pytestmark = pytest.mark.integration

BIG = 8192
ACSN = "http://terminology.hl7.org/CodeSystem/v2-0203"


@pytest.fixture(scope="module")
def big_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    (plan,) = biopsied()
    return pathology.write_slide(plan, tmp_path_factory.mktemp("big"), size=BIG, associated=True)


@pytest.fixture(scope="module")
def small_slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    (plan,) = biopsied()
    root = tmp_path_factory.mktemp("small")
    return {
        "svs": pathology.write_slide(plan, root / "svs", size=1024, associated=True),
        "ome": ome.write_ome_slide(plan, root / "ome", size=512),
    }


def test_an_8k_slide_is_stored_tile_for_tile(container: Container, big_slide: Path) -> None:
    started = time.perf_counter()
    result = container.pathology.import_slide(path=big_slide)
    elapsed = time.perf_counter() - started
    print(f"\n8k slide: converted at {BIG * BIG / result.seconds / 1e6:.0f} MPixel/s, "
          f"imported (conversion + store) at {BIG * BIG / elapsed / 1e6:.0f} MPixel/s")  # fmt: skip
    assert result.format == "svs" and result.pixels == BIG * BIG
    kinds = sorted(i.image_type for i in result.instances)
    assert kinds == ["LABEL", "OVERVIEW", "THUMBNAIL"] + ["VOLUME"] * len(pathology.levels(BIG))
    tiles = source_tiles(big_slide)
    records = container.store.find_instances(study_uid=result.study_uid,
                                             series_uid=result.series_uid)  # fmt: skip
    assert len(records) == len(result.instances)
    widths = []
    for record in records:
        with container.store.open_instance(record) as fp:
            ds, got = frames(fp)
        if ds.ImageType[2] != "VOLUME":
            continue
        width = int(ds.TotalPixelMatrixColumns)
        widths.append(width)
        assert (int(ds.TotalPixelMatrixRows), ds.Rows, ds.Columns) == (width, 256, 256)
        assert len(got) == len(tiles[width]) == (width // 256) ** 2
        mismatched = [i for i, (f, t) in enumerate(zip(got, tiles[width], strict=True))
                      if not same_tile(f, t)]  # fmt: skip
        assert mismatched == [], f"level {width}: {len(mismatched)} tiles differ"
    assert sorted(widths, reverse=True) == [8192, 4096, 2048, 1024]  # each half the one before
    assert not list(container.store.spool_dir.glob("wsi-*"))  # the work folder is gone


def _sync(container: Container) -> None:
    def changes(after: int, limit: int) -> Any:
        return container.fhir.changes(after=after, limit=limit)

    SyncWorker(engine=container.engine, store=container.store,
               target=EmbeddedFhir(container.fhir), settings=SyncSettings(),
               dicomweb_url="http://pacs.example.org/dicomweb",
               fhir_changes=changes).run_until_idle()  # fmt: skip


def test_the_slide_joins_the_study_of_its_accession_and_the_sync_links_the_report(
    container: Container, client: TestClient, small_slides: dict[str, Path]
) -> None:
    (plan,) = biopsied()
    assert client.post("/fhir", json=patient_bundle(plan)).status_code == 200
    existing = generate_uid()
    gross = make_instance(
        study_uid=existing, accession_number=plan.pathology_accession, patient_id=plan.mrn,
        modality="XC", study_description="Gross",
    )  # fmt: skip
    store_datasets(container.store, [gross])
    result = container.pathology.import_slide(path=small_slides["svs"])
    assert result.joined_existing_study and result.study_uid == existing
    stored = container.store.find_instances(study_uid=existing, series_uid=result.series_uid)
    with container.store.open_instance(stored[0]) as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    assert ds.PatientID == plan.mrn and ds.ContainerIdentifier == plan.slide_id
    _sync(container)
    fhir = EmbeddedFhir(container.fhir)
    (study,) = fhir.search("ImagingStudy", f"identifier=urn:dicom:uid|urn:oid:{existing}")
    modalities = {s["modality"]["code"] for s in study["series"]}
    assert modalities == {"SM", "XC"}
    sm = next(s for s in study["series"] if s["modality"]["code"] == "SM")
    assert sm["uid"] == result.series_uid and sm["numberOfInstances"] == len(result.instances)
    reports = fhir.search("DiagnosticReport", f"identifier={plan.pathology_accession}")
    assert reports, "the synthetic patient has a pathology report with the case's accession"
    assert all({"reference": f"ImagingStudy/{study['id']}"} in r.get("imagingStudy", [])
               for r in reports)  # fmt: skip


def test_the_api_imports_a_raw_body(
    container: Container, client: TestClient, small_slides: dict[str, Path]
) -> None:
    body = small_slides["ome"].read_bytes()
    response = client.post(
        "/api/wsi/import",
        params={"patient_id": "PAT-9", "patient_name": "Doe^Jane", "accession": "ACC-9",
                "specimen": "SP-9", "container": "SL-9", "filename": "slide.ome.tiff"},
        content=body, headers={"Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    out = response.json()
    assert out["format"] == "ome_tiff" and out["source"] == "slide.ome.tiff"
    assert response.headers["Location"] == f"/dicomweb/studies/{out['study_uid']}"
    assert {i["image_type"] for i in out["instances"]} == {"VOLUME", "LABEL", "OVERVIEW"}
    records = container.store.find_instances(study_uid=out["study_uid"])
    assert len(records) == len(out["instances"])
    with container.store.open_instance(records[0]) as fp:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    assert (ds.PatientID, ds.AccessionNumber, ds.ContainerIdentifier) == ("PAT-9", "ACC-9", "SL-9")
    assert ds.SpecimenDescriptionSequence[0].SpecimenIdentifier == "SP-9"
    assert not list(container.store.spool_dir.glob("wsi-*"))


def test_the_api_takes_a_multipart_upload(
    container: Container, client: TestClient, small_slides: dict[str, Path]
) -> None:
    with small_slides["svs"].open("rb") as fp:
        response = client.post("/api/wsi/import", params={"patient_id": "PAT-8"},
                               files={"file": ("case.svs", fp, "image/tiff")})  # fmt: skip
    assert response.status_code == 201, response.text
    assert response.json()["source"] == "case.svs"


def test_the_api_refuses_clearly(
    container: Container,
    client: TestClient,
    small_slides: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    response = client.post("/api/wsi/import", content=b"hello, not a slide",
                           params={"filename": "notes.txt"})  # fmt: skip
    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    assert "not a whole-slide image" in response.json()["detail"]
    empty = client.post("/api/wsi/import", content=b"")
    assert empty.status_code == 400 and "no slide file" in empty.json()["detail"]
    from opentile.jpeg import jpeg

    def missing() -> Path:
        raise FileNotFoundError("no turbojpeg")

    monkeypatch.setattr(jpeg, "find_turbojpeg_path", missing)
    monkeypatch.setattr(convert_module, "_turbojpeg_checked", False)
    response = client.post("/api/wsi/import", content=small_slides["ome"].read_bytes())
    assert response.status_code == 501
    assert "libturbojpeg0" in response.json()["detail"]
    assert not list(container.store.spool_dir.glob("wsi-*"))
    assert container.store.counts()["instances"] == 0


def test_the_conversion_streams_tiles(big_slide: Path, tmp_path: Path) -> None:
    """Python allocations while converting the 8k slide stay far below the file's size (and
    its 192 MB of pixels): tiles pass through in chunks, never the slide or a level whole."""
    import tracemalloc

    from medflow.pathology.convert import convert
    from medflow.pathology.metadata import read_sidecar

    convert(big_slide, tmp_path / "warm", metadata=read_sidecar(big_slide))  # imports, caches
    tracemalloc.start()
    try:
        convert(big_slide, tmp_path / "out", metadata=read_sidecar(big_slide))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < big_slide.stat().st_size / 2, f"peak {peak / 1e6:.1f} MB"


def test_the_api_refuses_cross_site_forms_and_bad_options_before_converting(
    container: Container, client: TestClient, small_slides: dict[str, Path]
) -> None:
    """A page on another site could make a browser POST a form or text cross-site without a
    preflight: refused; invalid options are refused before the conversion, nothing stored."""
    body = small_slides["ome"].read_bytes()
    before = container.store.counts()["instances"]
    text = client.post("/api/wsi/import", content=body, headers={"Content-Type": "text/plain"})
    assert text.status_code == 400 and "octet-stream" in text.json()["detail"]
    with small_slides["svs"].open("rb") as fp:
        forged = client.post("/api/wsi/import", files={"file": ("case.svs", fp, "image/tiff")},
                             headers={"Origin": "https://evil.example"})  # fmt: skip
    assert forged.status_code == 400 and "cross-site" in forged.json()["detail"]
    bad = client.post("/api/wsi/import", content=body,
                      params={"study_uid": "abc", "patient_sex": "X"},
                      headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert bad.status_code == 400
    assert "study UID" in bad.json()["detail"] and "sex" in bad.json()["detail"]
    assert container.store.counts()["instances"] == before
    assert not list(container.store.spool_dir.glob("wsi-*"))
