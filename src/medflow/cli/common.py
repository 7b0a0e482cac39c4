"""Helpers shared by CLI commands: settings from env plus command-line overrides."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console

from medflow.core.errors import MedflowError
from medflow.core.logging import configure
from medflow.core.settings import Settings

if TYPE_CHECKING:
    from medflow.bootstrap import Container

T = TypeVar("T")


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


@contextmanager
def open_container(data_dir: Path | None) -> Iterator[Container]:
    """The services over ``--data-dir`` (warnings only in the log), closed afterwards."""
    from medflow.bootstrap import build

    configure("warning")
    container = build(load_settings(data_dir))
    try:
        yield container
    finally:
        container.close()


def call(data_dir: Path | None, action: Callable[[Container], T], console: Console) -> T:
    """``action`` on the data directory's services; a medflow error is printed (exit 1)."""
    with open_container(data_dir) as container:
        try:
            return action(container)
        except MedflowError as exc:
            console.print(f"[red]{exc.message}[/red]", markup=True)
            raise typer.Exit(1) from None
