"""The ``Prefer`` request header (RFC 7240 §2) as the FHIR REST edge reads it: ``handling``
(R4 search §3.1.1.4 ``#errors``), ``return`` (R4 http §3.1.0.1.8) and ``respond-async``."""

from __future__ import annotations

import pytest

from medflow.fhir.api import parse_prefer


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (["handling=strict"], {"handling": "strict"}),
        (["handling = strict"], {"handling": "strict"}),  # BWS around "="
        (["Handling=strict"], {"handling": "strict"}),  # names are case-insensitive
        (["return=minimal, handling=strict"], {"return": "minimal", "handling": "strict"}),
        (["return=minimal,handling=lenient"], {"return": "minimal", "handling": "lenient"}),
        (["handling=strict; foo=bar, respond-async"], {"handling": "strict", "respond-async": ""}),
        (["respond-async", "handling=strict"], {"respond-async": "", "handling": "strict"}),
        (['foo="handling=strict, x", handling=lenient'],
         {"foo": "handling=strict, x", "handling": "lenient"}),  # a quoted comma
        (['wait="a \\"b\\""'], {"wait": 'a "b"'}),
        (["handling=lenient, handling=strict"], {"handling": "lenient"}),  # the first counts
        (["handling=strictly"], {"handling": "strictly"}),  # not strict
        ([", ,handling=strict,"], {"handling": "strict"}),  # empty elements
        (["=x, handling=strict"], {"handling": "strict"}),  # malformed ones are skipped
        ([], {}),
    ],
)  # fmt: skip
def test_parse_prefer(headers: list[str], expected: dict[str, str]) -> None:
    assert parse_prefer(headers) == expected
