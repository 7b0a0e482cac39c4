"""The cohort pages and the outcomes routes over a small synthetic hospital loaded through the
public APIs (SQLite, and PostgreSQL when configured): the list, the builder, a saved cohort's
attrition, patients (linked to their study pages) and outcomes, the outcomes JSON and its
Kaplan-Meier SVG, problem details for bad input, and HTML escaping of a cohort's name."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from medflow.synthetic.writer import generate
from tests.conftest import loaded_hospital
from tests.integration.cohort.test_cohort_differential import fhir_all

pytestmark = pytest.mark.integration
SEED, PATIENTS = 11, 30
AS_OF = "2026-11-01"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
SVG_NS = "{http://www.w3.org/2000/svg}"
NAME = "cancer <b>&</b> adults"


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("web-cohorts-hospital")
    generate(root, patients=PATIENTS, seed=SEED, size=16, slides=False)
    return root


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def client(
    request: pytest.FixtureRequest, generated: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp(f"web-cohorts-{request.param}")
    with loaded_hospital(generated, request.param, tmp) as (_, c):
        yield c


def cancer_patients(c: TestClient, prefix: str) -> set[str]:
    return {
        cond["subject"]["reference"].removeprefix("Patient/")
        for cond in fhir_all(c, "Condition", [])
        if any(
            x["system"] == ICD10 and x["code"].startswith(prefix) for x in cond["code"]["coding"]
        )
    }


def definition(prefix: str = "C") -> dict[str, Any]:
    """What the builder sends: an ICD-10 prefix, an age, every study collected."""
    return {
        "name": NAME,
        "evaluation_date": AS_OF,
        "criteria": [
            {"label": "age 18-", "demographics": {"age": {"min": 18}}},
            {
                "label": f"diagnosis {prefix}*",
                "condition": {"codes": [{"system": "icd10", "prefixes": [prefix]}]},
            },
        ],
        "collect": [{"label": "studies", "imaging": {}}],
    }


@pytest.fixture(scope="module")
def saved(client: TestClient) -> int:
    r = client.post("/api/cohorts", json=definition())
    assert r.status_code == 201, r.text
    cohort = int(r.json()["id"])
    assert client.post(f"/api/cohorts/{cohort}/$run").status_code == 200
    return cohort


def test_outcomes_routes(client: TestClient, saved: int) -> None:
    r = client.get(f"/api/cohorts/{saved}/outcomes")
    assert r.status_code == 200, r.text
    table = r.json()
    members = {p["id"] for p in client.get(f"/api/cohorts/{saved}/runs/1").json()["patients"]}
    assert members and members <= cancer_patients(client, "C")
    assert {p["id"] for p in table["patients"]} == members
    assert table["overall"]["n"] == len(members) == sum(row["n"] for row in table["rows"])
    assert table["evaluation_date"] == AS_OF
    index = sorted(members)[0]
    r = client.get(f"/api/cohorts/{saved}/outcomes", params={"patient": index})
    assert {p["id"] for p in r.json()["patients"]} == members - {index}

    unsaved = client.post("/api/cohorts/$outcomes", json=definition())
    assert unsaved.status_code == 200 and unsaved.json()["overall"] == table["overall"]

    svg = client.get(f"/api/cohorts/{saved}/outcomes.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    root = ET.fromstring(svg.text)
    assert len(root.findall(f".//{SVG_NS}path")) == len(table["curves"]) > 0
    assert "&lt;b&gt;" in svg.text  # the name is escaped in the title


def test_outcomes_errors(client: TestClient) -> None:
    missing = client.get("/api/cohorts/999999/outcomes")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert client.get("/api/cohorts/999999/outcomes.svg").status_code == 404
    bad = client.post("/api/cohorts/$outcomes", json={"name": "x", "criteria": []})
    assert bad.status_code == 422 and bad.json()["errors"]
    assert client.get("/api/cohorts/1/outcomes", params={"as_of": "soon"}).status_code == 422


def test_cohort_list_and_builder_pages(client: TestClient, saved: int) -> None:
    r = client.get("/cohorts")
    assert r.status_code == 200
    assert f'href="/cohorts/{saved}"' in r.text and 'href="/cohorts/new"' in r.text
    assert "cancer &lt;b&gt;&amp;&lt;/b&gt; adults" in r.text and "<b>&</b>" not in r.text
    run = client.get(f"/api/cohorts/{saved}").json()["last_run"]
    assert f'data-count="patients">{run["patient_count"]}<' in r.text
    assert 'aria-current="page">Cohorts<' in r.text

    new = client.get("/cohorts/new")
    assert new.status_code == 200
    for field in ("age_min", "age_max", "gender", "condition_system", "condition_prefixes",
                  "onset_from", "medication_codes", "modality", "imaging_from"):  # fmt: skip
        assert f'name="{field}"' in new.text, field
    assert re.search(r'src="/static/cohorts\.js\?v=\w+"', new.text)
    js = client.get("/static/cohorts.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in js.text and "$evaluate" in js.text


def test_saved_cohort_page(client: TestClient, saved: int) -> None:
    r = client.get(f"/cohorts/{saved}")
    assert r.status_code == 200, r.text
    page = r.text
    run = client.get(f"/api/cohorts/{saved}/runs/1").json()
    for step in run["attrition"]:
        assert f'<td>{step["criterion"]}</td><td class="num">{step["patients"]}</td>' in page
    for patient in run["patients"]:
        assert f'data-patient-id="{patient["id"]}"' in page
        for uid in patient["studies"]:
            assert f'href="/studies/{uid}"' in page
    assert any(p["studies"] for p in run["patients"])  # "open the studies"
    plot = re.search(r'id="km-plot"[^>]*src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    assert plot is not None  # the plot of the page's own table, not a second computation
    drawn = ET.fromstring(base64.b64decode(plot.group(1)))
    served = ET.fromstring(client.get(f"/api/cohorts/{saved}/outcomes.svg").text)
    assert ET.tostring(drawn) == ET.tostring(served)
    assert f'href="/cohorts/new?from={saved}"' in page
    table = client.get(f"/api/cohorts/{saved}/outcomes").json()
    for row in table["rows"]:
        assert f'<td>{row["group"]}</td><td class="num">{row["n"]}</td>' in page
    assert "<b>&</b>" not in page and "cancer &lt;b&gt;&amp;&lt;/b&gt; adults" in page
    assert client.get("/cohorts/no-such-cohort").status_code == 404


def test_unrun_cohort_page_evaluates(client: TestClient) -> None:
    body = {**definition("C34"), "name": "lung, not run"}
    cohort = client.post("/api/cohorts", json=body).json()["id"]
    r = client.get(f"/cohorts/{cohort}")
    assert r.status_code == 200 and "evaluated now" in r.text
    expected = client.post("/api/cohorts/$evaluate", json=body).json()
    assert f'data-count="patients">{len(expected["patients"])}<' in r.text


def test_edit_saved_cohort_in_builder(client: TestClient, saved: int) -> None:
    """``/cohorts/new?from=ID`` shows the saved definition in the form; what the form sends
    back (the builder's own definition) saves as the next version with the same criteria."""
    page = client.get("/cohorts/new", params={"from": saved})
    assert page.status_code == 200, page.text
    assert 'id="edit-note"' in page.text and "version 2" in page.text
    assert 'name="age_min" min="0" max="150" size="4" value="18"' in page.text
    assert 'name="condition_prefixes" placeholder="C34, C40" value="C"' in page.text
    assert '<option value="icd10" selected>' in page.text
    assert f'value="{AS_OF}"' in page.text
    assert "cancer &lt;b&gt;&amp;&lt;/b&gt; adults" in page.text  # escaped in the name field
    before = client.get(f"/api/cohorts/{saved}").json()["version"]
    again = client.post("/api/cohorts", json=definition())  # the same criteria: no new version
    assert again.status_code in (200, 201) and client.get(f"/api/cohorts/{saved}").json()[
        "version"] == before  # fmt: skip
    assert client.get("/cohorts/new", params={"from": "no-such-cohort"}).status_code == 404


def test_edit_refused_when_the_form_cannot_show_it(client: TestClient) -> None:
    body = definition("C34")
    body["name"] = "lung with status"
    body["criteria"][1]["condition"]["clinical_status"] = ["active"]
    cohort = client.post("/api/cohorts", json=body).json()["id"]
    page = client.get("/cohorts/new", params={"from": cohort})
    assert page.status_code == 200 and 'id="edit-refused"' in page.text
    assert 'value="C34"' not in page.text  # nothing half-shown
