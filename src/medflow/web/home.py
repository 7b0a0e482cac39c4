"""The home page's content: what the archive and the FHIR store hold, as counts and charts."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from medflow.fhir.service import CodeCount, FhirService
from medflow.store.records import ArchiveOverview
from medflow.store.service import StoreService
from medflow.web.charts import BarChart, bar_chart

FHIR_TYPES = (
    "Patient",
    "Condition",
    "DiagnosticReport",
    "ImagingStudy",
    "MedicationRequest",
    "Observation",
    "Procedure",
)
"""The main resource types counted on the home page."""
TOP_DIAGNOSES = 8
MAX_YEARS = 15


@dataclass(frozen=True)
class Home:
    archive: ArchiveOverview
    fhir: dict[str, int]
    diagnoses: list[CodeCount]
    charts: list[BarChart]


def _every_year(years: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """The years from the first to the last, those without studies at 0 (the last
    :data:`MAX_YEARS`); as they are when a year is not a number."""
    if not all(y.isascii() and y.isdigit() for y, _ in years) or not years:
        return years[-MAX_YEARS:]
    counts = dict(years)
    last = int(years[-1][0])
    first = max(int(years[0][0]), last - MAX_YEARS + 1)
    return [(str(y), counts.get(str(y), 0)) for y in range(first, last + 1)]


def _charts(root: str, archive: ArchiveOverview, diagnoses: list[CodeCount]) -> list[BarChart]:
    charts = []
    if archive.studies_by_modality:
        charts.append(
            bar_chart(
                "Studies by modality",
                archive.studies_by_modality,
                links=[
                    f"{root}/studies?" + urlencode({"Modality": m})
                    for m, _ in archive.studies_by_modality
                ],
            )
        )
    years = _every_year(archive.studies_by_year)
    if years:
        charts.append(
            bar_chart(
                "Studies per year",
                years,
                links=[
                    f"{root}/studies?"
                    + urlencode({"StudyDateFrom": f"{y}-01-01", "StudyDateTo": f"{y}-12-31"})
                    for y, _ in years
                ],
            )
        )
    if diagnoses:
        charts.append(bar_chart("Top diagnoses", [(d.display, d.count) for d in diagnoses]))
    return charts


def home(store: StoreService, fhir: FhirService, *, root: str) -> Home:
    """Counts and charts; every number is an aggregate in SQL (the router caches the page
    for a while when counting takes long)."""
    archive = store.overview()
    counts = fhir.type_counts(resource_types=FHIR_TYPES)
    diagnoses = fhir.code_counts(resource_type="Condition", limit=TOP_DIAGNOSES)
    return Home(archive, counts, diagnoses, _charts(root, archive, diagnoses))


__all__ = ["FHIR_TYPES", "Home", "home"]
