"""The DICOM JSON writer of the index attributes (``medflow.store.query``) against pydicom.

QIDO-RS results are written as text straight from the index columns. For every index attribute
and awkward values (empty, multi-valued with backslashes, PN groups, non-ASCII, quotes,
backslashes, control characters, integers) the text must be exactly what
``json.dumps(Dataset.to_json_dict(), ensure_ascii=False, separators=(",", ":"))`` gives for a
data set holding the same value with the attribute's dictionary VR.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from medflow.store.query import (
    INDEX_VR,
    Attrs,
    QueryResult,
    element_json,
    object_json,
    series_attrs,
)

TEXT = [
    "CT",
    "CT\\MR",
    "\\MR",
    "CT\\",
    "CT\\\\MR",
    "\\",
    " padded ",
    "   ",
    'quote " inside',
    "back\\slash\\\\twice",
    "control \x01 \x1f \x7f \t \n \r end",
    "Müller é 中文 😀",
    "\u2028\u2029 separators",
    "</script><!--",
    "x" * 300,
]
PN = [
    "Doe^John",
    "Doe^John^^Dr^Jr",
    "Yamada^Tarou=山田^太郎=やまだ^たろう",
    "=山田^太郎",
    "==やまだ",
    "Doe^John=",
    "Doe^John==",
    "A= ",
    "a=b==d",
    "a=b=c=d",
    "a===",
    "^",
    "=",
    " Doe ^ John ",
    'O"Brien^Mary',
    "Doe^John\\Roe^Jane",
    "Yamada^Tarou=山田^太郎\\Doe^Jane",
    "Müller^Hans\x01",
]
INTEGERS = [0, 1, -3, 65535, 2**40]


def pydicom_text(tag: int, value: Any) -> str:
    """What the pydicom path gives: the value with its dictionary VR (a string split at
    backslashes unless LT/ST/UT, as a multi-valued DICOM string is), then ``to_json_dict``."""
    vr = INDEX_VR[tag]
    if value == "":
        value = None
    if isinstance(value, str) and "\\" in value and vr not in ("LT", "ST", "UT"):
        value = value.split("\\")
    ds = Dataset()
    ds.add(DataElement(tag, vr, value, validation_mode=pydicom_config.IGNORE))
    return json.dumps(ds.to_json_dict(), ensure_ascii=False, separators=(",", ":"))


def ours(tag: int, value: Any) -> str:
    return "{" + element_json(tag, value) + "}"


def tags_of(*vrs: str) -> list[int]:
    return [tag for tag, vr in INDEX_VR.items() if vr in vrs]


def test_the_fixed_set_has_known_vrs() -> None:
    assert set(INDEX_VR.values()) == {
        "CS",
        "DA",
        "IS",
        "LO",
        "PN",
        "SH",
        "SQ",
        "TM",
        "UI",
        "UR",
        "US",
    }
    assert INDEX_VR[0x00100010] == "PN" and INDEX_VR[0x00280010] == "US"


@pytest.mark.parametrize("tag", tags_of("CS", "DA", "LO", "SH", "TM", "UI", "UR"))
@pytest.mark.parametrize("value", [None, "", *TEXT])
def test_text_attributes_match_pydicom(tag: int, value: str | None) -> None:
    assert ours(tag, value) == pydicom_text(tag, value)


@pytest.mark.parametrize("tag", tags_of("PN"))
@pytest.mark.parametrize("value", [None, "", *PN, *(t for t in TEXT if "" not in t.split("\\"))])
def test_person_names_match_pydicom(tag: int, value: str | None) -> None:
    assert ours(tag, value) == pydicom_text(tag, value)


@pytest.mark.parametrize("value", ["Doe^John\\", "\\Doe^John", "A\\\\B", "=\\Doe", "\\"])
def test_an_empty_person_name_among_several_is_null(value: str) -> None:
    """PS3.18 F.2.5: an empty value of a multi-valued attribute is null (pydicom raises)."""
    with pytest.raises(IndexError):
        pydicom_text(0x00100010, value)
    expected = [
        None
        if not p.strip("=")
        else json.loads(pydicom_text(0x00100010, p))["00100010"]["Value"][0]
        for p in value.split("\\")
    ]
    assert json.loads(ours(0x00100010, value))["00100010"] == {"vr": "PN", "Value": expected}


@pytest.mark.parametrize("tag", tags_of("IS", "US"))
@pytest.mark.parametrize("value", [None, *INTEGERS])
def test_integers_match_pydicom(tag: int, value: int | None) -> None:
    assert ours(tag, value) == pydicom_text(tag, value)


@pytest.mark.parametrize("value", [[], [""], ["CT"], ["", "CT", "MR"], ["Ü\\x", 'a"b']])
def test_lists_of_strings_match_pydicom(value: list[str]) -> None:
    tag = 0x00080061  # ModalitiesInStudy, computed as a list
    ds = Dataset()
    ds.add(DataElement(tag, "CS", value or None, validation_mode=pydicom_config.IGNORE))
    expected = json.dumps(ds.to_json_dict(), ensure_ascii=False, separators=(",", ":"))
    assert ours(tag, value) == expected


def test_put_leaves_out_unknown_optional_values_and_keeps_required_ones_empty() -> None:
    attrs = Attrs()
    attrs.put(0x00080201, "+0100")
    attrs.put(0x00080201, None)  # an unknown optional value replaces nothing
    attrs.put(0x00081030, "")
    attrs.put(0x00080020, None, required=True)
    attrs.put(0x00200011, 0, required=True)
    assert json.loads(object_json(attrs)) == {
        "00080020": {"vr": "DA"},
        "00080201": {"vr": "SH", "Value": ["+0100"]},
        "00200011": {"vr": "IS", "Value": [0]},
    }


def test_an_object_is_in_tag_order_with_stored_attributes_passed_through() -> None:
    attrs = Attrs()
    attrs.put(0x0020000D, "1.2.3")
    attrs.put(0x00100010, "Doe^John")
    stored = {"vr": "DS", "Value": [1024.0, -0.5]}
    attrs.put_parsed("00281050", stored)
    attrs.put_parsed("00080070", {"vr": "LO", "Value": ['A"CME/x']})
    text = object_json(attrs)
    assert list(json.loads(text)) == ["00080070", "00100010", "0020000D", "00281050"]
    attrs.put(0x00080005, "ISO_IR 192")
    assert object_json(attrs).startswith('{"00080005":')
    del attrs["00080005"]
    ds = Dataset()
    ds.Manufacturer = 'A"CME/x'
    ds.PatientName = "Doe^John"
    ds.StudyInstanceUID = "1.2.3"
    ds.WindowCenter = [1024.0, -0.5]
    expected = dict(sorted(ds.to_json_dict().items()))
    assert text == json.dumps(expected, ensure_ascii=False, separators=(",", ":"))


class Row:
    """A series row as the query reads it (attribute access by column name)."""

    def __init__(self, **values: Any) -> None:
        self.__dict__.update(values)


@pytest.mark.parametrize(("sps", "rp"), [("SPS\\1", "RP é"), ("SPS1", None), (None, "RP1")])
def test_series_attributes_with_a_request_attributes_item_match_pydicom(
    sps: str | None, rp: str | None
) -> None:
    se = Row(
        pk=1,
        modality="CT\\PT",
        series_uid="1.2.3.4",
        series_number=None,
        series_description='Ax "T1"',
        body_part_examined="",
        performed_procedure_step_start_date="20240101",
        performed_procedure_step_start_time="120000.5",
        scheduled_procedure_step_id=sps,
        requested_procedure_id=rp,
        timezone_offset="-0500",
    )
    attrs = Attrs()
    series_attrs(attrs, se, "1.2.3", "https://pacs/dicomweb")

    ds = Dataset()
    ds.Modality = ["CT", "PT"]
    ds.SeriesInstanceUID = "1.2.3.4"
    ds.add_new(0x00200011, "IS", None)
    ds.SeriesDescription = 'Ax "T1"'
    ds.PerformedProcedureStepStartDate = "20240101"
    ds.PerformedProcedureStepStartTime = "120000.5"
    item = Dataset()
    item.add(DataElement(0x00400009, "SH", sps.split("\\") if sps else None))
    item.add(DataElement(0x00401001, "SH", rp))
    ds.RequestAttributesSequence = [item]
    ds.StudyInstanceUID = "1.2.3"
    ds.TimezoneOffsetFromUTC = "-0500"
    ds.RetrieveURL = "https://pacs/dicomweb/studies/1.2.3/series/1.2.3.4"
    expected = dict(sorted(ds.to_json_dict().items()))  # pydicom keeps the order of insertion
    assert object_json(attrs) == json.dumps(expected, ensure_ascii=False, separators=(",", ":"))


def test_query_result_text_and_rows() -> None:
    texts = [
        '{"00100010":{"vr":"PN","Value":[{"Alphabetic":"Müller"}]}}',
        '{"0020000D":{"vr":"UI"}}',
    ]
    result = QueryResult(texts=texts)
    assert result.rows == [json.loads(t) for t in texts]
    assert json.loads(result.json_bytes().decode("utf-8")) == result.rows
    assert QueryResult(texts=[]).json_bytes() == b"[]"
