"""The model registry (issue 10): named models with auto-incremented versions, their input
spec, metrics, training data lineage, code version and stage in the index database; weights
(a torch ``state_dict``) and plots (PNG) as blobs under ``models/`` in the blob store.

Write order follows the archive's (DESIGN.md, Storage): the blobs are made durable first,
under content-derived keys (``models/<name>/<sha256[:16]>/<file>``), then the row is
committed; a crash between leaves orphan blobs, never a row without its blobs.

torch is imported only where weights are written or read (``register``, ``load_state_dict``),
so listing and resolving models (``medflow serve``'s ``GET /api/models``) never loads it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medflow import __version__
from medflow.core.errors import InvalidInput, NotFound, StorageFailure
from medflow.db.engine import write_session
from medflow.ml.registry.models import ModelVersion

if TYPE_CHECKING:
    import torch

STAGES = ("none", "staging", "production")
PREFIX = "models"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class Blobs(Protocol):
    """What the registry needs of a blob store (``medflow.store.blobs.BlobStore`` has it)."""

    def put_file(self, key: str, src: Path) -> None: ...
    def open(self, key: str) -> BinaryIO: ...
    def exists(self, key: str) -> bool: ...


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int
    architecture: str
    input_spec: dict[str, Any]
    metrics: dict[str, Any]
    label_set: str | None
    label_set_version: int | None
    manifest_sha256: str
    cohort_id: int | None
    lineage: dict[str, Any]
    code_version: str
    stage: str
    weights_sha256: str
    blobs: dict[str, str]
    created_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["created_at"] = self.created_at.isoformat()
        return out

    @classmethod
    def from_row(cls, row: ModelVersion) -> ModelInfo:
        return cls(
            name=row.name, version=row.version, architecture=row.architecture,
            input_spec=json.loads(row.input_spec), metrics=json.loads(row.metrics),
            label_set=row.label_set, label_set_version=row.label_set_version,
            manifest_sha256=row.manifest_sha256, cohort_id=row.cohort_id,
            lineage=json.loads(row.lineage), code_version=row.code_version, stage=row.stage,
            weights_sha256=row.weights_sha256, blobs=json.loads(row.blobs),
            created_at=row.created_at,
        )  # fmt: skip


def parse_ref(text: str) -> tuple[str, int | None]:
    """``NAME`` or ``NAME:VERSION``."""
    name, _, version = text.partition(":")
    check_name(name)
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise InvalidInput(f"bad model version {version!r}")
    return name, int(version)


def check_name(name: str) -> None:
    if not _NAME.match(name):
        raise InvalidInput(f"bad model name {name!r}: letters, digits, '.', '_', '-' (<= 100)")


def code_version() -> str:
    """medflow's version, plus the git commit of the source tree when it is a checkout
    (``-dirty`` when it has uncommitted changes): ``0.1.0+g47ee1cc42b56-dirty``."""
    root = Path(__file__).resolve().parents[4]
    if not (root / ".git").exists():
        return __version__
    try:
        commit = _git(root, "rev-parse", "--short=12", "HEAD")
        dirty = bool(_git(root, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" + ("-dirty" if dirty else "")


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          timeout=5, check=True)  # fmt: skip
    return done.stdout.strip()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


class ModelRegistry:
    def __init__(self, *, engine: Engine, blobs: Blobs, spool_dir: Path) -> None:
        self.engine = engine
        self.blobs = blobs
        self.spool_dir = spool_dir

    # -- write --------------------------------------------------------------------------
    def register(
        self,
        *,
        name: str,
        architecture: str,
        input_spec: Mapping[str, Any],
        metrics: Mapping[str, Any],
        manifest_sha256: str,
        state_dict: Mapping[str, torch.Tensor],
        plots: Mapping[str, bytes] | None = None,
        label_set: str | None = None,
        label_set_version: int | None = None,
        cohort_id: int | None = None,
        lineage: Mapping[str, Any] | None = None,
        stage: str = "none",
    ) -> ModelInfo:
        """Store the weights and plots, then add version n + 1 of ``name``."""
        check_name(name)
        check_stage(stage)
        import torch  # lazily: listing models never loads torch

        buf = io.BytesIO()
        torch.save(dict(state_dict), buf)
        weights = buf.getvalue()
        sha = hashlib.sha256(weights).hexdigest()
        folder = f"{PREFIX}/{name}/{sha[:16]}"
        blobs = {"weights": f"{folder}/weights.pt"}
        self._put(blobs["weights"], weights)
        for plot, data in (plots or {}).items():
            check_name(plot)
            blobs[plot] = f"{folder}/{plot}.png"
            self._put(blobs[plot], data)
        values = dict(
            name=name, architecture=architecture, input_spec=_json(input_spec),
            metrics=_json(metrics), label_set=label_set, label_set_version=label_set_version,
            manifest_sha256=manifest_sha256, cohort_id=cohort_id, lineage=_json(lineage or {}),
            code_version=code_version(), stage=stage, weights_sha256=sha, blobs=_json(blobs),
        )  # fmt: skip
        for _attempt in range(5):  # another writer took the same version: try the next
            try:
                with write_session(self.engine) as s:
                    latest = s.scalar(select(func.max(ModelVersion.version))
                                      .where(ModelVersion.name == name))  # fmt: skip
                    if stage == "production":
                        _demote(s, name)
                    row = ModelVersion(version=(latest or 0) + 1, created_at=datetime.now(UTC),
                                       **values)  # fmt: skip
                    s.add(row)
                    s.commit()
                    return ModelInfo.from_row(row)
            except IntegrityError:
                continue
        raise StorageFailure("could not allocate a model version", retryable=True)

    def _put(self, key: str, data: bytes) -> None:
        if self.blobs.exists(key):
            return  # content-derived key: the same bytes are there
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.spool_dir, suffix=".model")
        path = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as fp:
                fp.write(data)
                fp.flush()
                os.fsync(fp.fileno())
            self.blobs.put_file(key, path)
        finally:
            path.unlink(missing_ok=True)

    def promote(self, *, name: str, version: int, stage: str) -> ModelInfo:
        """Set a version's stage; promoting to production moves the name's former production
        version to ``none`` (one production version per name)."""
        check_stage(stage)
        with write_session(self.engine) as s:
            row = s.scalar(select(ModelVersion).where(ModelVersion.name == name,
                                                      ModelVersion.version == version))  # fmt: skip
            if row is None:
                raise NotFound(f"no model {name}:{version}")
            if stage == "production":
                _demote(s, name)
            row.stage = stage
            s.commit()
            return ModelInfo.from_row(row)

    def annotate(self, *, name: str, version: int, key: str, value: Any) -> ModelInfo:
        """Record ``value`` under ``key`` in a version's lineage (e.g. ``retrain``: how it
        compared with the champion); the other keys are kept."""
        with write_session(self.engine) as s:
            row = s.scalar(select(ModelVersion).where(ModelVersion.name == name,
                                                      ModelVersion.version == version))  # fmt: skip
            if row is None:
                raise NotFound(f"no model {name}:{version}")
            lineage = json.loads(row.lineage)
            lineage[key] = value
            row.lineage = _json(lineage)
            s.commit()
            return ModelInfo.from_row(row)

    # -- read ---------------------------------------------------------------------------
    def list(self, *, name: str | None = None) -> list[ModelInfo]:
        q = select(ModelVersion).order_by(ModelVersion.name, ModelVersion.version)
        if name is not None:
            q = q.where(ModelVersion.name == name)
        with Session(self.engine) as s:
            return [ModelInfo.from_row(r) for r in s.scalars(q)]

    def get(self, *, name: str, version: int | None = None) -> ModelInfo:
        """A version, or the latest one of ``name``."""
        q = select(ModelVersion).where(ModelVersion.name == name)
        q = q.where(ModelVersion.version == version) if version else q
        with Session(self.engine) as s:
            row = s.scalars(q.order_by(ModelVersion.version.desc()).limit(1)).first()
            if row is None:
                raise NotFound(f"no model {name}" + (f":{version}" if version else ""))
            return ModelInfo.from_row(row)

    def production(self, *, name: str) -> ModelInfo:
        with Session(self.engine) as s:
            row = s.scalars(
                select(ModelVersion).where(
                    ModelVersion.name == name, ModelVersion.stage == "production"
                )
            ).first()
            if row is None:
                raise NotFound(f"model {name} has no production version")
            return ModelInfo.from_row(row)

    def read_blob(self, info: ModelInfo, which: str) -> bytes:
        key = info.blobs.get(which)
        if key is None:
            raise NotFound(f"model {info.ref} has no {which}")
        with self.blobs.open(key) as fp:
            return fp.read()

    def load_state_dict(self, info: ModelInfo) -> dict[str, torch.Tensor]:
        """The weights, checked against their SHA-256 (``StorageFailure`` when they differ)."""
        data = self.read_blob(info, "weights")
        if hashlib.sha256(data).hexdigest() != info.weights_sha256:
            raise StorageFailure(f"the weights of {info.ref} are corrupted", retryable=False)
        import torch  # lazily: listing models never loads torch

        loaded: dict[str, torch.Tensor] = torch.load(io.BytesIO(data), weights_only=True)
        return loaded


def check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise InvalidInput(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")


def _demote(s: Session, name: str) -> None:
    s.execute(update(ModelVersion)
              .where(ModelVersion.name == name, ModelVersion.stage == "production")
              .values(stage="none"))  # fmt: skip
