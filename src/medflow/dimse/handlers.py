"""DIMSE event handlers over the store service (pynetdicom: one handler answers an event).

- C-ECHO (PS3.7 9.1.5): success.
- C-STORE (PS3.4 B.2): pynetdicom writes the received data set, as encoded by the peer, to a
  temporary Part 10 file (``STORE_RECV_CHUNKED_DATASET``); it is copied into medflow's spool
  (hashed, fsync'd) and stored by ``StoreService.store``, the path STOW-RS and ingest use.
- C-FIND (PS3.4 C.4.1): the identifier's keys become the same PS3.4 C.2.2.2 match specs as
  QIDO-RS (``medflow.dicom.matching``) and run through ``StoreService.search``; each match is
  returned with the requested keys filled from the index (or the stored metadata).
- C-MOVE (PS3.4 C.4.2): the Move Destination is looked up in the remote AE table at each
  request (unknown: 0xA801); the identifier's unique keys select the instances
  (``StoreService.select_instances``); pynetdicom opens the sub-association with the proposal
  of ``medflow.dimse.scu`` and counts completed/warning/failed sub-operations.
- C-GET (PS3.4 C.4.3): the same selection, sent back on the requester's association over the
  storage contexts it accepted in the SCP role.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import build_context, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    SecondaryCaptureImageStorage,
    Verification,
)

from medflow.core.errors import InvalidInput, MedflowError
from medflow.dicom.matching import AttributePath, Match, parse_attribute, parse_match
from medflow.dimse import status
from medflow.dimse.scu import (
    accepted_syntaxes,
    failed_placeholder,
    load_for_peer,
    proposal,
    set_nodelay,
)
from medflow.store.aes import AeDirectory
from medflow.store.query import Query
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService
from medflow.store.spool import spool_stream

log = logging.getLogger(__name__)

LEVELS = {"STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
NOT_KEYS = frozenset({0x00080005, 0x00080052, 0x00080054, 0x00080056})
"""Specific Character Set, Query/Retrieve Level, Retrieve AE Title, Instance Availability."""
PAGE = 1000
ANY_PEER_ACCEPTS = [
    build_context(Verification),
    build_context(CTImageStorage),
    build_context(SecondaryCaptureImageStorage),
]
"""pynetdicom reports a C-MOVE failure only after associating with the destination: with a
bad identifier, contexts that a storage SCP accepts (none is used)."""


class Handlers:
    def __init__(self, store: StoreService, ae_title: str, aes: AeDirectory) -> None:
        self.store = store
        self.ae_title = ae_title
        self.aes = aes

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

    def find(self, event: Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        try:
            identifier = event.identifier
            level = str(identifier.get("QueryRetrieveLevel", "")).upper()
            matches, keys = _matches(identifier)
        except MedflowError as exc:
            log.info("C-FIND identifier rejected: %s", exc.message)
            yield status.with_comment(status.IDENTIFIER_DOES_NOT_MATCH, exc.message), None
            return
        except Exception:  # malformed identifier: unable to process, the server goes on
            log.exception("C-FIND identifier could not be read")
            yield status.FIND_UNABLE_TO_PROCESS, None
            return
        if level != "PATIENT" and level not in LEVELS:
            yield (
                status.with_comment(status.IDENTIFIER_DOES_NOT_MATCH, f"unknown level {level!r}"),
                None,
            )
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

    def move(self, event: Event) -> Iterator[Any]:
        """EVT_C_MOVE: yields the destination, the number of sub-operations, then
        (status, data set) per instance, as pynetdicom expects."""
        destination = self.aes.get(str(event.move_destination or ""))
        if destination is None:
            log.info("C-MOVE to an unknown destination refused (0xA801)")
            yield None, None
            return
        try:
            records = self._selection(event.identifier)
            failure = None
        except MedflowError as exc:
            records, failure = (
                [],
                status.with_comment(status.IDENTIFIER_DOES_NOT_MATCH, exc.message),
            )
        except Exception:
            log.exception("C-MOVE identifier could not be read")
            records, failure = (
                [],
                status.with_comment(
                    status.RETRIEVE_UNABLE_TO_PROCESS, "identifier could not be read"
                ),
            )
        peer: dict[str, Any] = {}

        def opened(sub: Any) -> None:
            set_nodelay(sub)
            peer["assoc"] = sub.assoc

        kwargs = {
            "contexts": proposal(records) or ANY_PEER_ACCEPTS,
            "evt_handlers": [(evt.EVT_CONN_OPEN, opened)],
        }
        yield destination.host, destination.port, kwargs
        if failure is not None:  # one sub-operation that fails with the identifier's status
            yield 1
            yield failure, None
            return
        yield len(records)
        accepted: dict[str, set[str]] | None = None
        for record in records:
            if event.is_cancelled:
                yield status.CANCEL, None
                return
            if accepted is None:
                accepted = accepted_syntaxes(peer["assoc"])
            yield status.PENDING, self._dataset(record, accepted)

    def get(self, event: Event) -> Iterator[Any]:
        """EVT_C_GET: the number of sub-operations, then (status, data set) per instance,
        sent on this association (the requester is the storage SCP, PS3.4 C.4.3.1)."""
        try:
            records = self._selection(event.identifier)
        except MedflowError as exc:
            yield 1
            yield status.with_comment(status.IDENTIFIER_DOES_NOT_MATCH, exc.message), None
            return
        except Exception:
            log.exception("C-GET identifier could not be read")
            yield 1
            yield (
                status.with_comment(
                    status.RETRIEVE_UNABLE_TO_PROCESS, "identifier could not be read"
                ),
                None,
            )
            return
        yield len(records)
        accepted = accepted_syntaxes(event.assoc, as_scp=True)
        for record in records:
            if event.is_cancelled:
                yield status.CANCEL, None
                return
            yield status.PENDING, self._dataset(record, accepted)

    def _dataset(self, record: InstanceRecord, accepted: dict[str, set[str]]) -> Dataset:
        try:
            return load_for_peer(self.store, record, accepted)
        except MedflowError as exc:
            log.info("retrieve sub-operation fails: %s", exc.message)
        except Exception:
            log.exception("retrieve sub-operation could not read an instance")
        return failed_placeholder(record)

    def _selection(self, identifier: Dataset) -> list[InstanceRecord]:
        """Instances named by a C-MOVE/C-GET identifier's unique keys (PS3.4 C.4.2.2.1):
        Patient ID at PATIENT level, then Study/Series/SOP Instance UIDs (lists allowed)."""
        level = str(identifier.get("QueryRetrieveLevel", "")).upper()
        keys = {
            "PATIENT": ("PatientID",),
            "STUDY": ("PatientID", "StudyInstanceUID"),
            "SERIES": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID"),
            "IMAGE": ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
        }.get(level)
        if keys is None:
            raise InvalidInput(f"unknown Query/Retrieve Level {level!r}")
        values = {k: _values(identifier, k) for k in keys}
        required = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID"}.get(
            level, "SeriesInstanceUID" if level == "SERIES" else "SOPInstanceUID"
        )
        if not values[required]:
            raise InvalidInput(f"{required} is required at {level} level")
        return self.store.select_instances(
            patient_ids=values["PatientID"],
            study_uids=values.get("StudyInstanceUID", []),
            series_uids=values.get("SeriesInstanceUID", []),
            sop_uids=values.get("SOPInstanceUID", []),
        )


def _values(identifier: Dataset, keyword: str) -> list[str]:
    """A key's values (UID lists are backslash separated, PS3.4 C.2.2.2.2)."""
    value = identifier.get(keyword)
    if value in (None, "", b""):
        return []
    items = list(value) if not isinstance(value, str | bytes) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


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
