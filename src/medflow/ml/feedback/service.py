"""The feedback loop (issue 11): how a model, and each reader, did against what happened
later, and outcomes turned into training labels.

Everything is read through public services, never private tables: the AI results are the
FHIR RiskAssessments triage wrote (identifier ``urn:medflow:ai-result|<study>/<model:v>``,
``method`` the model, ``prediction[0]`` the finding code, its probability and
``qualitativeRisk`` high/low at the model's operating point), the readers' findings the
worklist Observations, the outcomes FHIR Conditions and pathology reports
(:mod:`medflow.ml.feedback.outcomes`), the study dates the archive's (QIDO-RS matching).

:meth:`Feedback.performance` evaluates every prediction of a model (all versions, or one)
whose study has an outcome: confusion matrix at the operating point, sensitivity,
specificity, PPV, NPV, AUC with a patient-bootstrap 95% CI, per version and per period of
the study date (month, quarter or year), the false positives and false negatives with
links to their images; and the same for each reader, against outcomes other than readings.

:meth:`Feedback.outcome_labels` writes each decided outcome (pathology or condition; by
choice also follow-up) into the model's label set as a KOS whose observer is the device
"medflow outcome" (the label's provenance), so ``medflow train --retrain`` finds them.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from medflow.core.errors import InvalidInput, MedflowError, NotFound
from medflow.dicom.attributes import da_date
from medflow.fhir.service import FhirService
from medflow.labels.readers import KIND_OF
from medflow.labels.schemas import LabelRequest
from medflow.labels.service import LabelService
from medflow.ml.feedback.outcomes import (
    Fact,
    Outcome,
    Read,
    Rules,
    decide,
    facts_for,
    fhir_day,
    group_by,
    patient_id,
    reads_of,
    search_all,
)
from medflow.ml.registry.service import ModelRegistry
from medflow.ml.train.metrics import bootstrap_auc_ci, roc_auc
from medflow.store.service import StoreService

log = logging.getLogger(__name__)
MODEL_SYSTEM = "urn:medflow:model"
"""The ``RiskAssessment.method`` system of medflow's models (``ml.triage.results``)."""
AI_RESULT_SYSTEM = "urn:medflow:ai-result"
WINDOWS = ("month", "quarter", "year")
OUTCOME_OBSERVER = "medflow outcome"
CASES = 200
"""At most this many false positives (and as many false negatives) listed."""


@dataclass(frozen=True)
class Prediction:
    study_uid: str
    patient: str
    """The FHIR Patient's logical id."""
    model: str
    version: int
    probability: float
    positive: bool
    """Above the model's operating point (``qualitativeRisk`` high)."""
    system: str
    code: str
    meaning: str
    scored_at: date | None
    reference: str
    study_day: date | None = None
    patient_mrn: str = ""


@dataclass(frozen=True)
class Judged:
    prediction: Prediction
    outcome: Outcome


def confusion(truth: Sequence[bool], called: Sequence[bool], scores: Sequence[float] | None,
              groups: Sequence[str] | None = None, *, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Counts and rates of ``called`` against ``truth``; with ``scores`` the AUC and its
    95% CI (bootstrap over ``groups``, the patients, when given)."""
    t = np.asarray(truth, dtype=bool)
    c = np.asarray(called, dtype=bool)
    tp, fp = int((t & c).sum()), int((~t & c).sum())
    fn, tn = int((t & ~c).sum()), int((~t & ~c).sum())

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 6) if b else None

    out: dict[str, Any] = {
        "n": len(t), "positives": int(t.sum()), "negatives": int((~t).sum()),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn),
        "accuracy": ratio(tp + tn, len(t)),
    }  # fmt: skip
    if scores is not None:
        y = t.astype(np.int64)
        s = np.asarray(scores, dtype=np.float64)
        auc = roc_auc(y, s) if len(y) else float("nan")
        lo, hi = (bootstrap_auc_ci(y, s, n=500, seed=seed, groups=groups)
                  if not np.isnan(auc) else (float("nan"), float("nan")))  # fmt: skip
        out["auc"] = None if np.isnan(auc) else round(float(auc), 6)
        out["auc_ci95"] = [None if np.isnan(v) else round(float(v), 6) for v in (lo, hi)]
    return out


def period(day: date | None, window: str) -> str:
    if day is None:
        return "unknown"
    if window == "year":
        return f"{day.year}"
    if window == "quarter":
        return f"{day.year}-Q{(day.month - 1) // 3 + 1}"
    return f"{day.year}-{day.month:02d}"


class Feedback:
    """Performance of models and readers against outcomes (keyword-only arguments)."""

    def __init__(
        self, *, fhir: FhirService, store: StoreService, registry: ModelRegistry,
        labels: LabelService, manifests: Path | None = None,
    ) -> None:  # fmt: skip
        self.fhir = fhir
        self.store = store
        self.registry = registry
        self.labels = labels
        self.manifests = manifests
        """Where training keeps its manifests (``<data_dir>/ml/manifests``): a version's
        training and validation studies are found there and left out of its performance."""

    def trained_on(self, *, name: str, version: int) -> set[str] | None:
        """The studies version ``version`` was trained or validated on (its manifest's train
        and val rows); None when the manifest is not at hand."""
        info = self.registry.get(name=name, version=version)
        manifest = str(info.lineage.get("manifest") or "")
        if self.manifests is None or not manifest or "/" in manifest:
            return None
        path = self.manifests / manifest
        if not path.is_file():
            return None
        import pyarrow.parquet as pq  # type: ignore[import-untyped]

        table = pq.read_table(path, columns=["study_uid", "split"]).to_pylist()
        return {str(r["study_uid"]) for r in table if r["split"] in ("train", "val")}

    # -- what was predicted -----------------------------------------------------------------
    def predictions(self, *, name: str, version: int | None = None) -> list[Prediction]:
        """The AI results of model ``name`` (a version, or all) in FHIR, with their studies'
        dates from the archive; a study scored again by the same version counts once."""
        versions = [m.version for m in self.registry.list(name=name)]
        if not versions:
            raise NotFound(f"no model {name}")
        if version is not None:
            if version not in versions:
                raise NotFound(f"no model {name}:{version}")
            versions = [version]
        found: dict[tuple[str, int], Prediction] = {}
        for v in versions:
            for r in search_all(self.fhir, "RiskAssessment",
                                [("method", f"{MODEL_SYSTEM}|{name}:{v}")]):  # fmt: skip
                p = _prediction(r, name, v)
                if p is not None:
                    found[(p.study_uid, v)] = p
        uids = sorted({p.study_uid for p in found.values()})
        studies = {m.study_uid: m for m in self.store.find_studies(study_uids=uids)} if uids else {}
        out = []
        for p in found.values():
            match = studies.get(p.study_uid)
            if match is None:
                continue  # the study left the archive
            day = da_date(match.study_date) or p.scored_at
            out.append(replace(p, study_day=day, patient_mrn=match.patient_id or ""))
        return sorted(out, key=lambda p: (p.study_day or date.min, p.study_uid, p.version))

    # -- how it went ------------------------------------------------------------------------
    def judge(
        self, predictions: Sequence[Prediction], rules: Rules
    ) -> tuple[list[Judged], list[Read], dict[str, list[Fact]]]:
        """The predictions with an outcome, every reading of their studies and the facts."""
        facts: dict[str, list[Fact]] = {}
        for (system, code), group in _by_code(predictions).items():
            for f in facts_for(self.fhir, system=system, code=code,
                               patients={p.patient for p in group}):  # fmt: skip
                facts.setdefault(f"{system}|{code}|{f.patient}", []).append(f)
        reads = reads_of(self.fhir, studies={p.study_uid for p in predictions})
        by_study = group_by(reads, lambda r: r.study_uid)
        judged = []
        for p in predictions:
            if p.study_day is None:
                continue
            outcome = decide(study_day=p.study_day, facts=facts.get(_key(p), []),
                             reads=by_study.get(p.study_uid, []), rules=rules)  # fmt: skip
            if outcome is not None:
                judged.append(Judged(p, outcome))
        return judged, reads, facts

    def performance(
        self, *, name: str, version: int | None = None, rules: Rules | None = None,
        window: str = "month", exclude_training: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        """The model's (and its readers') performance against outcomes, as JSON; with
        ``exclude_training`` a version's predictions on studies it was trained or validated
        on are left out (counted in ``counts.excluded_training``)."""
        if window not in WINDOWS:
            raise InvalidInput(f"window: one of {', '.join(WINDOWS)}")
        rules = rules or Rules()
        predictions = self.predictions(name=name, version=version)
        excluded, unknown = 0, []
        if exclude_training:
            seen = {v: self.trained_on(name=name, version=v)
                    for v in {p.version for p in predictions}}  # fmt: skip
            unknown = sorted(v for v, studies in seen.items() if studies is None)
            kept = [p for p in predictions
                    if p.study_uid not in (seen.get(p.version) or set())]  # fmt: skip
            excluded, predictions = len(predictions) - len(kept), kept
        judged, reads, facts = self.judge(predictions, rules)
        sources: dict[str, int] = {}
        for j in judged:
            sources[j.outcome.source] = sources.get(j.outcome.source, 0) + 1

        def summary(items: Sequence[Judged]) -> dict[str, Any]:
            return confusion([j.outcome.positive for j in items],
                             [j.prediction.positive for j in items],
                             [j.prediction.probability for j in items],
                             [j.prediction.patient for j in items])  # fmt: skip

        by_version = group_by(judged, lambda j: str(j.prediction.version))
        by_window = group_by(judged, lambda j: period(j.prediction.study_day, window))
        finding = predictions[0] if predictions else None
        return {
            "model": name,
            "version": version,
            "finding": None if finding is None else {
                "system": finding.system, "code": finding.code, "display": finding.meaning},
            "rules": rules.as_json(),
            "window": window,
            "exclude_training": exclude_training,
            "training_unknown_for_versions": unknown,
            "counts": {"predictions": len(predictions), "excluded_training": excluded,
                       "with_outcome": len(judged),
                       "pending": len(predictions) - len(judged), "by_source": sources},
            "overall": summary(judged),
            "by_version": {v: summary(items) for v, items in sorted(
                by_version.items(), key=lambda kv: int(kv[0]))},
            "windows": [{"period": k, **summary(v)} for k, v in sorted(by_window.items())],
            "false_positives": _cases(j for j in judged
                                      if j.prediction.positive and not j.outcome.positive),
            "false_negatives": _cases(j for j in judged
                                      if not j.prediction.positive and j.outcome.positive),
            "readers": self._readers(predictions, reads, facts, rules),
        }  # fmt: skip

    def _readers(
        self, predictions: Sequence[Prediction], reads: Sequence[Read],
        facts: dict[str, list[Fact]], rules: Rules,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Each reader against outcomes that are not readings (pathology, condition,
        follow-up): the feedback a reader rarely gets."""
        study = {p.study_uid: p for p in predictions}
        out = []
        for reader, items in sorted(group_by(reads, lambda r: r.reader).items()):
            rows: list[tuple[Read, Outcome, Prediction]] = []
            for r in items:
                p = study.get(r.study_uid)
                if p is None or p.study_day is None:
                    continue
                outcome = decide(study_day=p.study_day, facts=facts.get(_key(p), []), reads=(),
                                 rules=rules, use_reads=False)  # fmt: skip
                if outcome is not None:
                    rows.append((r, outcome, p))
            truth = [o.positive for _r, o, _p in rows]
            stats = confusion(truth, [r.positive for r, _o, _p in rows], None)
            model = confusion(truth, [p.positive for _r, _o, p in rows],
                              [p.probability for _r, _o, p in rows],
                              [p.patient for _r, _o, p in rows])  # fmt: skip
            discordant = [
                {**_case(p, o), "reader_positive": r.positive, "reading": r.reference}
                for r, o, p in rows if r.positive != o.positive
            ][:CASES]  # fmt: skip
            out.append({"reader": reader, "reads": len(items), **stats,
                        "model_on_same_studies": model, "discordant": discordant})  # fmt: skip
        return out

    # -- outcomes as labels -----------------------------------------------------------------
    def outcome_labels(
        self, *, name: str, rules: Rules | None = None,
        sources: Collection[str] = ("pathology", "condition"),
    ) -> dict[str, Any]:  # fmt: skip
        """Write each outcome of the production (else latest) version's predictions from
        ``sources`` as a label of the model's label set (a KOS, observer the device
        "medflow outcome"); studies labelled in the set already are left alone, so running
        it again writes nothing new."""
        try:
            info = self.registry.production(name=name)
        except NotFound:
            info = self.registry.get(name=name)
        if not info.label_set or "," in info.label_set:
            raise InvalidInput(f"model {info.ref} was not trained on one label set")
        definition = self.labels.sets.get(name=info.label_set).definition
        classes = [str(c) for c in info.input_spec.get("classes") or []]
        if len(classes) != 2:
            raise InvalidInput(f"model {info.ref} is not a binary classifier")
        negative = definition.negative_class if definition.negative_class else classes[0]
        unknown = set(sources) - {"pathology", "condition", "follow-up"}
        if unknown:
            raise InvalidInput(f"sources: pathology, condition, follow-up (not {sorted(unknown)})")
        judged, _reads, _facts = self.judge(self.predictions(name=name), rules or Rules())
        done = {r.study_uid for r in self.labels.labels(label_set=info.label_set)}
        written = {"positive": 0, "negative": 0}
        skipped: list[dict[str, str]] = []
        seen: set[str] = set()
        for j in judged:
            uid = j.prediction.study_uid
            if j.outcome.source not in sources or uid in done or uid in seen:
                continue
            seen.add(uid)
            label = classes[1] if j.outcome.positive else negative
            try:
                for request in self._requests(info.label_set, definition.scope, uid, label):
                    self.labels.write(request=request)
            except MedflowError as exc:
                skipped.append({"study_uid": uid, "reason": exc.message})
                continue
            written["positive" if j.outcome.positive else "negative"] += 1
        return {"model": info.ref, "label_set": info.label_set, "written": written,
                "already_labelled": len({j.prediction.study_uid for j in judged} & done),
                "skipped": skipped, "sources": sorted(sources)}  # fmt: skip

    def _requests(
        self, label_set: str, scope: str, study_uid: str, label: str
    ) -> list[LabelRequest]:
        common = {"label_set": label_set, "label": label, "study_uid": study_uid, "kind": "kos",
                  "provenance": "outcome"}  # fmt: skip
        if scope == "study":
            return [LabelRequest(**common)]
        records = [r for r in self.store.find_instances(study_uid=study_uid)
                   if r.rows and r.sop_class_uid not in KIND_OF and not r.origin]  # fmt: skip
        if scope == "series":
            return [LabelRequest(**common, series_uid=s)
                    for s in dict.fromkeys(r.series_uid for r in records)]  # fmt: skip
        return [LabelRequest(**common, series_uid=r.series_uid,
                             sop_instance_uid=r.sop_instance_uid) for r in records]  # fmt: skip


def _by_code(predictions: Sequence[Prediction]) -> dict[tuple[str, str], list[Prediction]]:
    out: dict[tuple[str, str], list[Prediction]] = {}
    for p in predictions:
        out.setdefault((p.system, p.code), []).append(p)
    return out


def _key(p: Prediction) -> str:
    return f"{p.system}|{p.code}|{p.patient}"


def _prediction(r: dict[str, Any], name: str, version: int) -> Prediction | None:
    """A RiskAssessment as a prediction (None when it is not one of medflow's AI results)."""
    value = next((i.get("value") for i in r.get("identifier") or []
                  if i.get("system") == AI_RESULT_SYSTEM), None)  # fmt: skip
    patient = patient_id(r.get("subject"))
    predictions = r.get("prediction") or []
    if not isinstance(value, str) or "/" not in value or patient is None or not predictions:
        return None
    first = predictions[0]
    probability = first.get("probabilityDecimal")
    codings = (first.get("outcome") or {}).get("coding") or []
    risk = {c.get("code") for c in (first.get("qualitativeRisk") or {}).get("coding") or []}
    if not isinstance(probability, int | float) or not codings or r.get("status") != "final":
        return None
    coding = codings[0]
    return Prediction(
        study_uid=value.partition("/")[0], patient=patient, model=name, version=version,
        probability=float(probability), positive="high" in risk,
        system=str(coding.get("system") or ""), code=str(coding.get("code") or ""),
        meaning=str(coding.get("display") or ""),
        scored_at=fhir_day(r.get("occurrenceDateTime")), reference=f"RiskAssessment/{r.get('id')}",
    )  # fmt: skip


def _case(p: Prediction, o: Outcome) -> dict[str, Any]:
    return {
        "study_uid": p.study_uid, "patient_id": p.patient_mrn, "patient": p.patient,
        "study_date": p.study_day.isoformat() if p.study_day else None,
        "model": f"{p.model}:{p.version}", "probability": round(p.probability, 6),
        "predicted_positive": p.positive, "outcome": o.as_json(), "ai_result": p.reference,
        "link": f"/studies/{p.study_uid}",
    }  # fmt: skip


def _cases(items: Any) -> list[dict[str, Any]]:
    chosen = sorted(items, key=lambda j: -abs(j.prediction.probability - 0.5))
    return [_case(j.prediction, j.outcome) for j in chosen[:CASES]]


__all__ = ["Feedback", "Judged", "Prediction", "Rules", "confusion", "period"]
