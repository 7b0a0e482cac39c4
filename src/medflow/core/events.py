"""In-process events: they only wake durable consumers early (the change feed is the truth).

One handler may fail without stopping the others; failures are logged, never raised to the
publisher (DESIGN.md: ``except Exception`` is allowed in event dispatch).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstancesChanged:
    """Instances were stored or deleted; ``last_sequence`` is the newest change feed entry."""

    last_sequence: int
    study_uids: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class FhirChanged:
    """FHIR resources were written; consumers read ``FhirService.changes`` from their cursor."""


Handler = Callable[[object], None]


class EventBus:
    def __init__(self) -> None:
        self._handlers: list[tuple[type, Handler]] = []
        self._lock = threading.Lock()

    def subscribe(self, event_type: type, handler: Handler) -> None:
        with self._lock:
            self._handlers.append((event_type, handler))

    def publish(self, event: object) -> None:
        with self._lock:
            handlers = [h for t, h in self._handlers if isinstance(event, t)]
        for handler in handlers:
            try:
                handler(event)
            except Exception:  # one failing observer must not stop the others
                log.exception("event handler %r failed", handler)
