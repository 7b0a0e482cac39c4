"""One table from medflow errors to DIMSE status codes (PS3.4 B.2.3 C-STORE, C.4.1.1.4 C-FIND,
C.4.2.1.5 C-MOVE, C.4.3.1.4 C-GET).

Services raise ``medflow.core.errors`` types; each carries the failure reason it stands for
(0xA700 out of resources, 0xA900 data set does not match SOP class, 0xC000 cannot understand,
0x0122 SOP class not supported, 0x0111 duplicate SOP instance). Anything unexpected is 0xC000
for C-STORE and 0xC001 (unable to process) for C-FIND, so a handler never kills the server.
A failure can carry an Error Comment (0000,0902): ``with_comment`` builds the status data set
pynetdicom copies into the response's command set. Comments never contain PHI.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from medflow.core.errors import MedflowError

SUCCESS = 0x0000
PENDING = 0xFF00
CANCEL = 0xFE00
STORE_CANNOT_UNDERSTAND = 0xC000
FIND_UNABLE_TO_PROCESS = 0xC001
IDENTIFIER_DOES_NOT_MATCH = 0xA900
"""C-FIND/C-MOVE/C-GET: Identifier does not match SOP Class."""
RETRIEVE_UNABLE_TO_PROCESS = 0xC000
"""C-MOVE/C-GET: Unable to process (a Cxxx failure)."""
MOVE_DESTINATION_UNKNOWN = 0xA801
"""C-MOVE: Move Destination unknown (sent by pynetdicom when the handler yields no address)."""


def store_status(exc: MedflowError | None) -> int:
    """The C-STORE response status for a failed store (``None``: an unexpected error)."""
    return exc.dicom_reason if exc is not None else STORE_CANNOT_UNDERSTAND


def with_comment(code: int, comment: str) -> Dataset:
    """A status with an Error Comment (LO: at most 64 characters, PS3.7 C.4)."""
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds
