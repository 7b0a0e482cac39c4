"""``medflow labels``: label sets, labels as DICOM objects, training manifests (issue 10,
docs/labels.md), on the local data directory (``--data-dir``).

- ``sets create FILE`` (JSON or YAML definition; a new version when it changed), ``sets list``,
  ``sets show NAME [--version N]``;
- ``write --set S --label L --study UID [--series UID] [--instance UID] [--kind kos|sr|seg]
  [--roi JSON] [--mask FILE.npy] [--frame N] [--observer NAME]``: a KOS/SR/SEG into the study;
- ``import --from-archive --mapping FILE [--set NAME]``: index what the archive's
  KOS/SR/SEG/GSPS say (the report lists what was skipped and why);
- ``export --set NAME --out FILE.parquet [--seed S] [--split 0.7,0.15,0.15] [--version N]``;
- ``from-truth DIR/truth.json --set NAME``: for the synthetic hospital only (``medflow demo``):
  a KOS for each chest X-ray whose truth finding is a class, negatives for those without one.
Errors print their reason and exit 1 (2 for an unreadable file)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
import yaml  # type: ignore[import-untyped]
from rich.console import Console

from medflow.cli.common import call

if TYPE_CHECKING:
    from medflow.labels.service import LabelService

console = Console()
labels_app = typer.Typer(help="Labels as DICOM objects (KOS, SR, SEG) and training manifests.")
sets_app = typer.Typer(help="Label sets (versioned definitions).")
labels_app.add_typer(sets_app, name="sets")
T = TypeVar("T")
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory")]
SetName = Annotated[str, typer.Option("--set", help="Label set name")]


def _call(data_dir: Path | None, action: Callable[[LabelService], T]) -> T:
    """``action`` on the data directory's labels; medflow errors printed (exit 1)."""
    return call(data_dir, lambda c: action(c.labels), console)


def _print(value: Any) -> None:
    console.print_json(json.dumps(value, default=str))


def _load(file: Path) -> Any:
    try:
        return yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        console.print(f"[red]cannot read {file.name}: {exc}[/red]", markup=False)
        raise typer.Exit(2) from None


@sets_app.command("create")
def sets_create(file: Path, data_dir: DataDir = None) -> None:
    """Create a label set from FILE (JSON/YAML), or a new version of it."""
    from medflow.labels.sets import parse_definition

    data = _load(file)
    info = _call(data_dir, lambda s: s.sets.save(definition=parse_definition(data)))
    _print(info.as_json())


@sets_app.command("list")
def sets_list(data_dir: DataDir = None) -> None:
    """Every label set at its latest version."""
    infos = _call(data_dir, lambda s: s.sets.list())
    for info in infos:
        classes = ", ".join(c.name for c in info.definition.classes)
        console.print(
            f"{info.name} v{info.version} ({info.definition.scope}): {classes}", markup=False
        )


@sets_app.command("show")
def sets_show(
    name: str,
    version: Annotated[int | None, typer.Option(help="A version (default: the latest)")] = None,
    data_dir: DataDir = None,
) -> None:
    """A label set's definition."""
    _print(_call(data_dir, lambda s: s.sets.get(name=name, version=version)).as_json())


@labels_app.command("write")
def write(
    label_set: SetName,
    label: Annotated[str, typer.Option(help="Class name")],
    study: Annotated[str, typer.Option(help="Study Instance UID")],
    series: Annotated[str | None, typer.Option(help="Series Instance UID")] = None,
    instance: Annotated[str | None, typer.Option(help="SOP Instance UID")] = None,
    kind: Annotated[str | None, typer.Option(help="kos, sr or seg")] = None,
    roi: Annotated[str | None, typer.Option(help='{"type": "box", "points": [[x,y],..]}')] = None,
    mask: Annotated[Path | None, typer.Option(help="A 2-D .npy mask (SEG)")] = None,
    frame: Annotated[int, typer.Option(help="1-based frame")] = 1,
    observer: Annotated[str | None, typer.Option(help="Observer (person) name")] = None,
    data_dir: DataDir = None,
) -> None:
    """Write one label as a KOS, SR or SEG into its study."""
    import numpy as np
    from pydantic import ValidationError

    from medflow.labels.schemas import LabelRequest

    try:
        roi_value = json.loads(roi) if roi else None
        mask_value = np.load(mask).astype(int).tolist() if mask else None
    except (ValueError, OSError) as exc:  # bad JSON, an unreadable or non-.npy mask
        console.print(f"[red]--roi/--mask: {exc}[/red]", markup=False)
        raise typer.Exit(2) from None
    fields: dict[str, Any] = {
        "label_set": label_set,
        "label": label,
        "study_uid": study,
        "series_uid": series,
        "sop_instance_uid": instance,
        "kind": kind,
        "frame": frame,
        "observer": observer,
        "roi": roi_value,
        "mask": mask_value,
    }
    try:
        request = LabelRequest.model_validate(fields)
    except ValidationError as exc:
        console.print(f"[red]{exc}[/red]", markup=False)
        raise typer.Exit(2) from None
    _print(_call(data_dir, lambda s: s.write(request=request)).as_json())


@labels_app.command("import")
def import_labels(
    mapping: Annotated[Path, typer.Option(help="Mapping (YAML): codes -> labels")],
    from_archive: Annotated[bool, typer.Option("--from-archive", help="Scan the archive")] = True,
    label_set: Annotated[str | None, typer.Option("--set", help="Label set")] = None,
    data_dir: DataDir = None,
) -> None:
    """Index the labels the archive's KOS/SR/SEG/GSPS say, by a mapping."""
    from pydantic import ValidationError

    from medflow.labels.schemas import Mapping

    if not from_archive:
        console.print("[red]only --from-archive is supported[/red]")
        raise typer.Exit(2)
    try:
        parsed = Mapping.model_validate(_load(mapping))
    except ValidationError as exc:
        console.print(f"[red]{mapping.name}: {exc}[/red]", markup=False)
        raise typer.Exit(2) from None
    report = _call(data_dir, lambda s: s.import_archive(mapping=parsed, label_set=label_set))
    console.print(
        f"{report.documents} documents, {report.labels} labels, "
        f"{report.negatives} negatives, {len(report.skipped)} skipped"
    )
    for skip in report.skipped:
        console.print(
            f"  skipped {skip['kind']} {skip['sop_instance_uid']}: {skip['reason']}", markup=False
        )


@labels_app.command("export")
def export(
    label_set: SetName,
    out: Annotated[Path, typer.Option(help="Manifest file (.parquet)")],
    seed: Annotated[int, typer.Option(help="Split seed")] = 0,
    split: Annotated[str, typer.Option(help="train,val,test fractions")] = "0.7,0.15,0.15",
    version: Annotated[int | None, typer.Option(help="Set version (default latest)")] = None,
    data_dir: DataDir = None,
) -> None:
    """Write the set's deterministic training manifest (Parquet)."""
    result = _call(
        data_dir,
        lambda s: s.export(label_set=label_set, out=out, seed=seed, split=split, version=version),
    )
    _print(result.as_json())


@labels_app.command("from-truth")
def from_truth(truth: Path, label_set: SetName, data_dir: DataDir = None) -> None:
    """For the synthetic hospital only: label its chest X-rays from truth.json."""
    records = _load(truth)
    _print(_call(data_dir, lambda s: s.from_truth(truth=records, label_set=label_set)))
