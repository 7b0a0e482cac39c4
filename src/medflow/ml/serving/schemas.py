"""Pydantic I/O of ``/api/models``: the JSON request body (archive references) and the
answers, so OpenAPI documents them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

UID = r"^[0-9]+(\.[0-9]+)*$"
MAX_REFS = 100
"""References one batch body may hold."""


class StudyRef(BaseModel):
    """Images in the archive: every image of ``study`` (or of its ``series``) that fits the
    model, or exactly the ``instances`` named (each must fit)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"study": "1.2.826.0.1.3680043.8.498.1"},
        {"study": "1.2.826.0.1.3680043.8.498.1", "series": "1.2.826.0.1.3680043.8.498.2",
         "instances": ["1.2.826.0.1.3680043.8.498.3"]},
    ]})  # fmt: skip
    study: str = Field(pattern=UID, max_length=64, description="Study Instance UID")
    series: str | None = Field(None, pattern=UID, max_length=64,
                               description="Series Instance UID (optional)")  # fmt: skip
    instances: list[str] | None = Field(None, min_length=1, max_length=1000,
                                        description="SOP Instance UIDs (optional)")  # fmt: skip


class PredictionOut(BaseModel):
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    frame: int = Field(description="1-based frame number")
    probability: float = Field(description="Binary: of the positive class; else of `label`")
    probabilities: dict[str, float] = Field(description="Every class's probability")
    label: str = Field(description="The most probable class")
    threshold: float | None = Field(description="The binary model's operating point")
    positive: bool | None = Field(description="probability >= threshold")
    model: str
    version: int
    elapsed_ms: float


class PredictResponse(BaseModel):
    model: str
    version: int
    predictions: list[PredictionOut]
    elapsed_ms: float = Field(description="Server time for the whole request's work")


class ModelVersionOut(BaseModel):
    name: str
    version: int
    stage: str = Field(description="none, staging or production")
    architecture: str
    created_at: str
    input_spec: dict[str, Any] = Field(
        description="modality, body_part, size, channels, normalization, classes, features, "
        "history_vocabulary, tabular_width, logit_adjustment"
    )
    metrics: dict[str, Any] = Field(description="Test metrics summary (AUC, CI, operating point)")
    label_set: str | None
    label_set_version: int | None
    code_version: str
    weights_sha256: str


class ModelOut(BaseModel):
    name: str
    production: int | None = Field(description="The version `POST .../predict` uses")
    latest: int
    versions: list[ModelVersionOut]
