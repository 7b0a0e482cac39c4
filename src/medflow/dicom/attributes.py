"""Reading what the index needs out of a Part 10 file, and DICOM JSON (PS3.18 Annex F) for it.

The archive keeps objects byte for byte as received; this module only reads them. Values go into
the index in their DICOM string form. DICOM JSON is produced by pydicom's ``to_json_dict`` per
element; binary values above a threshold (and Pixel Data always) become BulkDataURIs whose path
names the element, with sequence items as ``<tag>.<index>.`` prefixes (``00540016.0.00181072``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileDataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import BaseTag, Tag

from medflow.core.errors import InvalidInput, Unsupported
from medflow.dicom.structure import DEFLATED, check_structure

UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
LENIENT_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
"""Leading zeros in a component are invalid (PS3.5 9.1) but common in old data; accepted."""

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
UNDEFINED_LENGTH = 0xFFFFFFFF

DICOM_JSON_BULK_PREFIX = '"BulkDataURI":"'


def is_valid_uid(value: object) -> bool:
    """A UID usable as an identifier: digits and dots, at most 64 characters (PS3.5 9.1)."""
    return isinstance(value, str) and 0 < len(value) <= 64 and bool(LENIENT_UID_RE.match(value))


def search_form(value: str | None) -> str | None:
    """Upper-cased, accent-stripped form of a text value, for case-insensitive matching."""
    if value is None:
        return None
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return stripped.upper()


def name_tokens(value: str | None) -> set[str]:
    """Words of a person name across all components and groups, in search form (PS3.5 6.2.1)."""
    folded = search_form(value) or ""
    return {t for t in re.split(r"[\^=\s,]+", folded) if t}


@dataclass(frozen=True)
class ParsedInstance:
    """What the index records for one stored instance."""

    transfer_syntax_uid: str
    attrs: dict[str, Any]
    """Index attributes by DICOM keyword, as strings/ints (missing ones are None)."""
    pixel_data_offset: int | None
    pixel_data_length: int | None
    metadata_json: str

    @property
    def study_uid(self) -> str:
        return str(self.attrs["StudyInstanceUID"])

    @property
    def series_uid(self) -> str:
        return str(self.attrs["SeriesInstanceUID"])

    @property
    def sop_instance_uid(self) -> str:
        return str(self.attrs["SOPInstanceUID"])

    @property
    def sop_class_uid(self) -> str:
        return str(self.attrs["SOPClassUID"])


STRING_KEYWORDS = (
    "SpecificCharacterSet",
    "TimezoneOffsetFromUTC",
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyID",
    "StudyDescription",
    "SeriesInstanceUID",
    "Modality",
    "SeriesDescription",
    "BodyPartExamined",
    "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
    "SOPInstanceUID",
    "SOPClassUID",
)
INT_KEYWORDS = (
    "SeriesNumber",
    "InstanceNumber",
    "Rows",
    "Columns",
    "BitsAllocated",
    "NumberOfFrames",
)


def read_part10(source: str | Path | BinaryIO, *, size: int) -> ParsedInstance:
    """Parse a Part 10 file for indexing without loading large values.

    Raises ``InvalidInput`` (0xC000 cannot understand, 0xA900 identifiers missing or invalid) or
    ``Unsupported`` (0x0122, e.g. a DICOMDIR) with a reason that contains no PHI.
    """
    if isinstance(source, str | Path):
        with Path(source).open("rb") as fp:
            return read_part10(fp, size=size)
    try:
        ds = pydicom.dcmread(source, defer_size=1024)
    except InvalidDicomError as exc:
        raise InvalidInput("not a DICOM Part 10 file (no DICM preamble or file meta)") from exc
    except Exception as exc:
        raise InvalidInput(f"cannot parse DICOM data set: {type(exc).__name__}") from exc
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts and (str(ts) in DEFLATED or not _ends_exactly(ds, size)):
        check_structure(source, size=size, transfer_syntax_uid=str(ts))
    return parse_dataset(ds, size=size)


def _ends_exactly(ds: Dataset, size: int) -> bool:
    """True when pydicom's element positions prove the file complete: every top-level element
    has a defined length and the last one ends exactly at the end of the file. Anything else
    (undefined lengths, trailing bytes, a value cut short) gets the full structural walk."""
    tags = list(ds.keys())
    if not tags:
        return False
    last = ds.get_item(tags[-1], keep_deferred=True)
    if not isinstance(last, RawDataElement) or last.length == UNDEFINED_LENGTH:
        return False
    for tag in tags:
        raw = ds.get_item(tag, keep_deferred=True)
        if not isinstance(raw, RawDataElement) or raw.length == UNDEFINED_LENGTH:
            return False
    return bool(last.value_tell + last.length == size)


def parse_dataset(ds: FileDataset, *, size: int) -> ParsedInstance:
    meta = getattr(ds, "file_meta", None)
    ts = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    if meta is None or not ts or "MediaStorageSOPClassUID" not in meta:
        raise InvalidInput("file meta information (group 0002) is missing or incomplete")
    if str(meta.MediaStorageSOPClassUID) == MEDIA_STORAGE_DIRECTORY:
        raise Unsupported("a DICOMDIR (Media Storage Directory) is not a storage SOP instance")
    uids = {k: _uid(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    uids["SOPClassUID"] = _uid(ds, "SOPClassUID")
    for key, value in uids.items():
        if not is_valid_uid(value):
            state = "missing" if not value else "not a valid UID"
            raise InvalidInput(f"{key} is {state}", dicom_reason=0xA900)
    # PS3.10 7.1: the file meta names the SOP class of the data set (for C-STORE, pynetdicom
    # writes the command's Affected SOP Class UID there): a data set of another class is
    # 0xA900, "data set does not match SOP class" (PS3.4 B.2.3). A differing Media Storage
    # SOP Instance UID is tolerated (real files have it); the data set's own UID is indexed.
    declared = str(meta.MediaStorageSOPClassUID or "").rstrip("\0 ")
    if declared and declared != uids["SOPClassUID"]:
        raise InvalidInput(
            "SOPClassUID differs from MediaStorageSOPClassUID of the file meta",
            dicom_reason=0xA900,
        )
    prefix = (
        f"studies/{uids['StudyInstanceUID']}/series/{uids['SeriesInstanceUID']}"
        f"/instances/{uids['SOPInstanceUID']}/bulkdata/"
    )
    model = _to_json(ds, prefix, 1024)
    offset, length = _pixel_data_position(ds)
    return ParsedInstance(
        transfer_syntax_uid=str(ts),
        attrs=index_attributes(model),
        pixel_data_offset=offset,
        pixel_data_length=length,
        metadata_json=json.dumps(model, separators=(",", ":"), ensure_ascii=False),
    )


def _uid(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 — an unreadable UID is reported as invalid
        return None
    return str(value).strip() if value else None


TAGS = {k: f"{tag_for_keyword(k):08X}" for k in (*STRING_KEYWORDS, *INT_KEYWORDS)}
REQUEST_ATTRIBUTES = f"{tag_for_keyword('RequestAttributesSequence'):08X}"
SPS_ID = f"{tag_for_keyword('ScheduledProcedureStepID'):08X}"
REQUESTED_PROCEDURE_ID = f"{tag_for_keyword('RequestedProcedureID'):08X}"


def _json_text(entry: dict[str, Any] | None) -> str | None:
    """A DICOM JSON attribute back to its DICOM string form (PN groups joined with ``=``)."""
    values = entry.get("Value") if entry else None
    if not values:
        return None
    parts = []
    for value in values:
        if isinstance(value, dict):  # PN (PS3.18 F.2.2)
            groups = [value.get(g, "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
            while groups and not groups[-1]:
                groups.pop()
            parts.append("=".join(groups))
        else:
            parts.append("" if value is None else str(value))
    return "\\".join(parts).strip() or None


def _json_int(entry: dict[str, Any] | None) -> int | None:
    values = entry.get("Value") if entry else None
    try:
        return int(values[0]) if values and values[0] is not None else None
    except (TypeError, ValueError):  # malformed IS values are common in the wild
        return None


def index_attributes(model: dict[str, Any]) -> dict[str, Any]:
    """The index attributes of an instance, read from its DICOM JSON model (values already
    decoded once by pydicom for the JSON; unreadable values are indexed as absent)."""
    attrs: dict[str, Any] = {k: _json_text(model.get(TAGS[k])) for k in STRING_KEYWORDS}
    attrs.update({k: _json_int(model.get(TAGS[k])) for k in INT_KEYWORDS})
    items = (model.get(REQUEST_ATTRIBUTES) or {}).get("Value") or [{}]
    first = items[0] if isinstance(items[0], dict) else {}
    attrs["ScheduledProcedureStepID"] = _json_text(first.get(SPS_ID))
    attrs["RequestedProcedureID"] = _json_text(first.get(REQUESTED_PROCEDURE_ID))
    return attrs


def _pixel_data_position(ds: Dataset) -> tuple[int | None, int | None]:
    for tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        if tag in ds:
            raw = ds.get_item(tag, keep_deferred=True)
            if isinstance(raw, RawDataElement):
                length = None if raw.length == UNDEFINED_LENGTH else raw.length
                return raw.value_tell, length
            return None, None
    return None, None


def _tag_hex(tag: BaseTag) -> str:
    return f"{tag:08X}"


def _vr_of(ds: Dataset, tag: BaseTag, raw: Any) -> str:
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _constant(uri: str) -> Callable[[Any], str]:
    def handler(_element: Any) -> str:
        return uri

    return handler


def _to_json(ds: Dataset, prefix: str, threshold: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in ds.keys():  # noqa: SIM118  (iterating a Dataset would decode raw elements)
        tag = Tag(tag)
        if tag.group == 0x0002 or tag.element == 0x0000:
            continue  # file meta and group lengths are not part of the JSON model
        key = _tag_hex(tag)
        raw = ds.get_item(tag, keep_deferred=True)
        vr = _vr_of(ds, tag, raw)
        length = getattr(raw, "length", 0) if isinstance(raw, RawDataElement) else None
        if vr in BULK_VRS and (
            int(tag) in PIXEL_TAGS or (length is not None and (length > threshold))
        ):
            out[key] = {"vr": vr.split(" ")[0] if " " in vr else vr, "BulkDataURI": prefix + key}
            continue
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                items = [
                    _to_json(item, f"{prefix}{key}.{i}.", threshold)
                    for i, item in enumerate(elem.value)
                ]
                out[key] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
            else:
                out[key] = elem.to_json_dict(
                    bulk_data_element_handler=_constant(prefix + key),
                    bulk_data_threshold=threshold,
                )
        except Exception:  # noqa: BLE001 — an unreadable value stays retrievable as bulk data
            out[key] = {"vr": "UN" if " " in vr else vr, "BulkDataURI": prefix + key}
    return out


def absolutize_bulkdata(json_text: str, base_url: str) -> str:
    """Turn the stored relative BulkDataURIs into absolute ones under ``base_url``."""
    return json_text.replace(
        DICOM_JSON_BULK_PREFIX, DICOM_JSON_BULK_PREFIX + base_url.rstrip("/") + "/"
    )


def find_element(ds: Dataset, path: str) -> Any:
    """Resolve a bulk-data path (``7FE00010`` or ``00540016.0.00181072``) to its data element.

    Raises ``InvalidInput`` for a malformed path and ``KeyError``/``IndexError`` when absent.
    """
    parts = path.split(".")
    if len(parts) % 2 != 1 or not all(re.fullmatch(r"[0-9A-Fa-f]{8}", p) for p in parts[::2]):
        raise InvalidInput("malformed bulk data path")
    current: Any = ds
    for i in range(0, len(parts) - 1, 2):
        seq = current[int(parts[i], 16)]
        current = seq.value[int(parts[i + 1])]
    return current[int(parts[-1], 16)]


def da_date(value: str | None) -> date | None:
    """The date of a DICOM DA value (``YYYYMMDD``, PS3.5 Table 6.2-1); None when it is empty
    or not a valid date."""
    if not value or len(value) < 8 or not value[:8].isdigit():
        return None
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None
