"""DICOM JSON (PS3.18 F.2) of query results, written straight from the index columns.

This is deliberately narrow (DESIGN.md: never hand-roll DICOM JSON in general): only the index
attributes below, whose VRs are fixed and whose values are plain strings or integers, are
written here, producing exactly the text of ``json.dumps(Dataset.to_json_dict(),
ensure_ascii=False, separators=(",", ":"))`` for a data set built from the same values
(tests/unit/store/test_query_json.py checks that). Everything else (``includefield``
attributes from the stored metadata) is DICOM JSON that pydicom wrote at store time.
"""

from __future__ import annotations

import json
from typing import Any

from medflow.dicom.matching import vr_of

INDEX_TAGS = (
    *(0x00080005, 0x00080020, 0x00080030, 0x00080050, 0x00080056, 0x00080061, 0x00080090),
    *(0x00080201, 0x00081030, 0x00081190, 0x00100010, 0x00100020, 0x00100021, 0x00100030),
    *(0x00100040, 0x0020000D, 0x00200010, 0x00201206, 0x00201208),  # study level
    *(0x00080060, 0x0008103E, 0x00180015, 0x0020000E, 0x00200011, 0x00201209, 0x00400244),
    *(0x00400245, 0x00400275, 0x00400009, 0x00401001),  # series level
    *(0x00080016, 0x00080018, 0x00200013, 0x00280008, 0x00280010, 0x00280011, 0x00280100),
)
INDEX_VR: dict[int, str] = {tag: vr_of(tag) for tag in INDEX_TAGS}
"""Dictionary VR of each index attribute: DA TM UI LO SH CS PN UR (text), IS US (integers), SQ."""
_KEY = {tag: f"{tag:08X}" for tag in INDEX_TAGS}
_EMPTY = {tag: f'"{tag:08X}":{{"vr":"{vr}"}}' for tag, vr in INDEX_VR.items()}
_OPEN = {tag: f'"{tag:08X}":{{"vr":"{vr}","Value":[' for tag, vr in INDEX_VR.items()}
_SINGLE_VALUED = frozenset({"LT", "ST", "UT"})  # a backslash is text, not a delimiter
_CONVERTED = frozenset({"PN", "UI"})  # values pydicom converts (PersonName, UID)
_PN_GROUPS = ('{"Alphabetic":', ',"Ideographic":', ',"Phonetic":')
_string = json.encoder.encode_basestring  # a JSON string literal, non-ASCII kept (as dumps)
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _pn_value(value: str) -> str | None:
    """One PN value as its object (F.2.2): the ``=`` groups less empty trailing ones, then the
    first three (as pydicom); None when nothing is left (pydicom's empty PersonName)."""
    groups = value.split("=")
    while groups and not groups[-1]:
        groups.pop()
    if not groups:
        return None
    return "".join(key + _string(g) for key, g in zip(_PN_GROUPS, groups[:3], strict=False)) + "}"


def _value_text(vr: str, value: str | list[str]) -> str | None:
    """The items of "Value" of a non-empty string or list; None when it has none."""
    if isinstance(value, list):
        parts = value
    elif vr in _SINGLE_VALUED or "\\" not in value:
        parts = [value]
    else:
        parts = value.split("\\")
    if vr == "UI":  # pydicom's UID strips white space
        parts = [p.strip() for p in parts]
    if vr == "PN":
        if len(parts) == 1:
            return _pn_value(parts[0])
        # An empty value among several is null (PS3.18 F.2.5); pydicom raises there.
        return ",".join(_pn_value(p) or "null" for p in parts)
    if len(parts) == 1 and not parts[0]:
        return None
    return ",".join(map(_string, parts))


def element_json(tag: int, value: str | int | list[str] | None) -> str:
    """``"GGGGEEEE":{"vr":..,"Value":[..]}`` for an index attribute (not SQ): a string (values
    separated by backslashes unless LT/ST/UT), an integer or a list of strings. None, "" and []
    give the empty attribute ``{"vr":..}`` (type 1/2 return keys that have no value)."""
    if value is None or value == "" or value == []:
        return _EMPTY[tag]
    if isinstance(value, int):  # IS, US from integer columns and counts
        return _OPEN[tag] + str(value) + "]}"
    vr = INDEX_VR[tag]
    if type(value) is str and "\\" not in value and vr not in _CONVERTED:  # the common case
        return _OPEN[tag] + _string(value) + "]}"
    items = _value_text(vr, value)
    return _EMPTY[tag] if items is None else _OPEN[tag] + items + "]}"


def object_json(elements: dict[str, str]) -> str:
    """A DICOM JSON object from attribute texts (``element_json``) keyed by tag in hex, in
    tag order."""
    return "{" + ",".join([elements[k] for k in sorted(elements)]) + "}"


class Attrs(dict[str, str]):
    """One result being built: tag (hex) -> attribute text. ``put`` is pydicom's
    ``Dataset.add`` of a value with its dictionary VR; None is left out unless ``required``
    (type R attributes are returned empty when unknown, PS3.18 10.6.3.3)."""

    def put(self, tag: int, value: str | int | list[str] | None, *, required: bool = False) -> None:
        if value is None or value == "" or value == []:
            if required:
                self[_KEY[tag]] = _EMPTY[tag]
        else:
            self[_KEY[tag]] = element_json(tag, value)

    def put_parsed(self, key: str, attribute: Any) -> None:
        """An attribute of the stored DICOM JSON metadata (as parsed), written back as is."""
        self[key] = f'"{key}":{_dumps(attribute)}'


def study_attrs(out: Attrs, st: Any, base: str) -> None:
    """PS3.18 Table 10.6.3-3 from the study row (the computed ones are added separately)."""
    for tag, value in (
        (0x00080020, st.study_date),
        (0x00080030, st.study_time),
        (0x00080050, st.accession_number),
        (0x00080090, st.referring_physician_name),
        (0x00100010, st.patient_name),
        (0x00100020, st.patient_id),
        (0x00100030, st.patient_birth_date),
        (0x00100040, st.patient_sex),
        (0x0020000D, st.study_uid),
        (0x00200010, st.study_id),
    ):
        out[_KEY[tag]] = element_json(tag, value)  # required: empty when unknown
    put = out.put
    put(0x00080005, st.specific_character_set)
    put(0x00080201, st.timezone_offset)
    put(0x00081030, st.study_description)
    put(0x00100021, st.issuer_of_patient_id)
    put(0x00080056, "ONLINE")
    if base:
        put(0x00081190, f"{base}/studies/{st.study_uid}")


def series_attrs(out: Attrs, se: Any, study_uid: str, base: str) -> None:
    """PS3.18 Table 10.6.3-4 from the series row."""
    put = out.put
    put(0x00080060, se.modality, required=True)
    put(0x0020000E, se.series_uid, required=True)
    put(0x00200011, se.series_number, required=True)
    put(0x0008103E, se.series_description)
    put(0x00180015, se.body_part_examined)
    put(0x00400244, se.performed_procedure_step_start_date)
    put(0x00400245, se.performed_procedure_step_start_time)
    if se.scheduled_procedure_step_id or se.requested_procedure_id:
        item = Attrs()
        item.put(0x00400009, se.scheduled_procedure_step_id, required=True)
        item.put(0x00401001, se.requested_procedure_id, required=True)
        out[_KEY[0x00400275]] = _OPEN[0x00400275] + object_json(item) + "]}"
    put(0x0020000D, study_uid)
    if "00080201" not in out:
        put(0x00080201, se.timezone_offset)
    if base:
        put(0x00081190, f"{base}/studies/{study_uid}/series/{se.series_uid}")


def instance_attrs(out: Attrs, inst: Any, uids: tuple[str, str], base: str) -> None:
    """PS3.18 Table 10.6.3-5 from the instance row."""
    put = out.put
    put(0x00080016, inst.sop_class_uid, required=True)
    put(0x00080018, inst.sop_instance_uid, required=True)
    put(0x00200013, inst.instance_number, required=True)
    put(0x00080056, "ONLINE")
    put(0x00280010, inst.rows)
    put(0x00280011, inst.columns)
    put(0x00280100, inst.bits_allocated)
    put(0x00280008, inst.number_of_frames)
    if base:
        study, series = uids
        put(0x00081190, f"{base}/studies/{study}/series/{series}/instances/{inst.sop_instance_uid}")
