"""Reading label documents others wrote (pure: a dataset in, what it says out).

KOS (PS3.3 A.35.4), SR (Basic/Enhanced/Comprehensive/Comprehensive 3D, TID 1500 or not), SEG
(A.51) and GSPS graphic annotations (A.33.1) become a :class:`Document`: its title, coded
concepts, free texts and findings (referenced instance frames, with a region in pixel
coordinates when the document draws one). Real-world quirks are tolerated and noted: KOS and
SR without a Content Template Sequence, KOS without IMAGE/COMPOSITE content items (the
references then come from the Current Requested Procedure Evidence Sequence), documents that
highdicom's ``from_dataset`` refuses. A malformed item (a reference without its SOP Instance
UID or with an unreadable frame number, a region with odd or too few coordinates, a segment
without a number) is left out alone and listed in :attr:`Document.skipped` with the reason; the
rest of the document is read. A document that says nothing usable raises :class:`Unreadable`
with the reason. Codes are compared by (scheme designator, code value), never by meaning.
References keep their Referenced Frame Numbers (SR image references, a SEG's per-frame
Derivation Image and Source Image Sequences, KOS and GSPS references): one
:class:`Reference` per frame named, ``frame`` None when none is named (every frame).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from medflow.labels.builders import MANUFACTURER, description_code
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
IMAGE_TYPES = ("IMAGE", "COMPOSITE")
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
    skipped: list[str] = field(default_factory=list)
    """Malformed items left out, each with the reason (no PHI; repeats counted once with
    their number): the document's other labels are kept."""


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


def _refs(item: Dataset, skipped: list[str]) -> list[Reference]:
    """The references of an IMAGE/COMPOSITE content item (malformed ones skipped)."""
    seq = item.get("ReferencedSOPSequence")
    if not seq:
        skipped.append(f"an {item.get('ValueType')} item without Referenced SOP Sequence")
        return []
    return _sop_refs(seq, skipped)


def _sop_refs(items: Any, skipped: list[str]) -> list[Reference]:
    """References of items with Referenced SOP Instance UID (and Frame Number); an item
    without the UID or with a frame number that is not a positive integer is skipped."""
    out = []
    for ref in items or []:
        uid = str(ref.get("ReferencedSOPInstanceUID") or "").strip()
        if not uid:
            skipped.append("a reference without Referenced SOP Instance UID")
            continue
        try:
            frames = [int(f) for f in _values(ref.get("ReferencedFrameNumber"))]
        except (TypeError, ValueError):
            frames = [0]
        if any(f < 1 for f in frames):
            skipped.append("a reference whose Referenced Frame Number is not a frame number")
            continue
        out += [Reference(uid, frame=f) for f in dict.fromkeys(frames)] or [Reference(uid)]
    return out


def _values(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes | int | float):
        return [value]
    return list(value)


def evidence(ds: Dataset, skipped: list[str] | None = None) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (series, study) from the evidence sequences (items without their
    UIDs skipped, and listed in ``skipped`` when given)."""
    out: dict[str, tuple[str, str]] = {}
    lost: list[str] = []
    for name in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(name, []):
            study_uid = str(study.get("StudyInstanceUID") or "").strip()
            for series in study.get("ReferencedSeriesSequence", []):
                series_uid = str(series.get("SeriesInstanceUID") or "").strip()
                if not study_uid or not series_uid:
                    lost.append("an evidence series without its Study or Series Instance UID")
                    continue
                for sop in series.get("ReferencedSOPSequence", []):
                    uid = str(sop.get("ReferencedSOPInstanceUID") or "").strip()
                    if uid:
                        out[uid] = (series_uid, study_uid)
                    else:
                        lost.append("an evidence reference without Referenced SOP Instance UID")
    if skipped is not None:
        skipped += lost
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


def _skip_summary(skipped: list[str]) -> list[str]:
    """Each reason once, in order, with how many items it left out."""
    counts = Counter(skipped)
    return [
        f"{reason}: left out" + (f" ({counts[reason]} items)" if counts[reason] > 1 else "")
        for reason in counts
    ]


def _document(
    ds: Dataset,
    kind: str,
    findings: list[Finding],
    notes: list[str],
    skipped: list[str],
    *,
    title: CodeKey | None = None,
    concepts: set[CodeKey] | None = None,
) -> Document:
    uids = [str(ds.get(k) or "").strip() for k in ("SOPInstanceUID", "StudyInstanceUID")]
    if not all(uids):
        raise Unreadable("no SOP or Study Instance UID")
    return Document(
        kind, uids[0], uids[1], title, concepts or set(), findings, notes, _skip_summary(skipped)
    )


def _nothing(reason: str, skipped: list[str]) -> Unreadable:
    """Unreadable: ``reason``, with the first malformed item that left nothing usable."""
    return Unreadable(f"{reason} ({skipped[0]}: left out)" if skipped else reason)


def read_kos(ds: Dataset) -> Document:
    title = _root_title(ds)
    notes = _template_note(ds, "2010")
    skipped: list[str] = []
    try:
        hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
    except Exception as exc:  # noqa: BLE001  (highdicom's validation: noted, not fatal)
        notes.append(f"not highdicom-valid ({type(exc).__name__})")
    concepts, texts = _content_codes(ds.get("ContentSequence"))
    # medflow's own KOS name their class in the Key Object Description: "<set>: <class>
    # (<scheme> <value>)" (TID 2010 has no coded place for it); others' free text is not
    # parsed ("Chest (PA view)" is no code)
    if str(ds.get("Manufacturer", "")) == MANUFACTURER:
        concepts |= {code for t in texts if (code := description_code(t)) is not None}
    items = [i for i in ds.get("ContentSequence", []) if i.get("ValueType") in IMAGE_TYPES]
    refs = [r for item in items for r in _refs(item, skipped)]
    known = evidence(ds, skipped)
    if not items:
        refs = [Reference(uid) for uid in known]
        if refs:
            notes.append("no IMAGE content items: references from the evidence sequence")
    if not refs:
        raise _nothing("references no instance", skipped)
    finding = Finding(_resolve(refs, known), set(concepts), texts)
    return _document(ds, "KOS", [finding], notes, skipped, title=title, concepts=concepts)


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


def _malformed_graphic(data: list[Any]) -> str | None:
    """Why graphic data cannot be a region at all (None when it can be read)."""
    try:
        values = np.asarray(data, dtype=float)
    except (TypeError, ValueError):
        return "a graphic with non-numeric Graphic Data"
    if len(values) < 2 or len(values) % 2:
        return f"a graphic with {len(values)} Graphic Data values (pairs expected)"
    if not np.isfinite(values).all():
        return "a graphic with non-finite Graphic Data"
    return None


def _graphic_roi(
    item: Dataset, notes: list[str], skipped: list[str], what: str
) -> dict[str, Any] | None:
    """The region of a SCOORD or GSPS graphic object: None when malformed (its region
    skipped, the finding kept) or of a shape not kept (noted)."""
    data = _values(item.get("GraphicData"))
    problem = _malformed_graphic(data)
    if problem is not None:
        skipped.append(f"the region of {problem}")
        return None
    roi = scoord_roi(str(item.get("GraphicType", "")), [float(v) for v in data])
    if roi is None:
        notes.append(f"{what} {item.get('GraphicType')} kept without its region")
    return roi


def _group_finding(group: Dataset, notes: list[str], skipped: list[str]) -> Finding | None:
    """A measurement group's (or a whole SR's) finding; None when it references images only
    through malformed items (skipped: no fallback to the evidence for it)."""
    concepts, texts = _content_codes(group.get("ContentSequence"))
    finding = Finding([], concepts, texts)
    images = 0
    for item in _walk(group.get("ContentSequence")):
        value_type = item.get("ValueType")
        if value_type == "SCOORD":
            finding.roi = finding.roi or _graphic_roi(item, notes, skipped, "SCOORD")
        elif value_type == "SCOORD3D":
            notes.append("SCOORD3D region not kept (no pixel coordinates)")
        elif value_type in IMAGE_TYPES:
            images += 1
            finding.references += _refs(item, skipped)
    if images and not finding.references:
        skipped.append("a finding whose every image reference is malformed")
        return None
    return finding


def read_sr(ds: Dataset) -> Document:
    title = _root_title(ds)
    notes = _template_note(ds, "1500")
    skipped: list[str] = []
    known = evidence(ds, skipped)
    groups = [
        i
        for i in _walk(ds.get("ContentSequence"))
        if i.get("ValueType") == "CONTAINER"
        and MEASUREMENT_GROUP in _codes(i.get("ConceptNameCodeSequence"))
    ]
    read = [_group_finding(g, notes, skipped) for g in groups or [ds]]
    findings = [f for f in read if f is not None]
    for finding in findings:
        if not finding.references:
            finding.references = [Reference(uid) for uid in known]
            if finding.references:
                notes.append("a finding without image references: the evidence's taken")
        finding.references = _resolve(finding.references, known)
    findings = [f for f in findings if f.references]
    if not findings:
        raise _nothing("references no instance", skipped)
    concepts = _codes(ds.get("ConceptNameCodeSequence"))
    return _document(ds, "SR", findings, notes, skipped, title=title, concepts=concepts)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _segments(ds: Dataset, skipped: list[str]) -> dict[int, Finding]:
    segments: dict[int, Finding] = {}
    for segment in ds.get("SegmentSequence", []):
        number = _int(segment.get("SegmentNumber"))
        if number is None:
            skipped.append("a segment without a Segment Number")
            continue
        concepts = _codes(segment.get("SegmentedPropertyTypeCodeSequence"))
        label = str(segment.get("SegmentLabel", "")).strip()
        segments[number] = Finding([], concepts, {label} if label else set())
    return segments


def _derived_frames(ds: Dataset, segments: dict[int, Finding], skipped: list[str]) -> bool:
    """Add each frame's source images (with their frame numbers) to its segment; whether the
    SEG has per-frame source images at all."""
    derived = False
    for frame in ds.get("PerFrameFunctionalGroupsSequence", []):
        ident = frame.get("SegmentIdentificationSequence")
        number = _int(ident[0].get("ReferencedSegmentNumber")) if ident else 1
        sources = [
            source
            for derivation in frame.get("DerivationImageSequence", [])
            for source in derivation.get("SourceImageSequence", [])
        ]
        derived = derived or bool(sources)
        if number is None:
            skipped.append("a frame without a Referenced Segment Number")
        elif sources and number in segments:
            segments[number].references += _sop_refs(sources, skipped)
    return derived


def read_seg(ds: Dataset) -> Document:
    notes: list[str] = []
    skipped: list[str] = []
    segments = _segments(ds, skipped)
    if not segments:
        raise _nothing("no segments", skipped)
    derived = _derived_frames(ds, segments, skipped)
    known = _series_refs(ds, skipped)
    if not derived:
        sources = _sop_refs(ds.get("SourceImageSequence"), skipped)
        if sources:
            notes.append("no per-frame source images: the Source Image Sequence's images")
        else:
            sources = [Reference(uid) for uid in known]
            if sources:
                notes.append("no per-frame source images: the referenced series' instances")
        for finding in segments.values():
            finding.references = list(sources)
    for number, finding in segments.items():
        finding.references = _resolve(list(dict.fromkeys(finding.references)), known)
        if derived and not finding.references:
            skipped.append(f"segment {number}, no frame of which names a source image")
    findings = [f for f in segments.values() if f.references]
    if not findings:
        raise _nothing("references no instance", skipped)
    return _document(ds, "SEG", findings, notes, skipped)


def _series_refs(ds: Dataset, skipped: list[str]) -> dict[str, tuple[str, str]]:
    """The evidence's and the Referenced Series Sequence's instances (a SEG's Referenced
    Instance Sequence, a presentation state's Referenced Image Sequence)."""
    out = evidence(ds, skipped)
    study = str(ds.get("StudyInstanceUID") or "")
    for series in ds.get("ReferencedSeriesSequence", []):
        series_uid = str(series.get("SeriesInstanceUID") or "").strip()
        items = [
            *series.get("ReferencedInstanceSequence", []),
            *series.get("ReferencedImageSequence", []),
        ]
        if not series_uid:
            if items:
                skipped.append("a referenced series without Series Instance UID")
            continue
        for sop in items:
            uid = str(sop.get("ReferencedSOPInstanceUID") or "").strip()
            if uid:
                out[uid] = (series_uid, study)
            else:
                skipped.append("a series reference without Referenced SOP Instance UID")
    return out


def _annotation(
    annotation: Dataset,
    known: dict[str, tuple[str, str]],
    notes: list[str],
    skipped: list[str],
) -> list[Finding]:
    """One finding per graphic object of a Graphic Annotation item (one without graphics)."""
    listed = annotation.get("ReferencedImageSequence")
    refs = _sop_refs(listed, skipped)
    if listed and not refs:
        skipped.append("an annotation whose every image reference is malformed")
        return []
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
    findings = []
    for graphic in list(annotation.get("GraphicObjectSequence", [])) or [None]:
        roi = None
        if graphic is not None:
            if str(graphic.get("GraphicAnnotationUnits", "PIXEL")) != "PIXEL":
                notes.append("a graphic in DISPLAY units kept without its region")
            else:
                roi = _graphic_roi(graphic, notes, skipped, "graphic")
        findings.append(Finding(_resolve(refs, known), set(concepts), {t for t in texts if t}, roi))
    return findings


def read_gsps(ds: Dataset) -> Document:
    notes: list[str] = []
    skipped: list[str] = []
    known = _series_refs(ds, skipped)
    findings = [
        f
        for annotation in ds.get("GraphicAnnotationSequence", [])
        for f in _annotation(annotation, known, notes, skipped)
        if f.references
    ]
    if not findings:
        raise _nothing("no graphic annotation referencing an image", skipped)
    return _document(ds, "GSPS", findings, notes, skipped)


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
