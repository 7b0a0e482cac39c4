"""The labeling queue (issue 10's labeling UI): the images a reader works through for one
label set, each with the labels the set already has on it.

The queue is made from archive studies found by QIDO-RS matching (patients, e.g. a cohort's
MRNs; modality and body part at the series level; study date range; study description), in
(patient, study date, study UID) order, then series and instance number order. One item per
unit of the set's scope:

- ``instance``: each image instance, shown by its middle frame (a class labels every frame
  of it, as its KOS does; a region is drawn on the frame shown);
- ``series``: each image series, shown by its middle instance;
- ``study``: each study, shown by the middle instance of its first image series.

Label documents (KOS, SR, SEG, GSPS) and instances without pixels are never items. Items are
plain JSON for the page; the labels on them come from the label index (labels whose document
has left the archive are gone).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from medflow.core.errors import InvalidInput
from medflow.dicom.matching import Match, MatchType, parse_attribute
from medflow.labels.readers import KIND_OF
from medflow.labels.results import LabelRow
from medflow.labels.service import LabelService
from medflow.store.query import Query
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService, StudyMatch

MAX_ITEMS = 5000
"""At most this many items are assembled for one queue (the page shows them by pages)."""
CHUNK = 500
STUDY_CHUNK = 100
"""Studies whose images and labels are read at a time."""
DATE_RANGE = re.compile(r"^(?:\d{8}(?:-(?:\d{8})?)?|-\d{8})$")
"""A DA or a DA range (``A-B``, ``A-``, ``-B``; PS3.18 §8.3.4.1 range matching)."""


@dataclass(frozen=True)
class QueueFilter:
    """Which studies and series the queue takes (every field optional)."""

    patient_ids: Collection[str] | None = None
    study_uids: Collection[str] | None = None
    """Only these studies (a cohort's imaging matches)."""
    modalities: Sequence[str] = ()
    body_parts: Sequence[str] = ()
    date_from: str | None = None
    date_to: str | None = None
    description: str | None = None
    unlabeled_only: bool = False


@dataclass
class QueueItem:
    """One unit to label: the target (a study, series or instance, the set's scope) and the
    image shown for it (a class labels the whole target; a region is drawn on the frame
    shown)."""

    study_uid: str
    series_uid: str | None
    sop_instance_uid: str | None
    shown_series: str
    shown_instance: str
    shown_frame: int
    frames: int
    rows: int
    columns: int
    patient_id: str
    study_date: str
    modalities: str
    description: str
    labels: list[dict[str, Any]] = field(default_factory=list)
    position: int = 0
    """Place in the unfiltered queue order (what ``start`` counts)."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabelQueue:
    label_set: str
    version: int
    scope: str
    classes: list[dict[str, Any]]
    region_types: list[str]
    total: int
    """Items in the queue (after the unlabeled filter, at most :data:`MAX_ITEMS`)."""
    labeled: int
    """Items with a label among those looked at."""
    start: int
    rank: int
    """How many queue items come before the page."""
    next_start: int | None
    previous_start: int | None
    items: list[QueueItem]
    truncated: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "label_set": self.label_set,
            "version": self.version,
            "scope": self.scope,
            "classes": self.classes,
            "region_types": self.region_types,
            "total": self.total,
            "labeled": self.labeled,
            "start": self.start,
            "rank": self.rank,
            "next_start": self.next_start,
            "previous_start": self.previous_start,
            "truncated": self.truncated,
            "items": [i.as_json() for i in self.items],
        }


def _is_image(record: InstanceRecord) -> bool:
    return bool(record.rows and record.columns) and record.sop_class_uid not in KIND_OF


def _series_matching(store: StoreService, studies: Sequence[str], f: QueueFilter) -> set[str]:
    """Series UIDs of ``studies`` whose Modality and Body Part Examined match the filter
    (QIDO-RS series-level matching, PS3.4 C.2.2.2)."""
    keys = []
    for keyword, values in (("Modality", f.modalities), ("BodyPartExamined", f.body_parts)):
        if values:
            attribute = parse_attribute(keyword)
            keys.append(
                Match(attribute, MatchType.SINGLE, value=values[0])
                if len(values) == 1
                else Match(attribute, MatchType.LIST, values=tuple(values))
            )
    found: set[str] = set()
    study_key = parse_attribute("StudyInstanceUID")
    for i in range(0, len(studies), CHUNK):
        chunk = tuple(studies[i : i + CHUNK])
        offset = 0
        while True:
            matches = (Match(study_key, MatchType.LIST, values=chunk), *keys)
            page = store.search(Query("series", matches, limit=5000, offset=offset))
            for row in page.rows:
                values = (row.get("0020000E") or {}).get("Value") or []
                found.update(str(v) for v in values)
            if not page.more:
                break
            offset += 5000
    return found


def _middle(records: Sequence[InstanceRecord]) -> InstanceRecord:
    return records[(len(records) - 1) // 2]


def _item(
    study: StudyMatch,
    shown: InstanceRecord,
    *,
    series_uid: str | None,
    sop_uid: str | None,
) -> QueueItem:
    frames = shown.number_of_frames or 1
    return QueueItem(
        study_uid=study.study_uid,
        series_uid=series_uid,
        sop_instance_uid=sop_uid,
        shown_series=shown.series_uid,
        shown_instance=shown.sop_instance_uid,
        shown_frame=(frames + 1) // 2,
        frames=frames,
        rows=int(shown.rows or 0),
        columns=int(shown.columns or 0),
        patient_id=study.patient_id or "",
        study_date=study.study_date or "",
        modalities=",".join(study.modalities),
        description=study.description or "",
    )


def _items(scope: str, study: StudyMatch, records: Sequence[InstanceRecord]) -> list[QueueItem]:
    by_series: dict[str, list[InstanceRecord]] = {}
    for r in records:
        by_series.setdefault(r.series_uid, []).append(r)
    if not by_series:
        return []
    if scope == "study":
        first = next(iter(by_series.values()))
        return [_item(study, _middle(first), series_uid=None, sop_uid=None)]
    if scope == "series":
        return [
            _item(study, _middle(rs), series_uid=uid, sop_uid=None) for uid, rs in by_series.items()
        ]
    return [_item(study, r, series_uid=r.series_uid, sop_uid=r.sop_instance_uid) for r in records]


def _key(scope: str, study: str, series: str | None, sop: str | None) -> tuple[str, ...]:
    if scope == "study":
        return (study,)
    if scope == "series":
        return (study, series or "")
    return (study, series or "", sop or "")


def _attach(scope: str, items: Sequence[QueueItem], rows: Sequence[LabelRow]) -> None:
    """Each item's labels: one entry per label document (a KOS of a study is one label of
    the study, not one per image), with its class, kind and region."""
    by_key: dict[tuple[str, ...], dict[str, dict[str, Any]]] = {}
    for r in rows:
        key = _key(scope, r.study_uid, r.series_uid, r.sop_instance_uid)
        entry = {
            "label": r.label,
            "kind": r.source_kind,
            "source_uid": r.source_uid,
            "roi": r.roi,
            "frame": r.frame,
            "sop_instance_uid": r.sop_instance_uid,
        }
        which = f"{r.source_uid or 'negative'}|{r.label}|{json.dumps(r.roi, sort_keys=True)}"
        by_key.setdefault(key, {}).setdefault(which, entry)
    for item in items:
        key = _key(scope, item.study_uid, item.series_uid, item.sop_instance_uid)
        item.labels = list(by_key.get(key, {}).values())


def _chunk_items(
    store: StoreService,
    labels: LabelService,
    info_scope: tuple[str, str],
    studies: Sequence[StudyMatch],
    where: QueueFilter,
) -> list[QueueItem]:
    """The items of a chunk of studies, in queue order, with their labels."""
    label_set, scope = info_scope
    uids = [s.study_uid for s in studies]
    series = (
        _series_matching(store, uids, where) if (where.modalities or where.body_parts) else None
    )
    records: dict[str, list[InstanceRecord]] = {}
    for r in store.select_instances(study_uids=uids):
        if _is_image(r) and (series is None or r.series_uid in series):
            records.setdefault(r.study_uid, []).append(r)
    items = [i for s in studies for i in _items(scope, s, records.get(s.study_uid, []))]
    _attach(scope, items, labels.labels(label_set=label_set, study_uids=uids))
    return items


def build_queue(
    *,
    store: StoreService,
    labels: LabelService,
    label_set: str,
    where: QueueFilter,
    start: int = 0,
    limit: int = 200,
) -> LabelQueue:
    """The set's queue over the studies ``where`` selects: at most :data:`MAX_ITEMS` items
    (after the ``unlabeled_only`` filter), made study chunk by study chunk so a broad query
    stops early. ``items`` is the page of ``limit`` items from queue position ``start``
    (positions number every item of the unfiltered order, so a page of unlabeled items stays
    put while earlier ones get labeled)."""
    info = labels.sets.get(name=label_set)
    scope = info.definition.scope
    studies = store.find_studies(
        patient_ids=where.patient_ids,
        modalities=where.modalities,
        body_parts=where.body_parts,
        date_from=where.date_from,
        date_to=where.date_to,
        description_contains=where.description,
    )
    if where.study_uids is not None:
        keep = set(where.study_uids)
        studies = [s for s in studies if s.study_uid in keep]
    items: list[QueueItem] = []
    labeled = position = 0
    truncated = False
    for i in range(0, len(studies), STUDY_CHUNK):
        chunk = _chunk_items(store, labels, (info.name, scope), studies[i : i + STUDY_CHUNK], where)
        for item in chunk:
            item.position = position
            position += 1
            labeled += bool(item.labels)
            if not (where.unlabeled_only and item.labels):
                items.append(item)
        if len(items) >= MAX_ITEMS:
            truncated = len(items) > MAX_ITEMS or i + STUDY_CHUNK < len(studies)
            items = items[:MAX_ITEMS]
            break
    rank = next((n for n, item in enumerate(items) if item.position >= start), len(items))
    page = items[rank : rank + max(1, limit)]
    after = rank + len(page)
    classes = [
        {"name": c.name, "code": c.concept().model_dump(mode="json")}
        for c in info.definition.classes
    ]
    return LabelQueue(
        label_set=info.name,
        version=info.version,
        scope=scope,
        classes=classes,
        region_types=[t for t in info.definition.region_types if t != "none"],
        total=len(items),
        labeled=labeled,
        start=start,
        rank=rank,
        next_start=items[after].position if after < len(items) else None,
        previous_start=items[max(0, rank - max(1, limit))].position if rank > 0 else None,
        items=page,
        truncated=truncated,
    )


def queue_filter(
    patients: list[str] | None,
    modalities: list[str] | None,
    body_parts: list[str] | None,
    date: str | None,
    description: str | None,
    unlabeled: bool,
) -> QueueFilter:
    """A queue filter from query parameters; ``date`` a DA or a DA range (``A-B``, ``A-``,
    ``-B``, PS3.18 §8.3.4.1 range matching)."""
    low = high = None
    if date and not DATE_RANGE.match(date):
        raise InvalidInput("date: YYYYMMDD or a range YYYYMMDD-YYYYMMDD, A- or -B expected")
    if date:
        low, _, high = date.partition("-") if "-" in date else (date, "", date)
    return QueueFilter(
        patient_ids=patients or None,
        modalities=[m.upper() for m in modalities or [] if m],
        body_parts=[b.upper() for b in body_parts or [] if b],
        date_from=low or None,
        date_to=high or None,
        description=description or None,
        unlabeled_only=unlabeled,
    )


__all__ = [
    "DATE_RANGE",
    "MAX_ITEMS",
    "LabelQueue",
    "QueueFilter",
    "QueueItem",
    "build_queue",
    "queue_filter",
]
