"""The error hierarchy every context raises; each edge maps it to its protocol in one table.

Services raise these, never HTTP or DIMSE types (DESIGN.md, "Errors"). Each error may carry a
``dicom_reason``: the STOW-RS FailureReason (0008,1197) value from PS3.18 Table 10.5.3-1 / PS3.4
Annex GG that the DICOMweb edge reports for a failed instance.
"""

from __future__ import annotations


class MedflowError(Exception):
    """Base of all medflow errors. ``message`` must not contain PHI."""

    dicom_reason: int = 0x0110  # Processing failure

    def __init__(self, message: str, *, dicom_reason: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if dicom_reason is not None:
            self.dicom_reason = dicom_reason


class NotFound(MedflowError):
    """The addressed resource does not exist."""


class AlreadyExists(MedflowError):
    """A different object with the same identity is already stored."""

    dicom_reason = 0x0111  # Duplicate SOP Instance


class Conflict(MedflowError):
    """The request conflicts with the state of what it addresses (HTTP 409)."""


class InvalidInput(MedflowError):
    """The request or the object is malformed."""

    dicom_reason = 0xC000  # Cannot understand


class Unsupported(MedflowError):
    """Well formed, but medflow does not support it."""

    dicom_reason = 0x0122  # SOP Class not supported


class StorageFailure(MedflowError):
    """The index or the blob store failed; ``retryable`` tells whether to try again."""

    dicom_reason = 0xA700  # Out of resources

    def __init__(
        self, message: str, *, retryable: bool = True, dicom_reason: int | None = None
    ) -> None:
        super().__init__(message, dicom_reason=dicom_reason)
        self.retryable = retryable


class Gone(NotFound):
    """The addressed resource existed and was deleted (FHIR read of a deleted resource: 410)."""


class PreconditionFailed(MedflowError):
    """A version precondition (If-Match) or a conditional operation's match count failed."""
