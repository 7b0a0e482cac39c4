"""``medflow deid``: de-identification (issue 8, docs/deid.md) with the key in
``MEDFLOW_DEID__KEY`` (refused without it).

- ``medflow deid dicom IN OUT [--report FILE] [--profile NAME|FILE]``: DICOM files by PS3.15
  Annex E; OUT holds only de-identified files in IN's relative layout, the report (what was
  left out and why) goes outside OUT.
- ``medflow deid fhir IN OUT [--rules FILE]``: FHIR ndjson / JSON (resources or Bundles).
- ``medflow deid copy --to DIR``: the whole archive and FHIR store of ``--data-dir``,
  de-identified, into a second data dir, which ``medflow serve --data-dir DIR`` serves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from medflow.cli.common import load_settings
from medflow.core.errors import MedflowError
from medflow.core.logging import configure

if TYPE_CHECKING:
    from medflow.core.settings import Settings
    from medflow.deid.service import Deidentification

console = Console()
deid_app = typer.Typer(help="De-identify DICOM and FHIR with one pseudonym space (PS3.15 E).")
ProfileOption = Annotated[
    str | None,
    typer.Option("--profile", help="DICOM profile: basic, research (default) or a YAML/JSON file"),
]
RulesOption = Annotated[
    Path | None, typer.Option("--rules", help="FHIR rules (YAML); default: the shipped rules")
]
DataDirOption = Annotated[
    Path | None, typer.Option("--data-dir", help="Data directory (default: $MEDFLOW_DATA_DIR)")
]


def _deidentification(
    settings: Settings, profile: str | None, rules: Path | None
) -> Deidentification:
    from medflow.deid.service import Deidentification

    try:
        return Deidentification.from_settings(settings, profile=profile, rules=rules)
    except MedflowError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None


@deid_app.command("dicom")
def dicom(
    source: Annotated[Path, typer.Argument(help="A DICOM file or a folder of them")],
    out: Annotated[Path, typer.Argument(help="Output folder (only de-identified files)")],
    report: Annotated[
        Path | None, typer.Option("--report", help="JSON report of what was left out (not in OUT)")
    ] = None,
    profile: ProfileOption = None,
) -> None:
    """De-identify DICOM files (PS3.15 Basic Profile and options)."""
    from medflow.deid.files import deidentify_tree

    configure("warning")
    deid = _deidentification(load_settings(), profile, None)
    try:
        summary = deidentify_tree(source, out, deid.dicom, report)
    except MedflowError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    console.print(summary.describe(), markup=False)


@deid_app.command("fhir")
def fhir(
    source: Annotated[Path, typer.Argument(help="A folder of .ndjson / .json files, or one")],
    out: Annotated[Path, typer.Argument(help="Output folder")],
    rules: RulesOption = None,
) -> None:
    """De-identify FHIR resources (ndjson per type, or JSON resources and Bundles)."""
    from medflow.deid.fhir import deidentify_ndjson_tree

    configure("warning")
    deid = _deidentification(load_settings(), None, rules)
    try:
        summary = deidentify_ndjson_tree(source, out, deid.fhir)
    except MedflowError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(2) from None
    console.print(json.dumps(summary.to_dict()), markup=False)


@deid_app.command("copy")
def copy(
    to: Annotated[Path, typer.Option("--to", help="The second data dir (embedded SQLite)")],
    data_dir: DataDirOption = None,
    profile: ProfileOption = None,
    rules: RulesOption = None,
) -> None:
    """Copy the archive and FHIR store, de-identified, into a second data dir; serve it with
    ``medflow serve --data-dir DIR`` so researchers query without seeing PHI."""
    from medflow.bootstrap import build
    from medflow.core.settings import BlobSettings
    from medflow.deid.service import copy_deidentified

    configure("warning")
    settings = load_settings(data_dir)
    deid = _deidentification(settings, profile, rules)
    if to.resolve() == settings.data_dir.resolve():
        console.print("[red]--to is the source data dir: give another folder[/red]")
        raise typer.Exit(2)
    # the target is its own embedded data dir: none of the source's database or bucket
    target_settings = settings.model_copy(
        update={"data_dir": to, "database_url": None, "blobs": BlobSettings()}
    )
    source, target = build(settings), build(target_settings)
    try:
        with console.status("copying, de-identified…"):
            summary = copy_deidentified(
                deid, source_store=source.store, source_fhir=source.fhir,
                target_store=target.store, target_fhir=target.fhir,
            )  # fmt: skip
    except MedflowError as exc:
        console.print(f"[red]{exc.message}[/red]")
        raise typer.Exit(1) from None
    finally:
        source.close()
        target.close()
    types = ", ".join(f"{t} {n}" for t, n in sorted(summary.resources.items())) or "none"
    console.print(f"FHIR: {types}", markup=False)
    console.print(f"DICOM: {summary.instances} instances copied, {len(summary.excluded)} left "
                  f"out, {len(summary.failed)} failed", markup=False)  # fmt: skip
    for uid, reason in summary.excluded[:20]:
        console.print(f"  left out {uid}: {reason}", markup=False)
    console.print(f"serve it with: medflow serve --data-dir {to}", markup=False)
    if summary.failed:
        raise typer.Exit(1)


__all__ = ["deid_app"]
