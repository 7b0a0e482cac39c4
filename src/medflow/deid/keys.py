"""The one pseudonym space of medflow's de-identification, shared by DICOM and FHIR.

Every replacement value is derived from a secret key with HMAC-SHA-256 (RFC 2104), each with
its own purpose label so that values of different kinds are unrelated:

- a patient's pseudonym and date shift from the pair (identifier system, value): in DICOM
  (IssuerOfPatientID or the configured system, PatientID), in FHIR the Patient.identifier with
  that system (:func:`medflow.fhir.identifiers.patient_system`), so both agree;
- a UID from the UID (``2.25.<128-bit integer>``, PS3.5 Annex B.2), so the same study UID
  becomes the same UID in DICOM headers, references inside sequences and FHIR ImagingStudy;
- other identifiers and FHIR resource ids from (kind, value).

The same key gives the same output; without the key the mapping cannot be reversed or
recomputed. The key lives in the settings (``MEDFLOW_DEID__KEY``), never in output or logs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import timedelta

from medflow.core.errors import InvalidInput
from medflow.core.settings import DeidSettings

MIN_KEY_LENGTH = 16
KEY_HELP = (
    "de-identification needs a secret key: set MEDFLOW_DEID__KEY (at least "
    f"{MIN_KEY_LENGTH} characters, e.g. from `openssl rand -hex 32`) and keep it out of the "
    "output; the same key gives the same pseudonyms, UIDs and date shifts"
)


class MissingKey(InvalidInput):
    """No (or too short a) de-identification key is configured."""

    def __init__(self, detail: str = KEY_HELP) -> None:
        super().__init__(detail)


@dataclass(frozen=True)
class DeidKeys:
    """Pseudonyms, UIDs, ids and date shifts derived from a secret ``key`` (never shown)."""

    key: bytes = field(repr=False)
    max_shift_days: int = 365

    def __post_init__(self) -> None:
        if len(self.key) < MIN_KEY_LENGTH:
            raise MissingKey()
        if self.max_shift_days < 1:
            raise InvalidInput("max_shift_days must be at least 1")

    @classmethod
    def from_settings(cls, settings: DeidSettings) -> DeidKeys:
        """The keys of ``settings`` (:class:`MissingKey` when no key is set)."""
        if settings.key is None or not settings.key.get_secret_value().strip():
            raise MissingKey()
        secret = settings.key.get_secret_value().strip().encode("utf-8")
        return cls(secret, settings.max_shift_days)

    def _mac(self, purpose: str, *parts: str) -> bytes:
        message = "\x1f".join((purpose, *parts)).encode("utf-8")
        return hmac.new(self.key, message, hashlib.sha256).digest()

    def _code(self, purpose: str, *parts: str, length: int = 16) -> str:
        return base64.b32encode(self._mac(purpose, *parts)).decode("ascii")[:length]

    def patient_pseudonym(self, system: str, value: str) -> str:
        """The patient's pseudonym (16 characters A-Z, 2-7: a DICOM LO/PN and a FHIR id)."""
        return self._code("patient", system, value.strip())

    def date_shift(self, system: str, value: str) -> timedelta:
        """How far the patient's dates move: back by 1..``max_shift_days`` days."""
        n = int.from_bytes(self._mac("date-shift", system, value.strip())[:8], "big")
        return -timedelta(days=1 + n % self.max_shift_days)

    def default_shift(self) -> timedelta:
        """The date shift of data that belongs to no patient (same key, same shift)."""
        return self.date_shift("urn:medflow:deid", "no-patient")

    def uid(self, uid: str) -> str:
        """The UID replacing ``uid``: ``2.25.`` and a 128-bit integer (PS3.5 B.2), <= 44
        characters."""
        return "2.25." + str(int.from_bytes(self._mac("uid", uid.strip().rstrip("\0"))[:16], "big"))

    def identifier(self, kind: str, value: str) -> str:
        """A pseudonymous identifier of ``kind`` (an accession number, an identifier system)."""
        return self._code("identifier", kind, value.strip())

    def resource_id(self, resource_type: str, resource_id: str) -> str:
        """A pseudonymous FHIR logical id (``[A-Z2-7]{20}``) of a resource."""
        return self._code("resource-id", resource_type, resource_id, length=20)


__all__ = ["KEY_HELP", "MIN_KEY_LENGTH", "DeidKeys", "MissingKey"]
