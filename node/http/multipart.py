"""multipart/related bodies (RFC 2387), as DICOMweb and the cluster hand-back use them:
parsed by offsets, so a large spooled body is never copied whole, and written part by
part, so a large answer is streamed."""

from __future__ import annotations

import mmap
import secrets
from collections.abc import Iterable, Iterator


class MultipartError(ValueError):
    """The body is not the multipart/related it says it is."""


def params(text: str) -> Iterator[tuple[str, str]]:
    """``key=value`` pairs of a header's parameters (keys lower-case, quotes removed)."""
    for item in text.split(";"):
        key, sep, value = item.partition("=")
        if sep:
            yield key.strip().lower(), value.strip().strip('"')


def content_type(header: str) -> tuple[str, dict[str, str]]:
    """A Content-Type header as (media type in lower case, its parameters)."""
    main, _, rest = header.partition(";")
    return main.strip().lower(), dict(params(rest))


def new_boundary() -> str:
    return secrets.token_hex(16)


def parts(body: bytes | mmap.mmap, boundary: bytes) -> Iterator[tuple[dict[str, str], int, int]]:
    """(headers, start, end) of each part of a multipart body (RFC 2046), by offsets."""
    delimiter = b"--" + boundary
    pos = body.find(delimiter)
    if pos < 0:
        raise MultipartError("the boundary never occurs in the body")
    while True:
        pos += len(delimiter)
        if body[pos : pos + 2] == b"--":
            return
        line_end = body.find(b"\r\n", pos)
        head_end = body.find(b"\r\n\r\n", line_end) if line_end >= 0 else -1
        if head_end < 0:
            raise MultipartError("a part's headers do not end (truncated body?)")
        headers: dict[str, str] = {}
        for line in bytes(body[line_end + 2 : head_end]).decode("latin-1").split("\r\n"):
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        end = body.find(b"\r\n" + delimiter, head_end + 4)
        if end < 0:
            raise MultipartError("the body ends inside a part (truncated, or no closing boundary)")
        yield headers, head_end + 4, end
        pos = end + 2


def encode(items: Iterable[tuple[dict[str, str], bytes]], boundary: str) -> Iterator[bytes]:
    """The body of ``(part headers, part data)`` items, chunk by chunk."""
    for headers, data in items:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        yield f"--{boundary}\r\n{head}\r\n".encode("latin-1")
        yield data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


def split(body: bytes, header: str) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a whole multipart/related body whose Content-Type is ``header``."""
    media, values = content_type(header)
    if media != "multipart/related" or not values.get("boundary"):
        raise MultipartError(f"not multipart/related with a boundary: {header!r}")
    boundary = values["boundary"].encode("latin-1")
    return [(h, body[start:end]) for h, start, end in parts(body, boundary)]
