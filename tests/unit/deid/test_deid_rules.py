"""The rules of PS3.15 Annex E as medflow applies them, on instances built in code."""

from __future__ import annotations

import contextlib
import io
import random
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import JPEGBaseline8Bit

from medflow.core.errors import InvalidInput
from medflow.deid.dicom import DicomDeidentifier, DicomdirSkipped, Excluded, shift_da, shift_dt
from medflow.deid.keys import DeidKeys
from medflow.deid.profile import parse_profile
from medflow.fhir.identifiers import patient_system
from tests.factories import make_instance, to_bytes
from tests.unit.deid.conftest import shipped_file


def _read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_same_key_same_bytes_other_key_other_values(make) -> None:
    data = to_bytes(make_instance(sop_uid="1.2.3.4.5.6", study_uid="1.2.3.4", series_uid="1.2.3.5"))
    a, b = make("research").deidentify_bytes(data), make("research").deidentify_bytes(data)
    assert a == b
    c = _read(make("research", key=b"another-key-0123456789").deidentify_bytes(data))
    a_ds = _read(a)
    assert a_ds.PatientID != c.PatientID and a_ds.PatientName != c.PatientName
    assert a_ds.SOPInstanceUID != c.SOPInstanceUID != "1.2.3.4.5.6"
    assert a_ds.StudyInstanceUID != c.StudyInstanceUID


def test_patient_pseudonym_is_the_fhir_pair(make, keys: DeidKeys) -> None:
    out = make("basic").deidentify(make_instance(patient_id="MRN-77"))
    expected = keys.patient_pseudonym(patient_system(None), "MRN-77")
    assert out.PatientID == expected and str(out.PatientName) == expected
    with_issuer = DicomDeidentifier(make("basic").profile, keys, use_issuer=True)
    out = with_issuer.deidentify(make_instance(patient_id="MRN-77", IssuerOfPatientID="HOSP A"))
    assert out.PatientID == keys.patient_pseudonym(
        patient_system("HOSP A", use_issuer=True), "MRN-77"
    )
    assert "IssuerOfPatientID" not in out
    assert out.AccessionNumber == keys.identifier("accession", "ACC-001")


def test_modified_dates_shift_by_patient_and_keep_intervals(make, keys: DeidKeys) -> None:
    deid = make("research")
    first = deid.deidentify(
        make_instance(
            study_date="20240115", study_time="101500", AcquisitionDateTime="20240115103000.5+0100"
        )
    )
    second = deid.deidentify(make_instance(study_date="20240301"))
    shift = keys.date_shift(patient_system(None), "PAT-001")
    assert first.StudyDate == (date(2024, 1, 15) + shift).strftime("%Y%m%d")
    assert first.StudyTime == "101500"
    assert first.AcquisitionDateTime == first.StudyDate + "103000.5+0100"
    d1 = date.fromisoformat(
        first.StudyDate[:4] + "-" + first.StudyDate[4:6] + "-" + first.StudyDate[6:]
    )
    d2 = date.fromisoformat(
        second.StudyDate[:4] + "-" + second.StudyDate[4:6] + "-" + second.StudyDate[6:]
    )
    assert (d2 - d1).days == (date(2024, 3, 1) - date(2024, 1, 15)).days
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"
    assert first.PatientBirthDate == ""  # Table E.1-1: Z without a date option column
    other = deid.deidentify(make_instance(patient_id="PAT-002", study_date="20240115"))
    assert (
        other.StudyDate != first.StudyDate
        or keys.date_shift(patient_system(None), "PAT-002") == shift
    )


def test_date_policies_full_and_none(make) -> None:
    full = make(parse_profile({"options": ["retain-long-full-dates"]}))
    out = full.deidentify(make_instance(study_date="20240115"))
    assert (
        out.StudyDate == "20240115" and out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    )
    basic = make("basic").deidentify(make_instance(study_date="20240115", ContentDate="20240115"))
    assert basic.StudyDate == "" and basic.ContentDate == "19000101"
    assert basic.LongitudinalTemporalInformationModified == "REMOVED"
    assert shift_da("2024", -__import__("datetime").timedelta(days=1)) == ""
    assert shift_dt("20240101", -__import__("datetime").timedelta(days=1)) == "20231231"


def test_uids_registered_kept_others_mapped(make, keys: DeidKeys) -> None:
    ds = make_instance(
        sop_uid="1.2.3.9",
        IrradiationEventUID="1.2.3.10",
        ReferencedSOPClassUIDInFile="1.2.840.10008.5.1.4.1.1.2",
    )
    ds.SourceImageSequence = Sequence([Dataset()])
    ds.SourceImageSequence[0].ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SourceImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.9"
    out = make("basic").deidentify(ds)
    assert out.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert out.SOPInstanceUID == keys.uid("1.2.3.9")
    assert out.SourceImageSequence[0].ReferencedSOPInstanceUID == keys.uid("1.2.3.9")
    assert out.SourceImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert out.file_meta.MediaStorageSOPInstanceUID == keys.uid("1.2.3.9")
    kept = make(parse_profile({"options": ["retain-uids"]})).deidentify(ds)
    assert kept.SOPInstanceUID == "1.2.3.9"


def _with_private(ds: Dataset) -> Dataset:
    block = ds.private_block(0x0019, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", "Doe John secret")
    block.add_new(0x11, "DS", "42")
    item = Dataset()
    item.add_new(0x00291010, "LO", "nested secret")
    item.add_new(0x00290010, "LO", "OTHER")
    item.PatientName = "Doe^Johnny"
    ds.ReferencedImageSequence = Sequence([item])
    return ds


def test_private_attributes_removed_and_safe_list(make) -> None:
    out = make("basic").deidentify(_with_private(make_instance()))
    data = to_bytes(out)
    assert not [e for e in out.iterall() if e.tag.group % 2 == 1]
    assert b"secret" not in data and b"ACME" not in data
    safe = {"options": ["retain-safe-private"], "safe_private": [["ACME 1.0", "0x0019", "0x11"]]}
    out = make(parse_profile(safe)).deidentify(_with_private(make_instance()))
    private = [e for e in out.iterall() if e.tag.group % 2 == 1]
    assert sorted(str(e.value) for e in private) == ["42", "ACME 1.0"]
    listed_only = parse_profile({"safe_private": [["ACME 1.0", "0x0019", "0x11"]]})
    out = make(listed_only).deidentify(_with_private(make_instance()))
    assert not [e for e in out.iterall() if e.tag.group % 2 == 1]


def test_overlays_curves_and_unknown_tags_removed(make) -> None:
    ds = make_instance()
    ds.add_new(0x00110000 - 0x10000 + 0x1234, "LO", "Unknown Even Tag")  # (0010,1234)
    ds.add_new(0x60000010, "US", 16)
    ds.add_new(0x60000011, "US", 16)
    ds.add_new(0x60003000, "OW", b"\0" * 32)
    ds.add_new(0x50000005, "US", 1)
    for profile in ("basic", "research"):
        out = make(profile).deidentify(ds)
        assert not [e for e in out if e.tag.group in (0x5000, 0x6000)]
        assert 0x00101234 not in out


def test_marking(make) -> None:
    out = make("research").deidentify(make_instance())
    assert out.PatientIdentityRemoved == "YES"
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113103", "113104", "113105", "113107", "113108"]
    assert (
        "medflow" in out.DeidentificationMethod[0]
        and "profile research" in out.DeidentificationMethod
    )


def test_descriptors_and_structured_text(make) -> None:
    ds = make_instance(
        patient_name="Doe^John",
        InstitutionName="Saint Elsewhere",
        study_description="CT CHEST Doe 20240115 Saint Elsewhere follow-up",
    )
    text = Dataset()
    text.ValueType = "TEXT"
    text.RelationshipType = "CONTAINS"
    text.TextValue = "Mr John Doe seen on 2024-01-15, nodule stable"
    ds.ContentSequence = Sequence([text])
    basic = make("basic").deidentify(ds)
    assert "StudyDescription" not in basic
    assert basic.ContentSequence[0].TextValue == "ANONYMIZED"
    research = make("research").deidentify(ds)
    assert research.StudyDescription == "CT CHEST *** *** *** follow-up"
    assert research.ContentSequence[0].TextValue == "Mr *** *** seen on ***, nodule stable"
    assert "Saint" not in str(to_bytes(research))
    short = make_instance(patient_name="Li^Ann", study_description="Ann Li annotation review")
    assert make("research").deidentify(short).StudyDescription == "*** Li annotation review"


def _us(**extra: object) -> Dataset:
    ds = make_instance(
        modality="US", sop_class_uid="1.2.840.10008.5.1.4.1.1.6.1", rows=8, columns=10, **extra
    )
    ds.BitsStored, ds.HighBit = 16, 15
    ds.PixelData = (np.arange(80, dtype=np.uint16) + 100).tobytes()
    return ds


BLANK = {
    "burned_in": {
        "policy": "blank",
        "regions": [{"modality": "US", "rows": 8, "columns": 10, "boxes": [[0, 0, 4, 2]]}],
    }
}


def test_burned_in_exclude_and_blank(make) -> None:
    with pytest.raises(Excluded, match="burned-in"):
        make("basic").deidentify(_us())
    with pytest.raises(Excluded, match="burned-in"):
        make("basic").deidentify(make_instance(BurnedInAnnotation="YES"))
    assert make("basic").deidentify(_us(BurnedInAnnotation="NO")).Modality == "US"
    out = _read(make(parse_profile(BLANK)).deidentify_bytes(to_bytes(_us())))
    pixels = out.pixel_array
    assert (pixels[0:2, 0:4] == 100).all() and pixels[2, 0] == 120 and pixels[0, 4] == 104
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    with pytest.raises(Excluded, match="no region configured"):
        make(parse_profile(BLANK)).deidentify(_us(Rows=9))
    broken = _us()
    broken.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    broken.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a jpeg"])
    with pytest.raises(Excluded, match="cannot be decoded"):
        make(parse_profile(BLANK)).deidentify(broken)


def test_odd_input_is_invalid_input(make) -> None:
    deid = make("basic")
    for data in (b"", b"not dicom at all", b"\0" * 128 + b"DICM" + b"\x02\x00"):
        with pytest.raises(InvalidInput):
            deid.deidentify_bytes(data)
    dicomdir = pydicom.data.get_testdata_file("DICOMDIR")
    with pytest.raises(DicomdirSkipped):
        deid.deidentify_bytes(Path(dicomdir).read_bytes())
    no_sop = make_instance()
    del no_sop.SOPInstanceUID
    with pytest.raises(InvalidInput, match="SOP"):
        deid.deidentify_bytes(to_bytes(no_sop))
    whole = to_bytes(make_instance())
    for cut in (140, 200, 400):
        with pytest.raises(InvalidInput):
            deid.deidentify_bytes(whole[:cut] + b"\x08\x00")


def test_damaged_files_never_crash(make) -> None:
    """Truncated and bit-flipped copies of real files: InvalidInput (or Excluded), no crash."""
    rng = random.Random(7)
    deid = make("research")
    for name in ("CT_small.dcm", "test-SR.dcm", "rtplan.dcm", "image_dfl.dcm", "liver_1frame.dcm"):
        data = shipped_file(name).read_bytes()
        for i in range(20):
            damaged = bytearray(data)
            if i % 2:
                damaged = damaged[: rng.randrange(1, len(damaged))]
            else:
                for _ in range(8):
                    damaged[rng.randrange(128, min(len(damaged), 4000))] = rng.randrange(256)
            with warnings.catch_warnings(), contextlib.suppress(InvalidInput):
                warnings.simplefilter("ignore")
                deid.deidentify_bytes(bytes(damaged))
