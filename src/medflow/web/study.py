"""The study page's content: the patient and study header, the series (with what the viewer
needs: the ordered instances and frame counts, window presets) and the linked FHIR resources.
The similar images panel beside the viewer is filled in the browser (``viewer.js`` asks
``/api/similar`` for the image shown, after the viewer's first image).

Three archive queries whatever the study's size: the study and its series (QIDO), the instance
index rows (``find_instances``, in series and InstanceNumber order) and the windowing
attributes of one instance per series (an instance-level query with ``includefield``). FHIR:
the ImagingStudy the sync made (identifier ``urn:dicom:uid|urn:oid:<uid>``) and the
DiagnosticReports of the accession number or of the ImagingStudy's orders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from medflow.core.errors import MedflowError, NotFound
from medflow.dicom.attributes import is_valid_uid
from medflow.dicom.matching import parse_attribute, parse_match
from medflow.fhir.identifiers import ACSN, DICOM_UID_SYSTEM, search_token
from medflow.fhir.service import FhirService
from medflow.store.query import Query
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService
from medflow.web import dicom_json as dj
from medflow.web.studies import StudyRow, study_row

log = logging.getLogger(__name__)

VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
MAX_SERIES = 1000
UIDS_PER_QUERY = 15
"""UIDs in one list key: 15 UIDs of 64 characters fit in the 1,024 a key value may have."""
WINDOW_KEYS = (
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    "RescaleSlope",
    "RescaleIntercept",
    "BitsStored",
    "PixelRepresentation",
)


@dataclass
class SeriesView:
    uid: str
    number: str
    modality: str
    description: str
    body_part: str
    count: int
    """Number of Series Related Instances."""
    instances: list[dict[str, Any]] = field(default_factory=list)
    """The image instances in InstanceNumber order: ``{"uid": ..., "frames": n}``."""
    presets: list[dict[str, Any]] = field(default_factory=list)
    """Window presets of the header: ``{"label", "center", "width"}``."""
    range: tuple[float, float] | None = None
    """The modality value range its stored bits allow (a starting window without presets)."""
    slide: bool = False
    """A whole slide image series (VL Whole Slide Microscopy): it opens in the slide viewer
    (``/slides/{study}/{series}``), not in the study page's image viewer."""

    @property
    def images(self) -> bool:
        return bool(self.instances)

    def viewer(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "number": self.number,
            "modality": self.modality,
            "description": self.description,
            "instances": self.instances,
            "presets": self.presets,
            "range": list(self.range) if self.range else None,
        }


@dataclass(frozen=True)
class ImagingStudyView:
    id: str
    status: str
    subject: str
    """The subject reference (``Patient/<id>``), "" when none."""


@dataclass(frozen=True)
class ReportView:
    id: str
    title: str
    status: str
    date: str
    conclusion: str


@dataclass
class StudyPage:
    study: StudyRow
    referring: str
    series: list[SeriesView]
    imaging_study: ImagingStudyView | None = None
    reports: list[ReportView] = field(default_factory=list)

    def viewer(self, root: str) -> dict[str, Any]:
        """The viewer's data, embedded in the page as JSON: with the image series, where the
        similar images panel asks (``/api/similar``, the cohorts to restrict it to) and where
        a study's page is (its links)."""
        return {
            "dicomweb": f"{root}/dicomweb",
            "study": self.study.study_uid,
            "series": [s.viewer() for s in self.series if s.images and not s.slide],
            "similar": f"{root}/api/similar",
            "cohorts": f"{root}/api/cohorts",
            "studies": f"{root}/studies",
        }

    @property
    def slides(self) -> bool:
        return any(s.slide for s in self.series)


def _is_image(record: InstanceRecord) -> bool:
    return record.rows is not None and record.pixel_data_offset is not None


def _series(store: StoreService, study_uid: str) -> list[SeriesView]:
    result = store.search(Query(level="series", study_uid=study_uid, limit=MAX_SERIES))
    return [
        SeriesView(
            uid=dj.text(obj, dj.SERIES_UID),
            number=dj.text(obj, dj.SERIES_NUMBER),
            modality=dj.text(obj, dj.MODALITY),
            description=dj.text(obj, dj.SERIES_DESCRIPTION),
            body_part=dj.text(obj, dj.BODY_PART),
            count=int(dj.number(obj, dj.SERIES_INSTANCES) or 0),
        )
        for obj in result.rows
    ]


def _presets(obj: dj.Obj) -> list[dict[str, Any]]:
    centers, widths = dj.values(obj, dj.WINDOW_CENTER), dj.values(obj, dj.WINDOW_WIDTH)
    notes = dj.values(obj, dj.WINDOW_EXPLANATION)
    out = []
    for i, (center, width) in enumerate(zip(centers, widths, strict=False)):
        if isinstance(center, int | float) and isinstance(width, int | float) and width > 0:
            label = str(notes[i]) if i < len(notes) and notes[i] else f"Header {i + 1}"
            out.append({"label": label, "center": center, "width": width})
    return out


def _value_range(obj: dj.Obj) -> tuple[float, float] | None:
    bits = dj.number(obj, dj.BITS_STORED)
    if bits is None or not 1 <= bits <= 32:
        return None
    signed = dj.number(obj, dj.PIXEL_REPRESENTATION) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = dj.number(obj, dj.RESCALE_SLOPE) or 1.0
    intercept = dj.number(obj, dj.RESCALE_INTERCEPT) or 0.0
    ends = sorted((low * slope + intercept, high * slope + intercept))
    return ends[0], ends[1]


def _windowing(store: StoreService, study_uid: str, series: list[SeriesView]) -> None:
    """Window presets and value ranges from the header of each series' middle instance (a
    UID list key holds at most :data:`UIDS_PER_QUERY` UIDs: one query per that many series)."""
    middle = [s.instances[(len(s.instances) - 1) // 2]["uid"] for s in series if s.images]
    by_series: dict[str, dj.Obj] = {}
    for start in range(0, len(middle), UIDS_PER_QUERY):
        chunk = middle[start : start + UIDS_PER_QUERY]
        query = Query(
            level="instance",
            study_uid=study_uid,
            matches=(parse_match(parse_attribute("SOPInstanceUID"), "\\".join(chunk)),),
            include=tuple(parse_attribute(k) for k in WINDOW_KEYS),
            limit=len(chunk),
        )
        by_series.update((dj.text(obj, dj.SERIES_UID), obj) for obj in store.search(query).rows)
    for s in series:
        obj = by_series.get(s.uid)
        if obj is not None:
            s.presets, s.range = _presets(obj), _value_range(obj)


def _load_archive(store: StoreService, study_uid: str) -> StudyPage:
    if not is_valid_uid(study_uid):
        raise NotFound("no such study")
    found = store.search(Query(level="study", study_uid=study_uid, limit=1)).rows
    if not found:
        raise NotFound("no such study")
    series = _series(store, study_uid)
    by_uid = {s.uid: s for s in series}
    for record in store.find_instances(study_uid=study_uid):
        view = by_uid.get(record.series_uid)
        if view is not None and record.sop_class_uid == VL_WSI:
            view.slide = True
        elif view is not None and _is_image(record):
            view.instances.append(
                {"uid": record.sop_instance_uid, "frames": record.number_of_frames or 1}
            )
    _windowing(store, study_uid, series)
    return StudyPage(study_row(found[0]), dj.text(found[0], dj.REFERRING), series)


def _concept_text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    codings = [c for c in concept.get("coding") or [] if isinstance(c, dict)]
    return str(concept.get("text") or next((c["display"] for c in codings if c.get("display")), ""))


def _report(resource: dict[str, Any]) -> ReportView:
    return ReportView(
        id=str(resource.get("id", "")),
        title=_concept_text(resource.get("code")) or "Report",
        status=str(resource.get("status", "")),
        date=str(resource.get("effectiveDateTime") or resource.get("issued") or ""),
        conclusion=str(resource.get("conclusion") or ""),
    )


def _imaging_study(resource: dict[str, Any]) -> ImagingStudyView:
    subject = resource.get("subject")
    reference = subject.get("reference") if isinstance(subject, dict) else None
    return ImagingStudyView(
        id=str(resource.get("id", "")),
        status=str(resource.get("status", "")),
        subject=str(reference) if isinstance(reference, str) and "/" in reference else "",
    )


def _reports(fhir: FhirService, accession: str, orders: list[str]) -> list[ReportView]:
    found: dict[str, ReportView] = {}
    searches = [[("based-on", ref)] for ref in orders]
    if accession:
        searches.insert(0, [("identifier:of-type", search_token(*ACSN, accession))])
    for params in searches:
        for resource in fhir.search_resources(resource_type="DiagnosticReport", params=params):
            report = _report(resource)
            found.setdefault(report.id, report)
    return list(found.values())


def _link_fhir(fhir: FhirService, page: StudyPage) -> None:
    identifier = search_token(DICOM_UID_SYSTEM, "urn:oid:" + page.study.study_uid)
    try:
        studies = fhir.search_resources(
            resource_type="ImagingStudy", params=[("identifier", identifier)], limit=1
        )
        page.imaging_study = _imaging_study(studies[0]) if studies else None
        orders = [
            str(ref["reference"])
            for ref in (studies[0].get("basedOn") or [] if studies else [])
            if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("ServiceRequest/")
        ]
        page.reports = _reports(fhir, page.study.accession, orders)
    except MedflowError as exc:  # the page shows the archive's part without the FHIR links
        log.warning("FHIR links of a study page not found (%s)", type(exc).__name__)
        log.debug("FHIR links of a study page not found: %s", exc.message)  # may hold PHI


def study_page(store: StoreService, fhir: FhirService, study_uid: str) -> StudyPage:
    """The study page's content; ``NotFound`` for an unknown (or malformed) Study UID."""
    page = _load_archive(store, study_uid)
    _link_fhir(fhir, page)
    return page


__all__ = ["SeriesView", "StudyPage", "study_page"]
