"""The cohort builder in headless Chromium against ``medflow serve`` holding a small synthetic
hospital: the count follows the form as it is edited, "Save" lands on the cohort's page, whose
Kaplan-Meier plot loads and whose patients' studies open their study pages. No console
errors anywhere."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import httpx
import pytest

from tests.e2e.test_web_ui import Hospital, Watch, browser, hospital, page

pytestmark = pytest.mark.e2e
__all__ = ["browser", "hospital", "page"]  # the fixtures, shared with the other UI tests
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
AGE_MIN = 18
KM_LOADED = (
    "() => { const i = document.getElementById('km-plot');"
    " return i.complete && i.naturalWidth > 0; }"
)


def _age(birth: str, today: date) -> int:
    born = date.fromisoformat(birth[:10])
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


def expected(base: str) -> tuple[str, int]:
    """An ICD-10 category of a patient with imaging, and how many adults have one like it."""
    conditions = httpx.get(f"{base}/fhir/Condition", params={"_count": "500"}).json()
    imaged = {
        e["resource"]["subject"]["reference"]
        for e in httpx.get(f"{base}/fhir/ImagingStudy", params={"_count": "500"}).json()["entry"]
    }
    coded = [
        (e["resource"]["subject"]["reference"], c["code"])
        for e in conditions.get("entry", [])
        for c in e["resource"]["code"]["coding"]
        if c["system"] == ICD10
    ]
    prefix = next(code[:3] for ref, code in coded if ref in imaged)
    today = date.today()
    births = {
        f"Patient/{e['resource']['id']}": e["resource"].get("birthDate")
        for e in httpx.get(f"{base}/fhir/Patient", params={"_count": "500"}).json()["entry"]
    }
    adults = {ref for ref, code in coded if code.startswith(prefix) and births.get(ref)
              and _age(str(births[ref]), today) >= AGE_MIN}  # fmt: skip
    return prefix, len(adults)


def test_build_save_and_open(hospital: Hospital, page: tuple[Any, Watch]) -> None:
    tab, watch = page
    prefix, adults = expected(hospital.base)
    assert adults > 0
    tab.goto(hospital.base + "/")
    tab.click("nav >> text=Cohorts")
    tab.wait_for_url("**/cohorts")
    tab.click("#new-cohort")
    tab.wait_for_url("**/cohorts/new")

    tab.fill('input[name="name"]', "adults with " + prefix)
    tab.fill('input[name="age_min"]', str(AGE_MIN))
    tab.wait_for_function(
        "() => /^\\d+$/.test(document.getElementById('cohort-count').textContent)"
    )
    tab.wait_for_function("() => document.querySelectorAll('#attrition tbody tr').length === 2")
    everyone = int(tab.inner_text("#cohort-count"))
    tab.select_option('select[name="condition_system"]', "icd10")
    tab.fill('input[name="condition_prefixes"]', prefix)
    tab.wait_for_function("() => document.querySelectorAll('#attrition tbody tr').length === 3")
    assert int(tab.inner_text("#cohort-count")) == adults <= everyone
    assert tab.locator("#builder-error").is_hidden()

    tab.click("#save-cohort")
    tab.wait_for_url(re.compile(r".*/cohorts/\d+$"))
    assert tab.inner_text("#cohort-name") == "adults with " + prefix
    assert tab.locator("tr[data-patient-id]").count() == adults
    assert tab.locator("#attrition tbody tr").count() == 3  # all patients, age, diagnosis
    tab.wait_for_function(KM_LOADED)
    assert tab.locator("#outcomes-table tbody tr").count() >= 1
    saved_url = tab.url

    # edit it back in the builder: the form the server fills makes the same count in the
    # browser, and saving the unchanged form keeps the cohort (no new version)
    tab.click("#edit-cohort")
    tab.wait_for_url(re.compile(r".*/cohorts/new\?from=\d+$"))
    assert tab.input_value('input[name="condition_prefixes"]') == prefix
    tab.wait_for_function("() => document.querySelectorAll('#attrition tbody tr').length === 3")
    assert int(tab.inner_text("#cohort-count")) == adults
    tab.click("#save-cohort")
    tab.wait_for_url(saved_url)
    assert "Version 1 " in tab.inner_text("p.summary")

    tab.locator("a.study-link").first.click()
    tab.wait_for_url("**/studies/*.*")
    assert tab.inner_text("#patient-name").strip()
    assert watch.errors == []
