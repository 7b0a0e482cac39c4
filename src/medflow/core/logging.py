"""Logging set-up. PHI is never logged above DEBUG: log UIDs and counts, not names or IDs."""

from __future__ import annotations

import logging


def configure(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
