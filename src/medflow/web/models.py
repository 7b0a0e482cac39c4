"""The models pages (issue 11): ``/models`` every registered model with its versions, stage
and test metrics; ``/models/{name}/performance`` how the model and its readers did against
later outcomes (:meth:`medflow.ml.feedback.service.Feedback.performance`): the confusion
matrix, rates and AUC, per version and per period, the false positives and false negatives
with links to their images, and each reader against the outcomes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from medflow.core.errors import InvalidInput
from medflow.ml.feedback.outcomes import Rules
from medflow.ml.feedback.service import WINDOWS, Feedback
from medflow.ml.registry.service import ModelInfo, ModelRegistry


@dataclass
class ModelRow:
    name: str
    versions: list[ModelInfo]

    @property
    def production(self) -> ModelInfo | None:
        return next((v for v in self.versions if v.stage == "production"), None)


def models_view(registry: ModelRegistry) -> list[ModelRow]:
    rows: dict[str, list[ModelInfo]] = {}
    for info in registry.list():
        rows.setdefault(info.name, []).append(info)
    return [ModelRow(name, sorted(v, key=lambda i: -i.version)) for name, v in sorted(rows.items())]


@dataclass
class PerformanceView:
    name: str
    report: dict[str, Any]
    window: str
    version: str
    followup_days: int
    after_days: int
    versions: list[int]
    include_training: bool = False


def _int(params: Any, key: str, default: int, low: int = 0, high: int = 3650) -> int:
    try:
        value = int(params.get(key) or default)
    except ValueError:
        raise InvalidInput(f"{key}: a number of days") from None
    if not low <= value <= high:
        raise InvalidInput(f"{key}: {low}..{high}")
    return value


def performance_view(feedback: Feedback, name: str, params: Any) -> PerformanceView:
    window = str(params.get("window") or "month")
    if window not in WINDOWS:
        window = "month"
    version_text = str(params.get("version") or "")
    version = int(version_text) if version_text.isdigit() else None
    followup = _int(params, "followup_days", 90)
    after = _int(params, "after_days", 90)
    as_of_text = str(params.get("as_of") or "")
    try:
        as_of = date.fromisoformat(as_of_text) if as_of_text else None
    except ValueError:
        raise InvalidInput("as_of: a date (YYYY-MM-DD)") from None
    rules = Rules(after_days=after, followup_days=followup or None, as_of=as_of)
    include = str(params.get("include_training") or "") in ("1", "true", "on")
    report = feedback.performance(name=name, version=version, rules=rules, window=window,
                                  exclude_training=not include)  # fmt: skip
    versions = [m.version for m in feedback.registry.list(name=name)]
    return PerformanceView(name, report, window, version_text if version else "", followup,
                           after, versions, include)  # fmt: skip


__all__ = ["ModelRow", "PerformanceView", "models_view", "performance_view"]
