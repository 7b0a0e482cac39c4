"""FHIR R4 de-identification by rules, in the pseudonym space the DICOM side uses.

The rules (``data/fhir-rules.yaml``, documented there) follow the configuration format of
Microsoft's "FHIR Tools for Anonymization" (``fhirPathRules`` of ``{path, method}``, the first
matching rule decides, methods keep/redact/dateShift/cryptoHash/substitute/generalize), with a
simpler path syntax typed by the R4 StructureDefinitions (datatypes.html): an element of a
resource (through backbone elements and choice types), of every resource (``Resource.meta``), of
a data type wherever it occurs (``HumanName``, ``Address.city``, ``dateTime``) or of any name
(``*.comment``).

What keeps links alive is not configurable (:class:`FhirDeidentifier`):

- a Patient with an identifier of ``patient_system`` S and value V (the DICOM PatientID) gets the
  id :meth:`DeidKeys.patient_pseudonym` (S, V) (its DICOM PatientID too), that one identifier
  pseudonymized, and all of the patient's resources (the Patient compartment, R4
  compartmentdefinition-patient.html) have their dates moved by :meth:`DeidKeys.date_shift`
  (S, V), as its DICOM dates are; a Patient without one is keyed on ``urn:medflow:fhir-patient``
  and its logical id;
- other logical ids become :meth:`DeidKeys.resource_id`, and every Reference.reference (relative
  ``Type/id``, ``Type/id/_history/n``, absolute URLs, ``urn:uuid:`` in Bundles; references.html)
  is rewritten by the same function, whether the target is in the input or not; ``#id``
  references to contained resources are kept;
- identifiers with ``urn:oid:<uid>`` values (ImagingStudy's ``urn:dicom:uid``) and
  ImagingStudy series/instance UIDs become :meth:`DeidKeys.uid`, the UIDs of the de-identified
  DICOM; accession numbers (type v2-0203 ACSN) ``DeidKeys.identifier("accession", value)``;
- meta.versionId/lastUpdated/source are removed and meta.security gets the HL7 v3
  ObservationValue ``PSEUDED`` code, as the MS tool adds its security labels.

Removing a required element (min >= 1) leaves the data-absent-reason extension (code
``masked``, extension-data-absent-reason.html) in its place, so the output still validates
structurally. Nothing of a resource's content is logged.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from medflow.core.errors import InvalidInput
from medflow.deid.fhir_rules import (
    _ADDRESS_KEPT,
    _COMPLEX,
    _DATE,
    _DATES,
    _PRIM,
    _REF,
    _RESOURCE,
    _SUFFIXES,
    _UID,
    DAR_URL,
    FHIR_PATIENT_SYSTEM,
    PSEUDED,
    FhirRule,
    FhirRuleParameters,
    FhirRules,
    _Context,
    _Field,
    _fields,
    _Matcher,
    _resource_types,
    _Rule,
    load_rules,
)
from medflow.deid.keys import DeidKeys
from medflow.fhir.definitions import patient_compartment, search_params
from medflow.fhir.identifiers import ACSN, ISSUER_SYSTEM_PREFIX, MRN_SYSTEM

log = logging.getLogger(__name__)

# -- the de-identifier -----------------------------------------------------------------------


@dataclass
class _Ctx:
    shift: timedelta
    reference_day: date
    """The day ages are computed at (generalized birth dates)."""


@dataclass
class FhirTreeSummary:
    """What :func:`deidentify_ndjson_tree` wrote."""

    files: int = 0
    resources: dict[str, int] = field(default_factory=dict)
    """Resources written, by type (Bundles count once, with their entries)."""
    dropped: int = 0
    """Resources left out by a rule on their type."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: files, resources by type, dropped."""
        return {"files": self.files, "resources": dict(self.resources), "dropped": self.dropped}


def _masked(f: _Field, depth: int = 0) -> Any:
    """The stand-in of a removed required element: the data-absent-reason extension (code
    ``masked``), with stand-ins of its own required elements (a backbone element's)."""
    element: dict[str, Any] = {"extension": [{"url": DAR_URL, "valueCode": "masked"}]}
    if f.kind == _COMPLEX and f.child is not None and depth < 8:
        fields, required = _fields(f.child)
        for names in required:
            child = fields[names[0]]
            element[child.json if child.kind != _PRIM else "_" + child.json] = _masked(
                child, depth + 1
            )
    return [element] if f.array else element


class FhirDeidentifier:
    """De-identifies FHIR R4 resources by ``rules`` with the pseudonyms of ``keys``.

    Call :meth:`prepare` with everything first (it learns each Patient's identifier, so that
    references to a patient become its pseudonym and its resources get its date shift), then
    :meth:`deidentify` each resource. ``base_urls`` are this server's FHIR base URLs: absolute
    references to them become relative; other absolute references keep their base.
    """

    def __init__(
        self,
        rules: FhirRules,
        keys: DeidKeys,
        *,
        patient_system: str = MRN_SYSTEM,
        base_urls: Iterable[str] = (),
        use_issuer: bool = False,
        retain_uids: bool = False,
        shift_dates: bool = True,
    ) -> None:
        self.rules = rules
        self.keys = keys
        self.patient_system = patient_system
        self.use_issuer = use_issuer
        """Patient identifiers of ``urn:medflow:issuer:<issuer>`` systems (the sync's, with
        IssuerOfPatientID) are the patient's key too, as on the DICOM side."""
        self.retain_uids = retain_uids
        """The DICOM profile retains UIDs (PS3.15 E.3.9): FHIR keeps them too."""
        self.shift_dates = shift_dates
        """False when the DICOM profile retains full dates (E.3.6): FHIR dates stay too."""
        self.base_urls = frozenset(u.rstrip("/") for u in base_urls)
        self._matcher = _Matcher(rules)
        self._patients: dict[str, tuple[str, str] | None] = {}
        """"Patient/<id>" or a Bundle fullUrl -> the patient's (system, value) or None."""

    # -- first pass ------------------------------------------------------------------------

    def prepare(self, resources_: Iterable[dict[str, Any]]) -> int:
        """Learn the Patients among ``resources_`` (Bundles' entries too); returns how many
        Patients were seen."""
        seen = 0
        for resource in resources_:
            if resource.get("resourceType") == "Bundle":
                for entry in resource.get("entry") or ():
                    if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
                        seen += self._learn(entry["resource"], entry.get("fullUrl"))
            else:
                seen += self._learn(resource, None)
        return seen

    def _learn(self, resource: dict[str, Any], full_url: Any) -> int:
        if resource.get("resourceType") != "Patient":
            return 0
        identity = self._identity(resource)
        if isinstance(resource.get("id"), str):
            self._patients[f"Patient/{resource['id']}"] = identity
        if isinstance(full_url, str):
            self._patients[full_url] = identity
            key = self._patient_key(full_url)
            if key is not None:
                self._patients[key] = identity
        return 1

    def _is_patient_system(self, system: Any) -> bool:
        return isinstance(system, str) and (
            system == self.patient_system
            or (self.use_issuer and system.startswith(ISSUER_SYSTEM_PREFIX))
        )

    def _identity(self, patient: dict[str, Any]) -> tuple[str, str] | None:
        """The (system, value) keying the patient, as the DICOM side keys its PatientID (an
        issuer's system first when ``use_issuer``)."""
        found: list[tuple[str, str]] = []
        for ident in patient.get("identifier") or ():
            value = ident.get("value") if isinstance(ident, dict) else None
            system = ident.get("system") if isinstance(ident, dict) else None
            if self._is_patient_system(system) and isinstance(value, str) and value.strip():
                found.append((str(system), value.strip()))
        found.sort(key=lambda pair: pair[0] == self.patient_system)  # issuers first
        return found[0] if found else None

    def _uid(self, uid: str) -> str:
        return uid if self.retain_uids else self.keys.uid(uid)

    # -- ids, references, dates --------------------------------------------------------------

    def new_id(self, resource_type: str, resource_id: str) -> str:
        """The logical id that replaces ``resource_id`` (a patient's: its pseudonym)."""
        if resource_type == "Patient":
            identity = self._patients.get(f"Patient/{resource_id}")
            if identity is not None:
                return self.keys.patient_pseudonym(*identity)
        return self.keys.resource_id(resource_type, resource_id)

    def _uuid(self, value: str) -> str:
        code = self.keys.identifier("urn:uuid", value.removeprefix("urn:uuid:").lower())
        return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'urn:medflow:deid:' + code)}"

    def rewrite_reference(self, reference: str, *, absolute: bool = False) -> str | None:
        """``reference`` pointing at the de-identified target (None: it cannot be kept);
        ``absolute`` keeps the base of an absolute URL (Bundle.entry.fullUrl)."""
        if reference.startswith("#"):
            return reference
        if reference.startswith("urn:uuid:"):
            return self._uuid(reference)
        if reference.startswith("urn:oid:"):
            return "urn:oid:" + self._uid(reference[8:])
        m = _REF.fullmatch(reference)
        if m is None or m["type"] not in _resource_types():
            return None
        new = f"{m['type']}/{self.new_id(m['type'], m['id'])}"
        base = m["base"]
        if base is None or (base.rstrip("/") in self.base_urls and not absolute):
            return new
        return f"{base}/{new}"

    def _patient_key(self, reference: str) -> str | None:
        if reference.startswith("urn:uuid:"):
            return reference if reference in self._patients else None
        m = _REF.fullmatch(reference)
        return f"Patient/{m['id']}" if m is not None and m["type"] == "Patient" else None

    def _shift_of(self, key: str) -> timedelta:
        identity = self._patients.get(key)
        if identity is not None:
            return self.keys.date_shift(*identity)
        if key.startswith("Patient/"):
            return self.keys.date_shift(FHIR_PATIENT_SYSTEM, key[8:])
        return self.keys.default_shift()

    def _context(self, resource: dict[str, Any]) -> _Ctx:
        ctx = self._shifted_context(resource)
        return ctx if self.shift_dates else _Ctx(timedelta(0), ctx.reference_day)

    def _shifted_context(self, resource: dict[str, Any]) -> _Ctx:
        today = self.rules.parameters.age_reference_date or date.today()
        if resource.get("resourceType") == "Patient":
            identity = self._identity(resource)
            rid = resource.get("id")
            if identity is not None:
                shift = self.keys.date_shift(*identity)
            elif isinstance(rid, str):
                shift = self.keys.date_shift(FHIR_PATIENT_SYSTEM, rid)
            else:
                shift = self.keys.default_shift()
            died = _parse_day(resource.get("deceasedDateTime"))
            return _Ctx(shift, min(died, today) if died else today)
        for reference in _patient_references(resource):
            key = self._patient_key(reference)
            if key is not None:
                return _Ctx(self._shift_of(key), today)
        return _Ctx(self.keys.default_shift(), today)

    # -- second pass -----------------------------------------------------------------------

    def deidentify(self, resource: dict[str, Any]) -> dict[str, Any] | None:
        """The de-identified copy of ``resource`` (None when a rule drops its type)."""
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype not in _resource_types():
            raise InvalidInput("not a FHIR R4 resource (no known resourceType)")
        if rtype in self._matcher.dropped:
            return None
        if rtype == "Bundle":
            return self.deidentify_bundle(resource)
        return self._resource(resource, self._context(resource), contained=False)

    def _resource(self, resource: dict[str, Any], ctx: _Ctx, *, contained: bool) -> dict[str, Any]:
        rtype = resource["resourceType"]
        out: dict[str, Any] = {"resourceType": rtype}
        identity = self._identity(resource) if rtype == "Patient" and not contained else None
        rid = resource.get("id")
        if contained and isinstance(rid, str):
            out["id"] = rid
        elif identity is not None:
            out["id"] = self.keys.patient_pseudonym(*identity)
        elif isinstance(rid, str):
            out["id"] = self.new_id(rtype, rid)
        out["meta"] = _meta(resource.get("meta"))
        body = {k: v for k, v in resource.items() if k not in ("resourceType", "id", "meta")}
        if identity is not None:
            pseudonym = self.keys.patient_pseudonym(*identity)
            body.pop("identifier", None)
            out["identifier"] = [{"system": identity[0], "value": pseudonym}]
        out.update(self._walk(body, rtype, [(rtype, True, ())], None, ctx))
        return out

    def deidentify_bundle(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """A de-identified Bundle: each entry's resource as by :meth:`deidentify` (entries of
        dropped types left out), fullUrl, request.url/ifNoneExist and response.location
        rewritten like references; links, conditional headers and etags removed."""
        self.prepare([bundle])  # its own entries at least, when prepare() was not called
        ctx = _Ctx(self.keys.default_shift() if self.shift_dates else timedelta(0), date.today())
        rest = {k: v for k, v in bundle.items() if k not in ("entry", "link")}
        out = self._resource(rest, ctx, contained=False)
        entries = []
        for entry in bundle.get("entry") or ():
            new = self._entry(entry) if isinstance(entry, dict) else None
            if new:
                entries.append(new)
        if entries:
            out["entry"] = entries
        return out

    def _entry(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        out: dict[str, Any] = {}
        if isinstance(entry.get("fullUrl"), str):
            full_url = self.rewrite_reference(entry["fullUrl"], absolute=True)
            if full_url is not None:
                out["fullUrl"] = full_url
        if isinstance(entry.get("resource"), dict):
            resource = self.deidentify(entry["resource"])
            if resource is None:
                return None
            out["resource"] = resource
        if isinstance(entry.get("search"), dict):
            out["search"] = {k: v for k, v in entry["search"].items() if k in ("mode", "score")}
        request = entry.get("request")
        if isinstance(request, dict) and isinstance(request.get("url"), str):
            out["request"] = {"method": request.get("method"), "url": self._request_url(request)}
            condition = self._condition(request.get("ifNoneExist"))
            if condition:
                out["request"]["ifNoneExist"] = condition
        response = entry.get("response")
        if isinstance(response, dict) and isinstance(response.get("status"), str):
            out["response"] = {"status": response["status"]}
            location = response.get("location")
            new_location = self.rewrite_reference(location) if isinstance(location, str) else None
            if new_location:
                out["response"]["location"] = new_location
        return out or None

    def _request_url(self, request: dict[str, Any]) -> str:
        """Bundle.entry.request.url: ``Type/id`` rewritten, ``Type?identifier=s|v`` with the
        value pseudonymized, any other query dropped (``Type`` left)."""
        url: str = request["url"]
        path, _, query = url.partition("?")
        if query:
            condition = self._condition(query)
            return f"{path}?{condition}" if condition else path
        new = self.rewrite_reference(url) if _REF.fullmatch(url) else url
        return new or url.split("/")[0]

    def _condition(self, value: Any) -> str | None:
        """``identifier=system|value`` with the value pseudonymized (else dropped)."""
        if not isinstance(value, str) or not value.startswith("identifier="):
            return None
        system, bar, ident = value[len("identifier=") :].partition("|")
        if not bar or not ident or "&" in value:
            return None
        return f"identifier={system}|{self._pseudo_identifier({'system': system, 'value': ident})}"

    # -- the walk ----------------------------------------------------------------------------

    def _walk(
        self,
        obj: dict[str, Any],
        key: str,
        contexts: list[_Context],
        inherited: _Rule | None,
        ctx: _Ctx,
    ) -> dict[str, Any]:
        fields, required = _fields(key)
        out: dict[str, Any] = {}
        for name, value in obj.items():
            f = fields.get(name)
            if f is None or name.startswith("_"):
                if f is None and not name.startswith("_"):
                    log.debug("dropped an element unknown to R4 %s", key)
                continue
            if key == "Reference" and name == "reference":
                keep = inherited is None or inherited.method != "redact"
                new = self.rewrite_reference(value) if keep and isinstance(value, str) else None
                if new is not None:
                    out[name] = new
                continue
            steps = [(r, res, (*s, (f.base, f.json))) for r, res, s in contexts]
            if f.kind == _COMPLEX and f.child == f.type:
                steps.append((f.type, False, ()))
            own = self._matcher.first(f, steps)
            rule = own if inherited is None or (own and own.index < inherited.index) else inherited
            new = self._element(f, value, steps, rule, ctx)
            if new is None:
                continue
            out[name] = new
            companion = obj.get("_" + name)
            if f.kind == _PRIM and companion is not None:
                new_companion = self._companion(companion, new, steps, rule, ctx)
                if new_companion is not None:
                    out["_" + name] = new_companion
        if out:
            self._fill_required(obj, out, fields, required)
        return out

    def _element(
        self, f: _Field, value: Any, steps: list[_Context], rule: _Rule | None, ctx: _Ctx
    ) -> Any:
        if not f.array:
            return self._item(f, value, steps, rule, ctx)
        items = value if isinstance(value, list) else [value]
        new = [self._item(f, item, steps, rule, ctx) for item in items]
        if f.kind == _PRIM and any(n is None for n in new) and not all(n is None for n in new):
            new = [n for n in new if n is not None]  # companions no longer align: dropped
        new = [n for n in new if n is not None]
        return new or None

    def _item(
        self, f: _Field, value: Any, steps: list[_Context], rule: _Rule | None, ctx: _Ctx
    ) -> Any:
        method = "keep" if rule is None else rule.method
        if method == "redact" and f.kind != _COMPLEX:
            return None
        if method == "substitute" and rule is not None:
            return rule.value
        if f.kind == _RESOURCE:
            if not isinstance(value, dict) or value.get("resourceType") not in _resource_types():
                return None
            return self._resource(value, ctx, contained=True)
        if f.kind == _PRIM:
            return self._primitive(f, value, steps, method, ctx)
        if not isinstance(value, dict) or f.child is None:
            return None
        if method == "generalize" and f.type == "Address":
            value = {k: v for k, v in value.items() if k in _ADDRESS_KEPT}
            return self._walk(value, f.child, steps, None, ctx) or None
        if method == "pseudonym" and f.type == "Identifier":
            out = self._walk(value, f.child, steps, None, ctx)
            pseudonym = self._pseudo_identifier(value, f.base)
            if pseudonym is not None:
                out["value"] = pseudonym
            return out or None
        return self._walk(value, f.child, steps, rule, ctx) or None

    def _primitive(
        self, f: _Field, value: Any, steps: list[_Context], method: str, ctx: _Ctx
    ) -> Any:
        if value is None:
            return None
        if f.type in _DATES and method in ("dateshift", "pseudonym"):
            return _shift(value, ctx.shift)
        if f.type in _DATES and method == "generalize":
            return _generalize_birth(value, ctx)
        if method != "pseudonym" or not isinstance(value, str):
            return value
        if f.type == "oid" or value.startswith("urn:oid:"):
            return "urn:oid:" + self._uid(value.removeprefix("urn:oid:"))
        if f.type == "uuid" or value.startswith("urn:uuid:"):
            return self._uuid(value)
        if f.base.lower().endswith("uid") and _UID.fullmatch(value.strip()):
            return self._uid(value)
        root, _, path = steps[0]
        return self.keys.identifier(".".join([root, *(s[0] for s in path)]), value)

    def _companion(
        self, companion: Any, value: Any, steps: list[_Context], rule: _Rule | None, ctx: _Ctx
    ) -> Any:
        element = _Field("", "", "Element", "Element", _COMPLEX, False)
        if isinstance(companion, dict) and not isinstance(value, list):
            return self._item(element, companion, steps, None, ctx)
        if isinstance(companion, list) and isinstance(value, list) and len(companion) == len(value):
            new = [self._item(element, c, steps, None, ctx) if c else None for c in companion]
            return new if any(n is not None for n in new) else None
        return None

    def _fill_required(
        self,
        obj: dict[str, Any],
        out: dict[str, Any],
        fields: dict[str, _Field],
        required: tuple[tuple[str, ...], ...],
    ) -> None:
        for names in required:
            present = [n for n in names if n in obj or "_" + n in obj]
            if not present or any(n in out or "_" + n in out for n in names):
                continue
            f = fields[present[0]]
            out[f.json if f.kind != _PRIM else "_" + f.json] = _masked(f)

    def _pseudo_identifier(self, identifier: dict[str, Any], element: str = "") -> str | None:
        """The pseudonym of an Identifier's value: the patient's for the patient system, a
        mapped UID for ``urn:oid:``, the accession code for ACSN-typed ones and
        Specimen.accessionIdentifier (as DICOM AccessionNumber), else ``identifier("id",
        value)``, which the DICOM side gives Specimen and Container Identifiers too."""
        value, system = identifier.get("value"), identifier.get("system")
        if not isinstance(value, str):
            return None
        if self._is_patient_system(system) and value.strip():
            return self.keys.patient_pseudonym(str(system), value)
        if value.startswith("urn:oid:"):
            return "urn:oid:" + self._uid(value[8:])
        codings = (identifier.get("type") or {}).get("coding") or ()
        if element == "accessionIdentifier" or any(
            (c.get("system"), c.get("code")) == ACSN for c in codings if isinstance(c, dict)
        ):
            return self.keys.identifier("accession", value)
        return self.keys.identifier("id", value)

    # -- files -------------------------------------------------------------------------------

    def deidentify_ndjson_tree(self, src: Path, dst: Path) -> FhirTreeSummary:
        """See :func:`deidentify_ndjson_tree`."""
        return deidentify_ndjson_tree(src, dst, self)


def deidentify_ndjson_tree(src: Path, dst: Path, deid: FhirDeidentifier) -> FhirTreeSummary:
    """De-identify a folder (or one file) of ``*.ndjson`` (one resource a line, as bulk $export
    and ``medflow cohort export`` write) and ``*.json`` (a resource or a Bundle) into the folder
    ``dst``, with the same relative paths and names: :meth:`FhirDeidentifier.prepare` over
    everything, then each file, streamed. A file whose resources are all dropped by a rule is
    not written."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if src.is_file():
        root, files = src.parent, [src]
    elif src.is_dir():
        root = src
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix in _SUFFIXES)
    else:
        raise InvalidInput(f"{src} is neither a folder nor a file")
    if dst == root or dst.is_relative_to(root):
        raise InvalidInput("the output folder must be outside the input folder")
    deid.prepare(r for p in files for r in _read(p, root))
    summary = FhirTreeSummary()
    for path in files:
        target = dst / path.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        try:
            written = _write(deid, path, root, partial, summary)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if written:
            partial.replace(target)
            summary.files += 1
        else:
            partial.unlink()
    log.info("de-identified %d FHIR files, %d resources dropped", summary.files, summary.dropped)
    return summary


def _write(
    deid: FhirDeidentifier, path: Path, root: Path, partial: Path, summary: FhirTreeSummary
) -> int:
    written = 0
    indent = None if path.suffix == ".ndjson" else 2
    with partial.open("w", encoding="utf-8") as out:
        for resource in _read(path, root):
            new = deid.deidentify(resource)
            if new is None:
                summary.dropped += 1
                continue
            out.write(json.dumps(new, ensure_ascii=False, indent=indent) + "\n")
            written += 1
            rtype = new["resourceType"]
            summary.resources[rtype] = summary.resources.get(rtype, 0) + 1
    return written


def _read(path: Path, root: Path) -> Iterator[dict[str, Any]]:
    name = path.relative_to(root)
    with path.open(encoding="utf-8") as fh:
        if path.suffix == ".json":
            lines: Iterable[tuple[int, str]] = [(1, fh.read())]
        else:
            lines = enumerate(fh, 1)
        for number, line in lines:
            if not line.strip():
                continue
            try:
                resource = json.loads(line)
            except json.JSONDecodeError:
                raise InvalidInput(f"{name}:{number}: not JSON") from None
            if not isinstance(resource, dict):
                raise InvalidInput(f"{name}:{number}: not a JSON object")
            yield resource


# -- helpers ---------------------------------------------------------------------------------


def _meta(meta: Any) -> dict[str, Any]:
    """meta without versionId/lastUpdated/source/extensions, labelled PSEUDED."""
    meta = meta if isinstance(meta, dict) else {}
    out: dict[str, Any] = {k: meta[k] for k in ("profile", "tag") if meta.get(k)}
    security = [c for c in meta.get("security") or () if isinstance(c, dict)]
    if not any(c.get("code") == "PSEUDED" for c in security):
        security.append(dict(PSEUDED))
    out["security"] = security
    return out


@cache
def _patient_paths(resource_type: str) -> tuple[tuple[str, ...], ...]:
    """Element paths of the references that put a resource in a Patient's compartment (R4
    compartmentdefinition-patient.html), ``patient``/``subject`` first."""
    codes = sorted(
        patient_compartment(resource_type), key=lambda c: (c not in ("patient", "subject"), c)
    )
    paths: list[tuple[str, ...]] = []
    for code in codes:
        expression = search_params(resource_type)[code].expression or ""
        for atom in expression.split("|"):
            atom = atom.strip().split(".where(")[0]
            head, *rest = atom.split(".")
            if head == resource_type and rest and tuple(rest) not in paths:
                paths.append(tuple(rest))
    return tuple(paths)


def _patient_references(resource: dict[str, Any]) -> Iterator[str]:
    for path in _patient_paths(resource["resourceType"]):
        nodes: list[Any] = [resource]
        for step in path:
            nodes = [n.get(step) for n in nodes if isinstance(n, dict)]
            nodes = [x for n in nodes for x in (n if isinstance(n, list) else [n]) if x is not None]
        for node in nodes:
            if isinstance(node, dict) and isinstance(node.get("reference"), str):
                yield node["reference"]


def _parse_day(value: Any) -> date | None:
    m = _DATE.fullmatch(value) if isinstance(value, str) else None
    if m is None or m[3] is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def _shift(value: Any, shift: timedelta) -> str | None:
    """``value`` (date, dateTime, instant) moved by ``shift`` at its own precision: a day moves
    exactly (the time and zone stay), a month by its 15th, a year by its 2nd of July."""
    m = _DATE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return None
    year, month, day, rest = m.groups()
    try:
        if day is not None:
            return (date(int(year), int(month), int(day)) + shift).isoformat() + rest
        if month is not None:
            moved = date(int(year), int(month), 15) + shift
            return f"{moved.year:04d}-{moved.month:02d}{rest}"
        return f"{(date(int(year), 7, 2) + shift).year:04d}{rest}"
    except (ValueError, OverflowError):
        return None


def _generalize_birth(value: Any, ctx: _Ctx) -> str | None:
    """A birth date shifted like the patient's other dates; when the age at ``reference_day``
    is over 89, only the year that makes the shifted age 90 (HIPAA Safe Harbor)."""
    m = _DATE.fullmatch(value) if isinstance(value, str) else None
    if m is None:
        return None
    ref = ctx.reference_day
    born = (int(m[1]), int(m[2] or 1), int(m[3] or 1))
    age = ref.year - born[0] - ((ref.month, ref.day) < born[1:])
    if age > 89:
        try:
            return f"{(ref + ctx.shift).year - 90:04d}"
        except OverflowError:
            return None
    return _shift(value, ctx.shift)


__all__ = ["DAR_URL", "FHIR_PATIENT_SYSTEM", "PSEUDED", "FhirDeidentifier", "FhirRule",
           "FhirRuleParameters", "FhirRules", "FhirTreeSummary", "deidentify_ndjson_tree",
           "load_rules"]  # fmt: skip
