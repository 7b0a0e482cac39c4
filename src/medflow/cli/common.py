"""Helpers shared by CLI commands: settings from env plus command-line overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from medflow.core.settings import Settings


def load_settings(data_dir: Path | None = None) -> Settings:
    """``Settings`` from ``MEDFLOW_*`` environment variables, with ``--data-dir`` on top."""
    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings


def export_settings(settings: Settings) -> None:
    """Put the resolved settings into ``MEDFLOW_*`` variables for child processes."""
    # the de-identification key is a secret (dumped masked): children inherit the variable
    dumped = settings.model_dump(mode="json", exclude_none=True, exclude={"deid": {"key"}})
    for key, value in flatten(dumped).items():
        os.environ[f"MEDFLOW_{key.upper()}"] = value


def flatten(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:  # a sub-settings model (one level)
            out.update(flatten(value, name + "__"))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out
