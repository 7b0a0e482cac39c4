"""Tracked cohorts (issue 7): definitions saved under a name with versions, runs stored with
what they found, and the difference between two runs (who entered, who left).

- **Versions.** A definition is kept as canonical JSON (defaults left out, keys sorted) and
  its SHA-256. Saving under a name that exists adds version n + 1 when the definition differs
  from the latest version; the same definition again returns the latest version unchanged.
- **Runs.** A run evaluates a version (the latest unless told) as of the definition's
  evaluation date or an ``as_of`` date, and stores the evaluation date (so that it can be
  reproduced), the time it ran, the patients with their matching resources and studies, and
  the attrition. After each run the cohort's FHIR ``Group`` (``cohort-<id>``: type person,
  actual, identifier ``urn:medflow:cohort|<name>/<version>``, one member per patient) is
  written through :class:`~medflow.fhir.service.FhirService`, so that
  ``GET /fhir/Group/cohort-<id>/$export`` exports the cohort's data.
- **Diffs.** Two runs of a cohort compared by Patient id (by default the last two).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from medflow.cohort.models import Cohort, CohortRun, CohortVersion
from medflow.cohort.results import CohortResult
from medflow.cohort.schema import CohortDefinition, DefinitionError, parse_definition
from medflow.cohort.service import MRN_SYSTEM, CohortService
from medflow.core.errors import InvalidInput, NotFound
from medflow.db.engine import write_session
from medflow.fhir.service import FhirService

log = logging.getLogger(__name__)
COHORT_SYSTEM = "urn:medflow:cohort"
"""Identifier system of the cohorts' FHIR Groups (value ``<name>/<version>``)."""


def group_id(cohort_id: int) -> str:
    """The FHIR id of a cohort's Group."""
    return f"cohort-{cohort_id}"


def canonical(definition: CohortDefinition) -> dict[str, Any]:
    """The definition as plain JSON values, defaults left out (what is stored)."""
    data: dict[str, Any] = definition.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    return data


def _digest(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def parse_text(text: str | bytes) -> CohortDefinition:
    """A definition from JSON or YAML text (:class:`DefinitionError` with paths otherwise)."""
    yaml: Any = importlib.import_module("yaml")  # PyYAML (no type stubs installed)
    try:
        data = yaml.safe_load(text)  # YAML 1.2 reads JSON documents too
    except (ValueError, yaml.YAMLError) as exc:
        raise DefinitionError([("", f"the body is not valid JSON or YAML: {exc}")]) from None
    return parse_definition(data)


def _now() -> datetime:
    return datetime.now(UTC)


# -- records -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Saved:
    id: int
    name: str
    version: int
    created: bool
    """True when this save made a new version (or a new cohort)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: datetime
    digest: str
    definition: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "created_at": self.created_at.isoformat(),
                "digest": self.digest, "definition": self.definition}  # fmt: skip


@dataclass(frozen=True)
class RunInfo:
    id: int
    cohort_id: int
    version: int
    evaluation_date: date
    as_of: date | None
    """The date the run was asked to evaluate as of (None: the definition's)."""
    run_at: datetime
    elapsed_s: float
    patient_count: int
    attrition: list[dict[str, Any]]
    patients: list[dict[str, Any]] | None = None
    """``{"id", "mrn", "resources", "studies"}`` per patient (None in run lists)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["evaluation_date"] = self.evaluation_date.isoformat()
        out["as_of"] = None if self.as_of is None else self.as_of.isoformat()
        out["run_at"] = self.run_at.isoformat()
        if self.patients is None:
            del out["patients"]
        return out


@dataclass(frozen=True)
class CohortInfo:
    id: int
    name: str
    version: int
    """The latest version."""
    created_at: datetime
    updated_at: datetime
    runs: int
    last_run: RunInfo | None
    group: str
    """The FHIR Group's id (it exists once the cohort has run)."""
    versions: list[VersionInfo] | None = None
    """Every version, oldest first (None in lists)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "name": self.name, "version": self.version,
            "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat(),
            "runs": self.runs, "group": self.group,
            "last_run": None if self.last_run is None else self.last_run.to_dict(),
        }  # fmt: skip
        if self.versions is not None:
            out["definition"] = self.versions[-1].definition
            out["versions"] = [v.to_dict() for v in self.versions]
        return out


@dataclass(frozen=True)
class RunDiff:
    cohort_id: int
    from_run: int | None
    """None: there was no run before (everyone entered)."""
    to_run: int
    entered: list[dict[str, str | None]]
    """``{"id", "mrn"}`` of the patients in ``to_run`` and not in ``from_run``."""
    left: list[dict[str, str | None]]
    stayed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunOutcome:
    run: RunInfo
    diff: RunDiff
    """Against the cohort's run before this one."""
    name: str
    group: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, **self.run.to_dict(),
                "changes": self.diff.to_dict()}  # fmt: skip


def _patients_json(result: CohortResult) -> list[dict[str, Any]]:
    return result.to_dict()["patients"]  # type: ignore[no-any-return]


def _run_info(row: CohortRun, *, full: bool = False) -> RunInfo:
    return RunInfo(
        id=row.id, cohort_id=row.cohort_id, version=row.version,
        evaluation_date=row.evaluation_date, as_of=row.as_of, run_at=row.run_at,
        elapsed_s=row.elapsed_s, patient_count=row.patient_count,
        attrition=json.loads(row.attrition), patients=json.loads(row.patients) if full else None,
    )  # fmt: skip


def group_resource(
    cohort_id: int, name: str, version: int, evaluation_date: date, patients: Sequence[str]
) -> dict[str, Any]:
    """The R4 Group of a cohort run: type person, actual, the patients as members."""
    group: dict[str, Any] = {
        "resourceType": "Group",
        "id": group_id(cohort_id),
        "identifier": [{"system": COHORT_SYSTEM, "value": f"{name}/{version}"}],
        "active": True,
        "type": "person",
        "actual": True,
        "name": f"cohort {name}, version {version}, as of {evaluation_date.isoformat()}",
        "quantity": len(patients),
    }
    if patients:  # R4: no empty arrays
        group["member"] = [{"entity": {"reference": f"Patient/{p}"}} for p in sorted(patients)]
    return group


class CohortTracker:
    """Saves, versions, runs and compares cohorts; each run updates the cohort's FHIR Group."""

    def __init__(self, *, engine: Engine, cohorts: CohortService, fhir: FhirService) -> None:
        self.engine = engine
        self.cohorts = cohorts
        self.fhir = fhir

    # -- definitions -------------------------------------------------------------------------
    def save(self, *, definition: CohortDefinition, name: str | None = None) -> Saved:
        """Save ``definition`` under ``name`` (default: the definition's): a new cohort, a new
        version when it differs from the latest, or the latest version when it does not."""
        data = canonical(definition)
        if name is not None:
            data = canonical(parse_definition({**data, "name": name}))
        cohort_name = str(data["name"])
        if cohort_name.isascii() and cohort_name.isdigit():
            raise DefinitionError([("name", "a cohort name must not be only digits (an id)")])
        digest = _digest(data)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        for attempt in range(3):  # two first saves (or new versions) at once: one retries
            try:
                return self._save(cohort_name, text, digest)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _save(self, name: str, text: str, digest: str) -> Saved:
        now = _now()
        with write_session(self.engine) as s:
            cohort = s.scalar(select(Cohort).where(Cohort.name == name))
            if cohort is None:
                cohort = Cohort(name=name, created_at=now, updated_at=now)
                s.add(cohort)
                s.flush()
            latest = self._latest_version(s, cohort.id)
            if latest is not None and latest.digest == digest:
                return Saved(cohort.id, name, latest.version, created=False)
            version = 1 if latest is None else latest.version + 1
            s.add(CohortVersion(cohort_id=cohort.id, version=version, definition=text,
                                digest=digest, created_at=now))  # fmt: skip
            cohort.updated_at = now
            s.commit()
            log.info("cohort %d saved as version %d", cohort.id, version)
            return Saved(cohort.id, name, version, created=True)

    @staticmethod
    def _latest_version(s: Session, cohort_id: int) -> CohortVersion | None:
        return s.scalar(select(CohortVersion).where(CohortVersion.cohort_id == cohort_id)
                        .order_by(CohortVersion.version.desc()).limit(1))  # fmt: skip

    @staticmethod
    def _cohort(s: Session, ref: int | str) -> Cohort:
        """A cohort by id (an int or digits) or by name."""
        text = str(ref).strip()
        where = Cohort.id == int(text) if _is_id(text) else Cohort.name == text
        cohort = s.scalar(select(Cohort).where(where))
        if cohort is None:
            raise NotFound(f"no cohort {text!r}")
        return cohort

    def definition(self, *, ref: int | str, version: int | None = None) -> CohortDefinition:
        """A version's definition (default: the latest)."""
        with Session(self.engine) as s:
            return parse_definition(json.loads(self._version(s, ref, version)[1].definition))

    def _version(
        self, s: Session, ref: int | str, version: int | None
    ) -> tuple[Cohort, CohortVersion]:
        cohort = self._cohort(s, ref)
        if version is None:
            row = self._latest_version(s, cohort.id)
        else:
            where = (CohortVersion.cohort_id == cohort.id, CohortVersion.version == version)
            row = s.scalar(select(CohortVersion).where(*where))
        if row is None:
            raise NotFound(f"cohort {cohort.id} has no version {version}")
        return cohort, row

    # -- reading -----------------------------------------------------------------------------
    def list_cohorts(self) -> list[CohortInfo]:
        """Every cohort with its latest version and last run, by name."""
        with Session(self.engine) as s:
            cohorts = s.scalars(select(Cohort).order_by(Cohort.name)).all()
            return [self._info(s, c, versions=False) for c in cohorts]

    def show(self, *, ref: int | str) -> CohortInfo:
        """A cohort with every version (definitions) and its last run (without patients)."""
        with Session(self.engine) as s:
            return self._info(s, self._cohort(s, ref), versions=True)

    def _info(self, s: Session, cohort: Cohort, *, versions: bool) -> CohortInfo:
        rows = s.scalars(select(CohortVersion).where(CohortVersion.cohort_id == cohort.id)
                         .order_by(CohortVersion.version)).all()  # fmt: skip
        runs = s.scalar(select(func.count()).where(CohortRun.cohort_id == cohort.id)) or 0
        last = s.scalar(select(CohortRun).where(CohortRun.cohort_id == cohort.id)
                        .order_by(CohortRun.id.desc()).limit(1))  # fmt: skip
        infos = [VersionInfo(v.version, v.created_at, v.digest, json.loads(v.definition))
                 for v in rows] if versions else None  # fmt: skip
        return CohortInfo(
            id=cohort.id, name=cohort.name, version=rows[-1].version if rows else 0,
            created_at=cohort.created_at, updated_at=cohort.updated_at, runs=runs,
            last_run=None if last is None else _run_info(last), group=group_id(cohort.id),
            versions=infos,
        )  # fmt: skip

    def runs(self, *, ref: int | str) -> list[RunInfo]:
        """The cohort's runs, newest first (without patients)."""
        with Session(self.engine) as s:
            cohort = self._cohort(s, ref)
            rows = s.scalars(select(CohortRun).where(CohortRun.cohort_id == cohort.id)
                             .order_by(CohortRun.id.desc())).all()  # fmt: skip
            return [_run_info(r) for r in rows]

    def get_run(self, *, ref: int | str, run_id: int) -> RunInfo:
        """One run of the cohort with its patients."""
        with Session(self.engine) as s:
            return _run_info(self._run_row(s, self._cohort(s, ref), run_id), full=True)

    @staticmethod
    def _run_row(s: Session, cohort: Cohort, run_id: int) -> CohortRun:
        row = s.get(CohortRun, run_id)
        if row is None or row.cohort_id != cohort.id:
            raise NotFound(f"cohort {cohort.id} has no run {run_id}")
        return row

    # -- running -----------------------------------------------------------------------------
    def evaluate(self, *, definition: CohortDefinition, as_of: date | None = None) -> CohortResult:
        """Evaluate without saving anything (as of ``as_of`` when given)."""
        if as_of is not None:
            definition = definition.model_copy(update={"evaluation_date": as_of})
        return self.cohorts.evaluate(definition)

    def run(
        self, *, ref: int | str, as_of: date | None = None, version: int | None = None
    ) -> RunOutcome:
        """Evaluate a version (default: the latest) as of its evaluation date or ``as_of``,
        store the run, write the cohort's Group, and compare with the run before."""
        with Session(self.engine) as s:
            cohort, row = self._version(s, ref, version)
            cohort_id, name, number = cohort.id, cohort.name, row.version
            definition = parse_definition(json.loads(row.definition))
        result = self.evaluate(definition=definition, as_of=as_of)
        patients = _patients_json(result)
        with write_session(self.engine) as s:
            run = CohortRun(
                cohort_id=cohort_id, version=number, evaluation_date=result.evaluation_date,
                as_of=as_of, run_at=_now(), elapsed_s=result.elapsed_s,
                patient_count=len(patients),
                patients=json.dumps(patients, separators=(",", ":")),
                attrition=json.dumps(result.to_dict()["attrition"], separators=(",", ":")),
            )  # fmt: skip
            s.add(run)
            s.commit()
            info = _run_info(run, full=True)
        group = group_resource(cohort_id, name, number, result.evaluation_date,
                               [p.patient_id for p in result.patients])  # fmt: skip
        self.fhir.update(resource_type="Group", res_id=group_id(cohort_id), resource=group)
        diff = self.diff(ref=cohort_id, to_run=info.id)
        return RunOutcome(info, diff, name, group_id(cohort_id))

    # -- comparing ---------------------------------------------------------------------------
    def diff(
        self, *, ref: int | str, from_run: int | None = None, to_run: int | None = None
    ) -> RunDiff:
        """Who entered and who left between two runs of a cohort: by default the last run
        and the one before it; ``to_run`` alone compares it with the run before it."""
        with Session(self.engine) as s:
            cohort = self._cohort(s, ref)
            if to_run is None:
                last = s.scalar(select(CohortRun.id).where(CohortRun.cohort_id == cohort.id)
                                .order_by(CohortRun.id.desc()).limit(1))  # fmt: skip
                if last is None:
                    raise NotFound(f"cohort {cohort.id} has not run yet")
                to_run = last
            new = self._run_row(s, cohort, to_run)
            if from_run is None:
                from_run = s.scalar(select(CohortRun.id).where(
                    CohortRun.cohort_id == cohort.id, CohortRun.id < new.id)
                    .order_by(CohortRun.id.desc()).limit(1))  # fmt: skip
            old = None if from_run is None else self._run_row(s, cohort, from_run)
            return _compare(cohort.id, old, new)


def _compare(cohort_id: int, old: CohortRun | None, new: CohortRun) -> RunDiff:
    before = {p["id"]: p.get("mrn") for p in json.loads(old.patients)} if old else {}
    after = {p["id"]: p.get("mrn") for p in json.loads(new.patients)}

    def rows(ids: set[str], mrns: dict[str, Any]) -> list[dict[str, str | None]]:
        out = [{"id": pid, "mrn": mrns.get(pid)} for pid in ids]
        return sorted(out, key=lambda p: (p["mrn"] or "", p["id"] or ""))

    return RunDiff(
        cohort_id=cohort_id, from_run=None if old is None else old.id, to_run=new.id,
        entered=rows(set(after) - set(before), after), left=rows(set(before) - set(after), before),
        stayed=len(set(after) & set(before)),
    )  # fmt: skip


def as_of_date(value: str | None) -> date | None:
    """An ``--as-of``/``as_of`` value (ISO date) or None."""
    if value is None or not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise InvalidInput(f"as_of {value!r} is not an ISO date (YYYY-MM-DD)") from None


__all__ = [
    "COHORT_SYSTEM",
    "MRN_SYSTEM",
    "CohortInfo",
    "CohortTracker",
    "RunDiff",
    "RunInfo",
    "RunOutcome",
    "Saved",
    "VersionInfo",
    "as_of_date",
    "canonical",
    "group_id",
    "group_resource",
    "parse_text",
]


def _is_id(text: str) -> bool:
    """A cohort id: ASCII digits that fit a 64-bit integer (else the text is a name)."""
    return text.isascii() and text.isdigit() and len(text) < 19
