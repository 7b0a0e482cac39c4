"""``medflow train`` (a 2D classifier from a labels manifest, registered as a new model
version) and ``medflow models list|show|promote`` (the model registry). torch and MONAI are
imported only when one of these commands runs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from medflow.cli.common import call
from medflow.core.errors import MedflowError

if TYPE_CHECKING:
    from medflow.bootstrap import Container
    from medflow.ml.registry.service import ModelInfo, ModelRegistry
    from medflow.ml.train.source import TrainingData

console = Console()
models_app = typer.Typer(help="The model registry: trained models, versions and stages.")
T = TypeVar("T")
DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Data directory")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON")]


def registry_for(container: Container) -> ModelRegistry:
    """The registry over the container's index and blob store (models under ``models/``)."""
    return container.registry


def _call(data_dir: Path | None, action: Callable[[Container], T]) -> T:
    return call(data_dir, action, console)


def train(
    manifest: Annotated[
        Path | None,
        typer.Option(help="Training manifest (Parquet); or --labels", exists=True, dir_okay=False),
    ] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="Label set to export a manifest from")
    ] = None,
    labels_version: Annotated[
        int | None, typer.Option("--labels-version", help="Label set version (default latest)")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="With --labels: train,val,test fractions [0.7,0.15,0.15]")
    ] = None,
    model: Annotated[str, typer.Option("--model", help="Registry name")] = "classifier",
    arch: Annotated[str, typer.Option(help="densenet121, resnet18 or small")] = "small",
    features: Annotated[
        str | None, typer.Option(help="Tabular features from FHIR: age,sex,history")
    ] = None,
    size: Annotated[int, typer.Option(help="Image side (pixels)")] = 128,
    epochs: Annotated[int, typer.Option(help="At most this many epochs")] = 20,
    patience: Annotated[int, typer.Option(help="Early stopping patience (epochs)")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    lr: Annotated[float, typer.Option(help="Learning rate (AdamW)")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Random seed (training; with --labels the split)")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto (cuda when present)")] = "auto",
    target_sensitivity: Annotated[
        float | None,
        typer.Option("--target-sensitivity", help="Operating point (default: Youden's J)"),
    ] = None,
    cohort: Annotated[
        str | None, typer.Option(help="Saved cohort (id or name): train on its patients only")
    ] = None,
    stage: Annotated[str, typer.Option(help="Stage of the new version")] = "none",
    retrain: Annotated[
        str | None,
        typer.Option(
            "--retrain",
            help="NAME: train a challenger to its production version on "
            "the grown label set; promoted only if better on the same test set",
        ),
    ] = None,
    min_gain: Annotated[
        float, typer.Option("--min-gain", help="--retrain: AUC gain needed to promote")
    ] = 0.0,
    outcome_labels: Annotated[
        bool,
        typer.Option(
            "--outcome-labels/--no-outcome-labels", help="--retrain: write outcomes as labels first"
        ),
    ] = True,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Train a 2D classifier on a labels manifest (--manifest FILE, or --labels SET exported
    on the spot), optionally restricted to a cohort's patients, and register it as a new
    model version. --retrain NAME: champion/challenger on NAME's label set (docs/feedback.md)."""
    from medflow.ml.train.features import parse_features
    from medflow.ml.train.service import TrainConfig, train_model

    if retrain is not None:
        if manifest is not None or labels is not None or cohort is not None:
            raise typer.BadParameter("--retrain takes the champion's label set and "
                                     "configuration: no --manifest, --labels or --cohort",
                                     param_hint="'--retrain'")  # fmt: skip
        _retrain(retrain, min_gain=min_gain, outcome_labels=outcome_labels, device=device,
                 data_dir=data_dir, as_json=as_json)  # fmt: skip
        return
    _check_source(manifest, labels, labels_version, split)
    try:
        config = TrainConfig(
            arch=arch, size=size, epochs=epochs, seed=seed, batch_size=batch_size, lr=lr,
            patience=patience, features=parse_features(features),
            device=device,
            target_sensitivity=target_sensitivity,
        )  # fmt: skip
    except MedflowError as exc:
        raise typer.BadParameter(exc.message) from None

    def run(container: Container) -> ModelInfo | None:
        registry = registry_for(container)
        if stage != "none":  # checked before the hours of training
            from medflow.ml.registry.service import check_stage

            check_stage(stage)
        data = _training_data(container, manifest=manifest, label_set=labels, cohort=cohort,
                              seed=seed, split=split, version=labels_version,
                              quiet=as_json)  # fmt: skip
        with _progress() as (progress, update):
            result = train_model(store=container.store, fhir=container.fhir,
                                 manifest=data.manifest, config=config, registry=registry,
                                 name=model, cohort_id=None if data.cohort is None
                                 else data.cohort.id, progress=update)  # fmt: skip
            progress.stop()
        info = result.model
        if info is not None and stage != "none":
            info = registry.promote(name=info.name, version=info.version, stage=stage)
        return info

    info = _call(data_dir, run)
    if info is None:
        return
    if as_json:
        console.print_json(json.dumps(info.to_dict()))
    else:
        _show(info)


def _retrain(name: str, *, min_gain: float, outcome_labels: bool, device: str,
             data_dir: Path | None, as_json: bool) -> None:  # fmt: skip
    from medflow.ml.feedback.service import Feedback
    from medflow.ml.train.retrain import retrain

    def run(container: Container) -> dict[str, Any]:
        registry = registry_for(container)
        feedback = Feedback(fhir=container.fhir, store=container.store, registry=registry,
                            labels=container.labels)  # fmt: skip
        with _progress() as (progress, update):
            result = retrain(store=container.store, labels=container.labels, registry=registry,
                             data_dir=container.settings.data_dir, name=name,
                             fhir=container.fhir, min_gain=min_gain, device=device,
                             outcome_labels=(lambda: feedback.outcome_labels(name=name))
                             if outcome_labels else None, progress=update)  # fmt: skip
            progress.stop()
        return result.as_json()

    found = _call(data_dir, run)
    if as_json:
        console.print_json(json.dumps(found))
        return
    c = found["comparison"]
    table = Table(show_header=False)
    written = (found.get("outcome_labels") or {}).get("written")
    for key, value in (
        ("champion", f"{found['champion']} AUC {c['champion_auc']}"),
        ("challenger", f"{found['challenger']} AUC {c['challenger_auc']}"),
        ("difference", f"{c['delta']} (95% CI {c['delta_ci95'][0]} to {c['delta_ci95'][1]})"),
        ("test set", f"{c['test']['images']} images, {c['test']['patients']} patients, "
                     f"{c['test']['positives']} positive"),
        ("outcome labels", "-" if written is None else
         f"{written['positive']} positive, {written['negative']} negative"),
        ("decision", ("promoted: " if found["promoted"] else "champion kept: ") + found["reason"]),
    ):  # fmt: skip
        table.add_row(key, str(value))
    console.print(table)


def _check_source(
    manifest: Path | None, labels: str | None, version: int | None, split: str | None
) -> None:
    """Exactly one of --manifest and --labels; --labels-version and --split (checked) need
    --labels."""
    if (manifest is None) == (labels is None):
        raise typer.BadParameter("give exactly one of --manifest FILE and --labels SET",
                                 param_hint="'--manifest' / '--labels'")  # fmt: skip
    if labels is None and (version is not None or split is not None):
        raise typer.BadParameter("--labels-version and --split go with --labels (a manifest "
                                 "has its splits)", param_hint="'--labels'")  # fmt: skip
    if split is not None:
        from medflow.labels.manifest import parse_split

        try:
            parse_split(split)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="'--split'") from None


def _training_data(
    container: Container,
    *,
    manifest: Path | None,
    label_set: str | None,
    cohort: str | None,
    seed: int,
    split: str | None,
    version: int | None,
    quiet: bool,
) -> TrainingData:
    """The manifest to train on (exported or filtered under ``<data_dir>/ml/manifests``); a
    cohort leaving nothing to train on, or an empty split, is a bad parameter (exit 2)."""
    from medflow.ml.train.source import DEFAULT_SPLIT, EmptySplit, NoTrainingData, training_data

    try:
        data = training_data(labels=container.labels, cohorts=container.cohorts,
                             data_dir=container.settings.data_dir, manifest=manifest,
                             label_set=label_set, cohort=cohort, seed=seed,
                             split=split or DEFAULT_SPLIT, version=version)  # fmt: skip
    except NoTrainingData as exc:
        raise typer.BadParameter(exc.message, param_hint="'--cohort'") from None
    except EmptySplit as exc:
        hint = "'--seed' / '--split'" if label_set is not None else "'--cohort'"
        raise typer.BadParameter(exc.message, param_hint=hint) from None
    if not quiet:
        if data.cohort is not None:
            c = data.cohort
            console.print(f"cohort {c.id} ({c.name}) version {c.version}: "
                          f"{len(c.mrns)} patients", markup=False)  # fmt: skip
        if data.manifest != manifest:
            console.print(f"manifest {data.manifest} ({data.rows} rows, {data.patients} "
                          "patients)", markup=False, soft_wrap=True)  # fmt: skip
    return data


@contextmanager
def _progress() -> Iterator[tuple[Progress, Callable[[str, int, int, Mapping[str, float]], None]]]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console) as progress:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int, values: Mapping[str, float]) -> None:
            label = "decode" if phase == "decode" else "epochs" if phase == "val" else "batches"
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=total, info="")
            info = " ".join(f"{k} {v:.4g}" for k, v in values.items())
            progress.update(tasks[label], completed=done, total=total, info=info)

        yield progress, update


def _show(info: ModelInfo) -> None:
    m = info.metrics
    table = Table(show_header=False)
    rows: list[tuple[str, Any]] = [
        ("model", info.ref), ("stage", info.stage), ("architecture", info.architecture),
        ("created", info.created_at.isoformat(timespec="seconds")),
        ("code", info.code_version),
        ("input", ", ".join(f"{k} {info.input_spec.get(k)}" for k in
                            ("modality", "body_part", "size", "channels", "features"))),
        ("classes", ", ".join(info.input_spec.get("classes", []))),
        ("label set", f"{info.label_set} v{info.label_set_version}"),
        ("manifest", info.manifest_sha256[:16]), ("cohort", info.cohort_id),
    ]  # fmt: skip
    if "auc" in m:
        lo, hi = m.get("auc_ci95") or (None, None)
        point = m.get("operating_point") or {}
        rows += [
            ("test AUC", f"{_num(m['auc'])} (95% CI {_num(lo)}-{_num(hi)}), n={m.get('n')}"),
            ("operating point", f"{_num(m.get('threshold'))} ({point.get('method', '-')})"),
            ("sensitivity", _num(m.get("sensitivity"))),
            ("specificity", _num(m.get("specificity"))),
            ("Brier", _num(m.get("brier"), 4)), ("ECE", _num(m.get("ece"), 4)),
        ]  # fmt: skip
    elif "auc_macro" in m:
        rows.append(("test AUC (macro)", m["auc_macro"]))
    training = m.get("training", {})
    if training:
        rows.append(
            (
                "training",
                f"{training['epochs_run']} epochs (best {training['best_epoch']})"
                f", {training['seconds']} s, {training['images_per_s']} images/s",
            )
        )
    rows.append(("blobs", ", ".join(sorted(info.blobs))))
    for key, value in rows:
        table.add_row(key, "" if value is None else str(value))
    console.print(table)


@models_app.command("list")
def list_models(
    name: Annotated[str | None, typer.Argument(help="Only this model")] = None,
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """Every registered model version."""
    found = _call(data_dir, lambda c: registry_for(c).list(name=name))
    if as_json:
        console.print_json(json.dumps([i.to_dict() for i in found]))
        return
    table = Table()
    table.add_column("model", no_wrap=True)
    for column in ("stage", "architecture", "test AUC", "label set", "created"):
        table.add_column(column)
    for info in found:
        auc = info.metrics.get("auc", info.metrics.get("auc_macro"))
        table.add_row(info.ref, info.stage, info.architecture,
                      "" if auc is None else f"{auc:.3f}",
                      f"{info.label_set} v{info.label_set_version}",
                      info.created_at.isoformat(timespec="seconds"))  # fmt: skip
    console.print(table)


@models_app.command()
def show(
    ref: Annotated[str, typer.Argument(help="NAME or NAME:VERSION (default: the latest)")],
    data_dir: DataDir = None,
    as_json: AsJson = False,
) -> None:
    """One model version: input spec, metrics, lineage, stage, blobs."""
    from medflow.ml.registry.service import parse_ref

    def action(c: Container) -> ModelInfo:
        name, version = parse_ref(ref)
        return registry_for(c).get(name=name, version=version)

    info = _call(data_dir, action)
    if as_json:
        console.print_json(json.dumps(info.to_dict()))
    else:
        _show(info)


@models_app.command()
def promote(
    ref: Annotated[str, typer.Argument(help="NAME:VERSION")],
    stage: Annotated[str, typer.Option(help="none, staging or production")] = "production",
    data_dir: DataDir = None,
) -> None:
    """Set a version's stage (one production version per name: the former one goes to none)."""
    from medflow.ml.registry.service import parse_ref

    def action(c: Container) -> ModelInfo:
        name, version = parse_ref(ref)
        if version is None:
            from medflow.core.errors import InvalidInput

            raise InvalidInput("give NAME:VERSION")
        return registry_for(c).promote(name=name, version=version, stage=stage)

    info = _call(data_dir, action)
    console.print(f"{info.ref} is now {info.stage}")


def _num(value: object, digits: int = 3) -> str:
    """A metric for people; "n/a" when it cannot be computed (a test split with one class)."""
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "n/a"
