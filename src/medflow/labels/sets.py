"""Label sets in the database: each save of a changed definition is a new version."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from medflow.core.errors import InvalidInput, NotFound
from medflow.db.engine import write_session
from medflow.labels.models import LabelSet, LabelSetVersion
from medflow.labels.schemas import LabelSetDefinition


@dataclass(frozen=True)
class LabelSetInfo:
    id: int
    name: str
    version: int
    definition: LabelSetDefinition
    created_at: datetime
    created: bool = False
    """True when this save made a new version."""

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "version": self.version,
            "created": self.created,
            "created_at": self.created_at.isoformat(),
            "definition": self.definition.model_dump(mode="json"),
        }


def canonical(definition: LabelSetDefinition) -> str:
    return json.dumps(definition.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def _info(row: LabelSet, version: LabelSetVersion, created: bool = False) -> LabelSetInfo:
    definition = LabelSetDefinition.model_validate_json(version.definition)
    return LabelSetInfo(row.id, row.name, version.version, definition, version.created_at, created)


class LabelSets:
    """Versioned label set definitions (keyword-only arguments)."""

    def __init__(self, *, engine: Engine) -> None:
        self._engine = engine

    def save(self, *, definition: LabelSetDefinition) -> LabelSetInfo:
        """Create the set, or add a version when the definition changed (else the latest)."""
        text = canonical(definition)
        digest = hashlib.sha256(text.encode()).hexdigest()
        now = datetime.now(UTC)
        with write_session(self._engine) as session:
            row = session.scalar(select(LabelSet).where(LabelSet.name == definition.name))
            if row is None:
                row = LabelSet(name=definition.name, created_at=now)
                session.add(row)
                session.flush()
            latest = self._latest(session, row.id)
            if latest is not None and latest.digest == digest:
                return _info(row, latest)
            version = LabelSetVersion(
                set_id=row.id,
                version=(latest.version if latest else 0) + 1,
                definition=text,
                digest=digest,
                created_at=now,
            )
            session.add(version)
            session.commit()
            return _info(row, version, created=True)

    @staticmethod
    def _latest(session: Session, set_id: int) -> LabelSetVersion | None:
        return session.scalar(
            select(LabelSetVersion)
            .where(LabelSetVersion.set_id == set_id)
            .order_by(LabelSetVersion.version.desc())
            .limit(1)
        )

    def get(self, *, name: str, version: int | None = None) -> LabelSetInfo:
        """The set's latest (or given) version; ``NotFound`` otherwise."""
        with Session(self._engine) as session:
            row = session.scalar(select(LabelSet).where(LabelSet.name == name))
            if row is None:
                raise NotFound(f"no label set {name!r}")
            if version is None:
                found = self._latest(session, row.id)
            else:
                found = session.scalar(
                    select(LabelSetVersion).where(
                        LabelSetVersion.set_id == row.id, LabelSetVersion.version == version
                    )
                )
            if found is None:
                raise NotFound(f"label set {name!r} has no version {version}")
            return _info(row, found)

    def list(self) -> list[LabelSetInfo]:
        """Every set at its latest version, by name."""
        with Session(self._engine) as session:
            latest = (
                select(LabelSetVersion.set_id, func.max(LabelSetVersion.version).label("v"))
                .group_by(LabelSetVersion.set_id)
                .subquery()
            )
            rows = session.execute(
                select(LabelSet, LabelSetVersion)
                .join(latest, latest.c.set_id == LabelSet.id)
                .join(
                    LabelSetVersion,
                    (LabelSetVersion.set_id == LabelSet.id)
                    & (LabelSetVersion.version == latest.c.v),
                )
                .order_by(LabelSet.name)
            ).all()
            return [_info(s, v) for s, v in rows]


def parse_definition(data: object) -> LabelSetDefinition:
    """A definition from parsed JSON/YAML; ``InvalidInput`` with pydantic's reasons."""
    from pydantic import ValidationError

    try:
        return LabelSetDefinition.model_validate(data)
    except ValidationError as exc:
        reasons = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidInput(f"invalid label set: {reasons}") from None
