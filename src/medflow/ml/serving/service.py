"""Serving (what other code calls; torch-free): the cache of loaded models, the check of an
image against a model's input spec, and archive references resolved to the instances a model
reads.

- :class:`Predictors` keeps loaded :class:`~medflow.ml.serving.predictor.Predictor` objects by
  (name, version), the least recently used dropped beyond ``capacity``. ``get(name)`` is the
  name's **production** version (``NotFound`` when none is promoted: serving never guesses
  which of several trained versions is meant); ``get(name, version)`` any registered version.
  The stage is read from the registry on every call, so a promotion takes effect at once.
- :func:`spec_mismatch` says why an image does not fit a model (no pixel data, another
  Modality (0008,0060) or Body Part Examined (0018,0015) than the training images had), or
  None. The triage and similarity workers use it to pick the instances a model reads.
- :func:`resolve_refs` turns ``{"study", "series"?, "instances"?}`` references into instance
  records: named instances must each fit the model (else ``Unsupported``, HTTP 422); a whole
  study or series gives the instances that fit (its SR, KOS, SEG or other modalities are left
  out, judged from the index's DICOM JSON without reading a file), and ``Unsupported`` when none
  does. :func:`predict_records` reads them through ``StoreService`` and predicts in chunks.

torch is imported only by ``predictor.py``, on the first ``Predictors.get`` that loads a model,
so ``medflow serve`` starts (and lists models) without it."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pydicom
from pydicom.errors import InvalidDicomError

from medflow.core.errors import InvalidInput, NotFound, Unsupported
from medflow.fhir.service import FhirService
from medflow.ml.registry.service import ModelInfo, ModelRegistry
from medflow.ml.serving.errors import TooLarge
from medflow.store.records import InstanceRecord
from medflow.store.service import StoreService

if TYPE_CHECKING:
    from medflow.ml.serving.predictor import Predictor

log = logging.getLogger(__name__)
MAX_FRAMES = 512
"""Frames one request may resolve to (more: ``TooLarge``); send larger sets as a batch of
smaller requests."""
CHUNK = 32
"""Instances read and predicted together (bounds the memory a large study takes)."""
METRICS_SUMMARY = ("auc", "auc_ci95", "auc_macro", "auc_per_class", "sensitivity", "specificity",
                   "threshold", "brier", "ece", "n", "positive_class")  # fmt: skip


@dataclass(frozen=True)
class Prediction:
    """One frame scored by one model version."""

    sop_instance_uid: str
    study_uid: str
    series_uid: str
    frame: int
    """1-based."""
    probability: float
    """Binary models: of the positive class (``classes[1]``); more classes: of ``label``."""
    probabilities: dict[str, float]
    """Every class's probability (log training priors restored, as in test evaluation)."""
    label: str
    """The most probable class."""
    threshold: float | None
    """The binary model's operating point chosen on validation (None otherwise)."""
    positive: bool | None
    """``probability >= threshold`` (binary models with an operating point; else None)."""
    model: str
    version: int
    elapsed_ms: float
    """Decoding this frame plus its share of the batch's inference."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class InstanceRefs:
    """Archive references: a study, optionally one series, optionally some instances."""

    study: str
    series: str | None = None
    instances: tuple[str, ...] = ()


def describe_spec(spec: dict[str, Any]) -> str:
    """What a model reads, in words: ``CR CHEST images``."""
    parts = [str(spec.get(k) or "").upper() for k in ("modality", "body_part")]
    return " ".join(p for p in parts if p) + " images" if any(parts) else "images"


def spec_mismatch(
    spec: dict[str, Any], *, modality: str, body_part: str, has_pixels: bool
) -> str | None:
    """Why an image with these attributes does not fit a model's input spec, or None.

    The image must have pixel data, the spec's Modality, and (when the spec has one, as
    training recorded the most common) the same Body Part Examined, compared without case;
    an image without Body Part Examined does not fit a spec that has one."""
    if not has_pixels:
        return "it has no pixel data (not an image)"
    want = str(spec.get("modality") or "").upper()
    if want and modality.strip().upper() != want:
        return f"the model reads {describe_spec(spec)}, not {modality.strip() or 'no'} Modality"
    part = str(spec.get("body_part") or "").upper()
    if part and body_part.strip().upper() != part:
        found = body_part.strip() or "absent"
        return f"the model reads {describe_spec(spec)}; Body Part Examined is {found}"
    return None


def dataset_mismatch(spec: dict[str, Any], ds: Any) -> str | None:
    """:func:`spec_mismatch` for a pydicom dataset."""
    return spec_mismatch(
        spec,
        modality=str(ds.get("Modality", "") or ""),
        body_part=str(ds.get("BodyPartExamined", "") or ""),
        has_pixels="PixelData" in ds,
    )


def version_summary(info: ModelInfo) -> dict[str, Any]:
    """A registered version as ``GET /api/models`` lists it: stage, architecture, input spec,
    label set, the test metrics' summary (no curves or per-epoch history)."""
    training = info.metrics.get("training", {})
    return {
        "name": info.name, "version": info.version, "stage": info.stage,
        "architecture": info.architecture, "created_at": info.created_at.isoformat(),
        "input_spec": info.input_spec,
        "metrics": {k: info.metrics[k] for k in METRICS_SUMMARY if k in info.metrics}
        | {k: training[k] for k in ("epochs_run", "best_val_auc") if k in training},
        "label_set": info.label_set, "label_set_version": info.label_set_version,
        "code_version": info.code_version, "weights_sha256": info.weights_sha256,
    }  # fmt: skip


def model_summary(name: str, versions: Sequence[ModelInfo]) -> dict[str, Any]:
    production = next((v.version for v in versions if v.stage == "production"), None)
    return {
        "name": name,
        "production": production,
        "latest": max(v.version for v in versions),
        "versions": [version_summary(v) for v in versions],
    }


def catalogue(registry: ModelRegistry, *, name: str | None = None) -> list[dict[str, Any]]:
    """Every model name (or ``name``) with its versions (``NotFound`` for an unknown name)."""
    by_name: dict[str, list[ModelInfo]] = {}
    for info in registry.list(name=name):
        by_name.setdefault(info.name, []).append(info)
    if name is not None and not by_name:
        raise NotFound(f"no model {name}")
    return [model_summary(n, v) for n, v in sorted(by_name.items())]


class Predictors:
    """Loaded predictors by (name, version), thread-safe, least recently used dropped beyond
    ``capacity``. A model is loaded once even when several requests ask for it together."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        fhir: FhirService | None = None,
        capacity: int = 4,
        device: str = "cpu",
        factory: Callable[[ModelInfo], Predictor] | None = None,
    ) -> None:
        self.registry = registry
        self.fhir = fhir
        self.capacity = max(1, capacity)
        self.device = device
        self._factory = factory or self._load
        self._cache: OrderedDict[tuple[str, int], Predictor] = OrderedDict()
        self._loading: dict[tuple[str, int], threading.Lock] = {}
        self._lock = threading.Lock()

    def _load(self, info: ModelInfo) -> Predictor:
        from medflow.ml.serving.predictor import Predictor  # torch: on the first load only

        return Predictor(registry=self.registry, info=info, fhir=self.fhir, device=self.device)

    def resolve(self, name: str, version: int | None = None) -> ModelInfo:
        """The registered version (``None``: the production one); ``NotFound`` otherwise."""
        if version is not None:
            if version < 1:
                raise NotFound(f"no model {name}:{version}")
            return self.registry.get(name=name, version=version)
        try:
            return self.registry.production(name=name)
        except NotFound:
            if not self.registry.list(name=name):
                raise NotFound(f"no model {name}") from None
            raise NotFound(f"model {name} has no production version: promote one (medflow "
                           f"models promote {name}:VERSION --stage production) or name a "
                           "version") from None  # fmt: skip

    def get(self, name: str, version: int | None = None) -> Predictor:
        """The loaded predictor of ``name`` (production) or ``name:version``."""
        info = self.resolve(name, version)
        key = (info.name, info.version)
        with self._lock:
            found = self._hit(key, info)
            if found is not None:
                return found
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                found = self._hit(key, info)
            if found is not None:
                return found
            log.info("loading model %s", info.ref)
            try:
                predictor = self._factory(info)
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:  # cached before the loading lock goes: no second load
                self._cache[key] = predictor
                self._loading.pop(key, None)
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            return predictor

    def _hit(self, key: tuple[str, int], info: ModelInfo) -> Predictor | None:
        found = self._cache.get(key)
        if found is None or found.info.weights_sha256 != info.weights_sha256:
            return None  # a version re-created (e.g. after a reset) is loaded again
        self._cache.move_to_end(key)
        return found

    def loaded(self) -> list[str]:
        """``name:version`` of the loaded models, least recently used first."""
        with self._lock:
            return [f"{n}:{v}" for n, v in self._cache]

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


def parse_dicom(data: bytes) -> Any:
    """A Part 10 file (preamble and ``DICM``) as a pydicom dataset; ``InvalidInput`` when it is
    not one."""
    if not data:
        raise InvalidInput("the body is empty: send one DICOM Part 10 file")
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"the body is not a DICOM Part 10 file: {exc}") from None


def _facts(text: str) -> tuple[str, str, str, bool]:
    """(SOP Instance UID, Modality, Body Part Examined, has pixel data) of an instance's
    DICOM JSON (PS3.18 F.2)."""
    obj = json.loads(text)

    def first(tag: str) -> str:
        values = obj.get(tag, {}).get("Value") or [""]
        return str(values[0])

    return first("00080018"), first("00080060"), first("00180015"), "7FE00010" in obj


def resolve_refs(
    store: StoreService, refs: Sequence[InstanceRefs], *, spec: dict[str, Any]
) -> list[InstanceRecord]:
    """The instances the references name that fit ``spec``, in order, each once.

    ``NotFound``: an unknown study, series or instance. ``Unsupported``: a named instance that
    does not fit, or a study/series with no instance that does. ``TooLarge``: over
    :data:`MAX_FRAMES` frames."""
    out: list[InstanceRecord] = []
    seen: set[str] = set()
    for n, ref in enumerate(refs, start=1):
        where = "series" if ref.series else "study"
        records = store.find_instances(study_uid=ref.study, series_uid=ref.series)
        texts, _ = store.metadata(study_uid=ref.study, series_uid=ref.series)
        reasons: dict[str, str | None] = {}
        modalities: set[str] = set()
        for text in texts:
            uid, modality, part, pixels = _facts(text)
            reasons[uid] = spec_mismatch(spec, modality=modality, body_part=part,
                                         has_pixels=pixels)  # fmt: skip
            modalities.add(modality or "?")
        if ref.instances:
            by_uid = {r.sop_instance_uid: r for r in records}
            missing = sum(u not in by_uid for u in ref.instances)
            if missing:
                raise NotFound(f"reference {n}: {missing} of its instances are not in the {where}")
            for i, uid in enumerate(ref.instances, start=1):
                reason = reasons.get(uid, "its metadata is not indexed")
                if reason is not None:
                    raise Unsupported(f"reference {n}, instance {i}: {reason}")
            chosen = [by_uid[u] for u in ref.instances]
        else:
            chosen = [r for r in records if r.sop_instance_uid in reasons
                      and reasons[r.sop_instance_uid] is None]  # fmt: skip
            if not chosen:
                raise Unsupported(f"reference {n}: no instance of the {where} fits (the model "
                                  f"reads {describe_spec(spec)}; the {where} holds "
                                  f"{', '.join(sorted(modalities))})")  # fmt: skip
        for record in chosen:
            if record.sop_instance_uid not in seen:
                seen.add(record.sop_instance_uid)
                out.append(record)
    frames = sum(r.number_of_frames or 1 for r in out)
    if frames > MAX_FRAMES:
        raise TooLarge(f"the references resolve to {frames} frames; at most {MAX_FRAMES} per "
                       "request: send fewer instances per request")  # fmt: skip
    return out


def read_dataset(store: StoreService, record: InstanceRecord) -> Any:
    """A stored instance as a pydicom dataset."""
    return pydicom.dcmread(io.BytesIO(b"".join(store.iter_bytes(record))))


def predict_records(
    predictor: Predictor, store: StoreService, records: Sequence[InstanceRecord]
) -> list[Prediction]:
    """Every frame of the stored instances, :data:`CHUNK` instances read at a time."""
    out: list[Prediction] = []
    for start in range(0, len(records), CHUNK):
        datasets = [read_dataset(store, r) for r in records[start : start + CHUNK]]
        out.extend(predictor.predict(datasets))
    return out
