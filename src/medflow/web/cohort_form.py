"""The cohort builder's form (``/cohorts/new``) as data: :func:`form_definition` is the
definition the form's fields make (``static/cohorts.js`` builds the same one in the browser),
:func:`form_fields` the fields that show a saved definition (``/cohorts/new?from=ID``, to edit
it into a new version).

A saved definition is shown in the form only when the form makes it back exactly (criterion
labels aside): criteria the form has no field for (statuses, procedures, temporal relations,
``not``...) are never dropped silently; such a cohort is edited as JSON/YAML through the API or
the CLI, and the page says why."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from medflow.cohort.schema import (
    SYSTEMS,
    CohortDefinition,
    Criterion,
    DefinitionError,
    parse_definition,
)

FORM_SYSTEMS = {"icd10": SYSTEMS["icd10"], "snomed": SYSTEMS["snomed"]}
"""The builder's condition code systems (form value -> system URI)."""
FIELDS = ("name", "evaluation_date", "combine", "age_min", "age_max", "gender",
          "condition_system", "condition_codes", "condition_prefixes", "onset_within",
          "onset_from", "onset_to", "medication_codes", "modality", "imaging_from",
          "imaging_to")  # fmt: skip
ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
STUDIES = {"label": "studies", "imaging": {}}
"""What the builder collects: every patient's studies."""


def _split(text: str) -> list[str]:
    return [x for x in text.replace(",", " ").replace(";", " ").split() if x]


def _window(fields: Mapping[str, str], start: str, end: str) -> dict[str, str] | None:
    out = {k: fields[n].strip() for k, n in (("from", start), ("to", end)) if fields.get(n, "")}
    return out or None


def _criteria(f: Mapping[str, str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    age = {k: int(f[n]) for k, n in (("min", "age_min"), ("max", "age_max")) if f.get(n, "")}
    if age:
        out.append({"label": f"age {age.get('min', '')}-{age.get('max', '')}",
                    "demographics": {"age": age}})  # fmt: skip
    if f.get("gender"):
        out.append({"label": f"gender {f['gender']}", "demographics": {"gender": [f["gender"]]}})
    codes, prefixes = _split(f.get("condition_codes", "")), _split(f.get("condition_prefixes", ""))
    if codes or prefixes:
        system = f.get("condition_system") or "icd10"
        body: dict[str, Any] = {"codes": [{"system": system, "codes": codes, "prefixes": prefixes}]}
        onset = _window(f, "onset_from", "onset_to")
        if f.get("onset_within", "").strip():
            onset = {"within": f["onset_within"].strip()}
        if onset:
            body["onset"] = onset
        shown = ", ".join([*codes, *(f"{p}*" for p in prefixes)])
        out.append({"label": f"diagnosis {system} {shown}", "condition": body})
    medications = _split(f.get("medication_codes", ""))
    if medications:
        codes_of = [{"system": "rxnorm", "codes": medications}]
        out.append({"label": f"medication rxnorm {', '.join(medications)}",
                    "medication": {"codes": codes_of}})  # fmt: skip
    window = _window(f, "imaging_from", "imaging_to")
    if f.get("modality") or window:
        imaging: dict[str, Any] = {}
        if f.get("modality"):
            imaging["modality"] = [f["modality"]]
        if window:
            imaging["date"] = window
        out.append({"label": f"imaging {f.get('modality') or 'any'}", "imaging": imaging})
    return out


def form_definition(fields: Mapping[str, str]) -> dict[str, Any] | None:
    """The definition (JSON) the builder's ``fields`` make, as ``cohorts.js`` makes it;
    ``None`` when no criterion is filled in."""
    criteria = _criteria(fields)
    if not criteria:
        return None
    top = [{"or": criteria}] if fields.get("combine") == "or" and len(criteria) > 1 else criteria
    return {"name": fields.get("name") or "new cohort",
            "evaluation_date": fields.get("evaluation_date", ""),
            "criteria": top, "collect": [STUDIES]}  # fmt: skip


def _day(bound: str | None) -> str:
    """A window bound for a date input: an ISO date, else "" (offsets have no date field)."""
    return bound if bound is not None and ISO_DAY.fullmatch(bound) else ""


def _leaf_fields(crit: Criterion, out: dict[str, str]) -> None:
    """Fill ``out`` from one criterion the form may show (the round trip checks the rest)."""
    kind, body = crit.kind, crit.body
    if kind == "demographics":
        if body.age is not None:
            out["age_min"] = "" if body.age.min is None else str(body.age.min)
            out["age_max"] = "" if body.age.max is None else str(body.age.max)
        if len(body.gender) == 1:
            out["gender"] = body.gender[0]
    elif kind == "condition" and len(body.codes) == 1:
        code_set = body.codes[0]
        out["condition_system"] = next(
            (k for k, v in FORM_SYSTEMS.items() if v == code_set.system), ""
        )
        out["condition_codes"] = ", ".join(code_set.codes)
        out["condition_prefixes"] = ", ".join(code_set.prefixes)
        if body.onset is not None:
            out["onset_within"] = body.onset.within or ""
            out["onset_from"], out["onset_to"] = _day(body.onset.from_), _day(body.onset.to)
    elif kind == "medication" and len(body.codes) == 1:
        out["medication_codes"] = ", ".join(body.codes[0].codes)
    elif kind == "imaging":
        out["modality"] = body.modality[0] if len(body.modality) == 1 else ""
        if body.date is not None:
            out["imaging_from"], out["imaging_to"] = _day(body.date.from_), _day(body.date.to)


def _unlabelled(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unlabelled(v) for k, v in value.items() if k != "label"}
    if isinstance(value, list):
        return [_unlabelled(v) for v in value]
    return value


def _canonical(definition: CohortDefinition) -> str:
    shown = definition.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    shown.pop("name", None), shown.pop("description", None)
    return json.dumps(_unlabelled(shown), sort_keys=True)


def form_fields(definition: CohortDefinition) -> tuple[dict[str, str] | None, str | None]:
    """The builder's fields showing ``definition``, or ``(None, why)`` when the form cannot
    make that definition back exactly."""
    fields = dict.fromkeys(FIELDS, "")
    fields.update(name=definition.name, evaluation_date=definition.evaluation_date.isoformat(),
                  combine="and", condition_system="icd10")  # fmt: skip
    leaves = list(definition.criteria)
    if len(leaves) == 1 and leaves[0].kind == "or":
        fields["combine"], leaves = "or", list(leaves[0].body)
    kinds = [c.kind for c in leaves]
    for kind in ("condition", "medication", "imaging"):
        if kinds.count(kind) > 1:
            return None, f"it has {kinds.count(kind)} {kind} criteria; the form has one"
    for crit in leaves:
        _leaf_fields(crit, fields)
    why = "it uses criteria or options the form has no field for"
    rebuilt = form_definition(fields)
    if rebuilt is None:
        return None, why
    try:
        same = _canonical(parse_definition(rebuilt)) == _canonical(definition)
    except DefinitionError:
        same = False
    return (fields, None) if same else (None, why)


__all__ = ["FIELDS", "FORM_SYSTEMS", "form_definition", "form_fields"]
