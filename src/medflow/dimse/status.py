"""One table from medflow errors to DIMSE status codes (PS3.4 B.2.3 C-STORE, C.4.1.1.4 C-FIND).

Services raise ``medflow.core.errors`` types; each carries the failure reason it stands for
(0xA700 out of resources, 0xA900 data set does not match SOP class, 0xC000 cannot understand,
0x0122 SOP class not supported, 0x0111 duplicate SOP instance). Anything unexpected is 0xC000
for C-STORE and 0xC001 (unable to process) for C-FIND, so a handler never kills the server.
"""

from __future__ import annotations

from medflow.core.errors import MedflowError

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
STORE_CANNOT_UNDERSTAND = 0xC000
FIND_UNABLE_TO_PROCESS = 0xC001
FIND_IDENTIFIER_DOES_NOT_MATCH = 0xA900


def store_status(exc: MedflowError | None) -> int:
    """The C-STORE response status for a failed store (``None``: an unexpected error)."""
    return exc.dicom_reason if exc is not None else STORE_CANNOT_UNDERSTAND
