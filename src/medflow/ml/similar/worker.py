"""The embedding worker: every image the archive receives embedded by each given model.

It follows the archive's change feed like the sync worker (DESIGN.md, durable consumers): one
cursor per model in ``ml_embedding_cursor`` (``embed:<model ref>``, so a newly promoted model
starts at 0 and embeds the whole archive), batches of entries, and the cursor moved only once
every entry of the batch was handled, so a crash (even SIGKILL) replays at most one batch. The
writes are idempotent: an instance already embedded by the model is not embedded again on a
replay (unless the entry is an update), and a new embedding replaces the instance's old one.

Per batch and model, the last entry of each instance decides:

- ``delete``: every model's embeddings of it are removed;
- a current ``create``/``update``: it is embedded when it is an image (Pixel Data) that is not
  one of medflow's own documents (a KOS/SR/SEG/GSPS SOP class of ``medflow.labels.readers``,
  Manufacturer "medflow", or a recorded ``medflow:`` origin) and the model accepts it: the
  embedder's ``accepts(header)`` when it has one (on the instance's attributes, before any
  pixel is read), else its ``embed`` raising :class:`~medflow.core.errors.Unsupported`;
- an entry a later one superseded (state ``replaced``/``deleted``) waits for that one.

A batch is embedded ``embed_batch`` instances at a time; when the model throws on a batch, its
instances are tried one by one and each that still fails is recorded in
``ml_embedding_failure`` (with the reason) and skipped. The worker never stops for one image.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO, Protocol, runtime_checkable

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from medflow.core.errors import MedflowError, Unsupported
from medflow.labels.readers import KIND_OF
from medflow.ml.similar.store import EmbeddingStore, NewEmbedding, cursor_name
from medflow.store.records import ChangeEvent, InstanceRecord

log = logging.getLogger(__name__)
OWN_MANUFACTURER = "medflow"
OWN_ORIGIN = "medflow:"
PIXEL_TAGS = ("7FE00010", "7FE00008", "7FE00009")
"""Pixel Data, Float Pixel Data, Double Float Pixel Data."""


class Embedder(Protocol):
    """A model's image embedding (a served model's penultimate layer): ``embed`` returns one
    ``dim``-wide float32 row per dataset, or one per frame of each (stored as frames 1..n),
    and raises :class:`Unsupported` for a dataset it cannot read (wrong modality, body
    part...)."""

    @property
    def ref(self) -> str:
        """The model's "name:version"."""
        ...

    @property
    def dim(self) -> int: ...

    def embed(self, datasets: Sequence[Dataset]) -> NDArray[Any]: ...


@runtime_checkable
class Screening(Protocol):
    """An embedder that can say from an instance's attributes alone (no pixel data read)
    whether it reads it."""

    def accepts(self, dataset: Dataset) -> bool: ...


class ArchiveSource(Protocol):
    """What the worker reads of the archive (``StoreService``)."""

    def change_feed(
        self, *, offset: int = 0, limit: int = 100, include_metadata: bool = False
    ) -> list[ChangeEvent]: ...

    def latest_change(self) -> ChangeEvent | None: ...

    def select_instances(self, *, sop_uids: Sequence[str] = ()) -> list[InstanceRecord]: ...

    def open_instance(self, record: InstanceRecord) -> AbstractContextManager[BinaryIO]: ...


@dataclass(frozen=True)
class WorkerOptions:
    batch: int = 200
    """Change feed entries read at a time."""
    embed_batch: int = 16
    """Instances given to ``embed`` at a time."""
    poll_seconds: float = 5.0
    """How often the feed is looked at when no event wakes the worker."""


@dataclass
class EmbeddingStatus:
    model_ref: str
    cursor: int
    latest: int
    backlog: int
    embedded: int
    """Instances embedded since the worker started."""
    skipped: int
    """Instances since start the model does not read, or that are not images."""
    failures: int
    """Instances recorded as failed (in the table)."""
    last_error: str | None


@dataclass
class _Todo:
    event: ChangeEvent
    meta: dict[str, Any]


@dataclass
class _Counts:
    embedded: int = 0
    skipped: int = 0
    last_error: str | None = None


Embedders = Sequence[Embedder] | Callable[[], Sequence[Embedder]]


class EmbeddingWorker:
    """Embeds the archive's new images with each of ``embedders`` (a list, or a callable
    asked at every step: the models in production now)."""

    def __init__(
        self,
        *,
        store: ArchiveSource,
        embeddings: EmbeddingStore,
        embedders: Embedders,
        options: WorkerOptions | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store, self.embeddings = store, embeddings
        self._embedders = embedders
        self.options = options or WorkerOptions()
        self.clock = clock
        self._wake = threading.Event()
        self._counts: dict[str, _Counts] = {}
        self._last_error: str | None = None

    def embedders(self) -> list[Embedder]:
        found = self._embedders() if callable(self._embedders) else self._embedders
        return list(found)

    # -- the loop ---------------------------------------------------------------------------
    def wake(self, _event: object = None) -> None:
        """Look at the change feed now (an ``InstancesChanged`` subscriber)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Embed until ``stop`` is set; a failing database is retried with backoff."""
        delay = 0.5
        while not stop.is_set():
            try:
                done = self.step()
                delay = 0.5
            except Exception as exc:  # noqa: BLE001  (transient: database busy or down)
                self._last_error = type(exc).__name__
                log.warning("embedding step failed (%s), retrying in %.1f s",
                            self._last_error, delay)  # fmt: skip
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            if not done:
                self._wake.wait(self.options.poll_seconds)
                self._wake.clear()

    def run_once(self, *, max_steps: int = 100_000) -> int:
        """Step until every model has read the whole change feed (tests, a CLI command);
        returns how many entries were read (over the models)."""
        total = 0
        for _ in range(max_steps):
            done = self.step()
            if not done:
                break
            total += done
        return total

    def step(self) -> int:
        """One batch of the change feed for each model; returns the entries read."""
        return sum(self.step_model(e) for e in self.embedders())

    def step_model(self, embedder: Embedder) -> int:
        """Handle the model's next batch of changes and move its cursor past them."""
        name = cursor_name(embedder.ref)
        cursor = self.embeddings.cursor(name)
        events = self.store.change_feed(offset=cursor, limit=self.options.batch,
                                        include_metadata=True)  # fmt: skip
        if not events:
            return 0
        todo, deletes = _plan(events)
        if deletes:
            self.embeddings.delete_instances(sop_uids=deletes, now=self.clock())
        self._embed_all(embedder, todo)
        self.embeddings.set_cursor(name, events[-1].sequence, self.clock())
        log.info("embeddings of %s: %d changes up to sequence %d", embedder.ref, len(events),
                 events[-1].sequence)  # fmt: skip
        return len(events)

    # -- embedding ----------------------------------------------------------------------------
    def _counts_of(self, ref: str) -> _Counts:
        return self._counts.setdefault(ref, _Counts())

    def _embed_all(self, embedder: Embedder, todo: list[tuple[_Todo, bool]]) -> None:
        counts = self._counts_of(embedder.ref)
        wanted: list[_Todo] = []
        for item, _replace in todo:
            verdict = self._wanted(embedder, item)
            if verdict:
                wanted.append(item)
            elif verdict is not None:
                counts.skipped += 1
        fresh = {t.event.sop_instance_uid for t, replace in todo if not replace}
        done = self.embeddings.existing(model_ref=embedder.ref, sop_uids=fresh)
        wanted = [t for t in wanted if t.event.sop_instance_uid not in done]
        size = max(1, self.options.embed_batch)
        for i in range(0, len(wanted), size):
            self._embed_chunk(embedder, wanted[i : i + size])

    def _wanted(self, embedder: Embedder, item: _Todo) -> bool | None:
        """An image, not medflow's own, that the model says it reads (from the header);
        None when asking the model failed (recorded)."""
        meta = item.meta
        if not any(tag in meta for tag in PIXEL_TAGS) or _own_document(meta):
            return False
        if not isinstance(embedder, Screening):
            return True
        try:
            return bool(embedder.accepts(_header(meta)))
        except Exception as exc:  # noqa: BLE001  (per item: recorded, the loop goes on)
            self._fail(embedder, item, exc)
            return None

    def _embed_chunk(self, embedder: Embedder, items: list[_Todo]) -> None:
        records = {r.sop_instance_uid: r for r in self.store.select_instances(
            sop_uids=[t.event.sop_instance_uid for t in items])}  # fmt: skip
        counts = self._counts_of(embedder.ref)
        read: list[tuple[_Todo, Dataset]] = []
        for item in items:
            record = records.get(item.event.sop_instance_uid)
            if record is None or (getattr(record, "origin", None) or "").startswith(OWN_ORIGIN):
                counts.skipped += 1  # deleted since, or medflow's own output
                continue
            try:
                with self.store.open_instance(record) as fp:
                    read.append((item, pydicom.dcmread(fp)))
            except Exception as exc:  # noqa: BLE001  (per item: recorded, the loop goes on)
                self._fail(embedder, item, exc)
        if not read:
            return
        rows: list[NewEmbedding] = []
        for (item, ds), frames in zip(read, self._vectors(embedder, read), strict=True):
            if frames is not None:
                rows += _rows(item, ds, frames)
                counts.embedded += 1
        self.embeddings.replace(model_ref=embedder.ref, rows=rows, now=self.clock())

    def _vectors(self, embedder: Embedder, read: list[tuple[_Todo, Dataset]]
                 ) -> Iterator[list[NDArray[np.float32]] | None]:  # fmt: skip
        """The vectors of each dataset (one per frame; None: skipped or failed): the batch at
        once, or each alone when the batch fails."""
        try:
            batch = _checked(
                embedder, embedder.embed([ds for _, ds in read]), [ds for _, ds in read]
            )
        except Exception:  # noqa: BLE001  (one image failed the batch: find which)
            batch = None
        if batch is not None:
            yield from batch
            return
        for item, ds in read:
            try:
                yield _checked(embedder, embedder.embed([ds]), [ds])[0]
            except Unsupported:
                self._counts_of(embedder.ref).skipped += 1
                yield None
            except Exception as exc:  # noqa: BLE001  (per item: recorded, the loop goes on)
                self._fail(embedder, item, exc)
                yield None

    def _fail(self, embedder: Embedder, item: _Todo, exc: Exception) -> None:
        text = exc.message if isinstance(exc, MedflowError) else str(exc)
        reason = f"{type(exc).__name__}: {text}"[:2000]
        self._counts_of(embedder.ref).last_error = type(exc).__name__
        log.warning("an instance could not be embedded by %s (%s); recorded and skipped",
                    embedder.ref, type(exc).__name__)  # fmt: skip
        self.embeddings.record_failure(
            model_ref=embedder.ref, sop_uid=item.event.sop_instance_uid,
            study_uid=item.event.study_uid, seq=item.event.sequence, reason=reason,
            now=self.clock(),
        )  # fmt: skip

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> list[EmbeddingStatus]:
        """Per model: cursor, backlog, what was embedded, skipped and failed."""
        latest_event = self.store.latest_change()
        latest = latest_event.sequence if latest_event is not None else 0
        out = []
        for embedder in self.embedders():
            cursor = self.embeddings.cursor(cursor_name(embedder.ref))
            counts = self._counts_of(embedder.ref)
            out.append(EmbeddingStatus(
                model_ref=embedder.ref, cursor=cursor, latest=latest,
                backlog=max(0, latest - cursor), embedded=counts.embedded,
                skipped=counts.skipped,
                failures=self.embeddings.failure_count(model_ref=embedder.ref),
                last_error=counts.last_error or self._last_error,
            ))  # fmt: skip
        return out


def _plan(events: Sequence[ChangeEvent]) -> tuple[list[tuple[_Todo, bool]], set[str]]:
    """(instances to embed with whether they replace an embedding, instances whose
    embeddings go) from a batch: the last entry of each instance decides."""
    last: dict[str, ChangeEvent] = {}
    repeated: set[str] = set()
    for event in events:
        if event.sop_instance_uid in last:
            repeated.add(event.sop_instance_uid)
        last[event.sop_instance_uid] = event
    todo: list[tuple[_Todo, bool]] = []
    deletes: set[str] = set()
    for sop, event in last.items():
        if event.action == "delete":
            deletes.add(sop)
        elif event.state == "current" and event.metadata_json:
            replace = event.action == "update" or sop in repeated
            if replace:
                deletes.add(sop)  # the old embedding goes even if the new image is not read
            todo.append((_Todo(event, json.loads(event.metadata_json)), replace))
    return todo, deletes


def _value(meta: dict[str, Any], tag: str) -> str:
    values = (meta.get(tag) or {}).get("Value") or []
    first = values[0] if values else ""
    return str(first) if not isinstance(first, dict) else ""


def _own_document(meta: dict[str, Any]) -> bool:
    """A label or result document (KOS/SR/SEG/GSPS), or anything made by medflow."""
    return _value(meta, "00080016") in KIND_OF or _value(meta, "00080070") == OWN_MANUFACTURER


def _header(meta: dict[str, Any]) -> Dataset:
    """The instance's attributes from its DICOM JSON, bulk data left empty."""
    return Dataset.from_json(meta, bulk_data_uri_handler=lambda _tag, _vr, _uri: None)


def _frames(ds: Dataset) -> int:
    return max(1, int(ds.get("NumberOfFrames", 1) or 1))


def _checked(
    embedder: Embedder, output: Any, datasets: Sequence[Dataset]
) -> list[list[NDArray[np.float32]]]:
    """``embed``'s rows per dataset: one row each, or one per frame of each (a served
    model embeds every frame of a multi-frame image)."""
    vectors = np.asarray(output, dtype=np.float32)
    counts = [_frames(ds) for ds in datasets]
    if vectors.ndim != 2 or vectors.shape[0] not in (len(datasets), sum(counts)):
        raise ValueError(f"embed returned shape {vectors.shape} for {len(datasets)} images")
    if vectors.shape[1] != embedder.dim:
        raise ValueError(f"embed returned {vectors.shape[1]} values, not dim {embedder.dim}")
    if not np.isfinite(vectors).all():
        raise ValueError("embed returned values that are not finite")
    if vectors.shape[0] == len(datasets):
        return [[vectors[i].copy()] for i in range(len(datasets))]
    ends = np.cumsum(counts)
    return [[v.copy() for v in vectors[end - n : end]] for n, end in zip(counts, ends, strict=True)]


def _rows(item: _Todo, ds: Dataset, frames: list[NDArray[np.float32]]) -> list[NewEmbedding]:
    """One row per frame (1-based)."""
    e = item.event
    patient = _value(item.meta, "00100020") or str(ds.get("PatientID", "") or "")
    return [NewEmbedding(sop_instance_uid=e.sop_instance_uid, study_uid=e.study_uid,
                         series_uid=e.series_uid, patient_id=patient, frame=n, vector=vector)
            for n, vector in enumerate(frames, start=1)]  # fmt: skip


def start_in_thread(worker: EmbeddingWorker) -> tuple[threading.Thread, threading.Event]:
    """Run the worker in a daemon thread; set the returned event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), name="medflow-embed", daemon=True)
    thread.start()
    return thread, stop


__all__ = ["ArchiveSource", "Embedder", "EmbeddingStatus", "EmbeddingWorker", "Screening",
           "WorkerOptions", "start_in_thread"]  # fmt: skip
