"""Reading label documents others wrote (pure: a dataset in, what it says out).

KOS (PS3.3 A.35.4), SR (Basic/Enhanced/Comprehensive/Comprehensive 3D, TID 1500 or not), SEG
(A.51) and GSPS graphic annotations (A.33.1) become a :class:`Document`: its title, coded
concepts, free texts and findings (referenced instance frames, with a region in pixel
coordinates when the document draws one). Real-world quirks are tolerated and noted: KOS and
SR without a Content Template Sequence, KOS without IMAGE/COMPOSITE content items (the
references then come from the Current Requested Procedure Evidence Sequence), documents that
highdicom's ``from_dataset`` refuses. What cannot be read raises :class:`Unreadable` with the
reason. Codes are compared by (scheme designator, code value), never by meaning.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from medflow.labels.schemas import Mapping

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11",
    "1.2.840.10008.5.1.4.1.1.88.22",
    "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",
}
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
KIND_OF = {KOS: "KOS", SEG: "SEG", GSPS: "GSPS", **dict.fromkeys(SR_CLASSES, "SR")}
"""SOP Class UID -> the kind of label document."""
MEASUREMENT_GROUP = ("DCM", "125007")
CodeKey = tuple[str, str]


class Unreadable(Exception):
    """The document says nothing usable; ``reason`` says why (no PHI)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Reference:
    sop_uid: str
    series_uid: str | None = None
    study_uid: str | None = None
    frame: int | None = None
    """1-based; None: every frame of the instance."""


@dataclass
class Finding:
    references: list[Reference]
    concepts: set[CodeKey] = field(default_factory=set)
    texts: set[str] = field(default_factory=set)
    roi: dict[str, Any] | None = None


@dataclass
class Document:
    kind: str
    sop_uid: str
    study_uid: str
    title: CodeKey | None
    concepts: set[CodeKey]
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)
    """Quirks tolerated while reading (for the import report)."""


def code_key(item: Dataset) -> CodeKey | None:
    value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
    if not value:
        return None
    return (str(item.get("CodingSchemeDesignator", "")).upper(), str(value))


def _codes(seq: Any) -> set[CodeKey]:
    return {k for item in (seq or []) if (k := code_key(item)) is not None}


def _walk(items: Any) -> Iterator[Dataset]:
    for item in items or []:
        yield item
        yield from _walk(item.get("ContentSequence"))


def _refs(item: Dataset) -> list[Reference]:
    return _sop_refs(item.get("ReferencedSOPSequence", []))


def _sop_refs(items: Any) -> list[Reference]:
    """References of items with Referenced SOP Instance UID (and Frame Number)."""
    out = []
    for ref in items:
        frames = [int(f) for f in _values(ref.get("ReferencedFrameNumber"))]
        uid = str(ref.ReferencedSOPInstanceUID)
        out += [Reference(uid, frame=f) for f in frames] or [Reference(uid)]
    return out


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float):
        return [value]
    return list(value)


def evidence(ds: Dataset) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (series, study) from the evidence sequences."""
    out: dict[str, tuple[str, str]] = {}
    for name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(name, []):
            for series in study.get("ReferencedSeriesSequence", []):
                for sop in series.get("ReferencedSOPSequence", []):
                    out[str(sop.ReferencedSOPInstanceUID)] = (
                        str(series.SeriesInstanceUID),
                        str(study.StudyInstanceUID),
                    )
    return out


def _resolve(refs: list[Reference], known: dict[str, tuple[str, str]]) -> list[Reference]:
    out = []
    for r in refs:
        series, study = known.get(r.sop_uid, (None, None))
        out.append(Reference(r.sop_uid, series, study, r.frame))
    return out


def _root_title(ds: Dataset) -> CodeKey:
    title = _codes(ds.get("ConceptNameCodeSequence"))
    if not title:
        raise Unreadable("no document title (Concept Name Code Sequence)")
    return next(iter(title))


def _template_note(ds: Dataset, expected: str) -> list[str]:
    templates = [
        str(t.get("TemplateIdentifier", "")) for t in ds.get("ContentTemplateSequence", [])
    ]
    if not templates:
        return ["no template identifier"]
    if expected not in templates:
        return [f"template {templates[0]} (not TID {expected})"]
    return []


ABSENT: frozenset[CodeKey] = frozenset({
    ("SCT", "2667000"), ("SRT", "R-20BAE"),  # Absent
    ("SCT", "373067005"), ("SRT", "R-00339"),  # No
    ("SCT", "272519000"),  # Absence of findings
})  # fmt: skip
"""Values of a coded evaluation that deny its concept: "Pneumothorax = Absent" is no label of
pneumothorax (TID 1500 qualitative evaluations name the finding and give present/absent)."""


def _content_codes(items: Any) -> tuple[set[CodeKey], set[str]]:
    concepts: set[CodeKey] = set()
    texts: set[str] = set()
    for item in _walk(items):
        if item.get("ValueType") == "CODE":
            value = _codes(item.get("ConceptCodeSequence"))
            if value & ABSENT:
                continue  # the named finding is said to be absent: neither code counts
            concepts |= value
            concepts |= _codes(item.get("ConceptNameCodeSequence"))
        elif item.get("ValueType") == "TEXT" and item.get("TextValue"):
            texts.add(str(item.TextValue).strip())
    return concepts, texts


def read_kos(ds: Dataset) -> Document:
    title = _root_title(ds)
    notes = _template_note(ds, "2010")
    try:
        hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
    except Exception as exc:  # noqa: BLE001  (highdicom's validation: noted, not fatal)
        notes.append(f"not highdicom-valid ({type(exc).__name__})")
    concepts, texts = _content_codes(ds.get("ContentSequence"))
    refs = [
        r
        for item in ds.get("ContentSequence", [])
        if item.get("ValueType") in ("IMAGE", "COMPOSITE")
        for r in _refs(item)
    ]
    known = evidence(ds)
    if not refs:
        refs = [Reference(uid) for uid in known]
        if refs:
            notes.append("no IMAGE content items: references from the evidence sequence")
    if not refs:
        raise Unreadable("references no instance")
    finding = Finding(_resolve(refs, known), set(concepts), texts)
    return Document(
        "KOS", str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), title, concepts, [finding], notes
    )


def scoord_roi(graphic_type: str, data: list[float]) -> dict[str, Any] | None:
    """A SCOORD/GSPS graphic as a manifest region (None when it is no region we keep)."""
    if len(data) < 2 or len(data) % 2:
        return None
    points = np.asarray(data, dtype=float).reshape(-1, 2)
    kind = graphic_type.upper()
    if kind == "POINT":
        return {"type": "point", "points": points[:1].tolist()}
    if kind in ("CIRCLE", "ELLIPSE") and len(points) >= 2:
        if kind == "CIRCLE":
            radius = float(np.hypot(*(points[1] - points[0])))
            points = np.array([points[0] - radius, points[0] + radius])
        return {"type": "box", "points": [points.min(axis=0).tolist(), points.max(axis=0).tolist()]}
    if kind not in ("POLYLINE", "POLYGON", "INTERPOLATED") or len(points) < 3:
        return None
    if np.allclose(points[0], points[-1]):
        points = points[:-1]
    xs, ys = set(points[:, 0].tolist()), set(points[:, 1].tolist())
    if len(points) == 4 and len(xs) == 2 and len(ys) == 2:
        return {"type": "box", "points": [[min(xs), min(ys)], [max(xs), max(ys)]]}
    if len(points) < 3:
        return None
    return {"type": "polygon", "points": points.tolist()}


def _group_finding(group: Dataset, notes: list[str]) -> Finding:
    concepts, texts = _content_codes(group.get("ContentSequence"))
    finding = Finding([], concepts, texts)
    for item in _walk(group.get("ContentSequence")):
        value_type = item.get("ValueType")
        if value_type == "SCOORD":
            roi = scoord_roi(str(item.get("GraphicType", "")), list(item.get("GraphicData", [])))
            if roi is None:
                notes.append(f"SCOORD {item.get('GraphicType')} kept without its region")
            finding.roi = finding.roi or roi
        elif value_type == "SCOORD3D":
            notes.append("SCOORD3D region not kept (no pixel coordinates)")
        elif value_type in ("IMAGE", "COMPOSITE"):
            finding.references += _refs(item)
    return finding


def read_sr(ds: Dataset) -> Document:
    title = _root_title(ds)
    notes = _template_note(ds, "1500")
    known = evidence(ds)
    groups = [
        i
        for i in _walk(ds.get("ContentSequence"))
        if i.get("ValueType") == "CONTAINER"
        and MEASUREMENT_GROUP in _codes(i.get("ConceptNameCodeSequence"))
    ]
    findings = [_group_finding(g, notes) for g in groups] or [_group_finding(ds, notes)]
    for finding in findings:
        if not finding.references:
            finding.references = [Reference(uid) for uid in known]
            if finding.references:
                notes.append("a finding without image references: the evidence's taken")
        finding.references = _resolve(finding.references, known)
    findings = [f for f in findings if f.references]
    if not findings:
        raise Unreadable("references no instance")
    concepts = _codes(ds.get("ConceptNameCodeSequence"))
    return Document(
        "SR", str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), title, concepts, findings, notes
    )


def read_seg(ds: Dataset) -> Document:
    notes: list[str] = []
    segments: dict[int, Finding] = {}
    for segment in ds.get("SegmentSequence", []):
        number = int(segment.SegmentNumber)
        concepts = _codes(segment.get("SegmentedPropertyTypeCodeSequence"))
        label = str(segment.get("SegmentLabel", "")).strip()
        segments[number] = Finding([], concepts, {label} if label else set())
    if not segments:
        raise Unreadable("no segments")
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
        ident = frame.get("SegmentIdentificationSequence")
        number = int(ident[0].ReferencedSegmentNumber) if ident else 1
        for derivation in frame.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                if number in segments:
                    segments[number].references += _sop_refs([source])
    known = _series_refs(ds)
    for finding in segments.values():
        if not finding.references:
            finding.references = [Reference(uid) for uid in known]
            if finding.references:
                notes.append("no per-frame source images: the referenced series' instances")
        finding.references = _resolve(list(dict.fromkeys(finding.references)), known)
    findings = [f for f in segments.values() if f.references]
    if not findings:
        raise Unreadable("references no instance")
    return Document(
        "SEG", str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), None, set(), findings, notes
    )


def _series_refs(ds: Dataset) -> dict[str, tuple[str, str]]:
    out = evidence(ds)
    for series in ds.get("ReferencedSeriesSequence", []):
        for sop in series.get("ReferencedInstanceSequence", []):
            out[str(sop.ReferencedSOPInstanceUID)] = (
                str(series.SeriesInstanceUID),
                str(ds.StudyInstanceUID),
            )
    return out


def read_gsps(ds: Dataset) -> Document:
    notes: list[str] = []
    known = _series_refs(ds)
    findings: list[Finding] = []
    for annotation in ds.get("GraphicAnnotationSequence", []):
        refs = _sop_refs(annotation.get("ReferencedImageSequence", []))
        refs = refs or [Reference(uid) for uid in known]
        texts = {str(annotation.get("GraphicLayer", "")).strip()}
        texts |= {
            str(t.get("UnformattedTextValue", "")).strip()
            for t in annotation.get("TextObjectSequence", [])
        }
        concepts = {
            k
            for item in _walk(annotation.get("GraphicObjectSequence"))
            for k in _codes(item.get("ConceptCodeSequence"))
        }
        graphics = list(annotation.get("GraphicObjectSequence", []))
        for graphic in graphics or [None]:
            roi = None
            if graphic is not None:
                if str(graphic.get("GraphicAnnotationUnits", "PIXEL")) != "PIXEL":
                    notes.append("a graphic in DISPLAY units kept without its region")
                else:
                    roi = scoord_roi(
                        str(graphic.get("GraphicType", "")), list(graphic.get("GraphicData", []))
                    )
            findings.append(
                Finding(_resolve(refs, known), set(concepts), {t for t in texts if t}, roi)
            )
    findings = [f for f in findings if f.references]
    if not findings:
        raise Unreadable("no graphic annotation referencing an image")
    return Document(
        "GSPS", str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), None, set(), findings, notes
    )


READERS = {"KOS": read_kos, "SR": read_sr, "SEG": read_seg, "GSPS": read_gsps}


def read_document(ds: Dataset) -> Document:
    """What a KOS/SR/SEG/GSPS says; :class:`Unreadable` when nothing usable."""
    kind = KIND_OF.get(str(ds.get("SOPClassUID", "")))
    if kind is None:
        raise Unreadable(f"SOP class {ds.get('SOPClassUID')} is not a label document")
    return READERS[kind](ds)


def classify(document: Document, finding: Finding, mapping: Mapping) -> str | None:
    """The label of ``finding`` by the first mapping rule all of whose codes it carries."""
    concepts = finding.concepts | document.concepts
    texts = {t.casefold() for t in finding.texts}
    for rule in mapping.rules:
        if rule.title is not None and (
            document.title is None or not rule.title.matches(document.title)
        ):
            continue
        if rule.concept is not None and not any(rule.concept.matches(k) for k in concepts):
            continue
        if rule.text is not None and rule.text.casefold() not in texts:
            continue
        return rule.label
    return None
