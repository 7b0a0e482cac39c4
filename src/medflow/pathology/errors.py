"""Errors of the pathology context (subclasses of the shared hierarchy, so every edge maps
them through its one table)."""

from __future__ import annotations

from medflow.core.errors import InvalidInput, Unsupported


class NotASlide(InvalidInput):
    """The file is not a whole-slide image any installed reader understands."""


class ConverterUnavailable(Unsupported):
    """A library the conversion needs is missing on this machine (e.g. libjpeg-turbo's
    ``libturbojpeg`` for opentile): the server's set-up, not the request, is at fault."""

    dicom_reason = 0x0110  # Processing failure
