"""Logging set-up. PHI is never logged above DEBUG: log UIDs and counts, not names or IDs."""

from __future__ import annotations

import logging


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # A request line per call from our own HTTP clients (demo loader, sync) is noise at INFO.
    if logging.getLogger().level >= logging.INFO:
        for name in ("httpx", "httpcore"):
            logging.getLogger(name).setLevel(logging.WARNING)
