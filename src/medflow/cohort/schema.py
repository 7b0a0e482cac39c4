"""Cohort definitions (issue 7): criteria over FHIR R4 resources and the DICOM archive,
combined with ``and``/``or``/``not``, as pydantic v2 models read from JSON or YAML.

A definition is reproducible: its ``evaluation_date`` fixes "now" (ages are as of that date,
time windows are relative to it). Each criterion is an object with exactly one key naming its
kind (``condition``, ``imaging``, ``and``...); an optional ``label`` names it in the
attrition. Errors are reported as ``path: message`` lines (:class:`DefinitionError`).
See ``docs/cohorts.md``.
"""

from __future__ import annotations

import importlib
import json
import re
from calendar import monthrange
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from medflow.core.errors import InvalidInput

SYSTEMS = {
    "icd10": "http://hl7.org/fhir/sid/icd-10-cm",
    "icd10cm": "http://hl7.org/fhir/sid/icd-10-cm",
    "icd-10-cm": "http://hl7.org/fhir/sid/icd-10-cm",
    "snomed": "http://snomed.info/sct",
    "sct": "http://snomed.info/sct",
    "rxnorm": "http://www.nlm.nih.gov/research/umls/rxnorm",
    "loinc": "http://loinc.org",
}
"""Short names of code systems; any other system is written as its full URI."""
OFFSET_RE = re.compile(r"^([+-]?)(\d{1,5})([dwmy])$")


class DefinitionError(InvalidInput):
    """A definition that does not validate; ``errors`` are ``(path, message)`` pairs."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in errors))
        self.errors = errors


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def shift(day: date, offset: str) -> date:
    """``day`` moved by an offset ``[+-]N(d|w|m|y)`` (months and years by the calendar, the
    day clamped to the month's last: 2024-02-29 - 1y = 2023-02-28)."""
    m = OFFSET_RE.match(offset.strip())
    if m is None:
        raise ValueError(f"{offset!r} is not an offset such as 730d, -2y, 6m or 12w")
    sign = -1 if m.group(1) == "-" else 1
    n, unit = sign * int(m.group(2)), m.group(3)
    if unit in "dw":
        return day + timedelta(days=n * (7 if unit == "w" else 1))
    months = day.year * 12 + day.month - 1 + n * (12 if unit == "y" else 1)
    year, month = divmod(months, 12)
    return date(year, month + 1, min(day.day, monthrange(year, month + 1)[1]))


def _bound(value: str) -> str:
    """A window bound: an offset (``-730d``) or an ISO date (``2024-01-01``)."""
    text = value.strip()
    if OFFSET_RE.match(text):
        return text
    try:
        date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is neither an offset (-730d, -2y) nor a date") from None
    return text


class Window(_Model):
    """A time window relative to the evaluation date: ``within: 2y`` (the last two years,
    up to the evaluation date), or ``from``/``to`` offsets (``-730d``, ``0d``) or ISO dates,
    each bound inclusive and optional."""

    within: str | None = None
    from_: str | None = Field(default=None, alias="from")
    to: str | None = None

    @field_validator("within")
    @classmethod
    def _within(cls, value: str | None) -> str | None:
        if value is not None:
            shift(date(2000, 1, 1), value.lstrip("+-"))
        return value

    @field_validator("from_", "to")
    @classmethod
    def _bounds(cls, value: str | None) -> str | None:
        return None if value is None else _bound(value)

    @model_validator(mode="after")
    def _one_form(self) -> Window:
        if self.within is not None and (self.from_ is not None or self.to is not None):
            raise ValueError("give either within or from/to, not both")
        if self.within is None and self.from_ is None and self.to is None:
            raise ValueError("a window needs within, from or to")
        return self

    def resolve(self, today: date) -> tuple[date | None, date | None]:
        """The inclusive (first, last) days of the window as of ``today``."""
        if self.within is not None:
            return shift(today, "-" + self.within.lstrip("+-")), today

        def one(bound: str | None) -> date | None:
            if bound is None:
                return None
            return shift(today, bound) if OFFSET_RE.match(bound) else date.fromisoformat(bound)

        return one(self.from_), one(self.to)


class CodeSet(_Model):
    """Codes of one system: exact ``codes`` and/or ``prefixes`` (ICD-10 ``C40``)."""

    system: str
    codes: list[str] = []
    prefixes: list[str] = []

    @field_validator("system")
    @classmethod
    def _system(cls, value: str) -> str:
        full = SYSTEMS.get(value.strip().lower(), value.strip())
        if ":" not in full:
            known = ", ".join(sorted(SYSTEMS))
            raise ValueError(f"unknown code system {value!r}: use one of {known} or a URI")
        return full

    @model_validator(mode="after")
    def _some(self) -> CodeSet:
        if not self.codes and not self.prefixes:
            raise ValueError("a code set needs codes or prefixes")
        if any(not c.strip() or "," in c or "|" in c for c in [*self.codes, *self.prefixes]):
            raise ValueError("codes and prefixes must be non-empty and hold no ',' or '|'")
        return self


class AgeRange(_Model):
    """Completed years as of the evaluation date, both bounds inclusive."""

    min: int | None = Field(default=None, ge=0, le=150)
    max: int | None = Field(default=None, ge=0, le=150)

    @model_validator(mode="after")
    def _order(self) -> AgeRange:
        if self.min is None and self.max is None:
            raise ValueError("an age range needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self


class Demographics(_Model):
    age: AgeRange | None = None
    gender: list[Literal["male", "female", "other", "unknown"]] = []

    @model_validator(mode="after")
    def _some(self) -> Demographics:
        if self.age is None and not self.gender:
            raise ValueError("demographics need age or gender")
        return self


class ConditionCriterion(_Model):
    codes: list[CodeSet] = Field(min_length=1)
    onset: Window | None = None
    clinical_status: list[str] = []
    verification_status: list[str] = []


class MedicationCriterion(_Model):
    """MedicationRequest and/or MedicationStatement, by code (RxNorm...) or any (presence)."""

    resource: list[Literal["MedicationRequest", "MedicationStatement"]] = Field(
        default=["MedicationRequest"], min_length=1
    )
    codes: list[CodeSet] = []
    status: list[str] = []
    date: Window | None = None
    """authoredOn (requests), effective (statements)."""


class ProcedureCriterion(_Model):
    codes: list[CodeSet] = []
    status: list[str] = []
    date: Window | None = None


class ValueRange(_Model):
    min: float | None = None
    max: float | None = None
    unit: str | None = None
    """A UCUM code or unit as written (``mm``, ``mg/dL``); any unit when absent."""

    @model_validator(mode="after")
    def _some(self) -> ValueRange:
        if self.min is None and self.max is None:
            raise ValueError("a value range needs min or max")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self


class ObservationCriterion(_Model):
    codes: list[CodeSet] = Field(min_length=1)
    value: ValueRange | None = None
    date: Window | None = None


class ReportCriterion(_Model):
    """DiagnosticReport by category code (``RAD``, ``SP``), code and text in its conclusion."""

    category: list[str] = []
    codes: list[CodeSet] = []
    text_contains: str | None = Field(default=None, min_length=1)
    date: Window | None = None


class ImagingCriterion(_Model):
    """Studies in the archive (DICOM index): Modality and Body Part Examined of a series,
    Study Description containing a text, Study Date window, SOP Class UID, and at least
    ``min_instances`` matching instances. ``with_reports``: the DiagnosticReports of the
    matching studies (ACSN identifier = AccessionNumber) are listed too."""

    modality: list[str] = []
    body_part: list[str] = []
    description_contains: str | None = Field(default=None, min_length=1)
    date: Window | None = None
    sop_class: list[str] = []
    min_instances: int | None = Field(default=None, ge=1)
    with_reports: bool = False

    @field_validator("modality", "body_part")
    @classmethod
    def _upper(cls, values: list[str]) -> list[str]:
        return [v.strip().upper() for v in values if v.strip()]

    @field_validator("sop_class")
    @classmethod
    def _uids(cls, values: list[str]) -> list[str]:
        for uid in values:
            if not re.fullmatch(r"[0-9]+(\.[0-9]+)*", uid) or len(uid) > 64:
                raise ValueError(f"{uid!r} is not a UID")
        return values


class DaysRange(_Model):
    min: int | None = None
    max: int | None = None

    @model_validator(mode="after")
    def _order(self) -> DaysRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is greater than max")
        return self


class Temporal(_Model):
    """``event`` happened between ``days_after.min`` and ``days_after.max`` days after an
    ``anchor`` of the same patient (negative: before). Both are dated criteria."""

    anchor: Criterion
    event: Criterion
    days_after: DaysRange

    @model_validator(mode="after")
    def _dated(self) -> Temporal:
        for name, crit in (("anchor", self.anchor), ("event", self.event)):
            if crit.kind in ("demographics", "and", "or", "not", "temporal"):
                raise ValueError(f"{name} must be a dated criterion, not {crit.kind}")
        return self


KINDS = ("demographics", "condition", "medication", "procedure", "observation",
         "diagnostic_report", "imaging", "temporal", "and", "or", "not")  # fmt: skip


class Criterion(_Model):
    """Exactly one of the kinds, and an optional ``label`` for the attrition."""

    label: str | None = None
    demographics: Demographics | None = None
    condition: ConditionCriterion | None = None
    medication: MedicationCriterion | None = None
    procedure: ProcedureCriterion | None = None
    observation: ObservationCriterion | None = None
    diagnostic_report: ReportCriterion | None = None
    imaging: ImagingCriterion | None = None
    temporal: Temporal | None = None
    all_of: Annotated[list[Criterion] | None, Field(alias="and", min_length=1)] = None
    any_of: Annotated[list[Criterion] | None, Field(alias="or", min_length=1)] = None
    none_of: Annotated[Criterion | None, Field(alias="not")] = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Criterion:
        given = [k for k in KINDS if self.body_of(k) is not None]
        if len(given) != 1:
            found = ", ".join(given) or "none"
            raise ValueError(f"a criterion has exactly one of {', '.join(KINDS)} (found {found})")
        return self

    def body_of(self, kind: str) -> Any:
        return getattr(self, {"and": "all_of", "or": "any_of", "not": "none_of"}.get(kind, kind))

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if self.body_of(k) is not None)

    @property
    def body(self) -> Any:
        return self.body_of(self.kind)

    def describe(self) -> str:
        """The label, or the kind with its main parameters in a few words."""
        if self.label:
            return self.label
        body = self.body
        if isinstance(body, Criterion):
            return f"not ({body.describe()})"
        if isinstance(body, BaseModel):
            shown = body.model_dump(exclude_defaults=True, by_alias=True, mode="json")
            return f"{self.kind} {json.dumps(shown, separators=(',', ':'))}"[:120]
        return f"{self.kind} (" + ", ".join(c.describe() for c in body) + ")"


class CohortDefinition(_Model):
    """A cohort: patients meeting every criterion of ``criteria`` (in order, for the
    attrition), and what to ``collect`` for them (criteria that list resources and studies
    without filtering patients)."""

    name: str = Field(min_length=1, max_length=200)
    description: str | None = None
    evaluation_date: date
    criteria: list[Criterion] = Field(min_length=1)
    collect: list[Criterion] = []

    @field_validator("collect")
    @classmethod
    def _leaves(cls, values: list[Criterion]) -> list[Criterion]:
        for crit in values:
            if crit.kind in ("demographics", "and", "or", "not", "temporal"):
                raise ValueError(f"collect lists resources: {crit.kind} is not allowed there")
        return values


Temporal.model_rebuild()
Criterion.model_rebuild()


def _path(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as a dotted path, without the model-validator steps."""
    return ".".join(str(p) for p in loc if not str(p).startswith("function-"))


def parse_definition(data: Any) -> CohortDefinition:
    """Validate a definition (parsed JSON/YAML); :class:`DefinitionError` lists each problem
    as (path, message)."""
    try:
        return CohortDefinition.model_validate(data)
    except ValidationError as exc:
        errors = [(_path(e["loc"]), str(e["msg"]).removeprefix("Value error, "))
                  for e in exc.errors()]  # fmt: skip
        raise DefinitionError(errors) from None


def load_definition(path: Path) -> CohortDefinition:
    """Read a definition from a ``.json`` or ``.yaml``/``.yml`` file."""
    yaml: Any = importlib.import_module("yaml")  # PyYAML (no type stubs installed)
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise DefinitionError([("", f"{path.name} is not valid JSON/YAML: {exc}")]) from None
    return parse_definition(data)


__all__ = [
    "SYSTEMS",
    "CodeSet",
    "CohortDefinition",
    "Criterion",
    "DefinitionError",
    "Window",
    "load_definition",
    "parse_definition",
    "shift",
]
