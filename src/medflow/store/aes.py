"""Known remote application entities: the table C-MOVE destinations and ``medflow send`` use.

An AE title (PS3.5 AE: at most 16 characters, no backslash or control characters, leading and
trailing spaces not significant) maps to a host and port. Entries are read from the database at
each use, so ``medflow aet add`` is seen by a running server without restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from medflow.core.errors import InvalidInput
from medflow.store.models import RemoteAE


@dataclass(frozen=True)
class RemoteEntity:
    ae_title: str
    host: str
    port: int
    description: str | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def normalize_ae_title(value: str) -> str:
    """The AE title as compared: surrounding spaces dropped (PS3.5 Table 6.2-1, AE)."""
    title = value.strip()
    if not title or len(title) > 16 or "\\" in title or any(ord(c) < 0x20 for c in title):
        raise InvalidInput(f"invalid AE title {value!r}: 1 to 16 characters, no backslash")
    return title


def parse_address(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6addr]:port`` for IPv6) → (host, port)."""
    host, sep, port_text = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidInput(f"invalid address {value!r}: expected HOST:PORT")
    return host, int(port_text)


class AeDirectory:
    """CRUD over the ``remote_ae`` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, ae_title: str) -> RemoteEntity | None:
        title = ae_title.strip()
        with Session(self.engine) as s:
            row = s.scalars(select(RemoteAE).where(RemoteAE.ae_title == title)).one_or_none()
            return _entity(row) if row is not None else None

    def entries(self) -> list[RemoteEntity]:
        with Session(self.engine) as s:
            return [_entity(r) for r in s.scalars(select(RemoteAE).order_by(RemoteAE.ae_title))]

    def put(
        self, ae_title: str, host: str, port: int, description: str | None = None
    ) -> RemoteEntity:
        """Add the AE or replace its address."""
        title = normalize_ae_title(ae_title)
        if not host or not 0 < port < 65536:
            raise InvalidInput(f"invalid address {host}:{port}")
        now = datetime.now(UTC)
        with Session(self.engine) as s, s.begin():
            row = s.scalars(select(RemoteAE).where(RemoteAE.ae_title == title)).one_or_none()
            if row is None:
                row = RemoteAE(ae_title=title, created_at=now)
                s.add(row)
            row.host, row.port, row.updated_at = host, port, now
            if description is not None:
                row.description = description
            return _entity(row)

    def remove(self, ae_title: str) -> bool:
        with Session(self.engine) as s, s.begin():
            result = s.execute(delete(RemoteAE).where(RemoteAE.ae_title == ae_title.strip()))
            return bool(getattr(result, "rowcount", 0))

    def seed(self, entries: Mapping[str, str]) -> None:
        """Entries from settings (``{"AET": "host:port"}``) are added or updated at start."""
        for title, address in entries.items():
            host, port = parse_address(address)
            self.put(title, host, port)


def _entity(row: RemoteAE) -> RemoteEntity:
    return RemoteEntity(row.ae_title, row.host, row.port, row.description)
