"""DIMSE event handlers over the store service (pynetdicom: one handler answers an event).

- C-ECHO (PS3.7 9.1.5): success.
- C-STORE (PS3.4 B.2): pynetdicom writes the received data set, as encoded by the peer, to a
  temporary Part 10 file (``STORE_RECV_CHUNKED_DATASET``); it is copied into medflow's spool
  (hashed, fsync'd) and stored by ``StoreService.store``, the path STOW-RS and ingest use.
- C-FIND (PS3.4 C.4.1): the identifier's keys become the same PS3.4 C.2.2.2 match specs as
  QIDO-RS (``medflow.dicom.matching``) and run through ``StoreService.search``; each match is
  returned with the requested keys filled from the index (or the stored metadata).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom.events import Event

from medflow.core.errors import MedflowError
from medflow.dicom.matching import AttributePath, Match, parse_attribute, parse_match
from medflow.dimse import status
from medflow.store.query import Query
from medflow.store.service import StoreService
from medflow.store.spool import spool_stream

log = logging.getLogger(__name__)

LEVELS = {"STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
NOT_KEYS = frozenset({0x00080005, 0x00080052, 0x00080054, 0x00080056})
"""Specific Character Set, Query/Retrieve Level, Retrieve AE Title, Instance Availability."""
PAGE = 1000


class Handlers:
    def __init__(self, store: StoreService, ae_title: str) -> None:
        self.store = store
        self.ae_title = ae_title

    def echo(self, event: Event) -> int:
        return status.SUCCESS

    def store_instance(self, event: Event) -> int:
        try:
            with event.dataset_path.open("rb") as fp:
                spooled = spool_stream(fp, self.store.spool_dir)
            (outcome,) = self.store.store(objects=[spooled])
        except MedflowError as exc:
            return status.store_status(exc)
        except Exception:  # the edge wrapper: a bad object never takes the server down
            log.exception("C-STORE handler failed")
            return status.store_status(None)
        if outcome.ok:
            return status.SUCCESS
        return outcome.failure_reason or status.STORE_CANNOT_UNDERSTAND

    def find(self, event: Event) -> Iterator[tuple[int, Dataset | None]]:
        try:
            identifier = event.identifier
            level = str(identifier.get("QueryRetrieveLevel", "")).upper()
            matches, keys = _matches(identifier)
        except MedflowError as exc:
            log.info("C-FIND identifier rejected: %s", exc.message)
            yield status.FIND_IDENTIFIER_DOES_NOT_MATCH, None
            return
        except Exception:  # malformed identifier: unable to process, the server goes on
            log.exception("C-FIND identifier could not be read")
            yield status.FIND_UNABLE_TO_PROCESS, None
            return
        if level != "PATIENT" and level not in LEVELS:
            yield status.FIND_IDENTIFIER_DOES_NOT_MATCH, None
            return
        try:
            for answer in self._answers(level, matches, keys, identifier):
                if event.is_cancelled:
                    yield status.CANCEL, None
                    return
                yield status.PENDING, answer
        except Exception:  # per DESIGN.md: the edge maps it, the association goes on
            log.exception("C-FIND failed")
            yield status.FIND_UNABLE_TO_PROCESS, None
            return
        yield status.SUCCESS, None

    def _answers(
        self, level: str, matches: tuple[Match, ...], keys: list[AttributePath], ident: Dataset
    ) -> Iterator[Dataset]:
        seen: set[str] = set()
        for found in _all_results(self.store, LEVELS.get(level, "study"), matches, keys):
            if level == "PATIENT":  # Patient Root: one answer per patient of the studies found
                pid = str(found.get("PatientID", ""))
                if pid in seen:
                    continue
                seen.add(pid)
            yield _answer(found, ident, level, self.ae_title)


def _matches(identifier: Dataset) -> tuple[tuple[Match, ...], list[AttributePath]]:
    """Match specs for the keys with a value; every key (empty or not) is a return key."""
    matches, keys = [], []
    for elem in identifier:
        if int(elem.tag) in NOT_KEYS or elem.tag.group in (0x0000, 0x0002):
            continue
        path = parse_attribute(f"{int(elem.tag):08X}")
        keys.append(path)
        if elem.VR == "SQ" or elem.value in (None, "", b""):
            continue  # universal matching (PS3.4 C.2.2.2.3); sequences are return keys here
        value = elem.value
        raw = "\\".join(str(v) for v in value) if elem.VM > 1 else str(value)
        matches.append(parse_match(path, raw))
    return tuple(matches), keys


def _all_results(
    store: StoreService, level: str, matches: tuple[Match, ...], keys: list[AttributePath]
) -> Iterator[Dataset]:
    """Every match, page by page (C-FIND has no limit)."""
    offset = 0
    while True:
        result = store.search(
            Query(level=level, matches=matches, include=tuple(keys), limit=PAGE, offset=offset)  # type: ignore[arg-type]
        )
        for text in result.texts:
            yield Dataset.from_json(json.loads(text))
        if not result.more:
            return
        offset += PAGE


def _answer(found: Dataset, identifier: Dataset, level: str, ae_title: str) -> Dataset:
    """The identifier's keys, filled from the match (PS3.4 C.4.1.2.3)."""
    out = Dataset()
    out.SpecificCharacterSet = found.get("SpecificCharacterSet", "ISO_IR 192") or "ISO_IR 192"
    out.QueryRetrieveLevel = level
    for elem in identifier:
        tag = elem.tag
        if int(tag) in (0x00080005, 0x00080052) or tag.group in (0x0000, 0x0002):
            continue
        if tag in found:
            out[tag] = found[tag]
        else:
            out.add_new(tag, elem.VR, None)
    if "RetrieveAETitle" in identifier:
        out.RetrieveAETitle = ae_title
    return out
