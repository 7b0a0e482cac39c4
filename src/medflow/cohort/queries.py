"""Criteria as plain R4 searches and archive queries (pure: no I/O).

A FHIR criterion becomes one :class:`FhirQuery` per resource type: the search parameters
(code sets as ``system|code`` lists, windows as ``ge``/``le`` date bounds, statuses), which
reference parameter names the patient and which date parameter dates the event. Code prefixes
are resolved by the caller (the index knows which codes exist) and passed in ``prefixed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from medflow.cohort.schema import (
    CodeSet,
    ConditionCriterion,
    Demographics,
    ImagingCriterion,
    MedicationCriterion,
    ObservationCriterion,
    ProcedureCriterion,
    ReportCriterion,
    Window,
    shift,
)

Resolve = Callable[[str, str, CodeSet], list[str]]
"""(resource type, parameter, code set) -> the set's codes as ``system|code`` values."""


@dataclass(frozen=True)
class FhirQuery:
    resource_type: str
    params: tuple[tuple[str, str], ...]
    subject_param: str = "subject"
    date_param: str | None = None
    empty: bool = False
    """A code set resolved to no code at all: nothing can match (no search is made)."""


def window_params(param: str, window: Window | None, today: date) -> list[tuple[str, str]]:
    """``param=geFIRST&param=leLAST`` for a window (inclusive days)."""
    if window is None:
        return []
    first, last = window.resolve(today)
    out = []
    if first is not None:
        out.append((param, f"ge{first.isoformat()}"))
    if last is not None:
        out.append((param, f"le{last.isoformat()}"))
    return out


def code_param(
    resource_type: str, param: str, codes: Sequence[CodeSet], resolve: Resolve
) -> tuple[list[tuple[str, str]], bool]:
    """(``param=s|c,s|c...``, whether the sets resolved to nothing); no sets: no parameter."""
    if not codes:
        return [], False
    values = [v for code_set in codes for v in resolve(resource_type, param, code_set)]
    if not values:
        return [], True
    return [(param, ",".join(dict.fromkeys(values)))], False


def demographics_params(body: Demographics, today: date) -> list[tuple[str, str]]:
    """Patient search parameters: age in completed years as of ``today`` as birth date
    bounds (age >= N: born on or before today - N years; age <= M: born after
    today - (M + 1) years), and gender."""
    params: list[tuple[str, str]] = []
    if body.age is not None and body.age.min is not None:
        params.append(("birthdate", f"le{shift(today, f'-{body.age.min}y').isoformat()}"))
    if body.age is not None and body.age.max is not None:
        earliest = shift(today, f"-{body.age.max + 1}y") + timedelta(days=1)
        params.append(("birthdate", f"ge{earliest.isoformat()}"))
    if body.gender:
        params.append(("gender", ",".join(body.gender)))
    return params


def _status(param: str, values: Sequence[str]) -> list[tuple[str, str]]:
    return [(param, ",".join(values))] if values else []


def fhir_queries(body: Any, today: date, resolve: Resolve) -> list[FhirQuery]:
    """The searches of a FHIR criterion (condition, medication, procedure, observation,
    diagnostic_report); their matches are the criterion's."""
    if isinstance(body, ConditionCriterion):
        return [_one("Condition", "onset-date", body.onset, today, resolve, body.codes,
                     _status("clinical-status", body.clinical_status)
                     + _status("verification-status", body.verification_status))]  # fmt: skip
    if isinstance(body, MedicationCriterion):
        dates = {"MedicationRequest": "authoredon", "MedicationStatement": "effective"}
        return [_one(rtype, dates[rtype], body.date, today, resolve, body.codes,
                     _status("status", body.status)) for rtype in body.resource]  # fmt: skip
    if isinstance(body, ProcedureCriterion):
        return [_one("Procedure", "date", body.date, today, resolve, body.codes,
                     _status("status", body.status))]  # fmt: skip
    if isinstance(body, ObservationCriterion):
        return [_one("Observation", "date", body.date, today, resolve, body.codes,
                     value_params(body))]  # fmt: skip
    if isinstance(body, ReportCriterion):
        return [_one("DiagnosticReport", "date", body.date, today, resolve, body.codes,
                     _status("category", body.category))]  # fmt: skip
    raise TypeError(f"not a FHIR criterion: {type(body).__name__}")


def _one(
    resource_type: str,
    date_param: str,
    window: Window | None,
    today: date,
    resolve: Resolve,
    codes: Sequence[CodeSet],
    extra: list[tuple[str, str]],
) -> FhirQuery:
    coded, empty = code_param(resource_type, "code", codes, resolve)
    params = (*coded, *window_params(date_param, window, today), *extra)
    return FhirQuery(resource_type, params, date_param=date_param, empty=empty)


def value_params(body: ObservationCriterion) -> list[tuple[str, str]]:
    """``value-quantity=geMIN[||unit]&value-quantity=leMAX[||unit]``."""
    if body.value is None:
        return []
    unit = f"||{body.value.unit}" if body.value.unit else ""
    out = []
    if body.value.min is not None:
        out.append(("value-quantity", f"ge{body.value.min:g}{unit}"))
    if body.value.max is not None:
        out.append(("value-quantity", f"le{body.value.max:g}{unit}"))
    return out


def imaging_keys(body: ImagingCriterion, today: date) -> dict[str, Any]:
    """Keyword arguments of ``StoreService.find_studies`` for an imaging criterion."""
    first, last = body.date.resolve(today) if body.date is not None else (None, None)
    return {
        "modalities": body.modality,
        "body_parts": body.body_part,
        "date_from": first.strftime("%Y%m%d") if first else None,
        "date_to": last.strftime("%Y%m%d") if last else None,
        "description_contains": body.description_contains,
        "sop_classes": body.sop_class,
    }


def report_text(resource: dict[str, Any]) -> str:
    """The words of a DiagnosticReport a ``text_contains`` looks in, lower case: conclusion,
    code text and displays, conclusion code displays, presented forms' titles."""
    parts = [str(resource.get("conclusion") or "")]
    concepts = [resource.get("code") or {}, *(resource.get("conclusionCode") or [])]
    for concept in concepts:
        parts.append(str(concept.get("text") or ""))
        parts.extend(str(c.get("display") or "") for c in concept.get("coding") or [])
    parts.extend(str(f.get("title") or "") for f in resource.get("presentedForm") or [])
    return " ".join(parts).lower()


__all__ = [
    "FhirQuery",
    "Resolve",
    "code_param",
    "demographics_params",
    "fhir_queries",
    "imaging_keys",
    "report_text",
    "value_params",
    "window_params",
]
