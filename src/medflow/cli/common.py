"""Helpers shared by CLI commands: settings from env plus command-line overrides."""

from __future__ import annotations

from pathlib import Path

from medflow.core.settings import Settings


def load_settings(data_dir: Path | None = None) -> Settings:
    """``Settings`` from ``MEDFLOW_*`` environment variables, with ``--data-dir`` on top."""
    settings = Settings()
    if data_dir is not None:
        settings = settings.model_copy(update={"data_dir": data_dir})
    return settings
