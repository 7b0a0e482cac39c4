"""Identifier conventions medflow's contexts share in FHIR (the sync writes them, the web UI and
cohorts search by them), and the escaping of token search values.

- DICOM UIDs: system ``urn:dicom:uid``, value ``urn:oid:<uid>`` (R4 imagingstudy.html).
- Accession numbers: identifier type ``v2-0203|ACSN`` (HL7 v2 table 0203), searched with
  ``identifier:of-type`` (R4 search.html#token).
"""

from __future__ import annotations

from urllib.parse import quote

DICOM_UID_SYSTEM = "urn:dicom:uid"
"""Identifier system of DICOM UIDs, whose values are ``urn:oid:<uid>`` (R4 imagingstudy.html)."""
ACSN = ("http://terminology.hl7.org/CodeSystem/v2-0203", "ACSN")
"""Identifier type of an accession number (HL7 v2 table 0203)."""


MRN_SYSTEM = "urn:medflow:mrn"
"""The default Patient.identifier system whose value is the DICOM PatientID."""
ISSUER_SYSTEM_PREFIX = "urn:medflow:issuer:"
"""Prefix of the identifier system made from an IssuerOfPatientID (0010,0021)."""


def patient_system(
    issuer: str | None, *, default: str = MRN_SYSTEM, use_issuer: bool = False
) -> str:
    """The Patient.identifier system of a DICOM PatientID: ``default``, or with ``use_issuer``
    and an IssuerOfPatientID, ``urn:medflow:issuer:<issuer>`` (percent-encoded, RFC 3986, so
    the system stays a valid FHIR ``uri``). The sync (Patient.identifier) and the
    de-identification (pseudonyms) both key a patient on this (system, PatientID) pair."""
    issuer = (issuer or "").strip()
    if use_issuer and issuer:
        return ISSUER_SYSTEM_PREFIX + quote(issuer, safe="")
    return default


def escape(value: str) -> str:
    """FHIR search escaping of ``\\ , $ |`` in one part of a value (R4 search.html#escaping)."""
    for char in ("\\", ",", "$", "|"):
        value = value.replace(char, "\\" + char)
    return value


def search_token(*parts: str) -> str:
    """``a|b...``: the parts of a token search value, each escaped (``system|code``,
    ``type-system|type-code|value`` for ``:of-type``)."""
    return "|".join(escape(part) for part in parts)


__all__ = ["ACSN", "DICOM_UID_SYSTEM", "ISSUER_SYSTEM_PREFIX", "MRN_SYSTEM", "escape",
           "patient_system", "search_token"]  # fmt: skip
