"""Attribute matching of query keys (PS3.4 C.2.2.2) and attribute names (PS3.18 8.3.4.1)."""

from __future__ import annotations

import pytest

from medflow.core.errors import InvalidInput
from medflow.dicom.matching import (
    AttributePath,
    MatchType,
    parse_attribute,
    parse_include_fields,
    parse_match,
    parse_tag,
    range_upper,
    wildcard_regex,
)


def m(name: str, value: str):  # type: ignore[no-untyped-def]
    return parse_match(parse_attribute(name), value)


# -- attribute names ---------------------------------------------------------------------------
def test_keyword_and_tag_name_the_same_attribute() -> None:
    assert parse_attribute("PatientName") == parse_attribute("00100010")
    assert parse_attribute("00100010") == AttributePath((0x00100010,), "PN")
    assert parse_tag("0020000d") == 0x0020000D


def test_dotted_sequence_path() -> None:
    path = parse_attribute("RequestAttributesSequence.ScheduledProcedureStepID")
    assert path.tags == (0x00400275, 0x00400009)
    assert path.vr == "SH"
    assert path.keyword == "RequestAttributesSequence.ScheduledProcedureStepID"
    assert parse_attribute("00400275.00401001").keyword == (
        "RequestAttributesSequence.RequestedProcedureID"
    )


@pytest.mark.parametrize(
    "name",
    [
        "NotAKeyword",
        "patientname",
        "0010001",
        "0010001G",
        "",
        "PatientName.PatientID",
        "limit",
        "'; DROP TABLE study; --",
    ],
)
def test_bad_attribute_names(name: str) -> None:
    with pytest.raises(InvalidInput):
        parse_attribute(name)


def test_private_tag_is_a_name_with_unknown_vr() -> None:
    assert parse_attribute("00091001").vr == "UN"


def test_include_fields() -> None:
    assert parse_include_fields(["all"]) == (True, ())
    everything, fields = parse_include_fields(["00081048,PhysiciansOfRecord", "StudyDescription"])
    assert not everything
    assert [f.tag for f in fields] == [0x00081048, 0x00081030]
    with pytest.raises(InvalidInput):
        parse_include_fields(["Bogus"])


# -- universal, single, wild card ----------------------------------------------------------------
@pytest.mark.parametrize("value", ["", "*", "**", "  "])
def test_universal_matching(value: str) -> None:
    match = m("PatientID", value)
    assert match.type is MatchType.UNIVERSAL
    assert match.matches(None) and match.matches("anything")


def test_single_value_is_case_sensitive_except_person_names() -> None:
    pid = m("PatientID", "abc")
    assert pid.type is MatchType.SINGLE
    assert pid.matches("abc") and not pid.matches("ABC") and not pid.matches(None)
    name = m("PatientName", "müller^hans")
    assert name.matches("MULLER^HANS") and name.matches("Müller^Hans")


def test_wildcards() -> None:
    match = m("PatientName", "DOE*")
    assert match.type is MatchType.WILDCARD
    assert match.matches("Doe^John") and match.matches("DOE") and not match.matches("JDOE")
    q = m("AccessionNumber", "A?C*")
    assert q.matches("ABC123") and not q.matches("AC") and not q.matches("abc1")


def test_wildcard_regex_treats_everything_else_literally() -> None:
    regex = wildcard_regex("a.b%_[x]*")
    assert regex.fullmatch("a.b%_[x]anything")
    assert not regex.fullmatch("aXb%_[x]")


def test_sql_metacharacters_are_plain_values() -> None:
    for value in ("O'Brien", "100%", "a_b", "'; DROP TABLE study; --", 'say "hi"'):
        match = m("PatientID", value)
        assert match.type is MatchType.SINGLE and match.value == value


def test_wildcards_are_not_allowed_in_uids_numbers_dates() -> None:
    for name, value in [
        ("StudyInstanceUID", "1.2.*3"),
        ("SeriesNumber", "1*"),
        ("StudyDate", "2020*"),
    ]:
        with pytest.raises(InvalidInput):
            m(name, value)


# -- UID lists -----------------------------------------------------------------------------------
def test_uid_list_with_commas_and_backslashes() -> None:
    match = m("StudyInstanceUID", "1.2.3,1.2.4\\1.2.5")
    assert match.type is MatchType.LIST
    assert match.values == ("1.2.3", "1.2.4", "1.2.5")
    assert match.matches("1.2.4") and not match.matches("1.2.6")
    assert m("StudyInstanceUID", "1.2.3").type is MatchType.SINGLE


@pytest.mark.parametrize("value", ["1.2.x", "1..2", "1.2.3,abc", "1" * 65, "1.2.3'--"])
def test_invalid_uids(value: str) -> None:
    with pytest.raises(InvalidInput):
        m("StudyInstanceUID", value)


def test_modalities_in_study_takes_a_list() -> None:
    match = m("ModalitiesInStudy", "CT\\MR")
    assert match.type is MatchType.LIST and match.values == ("CT", "MR")
    assert m("ModalitiesInStudy", "CT,MR").values == ("CT", "MR")
    assert m("ModalitiesInStudy", "CT").type is MatchType.SINGLE


# -- ranges --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("20200101-20201231", "20200101", "20201231"),
        ("-20201231", None, "20201231"),
        ("20200101-", "20200101", None),
        ("2020-", "2020", None),
        ("-2020", None, "2020"),
        ("202003-202004", "202003", "202004"),
    ],
)
def test_date_ranges(value: str, low: str | None, high: str | None) -> None:
    match = m("StudyDate", value)
    assert match.type is MatchType.RANGE
    assert (match.low, match.high) == (low, high)


def test_date_range_semantics() -> None:
    year = m("StudyDate", "-2020")
    assert year.matches("20201231") and not year.matches("20210101")
    spring = m("StudyDate", "202003-202004")
    assert spring.matches("20200301") and spring.matches("20200430")
    assert not spring.matches("20200501") and not spring.matches("20200229")
    exact = m("StudyDate", "20200115")
    assert exact.type is MatchType.SINGLE and exact.matches("20200115")


@pytest.mark.parametrize(
    "value",
    [
        "2020-01-01",
        "20201301x",
        "abc",
        "-",
        "20201231-20200101",
        "2020010",
        "1-2-3",
        "20200101-2019",
    ],
)
def test_bad_dates(value: str) -> None:
    with pytest.raises(InvalidInput):
        m("StudyDate", value)


def test_time_ranges_and_partial_times() -> None:
    morning = m("StudyTime", "08-1200")
    assert morning.type is MatchType.RANGE
    assert morning.matches("080000") and morning.matches("120000")
    assert morning.matches("0930") and morning.matches("120059.9")
    assert not morning.matches("120100") and not morning.matches("07")
    hour = m("StudyTime", "10")
    assert hour.type is MatchType.SINGLE
    assert hour.matches("101500.123") and not hour.matches("110000")
    with pytest.raises(InvalidInput):
        m("StudyTime", "25:00")


def test_datetime_ranges() -> None:
    match = m("AcquisitionDateTime", "20200101-2020")
    assert match.type is MatchType.RANGE and match.high == "2020"
    assert match.matches("20200615120000") and not match.matches("20210101")
    with pytest.raises(InvalidInput):
        m("AcquisitionDateTime", "2020x-")


def test_range_upper_pads_partial_bounds() -> None:
    assert range_upper("DA", "2020") == "20209999"
    assert range_upper("DA", "20200101") == "20200101"
    assert range_upper("TM", "12") == "129999.999999"
    assert range_upper("TM", "1230") == "123099.999999"
    assert range_upper("CS", "X") == "X"


# -- numbers, sequences, bad values -------------------------------------------------------------
def test_integer_strings() -> None:
    match = m("SeriesNumber", "007")
    assert match.type is MatchType.SINGLE and match.value == "7"
    assert match.matches("7") and not match.matches("8")
    for bad in ("seven", "1.5", "1-2"):
        with pytest.raises(InvalidInput):
            m("SeriesNumber", bad)


def test_sequence_matching_keys() -> None:
    match = m("RequestAttributesSequence.RequestedProcedureID", "RP1")
    assert match.attribute.tags == (0x00400275, 0x00401001)
    assert match.type is MatchType.SINGLE
    assert m("RequestAttributesSequence", "").type is MatchType.UNIVERSAL
    with pytest.raises(InvalidInput):
        m("RequestAttributesSequence", "x")


@pytest.mark.parametrize("value", ["a\x00b", "line\nbreak", "x" * 2000])
def test_control_characters_and_overlong_values(value: str) -> None:
    with pytest.raises(InvalidInput):
        m("PatientID", value)


def test_text_values_keep_their_spaces() -> None:
    assert m("PatientID", " A1 ").value == "A1"
    assert m("StudyComments", " a ").value == " a "
