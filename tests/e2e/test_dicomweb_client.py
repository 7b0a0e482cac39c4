"""The MGH dicomweb-client library against a real medflow server: store, search, retrieve
(instance, series metadata, frames) and delete, end to end."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from requests.exceptions import HTTPError

from tests.factories import make_instance, to_bytes

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The client's view does not depend on the index database (covered by integration)."""
    return f"sqlite:///{tmp_path / 'index.sqlite3'}"


def as_read(ds: Any) -> Any:
    """The dataset as a reader sees it (what the client sends is the saved file)."""
    return pydicom.dcmread(io.BytesIO(to_bytes(ds)))


@pytest.fixture
def web(live_server: str) -> DICOMwebClient:
    return DICOMwebClient(url=live_server + "/dicomweb")


@pytest.fixture
def study(web: DICOMwebClient) -> dict[str, Any]:
    study_uid = pydicom.uid.generate_uid()
    s1, s2 = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    dss = [
        make_instance(
            study_uid=study_uid,
            series_uid=s1,
            patient_id="DWC-1",
            instance_number=1,
            frames=3,
            seed=1,
        ),
        make_instance(study_uid=study_uid, series_uid=s1, patient_id="DWC-1", instance_number=2),
        make_instance(
            study_uid=study_uid,
            series_uid=s2,
            patient_id="DWC-1",
            modality="MR",
            series_number=2,
            instance_number=1,
        ),
    ]
    dss = [as_read(d) for d in dss]
    response = web.store_instances(dss)
    refs = response.ReferencedSOPSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [d.SOPInstanceUID for d in dss]
    assert "FailedSOPSequence" not in response
    return {"uid": study_uid, "series": [s1, s2], "datasets": dss}


def test_store_and_search(web: DICOMwebClient, study: dict[str, Any]) -> None:
    other = as_read(make_instance(patient_id="SOMEONE-ELSE"))
    web.store_instances([other])
    found = web.search_for_studies(search_filters={"PatientID": "DWC-1"})
    assert [s["0020000D"]["Value"][0] for s in found] == [study["uid"]]
    assert found[0]["00201208"]["Value"] == [3]  # NumberOfStudyRelatedInstances
    series = web.search_for_series(study_instance_uid=study["uid"])
    assert sorted(s["0020000E"]["Value"][0] for s in series) == sorted(study["series"])
    mr = web.search_for_series(study_instance_uid=study["uid"], search_filters={"Modality": "MR"})
    assert [s["0020000E"]["Value"][0] for s in mr] == [study["series"][1]]
    instances = web.search_for_instances(
        study_instance_uid=study["uid"], series_instance_uid=study["series"][0]
    )
    assert sorted(i["00080018"]["Value"][0] for i in instances) == sorted(
        d.SOPInstanceUID for d in study["datasets"][:2]
    )
    assert len(web.search_for_instances(study_instance_uid=study["uid"])) == 3


def test_retrieve_instance_and_series_metadata(web: DICOMwebClient, study: dict[str, Any]) -> None:
    sent = study["datasets"][1]
    got = web.retrieve_instance(study["uid"], sent.SeriesInstanceUID, sent.SOPInstanceUID)
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.PatientID == "DWC-1"
    assert got.PixelData == sent.PixelData
    meta = web.retrieve_series_metadata(study["uid"], study["series"][0])
    assert sorted(m["00080018"]["Value"][0] for m in meta) == sorted(
        d.SOPInstanceUID for d in study["datasets"][:2]
    )
    for m in meta:
        assert m["0020000D"]["Value"] == [study["uid"]]
        uri = m["7FE00010"]["BulkDataURI"]
        # dicomweb-client sends "Host: 127.0.0.1" without the port (web.py sets headers['Host']
        # = self.host), so the server's own base URL lacks it; MEDFLOW_PUBLIC_URL avoids that.
        assert uri.startswith("http://127.0.0.1")
        sop = m["00080018"]["Value"][0]
        assert uri.endswith(
            f"/dicomweb/studies/{study['uid']}/series/{study['series'][0]}"
            f"/instances/{sop}/bulkdata/7FE00010"
        )
    assert len(web.retrieve_study_metadata(study["uid"])) == 3


def test_retrieve_instance_frames(web: DICOMwebClient, study: dict[str, Any]) -> None:
    sent = study["datasets"][0]  # three frames of 16x16 uint16
    frame_bytes = sent.Rows * sent.Columns * 2
    frames = web.retrieve_instance_frames(
        study["uid"], sent.SeriesInstanceUID, sent.SOPInstanceUID, frame_numbers=[1, 3]
    )
    assert frames == [sent.PixelData[:frame_bytes], sent.PixelData[2 * frame_bytes :]]
    pixels = np.frombuffer(frames[1], dtype="<u2").reshape(sent.Rows, sent.Columns)
    assert np.array_equal(pixels, sent.pixel_array[2])


def test_delete(web: DICOMwebClient, study: dict[str, Any]) -> None:
    d0, d1, _ = study["datasets"]
    web.delete_instance(study["uid"], d1.SeriesInstanceUID, d1.SOPInstanceUID)
    assert len(web.search_for_instances(study_instance_uid=study["uid"])) == 2
    web.delete_series(study["uid"], study["series"][1])
    assert [
        s["0020000E"]["Value"][0] for s in web.search_for_series(study_instance_uid=study["uid"])
    ] == [study["series"][0]]
    web.delete_study(study["uid"])
    assert web.search_for_studies(search_filters={"PatientID": "DWC-1"}) == []
    with pytest.raises(HTTPError) as info:
        web.retrieve_instance(study["uid"], d0.SeriesInstanceUID, d0.SOPInstanceUID)
    assert info.value.response.status_code == 404
    with pytest.raises(HTTPError) as info:
        web.delete_study(study["uid"])
    assert info.value.response.status_code == 404
