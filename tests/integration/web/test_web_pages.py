"""The web UI's pages over a real index (SQLite, and PostgreSQL when configured): the home
page's counts and charts, the study list's filters and paging (QIDO-RS matching), the study
page's header, series, embedded instance list and FHIR links, 404s and HTML escaping."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

from tests.factories import make_instance, multipart, to_bytes

pytestmark = pytest.mark.integration

STUDY_A, STUDY_B, STUDY_C = "1.2.826.0.1.7.1", "1.2.826.0.1.7.2", "1.2.826.0.1.7.3"
CT_A, MR_A = "1.2.826.0.1.7.1.1", "1.2.826.0.1.7.1.2"
SCRIPT = "<script>alert(1)</script>"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
SNOMED = "http://snomed.info/sct"
ACSN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]}


def stow(client: TestClient, datasets: list[Dataset]) -> None:
    body = multipart([to_bytes(ds) for ds in datasets])
    r = client.post("/dicomweb/studies", content=body.body,
                    headers={"Content-Type": body.content_type})  # fmt: skip
    assert r.status_code == 200, r.text


def fhir(client: TestClient, resource: dict[str, Any]) -> str:
    r = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def condition(patient: str, code: str, display: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "subject": {"reference": f"Patient/{patient}"},
        "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
    }


@pytest.fixture
def loaded(client: TestClient) -> dict[str, Any]:
    a = {"study_uid": STUDY_A, "patient_name": "Doe^John", "patient_id": "PAT-1",
         "study_date": "20240115", "accession_number": "ACC-1"}  # fmt: skip
    ct = [make_instance(**a, series_uid=CT_A, instance_number=n, seed=n) for n in (3, 1, 2)]
    windows = {"WindowCenter": [100, 300], "WindowWidth": [200, 600]}
    mr = make_instance(**a, series_uid=MR_A, modality="MR", series_number=2, frames=2,
                       instance_number=1, **windows)  # fmt: skip
    stow(client, [*ct, mr])
    stow(
        client,
        [
            make_instance(
                study_uid=STUDY_B,
                patient_name="Roe^Jane",
                patient_id="PAT-2",
                study_date="20230301",
                accession_number="ACC-2",
                modality="MR",
            )
        ],
    )
    stow(client, [make_instance(study_uid=STUDY_C, patient_name=SCRIPT, patient_id="PAT-3",
                                study_date="20220620", accession_number="A&B<1>",
                                modality="CR", study_description=SCRIPT,
                                SeriesDescription=SCRIPT)])  # fmt: skip
    patient = fhir(client, {"resourceType": "Patient", "name": [{"family": "Doe"}]})
    for code, display in (("233604007", "Pneumonia"), ("233604007", "Pneumonia"),
                          ("195967001", "Asthma")):  # fmt: skip
        fhir(client, condition(patient, code, display))
    subject = {"reference": f"Patient/{patient}"}
    order = fhir(client, {"resourceType": "ServiceRequest", "status": "completed",
                          "intent": "order", "subject": subject})  # fmt: skip
    imaging = fhir(client, {
        "resourceType": "ImagingStudy", "status": "available", "subject": subject,
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_A}"}],
        "basedOn": [{"reference": f"ServiceRequest/{order}"}],
    })  # fmt: skip
    by_accession = fhir(client, {
        "resourceType": "DiagnosticReport", "status": "final", "subject": subject,
        "code": {"text": "CT chest"}, "identifier": [{"type": ACSN, "value": "ACC-1"}],
        "conclusion": "No acute findings. <b>bold</b>",
    })  # fmt: skip
    by_order = fhir(client, {
        "resourceType": "DiagnosticReport", "status": "preliminary", "subject": subject,
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2",
                             "display": "Chest CT"}]},
        "basedOn": [{"reference": f"ServiceRequest/{order}"}], "conclusion": "Addendum.",
    })  # fmt: skip
    fhir(
        client,
        {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "subject": subject,
            "code": {"text": "other"},
            "identifier": [{"type": ACSN, "value": "ACC-2"}],
        },
    )
    return {"ct": ct, "mr": mr, "patient": patient, "imaging": imaging,
            "reports": (by_accession, by_order)}  # fmt: skip


def page(client: TestClient, path: str, status: int = 200, **params: str) -> str:
    r = client.get(path, params=params) if params else client.get(path)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("text/html")
    return r.text


def study_uids(html: str) -> list[str]:
    return re.findall(r'<tr data-study-uid="([^"]+)">', html)


def count(html: str, name: str) -> int:
    found = re.search(rf'data-count="{name}">(\d+)<', html)
    assert found, name
    return int(found.group(1))


def viewer_data(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="viewer-data">(.*?)</script>', html)
    assert found
    return dict(json.loads(found.group(1)))


# -- home ------------------------------------------------------------------------------------------
def test_home_counts_charts_and_links(client: TestClient, loaded: dict[str, Any]) -> None:
    html = page(client, "/")
    assert (count(html, "patients"), count(html, "studies")) == (3, 3)
    assert (count(html, "series"), count(html, "instances")) == (4, 6)
    expected = {"Patient": 1, "Condition": 3, "DiagnosticReport": 3, "ImagingStudy": 1,
                "MedicationRequest": 0, "Observation": 0, "Procedure": 0}  # fmt: skip
    assert {name: count(html, name) for name in expected} == expected
    table = html[html.index('id="modality-table"') :]
    rows = re.findall(r"Modality=(\w+)\">\w+</a></td><td>(\d+)</td>", table)
    assert rows == [("MR", "2"), ("CR", "1"), ("CT", "1")]  # most studies first, then by name
    charts = re.findall(r"<figcaption>([^<]+)</figcaption>\s*<svg", html)
    assert charts == ["Studies by modality", "Studies per year", "Top diagnoses"]
    assert html.count("<rect ") == 3 + 3 + 2
    diagnoses = html[html.index("Top diagnoses") :]
    assert diagnoses.index("Pneumonia: 2") < diagnoses.index("Asthma: 1")
    assert "StudyDateFrom=2022-01-01&amp;StudyDateTo=2022-12-31" in html
    for link in ("/studies", "/dicomweb/studies", "/fhir/metadata", "/docs", "/sync/status"):
        assert f'href="{link}' in html
    for nav in ("Home", "Studies", "FHIR", "API docs"):
        assert f">{nav}</a>" in html


def test_home_of_an_empty_server(client: TestClient) -> None:
    html = page(client, "/")
    assert count(html, "studies") == 0 and count(html, "Patient") == 0
    assert "Nothing stored yet" in html and "<svg" not in html


# -- study list ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [STUDY_A, STUDY_B, STUDY_C]),  # newest first
        ({"PatientName": "doe"}, [STUDY_A]),  # each word begins a word of the name
        ({"PatientName": "jane"}, [STUDY_B]),
        ({"PatientName": "ro*"}, [STUDY_B]),  # a wildcard: QIDO wildcard matching
        ({"PatientName": "john doe"}, [STUDY_A]),
        ({"PatientName": "nobody"}, []),
        ({"PatientID": "PAT-2"}, [STUDY_B]),
        ({"PatientID": "PAT-*"}, [STUDY_A, STUDY_B, STUDY_C]),
        ({"AccessionNumber": "ACC-1"}, [STUDY_A]),
        ({"AccessionNumber": "A&B<1>"}, [STUDY_C]),
        ({"Modality": "MR"}, [STUDY_A, STUDY_B]),  # ModalitiesInStudy
        ({"Modality": "CR"}, [STUDY_C]),
        ({"StudyDateFrom": "2023-01-01", "StudyDateTo": "2023-12-31"}, [STUDY_B]),
        ({"StudyDateFrom": "20230101"}, [STUDY_A, STUDY_B]),
        ({"StudyDateTo": "2023-03-01"}, [STUDY_B, STUDY_C]),
        ({"Modality": "MR", "StudyDateFrom": "2024-01-01"}, [STUDY_A]),
    ],
)
def test_study_list_filters(
    client: TestClient, loaded: dict[str, Any], params: dict[str, str], expected: list[str]
) -> None:
    html = page(client, "/studies", **params)
    assert study_uids(html) == expected
    for uid in expected:
        assert f'href="/studies/{uid}"' in html
    if not expected:
        assert 'id="no-studies"' in html


def test_study_list_rows_and_paging(client: TestClient, loaded: dict[str, Any]) -> None:
    first = page(client, "/studies", limit="2")
    assert study_uids(first) == [STUDY_A, STUDY_B]
    assert "Studies 1\u20132 (more follow)" in first
    row = first[first.index(f'data-study-uid="{STUDY_A}"') :].split("</tr>")[0]
    for text in ("Doe, John", "PAT-1", "2024-01-15", "ACC-1", "CT, MR", ">2<", ">4<"):
        assert text in row, text
    assert 'id="page-prev"' not in first
    next_link = re.search(r'id="page-next" href="([^"]+)"', first)
    assert next_link and "limit=2" in next_link.group(1) and "offset=2" in next_link.group(1)
    second = page(client, next_link.group(1).replace("&amp;", "&"))
    assert study_uids(second) == [STUDY_C]
    assert 'id="page-next"' not in second and 'id="page-prev"' in second
    filtered = page(client, "/studies", Modality="MR", limit="1")
    next_link = re.search(r'id="page-next" href="([^"]+)"', filtered)
    assert next_link and "Modality=MR" in next_link.group(1)
    assert study_uids(page(client, next_link.group(1).replace("&amp;", "&"))) == [STUDY_B]


@pytest.mark.parametrize(
    "params",
    [{"StudyDateFrom": "yesterday"}, {"limit": "-1"}, {"PatientID": "a\x01b"}],
)
def test_study_list_bad_input(client: TestClient, params: dict[str, str]) -> None:
    html = page(client, "/studies", 400, **params)
    assert 'class="error" role="alert"' in html and "<table" not in html


# -- study page ------------------------------------------------------------------------------------
def test_study_page(client: TestClient, loaded: dict[str, Any]) -> None:
    html = page(client, f"/studies/{STUDY_A}")
    assert '<h1 id="patient-name">Doe, John</h1>' in html
    for text in ("PAT-1", "2024-01-15", "ACC-1", "CT CHEST", "CT, MR", "Welby, Marcus"):
        assert text in html, text
    cards = re.findall(r'class="series-card" data-series-uid="([^"]+)"', html)
    assert cards == [CT_A, MR_A]
    for series in (CT_A, MR_A):
        assert f'src="/dicomweb/studies/{STUDY_A}/series/{series}/thumbnail"' in html
    data = viewer_data(html)
    assert data["study"] == STUDY_A and data["dicomweb"] == "/dicomweb"
    ct, mr = data["series"]
    by_number = sorted(loaded["ct"], key=lambda ds: int(ds.InstanceNumber))
    assert [i["uid"] for i in ct["instances"]] == [ds.SOPInstanceUID for ds in by_number]
    assert [i["frames"] for i in ct["instances"]] == [1, 1, 1]
    assert ct["presets"] == [{"label": "Header 1", "center": 1024, "width": 2048}]
    assert ct["range"] == [0, 4095] and ct["modality"] == "CT"
    assert mr["instances"] == [{"uid": loaded["mr"].SOPInstanceUID, "frames": 2}]
    assert [(p["center"], p["width"]) for p in mr["presets"]] == [(100, 200), (300, 600)]
    assert "/static/viewer.js" in html


def test_study_page_fhir_links(client: TestClient, loaded: dict[str, Any]) -> None:
    html = page(client, f"/studies/{STUDY_A}")
    assert f'href="/fhir/ImagingStudy/{loaded["imaging"]}"' in html
    assert f'href="/fhir/Patient/{loaded["patient"]}"' in html
    reports = re.findall(r'data-report-id="([^"]+)"', html)
    assert reports == list(loaded["reports"])  # by accession, then by the study's order
    assert "No acute findings. &lt;b&gt;bold&lt;/b&gt;" in html and "<b>bold" not in html
    assert ">CT chest</a>" in html and ">Chest CT</a>" in html
    other = page(client, f"/studies/{STUDY_B}")
    assert 'id="no-imaging-study"' in other
    assert len(re.findall(r"data-report-id=", other)) == 1  # the ACC-2 report


@pytest.mark.parametrize("uid", ["1.2.3.999", "not-a-uid", "1" * 70])
def test_unknown_study_is_404(client: TestClient, loaded: dict[str, Any], uid: str) -> None:
    html = page(client, f"/studies/{uid}", 404)
    assert 'id="not-found"' in html and ">Studies</a>" in html


def test_names_are_escaped(client: TestClient, loaded: dict[str, Any]) -> None:
    escaped = "&lt;script&gt;alert(1)&lt;/script&gt;"
    for path in ("/studies", f"/studies/{STUDY_C}"):
        html = page(client, path)
        assert "<script>alert" not in html
        assert escaped in html
    html = page(client, f"/studies/{STUDY_C}")
    assert f'<h1 id="patient-name">{escaped}</h1>' in html
    assert "A&amp;B&lt;1&gt;" in html
    listed = page(client, "/studies", AccessionNumber="A&B<1>")
    assert 'value="A&amp;B&lt;1&gt;"' in listed  # the form keeps the value, escaped
    # JSON in a script element (the series description is in it): no "</script>" can end it
    data = viewer_data(html)
    assert data["study"] == STUDY_C
    assert data["series"][0]["description"] == SCRIPT
    block = html.split('id="viewer-data">', 1)[1].split("</script>", 1)[0]
    assert "\\u003c/script\\u003e" in block and "</" not in block


def test_static_assets(client: TestClient) -> None:
    for name, kind in (("medflow.css", "text/css"), ("viewer.js", "text/javascript"),
                       ("medflow.js", "text/javascript")):  # fmt: skip
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        again = client.get(f"/static/{name}", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304
    assert client.get("/static/..%2Frouter.py").status_code == 404  # reaches the route
    assert client.get("/static/..%2F..%2Fbootstrap.py").status_code == 404
    assert client.get("/static/router.py").status_code == 404


def test_a_study_without_images_or_alphabetic_name(client: TestClient) -> None:
    """A structured report alone (no pixel data), no study date or description, and a name
    with only an ideographic group: the page shows what there is and no viewer."""
    study = "1.2.826.0.1.7.9"
    sr = make_instance(study_uid=study, patient_id="PAT-9", patient_name="=山田^太郎",
                       study_date="", study_description="", modality="SR",
                       sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11")  # fmt: skip
    image = ("PixelData", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
             "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation")  # fmt: skip
    for keyword in image:
        if keyword in sr:
            delattr(sr, keyword)
    stow(client, [sr])
    html = page(client, f"/studies/{study}")
    assert "山田, 太郎" in html
    assert 'id="viewer-data"' not in html  # nothing to view: the viewer's script returns early
    listed = page(client, "/studies", PatientID="PAT-9")
    assert study in listed
