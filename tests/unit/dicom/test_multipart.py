"""The streaming multipart/related reader (RFC 2046 §5.1, RFC 2387): every chunk size, CRLF in
bodies, transport padding, preamble and epilogue, missing closing boundary, oversized headers;
and media-type / Accept parsing."""

from __future__ import annotations

import pytest

from medflow.core.errors import InvalidInput
from medflow.dicom.multipart import (
    MAX_HEADER_BYTES,
    MultipartReader,
    iter_multipart,
    parse_accept,
    parse_media_type,
)

B = "bnd-42"


class Sink:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.data += bytes(data)


def read(body: bytes, chunk: int, boundary: str = B) -> list[tuple[dict[str, str], bytes]]:
    sinks: list[tuple[dict[str, str], Sink]] = []

    def new_sink(headers: dict[str, str]) -> Sink:
        sink = Sink()
        sinks.append((headers, sink))
        return sink

    reader = MultipartReader(boundary, new_sink)
    for i in range(0, len(body), chunk):
        reader.feed(body[i : i + chunk])
    parts = reader.close()
    assert [p.sink for p in parts] == [s for _, s in sinks]
    return [(h, bytes(s.data)) for h, s in sinks]


def build(
    bodies: list[bytes],
    *,
    boundary: str = B,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    padding: bytes = b"",
) -> bytes:
    """A multipart body written by hand (not with the module under test)."""
    out = preamble + (b"\r\n" if preamble else b"")
    for body in bodies:
        out += f"--{boundary}".encode() + padding + b"\r\nContent-Type: application/dicom\r\n\r\n"
        out += body + b"\r\n"
    return out + f"--{boundary}--".encode() + padding + b"\r\n" + epilogue


TRICKY = [
    b"",
    b"\r\n",
    b"plain",
    b"line one\r\nline two\r\n",
    b"\r\n\r\n\r\n",
    b"\r\n--bnd-4",  # a prefix of the delimiter inside the body
    b"--bnd-42 without CRLF before it is data",
    b"\r\n-",
    b"ends with CR\r",
    bytes(range(256)) * 3,
]


def all_chunk_sizes(body: bytes) -> range:
    return range(1, len(body) + 2)


def test_every_chunk_size_gives_the_same_parts() -> None:
    body = build(TRICKY)
    for chunk in all_chunk_sizes(body):
        parts = read(body, chunk)
        assert [b for _, b in parts] == TRICKY, chunk
        assert all(h == {"content-type": "application/dicom"} for h, _ in parts)


def test_preamble_epilogue_and_transport_padding() -> None:
    bodies = [b"first\r\n", b"second"]
    body = build(
        bodies,
        preamble=b"This is a preamble.\r\n--not-the-boundary",
        epilogue=b"epilogue --bnd-42\r\n garbage",
        padding=b" \t ",
    )
    for chunk in all_chunk_sizes(body):
        assert [b for _, b in read(body, chunk)] == bodies, chunk


def test_first_delimiter_at_the_very_start_and_no_crlf_after_closing() -> None:
    body = f"--{B}\r\nContent-Type: application/dicom\r\n\r\nX\r\n--{B}--".encode()
    for chunk in all_chunk_sizes(body):
        assert read(body, chunk) == [({"content-type": "application/dicom"}, b"X")]


def test_part_without_headers() -> None:
    body = f"--{B}\r\n\r\nX\r\n--{B}--\r\n".encode()
    for chunk in all_chunk_sizes(body):
        assert read(body, chunk) == [({}, b"X")]


def test_part_headers_are_case_insensitive_and_trimmed() -> None:
    body = (
        f"--{B}\r\nCONTENT-TYPE:   application/dicom  \r\nContent-ID: <a@b>\r\n"
        f"X-Empty:\r\n\r\nbody\r\n--{B}--\r\n"
    ).encode()
    for chunk in (1, 3, len(body)):
        ((headers, data),) = read(body, chunk)
        assert headers == {
            "content-type": "application/dicom",
            "content-id": "<a@b>",
            "x-empty": "",
        }
        assert data == b"body"


def test_round_trip_with_the_writer() -> None:
    parts = [
        ({"Content-Type": "application/dicom"}, [b"a\r\n", b"b"]),
        ({"Content-Type": "application/octet-stream"}, [b""]),
    ]
    body = b"".join(iter_multipart(parts, B))
    for chunk in (1, 2, 5, len(body)):
        got = read(body, chunk)
        assert [b for _, b in got] == [b"a\r\nb", b""]
        assert [h["content-type"] for h, _ in got] == [
            "application/dicom",
            "application/octet-stream",
        ]


@pytest.mark.parametrize(
    "body",
    [
        build([b"one", b"two"])[: -len(f"--{B}--\r\n")],  # ends after the last part's CRLF
        build([b"one", b"two"])[: -len(f"\r\n--{B}--\r\n")],  # ends inside the last part
        f"--{B}\r\nContent-Type: application/dicom\r\n".encode(),  # ends inside the headers
        f"--{B}".encode(),
        b"",
        b"no boundary anywhere in here",
    ],
)
def test_missing_closing_boundary_is_rejected_at_every_chunk_size(body: bytes) -> None:
    for chunk in all_chunk_sizes(body):
        with pytest.raises(InvalidInput):
            read(body, chunk)


@pytest.mark.parametrize(
    "body",
    [
        f"--{B}XYZ\r\n\r\nx\r\n--{B}--\r\n".encode(),  # garbage after a delimiter
        f"--{B}\r\nno colon here\r\n\r\nx\r\n--{B}--\r\n".encode(),  # malformed header line
        f"--{B}\r\n\r\nx\r\n--{B}-\r\n".encode(),  # half a close delimiter
    ],
)
def test_malformed_framing_is_rejected(body: bytes) -> None:
    for chunk in all_chunk_sizes(body):
        with pytest.raises(InvalidInput):
            read(body, chunk)


def _huge_header_body(size: int) -> bytes:
    return (f"--{B}\r\nX-Big: {'a' * size}\r\n\r\nx\r\n--{B}--\r\n").encode()


@pytest.mark.parametrize("chunk", [1, 100, 4096, MAX_HEADER_BYTES // 2])
def test_header_too_large_is_rejected_when_streamed(chunk: int) -> None:
    with pytest.raises(InvalidInput):
        read(_huge_header_body(MAX_HEADER_BYTES + 10), chunk)


@pytest.mark.parametrize("chunk", [MAX_HEADER_BYTES * 4, 10**7])
def test_header_too_large_is_rejected_in_one_chunk(chunk: int) -> None:
    with pytest.raises(InvalidInput):
        read(_huge_header_body(MAX_HEADER_BYTES * 2), chunk)


def test_headers_just_below_the_limit_are_accepted() -> None:
    body = _huge_header_body(MAX_HEADER_BYTES - 100)
    for chunk in (1, 1000, len(body)):
        ((headers, data),) = read(body, chunk)
        assert data == b"x" and len(headers["x-big"]) == MAX_HEADER_BYTES - 100


@pytest.mark.parametrize("boundary", ["", "x" * 201])
def test_bad_boundary_parameter(boundary: str) -> None:
    with pytest.raises(InvalidInput):
        MultipartReader(boundary, lambda _h: Sink())


def test_longest_allowed_boundary_works() -> None:
    boundary = "b" * 200
    body = build([b"data"], boundary=boundary)
    for chunk in (1, 7, len(body)):
        assert [b for _, b in read(body, chunk, boundary)] == [b"data"]


def test_feed_after_end_is_ignored() -> None:
    parts: list[Sink] = []
    reader = MultipartReader(B, lambda _h: parts.append(Sink()) or parts[-1])
    reader.feed(build([b"x"]))
    reader.feed(f"--{B}\r\n\r\nmore\r\n--{B}--\r\n".encode())
    assert len(reader.close()) == 1


# ------------------------------------------------------------------------------------------
# Media types and Accept
# ------------------------------------------------------------------------------------------
def test_parse_media_type() -> None:
    m = parse_media_type('Multipart/Related; type="application/dicom"; Boundary=ab;cd=";x"')
    assert m.type == "multipart/related"
    assert m.param("type") == "application/dicom"
    assert m.param("BOUNDARY") == "ab"
    assert m.param("cd") == ";x"
    assert m.param("missing") is None
    assert parse_media_type("text/plain; q=0.5").q == 0.5
    assert parse_media_type("text/plain; q=abc").q == 0.0
    assert parse_media_type("text/plain;;novalue").params == {}


def test_parse_accept_orders_by_quality_and_drops_q0() -> None:
    accept = (
        'application/json;q=0.5, multipart/related; type="application/dicom"; '
        "transfer-syntax=*, application/dicom+json;q=0.9, image/png;q=0"
    )
    got = parse_accept(accept)
    assert [m.type for m in got] == [
        "multipart/related",
        "application/dicom+json",
        "application/json",
    ]
    assert got[0].param("transfer-syntax") == "*"
    assert [m.type for m in parse_accept(None)] == ["*/*"]
    assert [m.type for m in parse_accept("")] == ["*/*"]
    assert [m.type for m in parse_accept('a/b; x="1,2", c/d')] == ["a/b", "c/d"]
