"""Reading a study from the worklist (issue 11): the row is marked read and the reader's
finding lands in the record in standard form, so the patient timeline, other FHIR clients and
the feedback loop see it:

- FHIR: an Observation (:func:`medflow.ml.triage.worklist.reader_observation`), a conditional
  update on (study, reader): reading again updates it;
- DICOM: when the model was trained on a label set that has the class (or "normal" is its
  negative class), a label written through the labels service: a KOS of the study's scored
  images with the reader as observer, so the finding is also a training label of that set.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from sqlalchemy.engine import Engine

from medflow.core.errors import InvalidInput, MedflowError, NotFound
from medflow.core.settings import SyncSettings
from medflow.fhir.identifiers import patient_system
from medflow.fhir.service import FhirService
from medflow.labels.readers import KIND_OF
from medflow.labels.schemas import LabelRequest
from medflow.labels.service import LabelService
from medflow.ml.registry.service import ModelRegistry
from medflow.ml.triage.results import token
from medflow.ml.triage.tasks import write_task
from medflow.ml.triage.worklist import NORMAL, Worklist, WorklistEntry, reader_observation
from medflow.store.service import StoreService

log = logging.getLogger(__name__)
READER_FINDING_SYSTEM = "urn:medflow:reader-finding"


class Reading:
    """The worklist and what reading a study records (keyword-only arguments)."""

    def __init__(
        self,
        *,
        engine: Engine,
        fhir: FhirService,
        labels: LabelService,
        registry: ModelRegistry,
        store: StoreService,
        sync: SyncSettings,
    ) -> None:
        self.worklist = Worklist(engine=engine)
        self.store = store
        self.fhir = fhir
        self.labels = labels
        self.registry = registry
        self.sync = sync

    def _classes(self, model_ref: str) -> tuple[list[str], str | None, int | None]:
        name, _, version = model_ref.partition(":")
        try:
            info = self.registry.get(name=name, version=int(version))
        except (MedflowError, ValueError):
            return [], None, None
        classes = [str(c) for c in info.input_spec.get("classes") or []]
        return classes, info.label_set, info.label_set_version

    def classes_of(self, model_ref: str) -> list[str]:
        """The classes of a model ``name:version`` (none when it is not registered)."""
        return self._classes(model_ref)[0]

    def read(self, *, study_uid: str, reader: str, finding: str | None) -> WorklistEntry:
        """Mark read; with a ``finding`` (a class of the model, or "normal"), record it."""
        entry = self.worklist.get(study_uid=study_uid)
        if finding is None:
            done = self.worklist.mark_read(study_uid=study_uid, reader=reader, finding="",
                                           observation_id="")  # fmt: skip
            write_task(self.fhir, done)
            return done
        classes, label_set, set_version = self._classes(entry.model)
        allowed = {*classes, NORMAL}
        if finding not in allowed:
            raise InvalidInput(f"finding: one of {', '.join(sorted(allowed))}")
        positive_class = classes[1] if len(classes) > 1 else None
        code = None
        label = finding if finding in classes else None
        if label_set:
            try:
                definition = self.labels.sets.get(name=label_set, version=set_version).definition
                if label is None and finding == NORMAL and definition.negative_class:
                    label = definition.negative_class
                if label is not None:
                    concept = definition.label_class(label).concept()
                    code = {"system": _system(concept.scheme), "code": concept.value,
                            "display": concept.meaning or label}  # fmt: skip
            except (MedflowError, ValueError):
                label = None
        observation_id = self._observation(entry, reader, finding, code,
                                           positive=finding == positive_class)  # fmt: skip
        if label_set and label is not None:
            try:
                for request in self._label_requests(entry, label_set, label, reader):
                    self.labels.write(request=request)
            except MedflowError as exc:  # the FHIR record stands; the label is best effort
                log.warning("reader label not written: %s", exc.message)
        done = self.worklist.mark_read(study_uid=study_uid, reader=reader, finding=finding,
                                       observation_id=observation_id)  # fmt: skip
        write_task(self.fhir, done)
        return done

    def _label_requests(
        self, entry: WorklistEntry, label_set: str, label: str, reader: str
    ) -> list[LabelRequest]:
        """One label per unit of the set's scope over the study's images of the worklist
        row's modality (the images the model read)."""
        scope = self.labels.sets.get(name=label_set).definition.scope
        common = {"label_set": label_set, "label": label, "study_uid": entry.study_uid,
                  "kind": "kos", "observer": reader}  # fmt: skip
        if scope == "study":
            return [LabelRequest(**common)]
        records = [r for r in self.store.find_instances(study_uid=entry.study_uid)
                   if r.rows and r.sop_class_uid not in KIND_OF]  # fmt: skip
        if scope == "series":
            series = list(dict.fromkeys(r.series_uid for r in records))
            return [LabelRequest(**common, series_uid=s) for s in series]
        return [LabelRequest(**common, series_uid=r.series_uid,
                             sop_instance_uid=r.sop_instance_uid) for r in records]  # fmt: skip

    def _observation(
        self, entry: WorklistEntry, reader: str, finding: str, code: dict[str, str] | None,
        *, positive: bool,
    ) -> str:  # fmt: skip
        system = patient_system(None, default=self.sync.patient_system)
        patients = self.fhir.search_resources(
            resource_type="Patient", params=[("identifier", f"{system}|{entry.patient_id}")],
            limit=2,
        )  # fmt: skip
        if len(patients) != 1:
            raise NotFound("the study's Patient is not (uniquely) in FHIR")
        studies = self.fhir.search_resources(
            resource_type="ImagingStudy",
            params=[("identifier", f"urn:dicom:uid|urn:oid:{entry.study_uid}")], limit=1,
        )  # fmt: skip
        resource = reader_observation(
            study_uid=entry.study_uid, patient_id=str(patients[0]["id"]),
            imaging_study_id=str(studies[0]["id"]) if studies else None, reader=reader,
            finding=finding, code=code, positive=positive,
        )  # fmt: skip
        written = self.fhir.conditional_update(
            resource_type="Observation",
            query="identifier="
            + quote(token(READER_FINDING_SYSTEM, f"{entry.study_uid}/{reader}")),
            resource=resource,
        )
        return str(written.res_id)


def _system(scheme: str) -> str:
    return {"SCT": "http://snomed.info/sct",
            "DCM": "http://dicom.nema.org/resources/ontology/DCM"}.get(
        scheme.upper(), f"urn:medflow:codes:{scheme}")  # fmt: skip


__all__ = ["Reading"]
