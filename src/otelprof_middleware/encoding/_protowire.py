"""A tiny protobuf wire-format writer and reader.

The writer serves the whole pprof encoder, and the bulk tables and samples of the
OTLP encoder (parsed back into messages by the protobuf runtime).  The reader
(:func:`iter_fields`, :func:`read_varint`, :func:`read_packed`) serves the local
viewer's pprof reader and the gRPC exporter's ``RetryInfo`` parsing; it raises
:class:`WireError` (a ``ValueError``) on malformed input.

Every function returns ``bytes`` so that callers can assemble messages with
``b"".join(...)``.  Varints below ``_TABLE_SIZE`` come from a precomputed table,
which keeps the hot path (ids, string indices, small values) to a list lookup.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

__all__ = ["WireError", "read_varint", "iter_fields", "read_packed", "varint", "tag", "field_varint", "field_bytes", "field_packed", "packed", "VarintCache", "Memo", "VARINT", "LEN"]

VARINT = 0
LEN = 2

_TABLE_SIZE = 1 << 14  # every 1- and 2-byte varint
_MASK64 = (1 << 64) - 1


def _encode_varint(n: int) -> bytes:
    if n < 0:  # int64 two's complement: always 10 bytes on the wire
        n &= _MASK64
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_VARINTS: list[bytes] = [_encode_varint(i) for i in range(_TABLE_SIZE)]
# The same 14 bits as a non-final chunk (continuation bit set on both bytes).
_CHUNKS: list[bytes] = [bytes(((i & 0x7F) | 0x80, (i >> 7) | 0x80)) for i in range(_TABLE_SIZE)]


def varint(n: int) -> bytes:
    """Base-128 varint of an unsigned or (two's complement) signed 64-bit integer."""
    if 0 <= n < _TABLE_SIZE:
        return _VARINTS[n]
    if 0 < n < 1 << 28:  # e.g. nanosecond values below 0.27 s
        return _CHUNKS[n & 0x3FFF] + _VARINTS[n >> 14]
    if 0 < n < 1 << 42:  # up to ~73 minutes in nanoseconds
        return _CHUNKS[n & 0x3FFF] + _CHUNKS[(n >> 14) & 0x3FFF] + _VARINTS[n >> 28]
    return _encode_varint(n)


class VarintCache(dict):  # type: ignore[type-arg]  # dict[int, bytes]
    """``cache[n]`` is ``varint(n)``, memoized: a hit is a plain C-level dict lookup,
    which matters in per-sample loops where values (counts, multiples of the period,
    indices) repeat a lot.  Make one per encode call so it stays small."""

    __slots__ = ()

    def __missing__(self, n: int) -> bytes:
        b = self[n] = varint(n)
        return b


def tag(field_number: int, wire_type: int) -> bytes:
    return varint((field_number << 3) | wire_type)


def field_varint(field_number: int, value: int) -> bytes:
    """A varint field; proto3 default (0) is omitted."""
    if not value:
        return b""
    return tag(field_number, VARINT) + varint(value)


def field_bytes(field_number: int, data: bytes) -> bytes:
    """A length-delimited field (bytes, string, embedded message); always written."""
    return tag(field_number, LEN) + varint(len(data)) + data


def packed(values: Iterable[int]) -> bytes:
    """The payload of a packed repeated varint field (without tag and length)."""
    table = _VARINTS
    size = _TABLE_SIZE
    return b"".join([table[v] if 0 <= v < size else _encode_varint(v) for v in values])


def field_packed(field_number: int, values: Iterable[int]) -> bytes:
    """A packed repeated varint field; omitted when there are no values."""
    payload = packed(values)
    if not payload:
        return b""
    return tag(field_number, LEN) + varint(len(payload)) + payload


class Memo(dict):  # type: ignore[type-arg]
    """``memo[key]`` computes ``fn(key)`` once; hits are plain C-level dict lookups
    (cheaper than ``.get`` + a ``None`` check in per-sample loops)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        super().__init__()
        self.fn = fn

    def __missing__(self, key: Any) -> Any:
        value = self[key] = self.fn(key)
        return value


# ----------------------------------------------------------------------------- reader


class WireError(ValueError):
    """Bytes that are not well-formed protobuf."""


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` (as an unsigned 64-bit value) and the position after it."""
    result = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise WireError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & _MASK64, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint too long")


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """Yield ``(field_number, wire_type, value)``: an int for varint and fixed
    fields, bytes for length-delimited ones."""
    pos = 0
    n = len(buf)
    while pos < n:
        key, pos = read_varint(buf, pos)
        num, wt = key >> 3, key & 7
        value: Any
        if num == 0:
            raise WireError("field number 0")
        if wt == 0:
            value, pos = read_varint(buf, pos)
        elif wt == 2:
            length, pos = read_varint(buf, pos)
            end = pos + length
            if end > n:
                raise WireError("truncated length-delimited field")
            value = buf[pos:end]
            pos = end
        elif wt == 1 or wt == 5:
            size = 8 if wt == 1 else 4
            if pos + size > n:
                raise WireError("truncated fixed-size field")
            value = int.from_bytes(buf[pos : pos + size], "little")
            pos += size
        else:
            raise WireError(f"unsupported wire type {wt}")
        yield num, wt, value


def read_packed(value: Any) -> list[int]:
    """A repeated varint field, packed (bytes) or not (one int)."""
    if isinstance(value, int):
        return [value]
    out = []
    pos = 0
    n = len(value)
    while pos < n:
        v, pos = read_varint(value, pos)
        out.append(v)
    return out
