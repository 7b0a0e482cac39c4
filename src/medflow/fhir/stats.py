"""Aggregates over the FHIR store for dashboards (the web UI's home page): resources per type
and the most frequent codes of a token parameter, counted in SQL over the index tables.

Index rows describe live resources only (a delete removes them), so the code counts need no
join to ``fhir_resource``.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from medflow.fhir.models import FhirResource, FhirToken


@dataclass(frozen=True)
class CodeCount:
    """A code of a token parameter and how many resources carry it."""

    system: str | None
    code: str
    display: str
    """The coding's display (else the concept's text, else the code) from one resource."""
    count: int


def type_counts(engine: Engine, resource_types: Collection[str]) -> dict[str, int]:
    """Live resources of each of ``resource_types`` (0 for a type with none)."""
    q = (
        select(FhirResource.resource_type, func.count())
        .where(
            FhirResource.resource_type.in_(sorted(set(resource_types))),
            FhirResource.deleted.is_(False),
        )
        .group_by(FhirResource.resource_type)
    )
    with engine.connect() as conn:
        found = {str(t): int(n) for t, n in conn.execute(q)}
    return {t: found.get(t, 0) for t in resource_types}


def _main_system(conn: Any, resource_type: str, param: str) -> tuple[bool, str | None]:
    """The code system with the most index rows of the parameter (a resource coded in SNOMED
    CT and ICD-10 counts once, under the system most resources use); (False, None): no codes."""
    q = (
        select(FhirToken.system, func.count())
        .where(
            FhirToken.resource_type == resource_type,
            FhirToken.param == param,
            FhirToken.code.is_not(None),
        )
        .group_by(FhirToken.system)
        .order_by(func.count().desc(), FhirToken.system)
        .limit(1)
    )
    row = conn.execute(q).first()
    return (False, None) if row is None else (True, row[0])


def _display(content: str | None, system: str | None, code: str) -> str:
    resource = json.loads(content) if content else {}
    concepts = [
        c
        for v in resource.values()
        for c in (v if isinstance(v, list) else [v])
        if isinstance(c, dict) and isinstance(c.get("coding"), list)
    ]
    for value in concepts:
        for coding in value["coding"]:
            if isinstance(coding, dict) and (coding.get("system"), coding.get("code")) == (
                system,
                code,
            ):
                return str(coding.get("display") or value.get("text") or code)
    return code


def code_counts(
    engine: Engine, resource_type: str, param: str = "code", *, limit: int = 10
) -> list[CodeCount]:
    """The ``limit`` most frequent codes of a token search parameter in its main code system,
    most resources first, each with a display read from one resource that has it."""
    with engine.connect() as conn:
        present, system = _main_system(conn, resource_type, param)
        if not present:
            return []
        resources = func.count(func.distinct(FhirToken.resource_pk))
        q = (
            select(FhirToken.code, resources, func.min(FhirToken.resource_pk))
            .where(
                FhirToken.resource_type == resource_type,
                FhirToken.param == param,
                FhirToken.code.is_not(None),
                FhirToken.system.is_(None) if system is None else FhirToken.system == system,
            )
            .group_by(FhirToken.code)
            .order_by(resources.desc(), FhirToken.code)
            .limit(limit)
        )
        rows = conn.execute(q).all()
        pks = [int(r[2]) for r in rows]
        contents = dict(
            conn.execute(
                select(FhirResource.pk, FhirResource.content).where(FhirResource.pk.in_(pks))
            ).all()
        )
    return [
        CodeCount(system, str(code), _display(contents.get(int(pk)), system, str(code)), int(n))
        for code, n, pk in rows
    ]


__all__ = ["CodeCount", "code_counts", "type_counts"]
