"""Identifier conventions medflow's contexts share in FHIR (the sync writes them, the web UI and
cohorts search by them), and the escaping of token search values.

- DICOM UIDs: system ``urn:dicom:uid``, value ``urn:oid:<uid>`` (R4 imagingstudy.html).
- Accession numbers: identifier type ``v2-0203|ACSN`` (HL7 v2 table 0203), searched with
  ``identifier:of-type`` (R4 search.html#token).
"""

from __future__ import annotations

DICOM_UID_SYSTEM = "urn:dicom:uid"
"""Identifier system of DICOM UIDs, whose values are ``urn:oid:<uid>`` (R4 imagingstudy.html)."""
ACSN = ("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN")
"""Identifier type of an accession number (HL7 v2 table 0203)."""


def escape(value: str) -> str:
    """FHIR search escaping of ``\\ , $ |`` in one part of a value (R4 search.html#escaping)."""
    for char in ("\\", ",", "$", "|"):
        value = value.replace(char, "\\" + char)
    return value


def search_token(*parts: str) -> str:
    """``a|b...``: the parts of a token search value, each escaped (``system|code``,
    ``type-system|type-code|value`` for ``:of-type``)."""
    return "|".join(escape(part) for part in parts)


__all__ = ["ACSN", "DICOM_UID_SYSTEM", "escape", "search_token"]
