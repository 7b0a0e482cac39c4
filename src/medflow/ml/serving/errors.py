"""Errors of serving beyond ``core.errors``."""

from __future__ import annotations

from medflow.core.errors import InvalidInput, Unsupported


class TooLarge(InvalidInput):
    """The request is over a size limit (body bytes, or frames resolved from references):
    the REST edge answers 413 (RFC 9110 15.5.14)."""


class UnsupportedMediaType(Unsupported):
    """A request body of a content type the endpoint does not take: HTTP 415."""
