"""Study/series/instance queries over the index (QIDO-RS and C-FIND). Owned by the QIDO work."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from medflow.core.errors import Unsupported


@dataclass(frozen=True)
class Query:
    level: str
    filters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryResult:
    rows: list[dict[str, Any]]


def execute_query(session: Session, query: Query) -> QueryResult:
    raise Unsupported("queries are not implemented yet")
