"""multipart/related (RFC 2387) for DICOMweb: a streaming reader that spools parts to disk, a
writer for responses, and media-type / Accept parsing (PS3.18 §8.7.3, §8.7.5).

The reader never holds a whole part in memory: body bytes go straight to a ``SpoolWriter`` that
hashes them. A body that ends before its closing delimiter is rejected as a whole, so a broken
upload never stores its complete leading parts either.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from medflow.core.errors import InvalidInput

CRLF = b"\r\n"
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class MediaType:
    type: str
    """``type/subtype`` in lower case."""
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def param(self, name: str) -> str | None:
        return self.params.get(name.lower())


def _split_unquoted(value: str, sep: str) -> list[str]:
    """Split on ``sep`` outside double-quoted strings (parameters may quote ``;`` and ``,``)."""
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == sep and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    out.append("".join(cur))
    return out


def parse_media_type(value: str) -> MediaType:
    """Parse ``multipart/related; type="application/dicom"; boundary=x`` (RFC 9110 §8.3.1)."""
    pieces = _split_unquoted(value, ";")
    mtype = pieces[0].strip().lower()
    params: dict[str, str] = {}
    q = 1.0
    for piece in pieces[1:]:
        if "=" not in piece:
            continue
        name, _, raw = piece.partition("=")
        name, raw = name.strip().lower(), raw.strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1]
        if name == "q":
            try:
                q = float(raw)
            except ValueError:
                q = 0.0
            continue
        params[name] = raw
    return MediaType(mtype, params, q)


def parse_accept(header: str | None) -> list[MediaType]:
    """Media ranges of an Accept header, highest quality first (stable for equal q)."""
    if not header:
        return [MediaType("*/*")]
    items = [p.strip() for p in _split_unquoted(header, ",")]
    ranges = [parse_media_type(p) for p in items if p]
    return sorted((r for r in ranges if r.q > 0), key=lambda r: -r.q)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
class PartSink(Protocol):
    def write(self, data: bytes | bytearray | memoryview) -> None: ...


@dataclass
class Part:
    headers: dict[str, str]
    sink: PartSink

    @property
    def content_type(self) -> MediaType | None:
        value = self.headers.get("content-type")
        return parse_media_type(value) if value else None


class MultipartReader:
    """Incremental multipart parser: ``feed`` chunks, then ``close``.

    ``new_sink(headers)`` is called at the start of each part and receives its body bytes.
    Raises ``InvalidInput`` for malformed bodies (missing boundary, oversized headers, no
    closing delimiter).
    """

    def __init__(self, boundary: str, new_sink: Callable[[dict[str, str]], PartSink]) -> None:
        if not boundary or len(boundary) > 200:
            raise InvalidInput("multipart boundary is missing or too long")
        self._dash = b"--" + boundary.encode("latin-1")
        self._delim = CRLF + self._dash
        self._new_sink = new_sink
        self._buf = bytearray()
        self._state = "preamble"
        self.parts: list[Part] = []

    def feed(self, chunk: bytes) -> None:
        if self._state == "end":
            return  # epilogue: ignored (RFC 2046 §5.1.1)
        self._buf += chunk
        while True:
            before = self._state, len(self._buf)
            getattr(self, "_on_" + self._state)()
            if self._state == "end" or (self._state, len(self._buf)) == before:
                return

    def _on_preamble(self) -> None:
        # The first delimiter may be at the very start (no preceding CRLF).
        buf = self._buf
        idx = buf.find(self._dash)
        if idx < 0:
            keep = len(self._dash)
            if len(buf) > keep:
                del buf[: len(buf) - keep]
            return
        del buf[: idx + len(self._dash)]
        self._state = "after_delim"

    def _on_after_delim(self) -> None:
        buf = self._buf
        stripped = 0
        while stripped < len(buf) and buf[stripped] in b" \t":
            stripped += 1  # transport padding (RFC 2046 §5.1.1)
        if len(buf) - stripped < 2:
            return
        marker = bytes(buf[stripped : stripped + 2])
        if marker == b"--":
            self._state = "end"
            buf.clear()
        elif marker == CRLF:
            del buf[: stripped + 2]
            self._state = "headers"
        else:
            raise InvalidInput("malformed multipart body: bad delimiter line")

    def _on_headers(self) -> None:
        buf = self._buf
        if buf.startswith(CRLF):  # a part without headers
            head, rest = b"", 2
        else:
            idx = buf.find(CRLF + CRLF, 0, MAX_HEADER_BYTES + 4)
            if idx < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise InvalidInput("multipart part headers are too large")
                return
            head, rest = bytes(buf[:idx]), idx + 4
        headers: dict[str, str] = {}
        for line in head.split(CRLF) if head else ():
            name, sep, value = line.decode("latin-1").partition(":")
            if not sep:
                raise InvalidInput("malformed multipart part header")
            headers[name.strip().lower()] = value.strip()
        del buf[:rest]
        self.parts.append(Part(headers, self._new_sink(headers)))
        self._state = "body"

    def _on_body(self) -> None:
        buf = self._buf
        sink = self.parts[-1].sink
        idx = buf.find(self._delim)
        if idx < 0:
            safe = len(buf) - (len(self._delim) - 1)
            if safe > 0:
                sink.write(memoryview(buf)[:safe])
                del buf[:safe]
            return
        if idx:
            sink.write(memoryview(buf)[:idx])
        del buf[: idx + len(self._delim)]
        self._state = "after_delim"

    def close(self) -> list[Part]:
        if self._state != "end":
            raise InvalidInput("multipart body ended without its closing boundary")
        return self.parts


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def new_boundary() -> str:
    return secrets.token_hex(16)


def multipart_content_type(part_type: str, boundary: str, **params: str) -> str:
    extra = "".join(f"; {k.replace('_', '-')}={v}" for k, v in params.items())
    return f'multipart/related; type="{part_type}"; boundary={boundary}{extra}'


def iter_multipart(
    parts: Iterable[tuple[dict[str, str], Iterable[bytes]]], boundary: str
) -> Iterator[bytes]:
    """Stream a multipart body: each part is (headers, body chunks) (PS3.18 §8.7.3.4)."""
    dash = b"--" + boundary.encode("latin-1")
    for headers, body in parts:
        head = b"".join(f"{k}: {v}".encode("latin-1") + CRLF for k, v in headers.items())
        yield dash + CRLF + head + CRLF
        yield from body
        yield CRLF
    yield dash + b"--" + CRLF
