"""The shared pseudonym space (medflow.deid.keys): HMAC-derived, reproducible for a key,
different for another key, never showing the key, refused without one."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from pydantic import SecretStr

from medflow.core.settings import DeidSettings
from medflow.deid.keys import DeidKeys, MissingKey

KEY = b"0123456789abcdef-test-key"


def test_same_key_same_values_other_key_other_values() -> None:
    a, b, other = DeidKeys(KEY), DeidKeys(KEY), DeidKeys(KEY + b"!")
    for make in (lambda k: k.patient_pseudonym("urn:medflow:mrn", "MRN1"),
                 lambda k: k.uid("1.2.3.4"), lambda k: k.date_shift("s", "v"),
                 lambda k: k.identifier("accession", "A1"),
                 lambda k: k.resource_id("Condition", "c1")):  # fmt: skip
        assert make(a) == make(b) != make(other)


def test_formats() -> None:
    keys = DeidKeys(KEY)
    pseudonym = keys.patient_pseudonym("urn:medflow:mrn", "MRN1")
    assert re.fullmatch(r"[A-Z2-7]{16}", pseudonym)
    assert keys.patient_pseudonym("urn:medflow:mrn", " MRN1 ") == pseudonym
    assert keys.patient_pseudonym("urn:other", "MRN1") != pseudonym  # the system is part of it
    uid = keys.uid("1.2.840.113619.2.55.3")
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64
    assert keys.uid("1.2.3\0") == keys.uid("1.2.3")  # UI padding
    assert re.fullmatch(r"[A-Z2-7]{20}", keys.resource_id("Patient", "p"))


def test_date_shift_range() -> None:
    keys = DeidKeys(KEY, max_shift_days=30)
    shifts = {keys.date_shift("s", str(i)) for i in range(500)}
    assert all(timedelta(days=-30) <= s <= timedelta(days=-1) for s in shifts)
    assert len(shifts) == 30  # every day of the range is used
    assert keys.default_shift() == DeidKeys(KEY, max_shift_days=30).default_shift()


def test_key_required_and_hidden() -> None:
    with pytest.raises(MissingKey, match="MEDFLOW_DEID__KEY"):
        DeidKeys.from_settings(DeidSettings())
    with pytest.raises(MissingKey):
        DeidKeys.from_settings(DeidSettings(key=SecretStr("short")))
    keys = DeidKeys.from_settings(DeidSettings(key=SecretStr(KEY.decode())))
    assert KEY.decode() not in repr(keys) and KEY.decode() not in repr(
        DeidSettings(key=KEY.decode())
    )
