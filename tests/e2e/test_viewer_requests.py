"""A browser viewer (OHIF's DICOMweb data source) against a real server: its request patterns,
its Accept headers and CORS preflights from another origin (PS3.18 §8.7, §10.4, §10.6)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from medflow.bootstrap import build
from medflow.core.settings import HttpSettings, Settings
from medflow.dicom.multipart import MultipartReader, parse_media_type
from tests.factories import make_instance, store_datasets

pytestmark = pytest.mark.e2e
VIEWER = "https://viewer.example.org"


class _Sink(list[bytes]):
    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.append(bytes(data))


def parts(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    ctype = parse_media_type(response.headers["content-type"])
    assert ctype.type == "multipart/related"
    reader = MultipartReader(ctype.param("boundary") or "", lambda h: _Sink())
    reader.feed(response.content)
    return [(p.headers, b"".join(p.sink)) for p in reader.close()]  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=db_url,
        http=HttpSettings(cors_origins=[VIEWER]),
        public_url="https://pacs.example.org/",
    )


@pytest.fixture
def study(settings: Settings) -> Iterator[tuple[str, str, list[str]]]:
    container = build(settings)
    try:
        first = make_instance(rows=32, columns=32, frames=2, patient_name="Müller^Jürgen")
        rest = [
            make_instance(
                study_uid=first.StudyInstanceUID,
                series_uid=first.SeriesInstanceUID,
                rows=32,
                columns=32,
                seed=i,
                patient_name="Müller^Jürgen",
            )
            for i in range(3)
        ]
        store_datasets(container.store, [first, *rest])
        yield (
            first.StudyInstanceUID,
            first.SeriesInstanceUID,
            [first.SOPInstanceUID] + [d.SOPInstanceUID for d in rest],
        )
    finally:
        container.close()


def test_viewer_study_list_series_metadata_frames(
    live_server: str, study: tuple[str, str, list[str]]
) -> None:
    study_uid, series_uid, sops = study
    root = live_server + "/dicomweb"
    with httpx.Client(headers={"Origin": VIEWER}) as http:
        # Study list as OHIF asks for it.
        r = http.get(
            root + "/studies",
            params={
                "limit": "101",
                "offset": "0",
                "fuzzymatching": "false",
                "includefield": "00081030,00080060",
                "PatientName": "*müller*",
            },
            headers={"Accept": "application/dicom+json"},
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == VIEWER
        studies = r.json()
        assert [s["0020000D"]["Value"][0] for s in studies] == [study_uid]
        assert studies[0]["00080061"]["Value"] == ["CT"]
        assert studies[0]["00201208"]["Value"] == [4]
        assert studies[0]["00081190"]["Value"][0].startswith("https://pacs.example.org/dicomweb/")

        r = http.get(
            f"{root}/studies/{study_uid}/series", params={"includefield": "0008103E,00080021"}
        )
        assert r.status_code == 200 and r.json()[0]["0020000E"]["Value"] == [series_uid]

        # Series metadata: absolute BulkDataURIs from the public URL, ETag revalidation.
        r = http.get(f"{root}/studies/{study_uid}/series/{series_uid}/metadata")
        assert r.status_code == 200
        metadata = r.json()
        assert {m["00080018"]["Value"][0] for m in metadata} == set(sops)
        uri = metadata[0]["7FE00010"]["BulkDataURI"]
        assert uri.startswith(f"https://pacs.example.org/dicomweb/studies/{study_uid}/")
        again = http.get(
            f"{root}/studies/{study_uid}/series/{series_uid}/metadata",
            headers={"If-None-Match": r.headers["etag"]},
        )
        assert again.status_code == 304

        # Frames with OHIF's Accept header: stored frames as they are.
        instance = f"{root}/studies/{study_uid}/series/{series_uid}/instances/{sops[0]}"
        r = http.get(
            f"{instance}/frames/1,2",
            headers={
                "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
            },
        )
        assert r.status_code == 200
        frames = parts(r)
        assert [len(body) for _, body in frames] == [32 * 32 * 2, 32 * 32 * 2]

        # Thumbnails for the study browser.
        r = http.get(f"{root}/studies/{study_uid}/thumbnail", headers={"Accept": "image/jpeg"})
        assert r.status_code == 200 and r.content[:2] == b"\xff\xd8"


def test_cors_preflight_from_the_viewer(live_server: str) -> None:
    r = httpx.options(
        live_server + "/dicomweb/studies",
        headers={
            "Origin": VIEWER,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,accept",
        },
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == VIEWER
    assert "POST" in r.headers["access-control-allow-methods"]
    other = httpx.options(
        live_server + "/dicomweb/studies",
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert other.headers.get("access-control-allow-origin") != "https://evil.example.com"
