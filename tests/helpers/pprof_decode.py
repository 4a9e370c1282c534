"""A small, independent pprof decoder for tests (hand-parsed protobuf wire format).

It does not share code with the library's encoder and does not use generated
protobuf classes, so a round trip through it is a real check of the wire bytes.

    decoded = decode_pprof(data)                 # gzip or raw bytes
    for names, values, labels in stacks_by_function(decoded): ...
    out = run_go_pprof(["-raw"], path)          # None when `go` is not installed
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Iterator

__all__ = [
    "DecodeError",
    "DecodedFunction",
    "DecodedLocation",
    "DecodedSample",
    "DecodedProfile",
    "decode_pprof",
    "stacks_by_function",
    "run_go_pprof",
    "GO_MISSING",
]

GO_MISSING = "`go` is not on PATH: `go tool pprof` cross-check skipped (install golang-go)"


class DecodeError(ValueError):
    pass


@dataclass
class DecodedFunction:
    id: int
    name: str
    system_name: str
    filename: str
    start_line: int


@dataclass
class DecodedLocation:
    id: int
    mapping_id: int
    address: int
    lines: list[tuple[int, int]]  # (function_id, line); several = inlined, last is the caller


@dataclass
class DecodedSample:
    location_ids: list[int]  # leaf first
    values: list[int]
    labels: dict[str, str]  # string labels
    num_labels: dict[str, int]
    label_keys: list[str]  # every label key in wire order (to detect repeated keys)


@dataclass
class DecodedProfile:
    sample_types: list[tuple[str, str]] = field(default_factory=list)
    samples: list[DecodedSample] = field(default_factory=list)
    mapping_ids: list[int] = field(default_factory=list)
    locations: dict[int, DecodedLocation] = field(default_factory=dict)
    functions: dict[int, DecodedFunction] = field(default_factory=dict)
    string_table: list[str] = field(default_factory=list)
    time_nanos: int = 0
    duration_nanos: int = 0
    period_type: tuple[str, str] = ("", "")
    period: int = 0
    comments: list[str] = field(default_factory=list)
    default_sample_type: str = ""
    was_gzipped: bool = False
    duplicate_location_ids: list[int] = field(default_factory=list)
    duplicate_function_ids: list[int] = field(default_factory=list)


# --- wire level -------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("varint longer than 10 bytes")


def _signed(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) with value an int (varint/fixed) or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise DecodeError("field number 0")
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
            yield number, wire_type, value
        elif wire_type == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise DecodeError(f"field {number}: length {size} past the end")
            yield number, wire_type, buf[pos : pos + size]
            pos += size
        elif wire_type == 1:
            yield number, wire_type, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire_type == 5:
            yield number, wire_type, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise DecodeError(f"field {number}: unsupported wire type {wire_type}")
    if pos != len(buf):
        raise DecodeError("message overran its buffer")


def _ints(value: int | bytes) -> list[int]:
    """A repeated integer field: one unpacked value or a packed run."""
    if isinstance(value, int):
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _read_varint(value, pos)
        out.append(v)
    return out


def _msg(value: int | bytes, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise DecodeError(f"{what}: expected a length-delimited field")
    return value


def _int(value: int | bytes, what: str) -> int:
    if not isinstance(value, int):
        raise DecodeError(f"{what}: expected a varint field")
    return value


# --- messages ----------------------------------------------------------------------


def _value_type(buf: bytes) -> tuple[int, int]:
    t = u = 0
    for number, _, value in _fields(buf):
        if number == 1:
            t = _int(value, "ValueType.type")
        elif number == 2:
            u = _int(value, "ValueType.unit")
    return t, u


def decode_pprof(data: bytes) -> DecodedProfile:
    """Decode a pprof ``Profile`` (gzip-compressed or raw) into plain dataclasses with
    every string index resolved.  Raises :class:`DecodeError` on malformed input."""
    gzipped = data[:2] == b"\x1f\x8b"
    if gzipped:
        data = gzip.decompress(data)

    raw_sample_types: list[tuple[int, int]] = []
    raw_samples: list[tuple[list[int], list[int], list[tuple[int, int, int, int]]]] = []
    raw_locations: list[DecodedLocation] = []
    raw_functions: list[tuple[int, int, int, int, int]] = []
    strings: list[str] = []
    comments: list[int] = []
    period_type = (0, 0)
    p = DecodedProfile(was_gzipped=gzipped)
    default_type = 0

    for number, _, value in _fields(data):
        if number == 1:
            raw_sample_types.append(_value_type(_msg(value, "sample_type")))
        elif number == 2:
            loc_ids: list[int] = []
            values: list[int] = []
            labels: list[tuple[int, int, int, int]] = []
            for n, _, v in _fields(_msg(value, "sample")):
                if n == 1:
                    loc_ids += _ints(v)
                elif n == 2:
                    values += [_signed(x) for x in _ints(v)]
                elif n == 3:
                    lab = [0, 0, 0, 0]
                    for ln, _, lv in _fields(_msg(v, "label")):
                        if 1 <= ln <= 4:
                            lab[ln - 1] = _int(lv, "label field")
                    labels.append((lab[0], lab[1], _signed(lab[2]), lab[3]))
            raw_samples.append((loc_ids, values, labels))
        elif number == 3:
            for n, _, v in _fields(_msg(value, "mapping")):
                if n == 1:
                    p.mapping_ids.append(_int(v, "mapping.id"))
        elif number == 4:
            loc = DecodedLocation(0, 0, 0, [])
            for n, _, v in _fields(_msg(value, "location")):
                if n == 1:
                    loc.id = _int(v, "location.id")
                elif n == 2:
                    loc.mapping_id = _int(v, "location.mapping_id")
                elif n == 3:
                    loc.address = _int(v, "location.address")
                elif n == 4:
                    fid = line = 0
                    for ln, _, lv in _fields(_msg(v, "line")):
                        if ln == 1:
                            fid = _int(lv, "line.function_id")
                        elif ln == 2:
                            line = _signed(_int(lv, "line.line"))
                    loc.lines.append((fid, line))
            raw_locations.append(loc)
        elif number == 5:
            f = [0, 0, 0, 0, 0]
            for n, _, v in _fields(_msg(value, "function")):
                if 1 <= n <= 5:
                    f[n - 1] = _int(v, "function field")
            raw_functions.append((f[0], f[1], f[2], f[3], _signed(f[4])))
        elif number == 6:
            strings.append(_msg(value, "string_table").decode("utf-8"))
        elif number == 9:
            p.time_nanos = _signed(_int(value, "time_nanos"))
        elif number == 10:
            p.duration_nanos = _signed(_int(value, "duration_nanos"))
        elif number == 11:
            period_type = _value_type(_msg(value, "period_type"))
        elif number == 12:
            p.period = _signed(_int(value, "period"))
        elif number == 13:
            comments += _ints(value)
        elif number == 14:
            default_type = _int(value, "default_sample_type")

    if not strings or strings[0] != "":
        raise DecodeError('string_table[0] must be ""')

    def s(i: int) -> str:
        if not 0 <= i < len(strings):
            raise DecodeError(f"string index {i} out of range ({len(strings)} strings)")
        return strings[i]

    p.string_table = strings
    p.sample_types = [(s(t), s(u)) for t, u in raw_sample_types]
    p.period_type = (s(period_type[0]), s(period_type[1]))
    p.comments = [s(i) for i in comments]
    p.default_sample_type = s(default_type)
    for loc in raw_locations:
        if loc.id in p.locations:
            p.duplicate_location_ids.append(loc.id)
        p.locations[loc.id] = loc
    for fid, name, system_name, filename, start_line in raw_functions:
        if fid in p.functions:
            p.duplicate_function_ids.append(fid)
        p.functions[fid] = DecodedFunction(fid, s(name), s(system_name), s(filename), start_line)
    for loc_ids, values, labels in raw_samples:
        sample = DecodedSample(loc_ids, values, {}, {}, [])
        for key, str_, num, _unit in labels:
            sample.label_keys.append(s(key))
            if str_:
                sample.labels[s(key)] = s(str_)
            else:
                sample.num_labels[s(key)] = num
        p.samples.append(sample)
    return p


def stacks_by_function(decoded: DecodedProfile) -> list[tuple[list[str], list[int], dict[str, str]]]:
    """One entry per sample: (function names leaf first, values, string labels).
    Inlined lines of one Location are expanded in order (callee first)."""
    out = []
    for sample in decoded.samples:
        names: list[str] = []
        for loc_id in sample.location_ids:
            loc = decoded.locations.get(loc_id)
            if loc is None:
                raise DecodeError(f"sample references unknown location {loc_id}")
            for function_id, _line in loc.lines:
                fn = decoded.functions.get(function_id)
                if fn is None:
                    raise DecodeError(f"location {loc_id} references unknown function {function_id}")
                names.append(fn.name)
        out.append((names, list(sample.values), dict(sample.labels)))
    return out


def run_go_pprof(args: list[str], path: str, timeout: float = 120.0) -> str | None:
    """Run ``go tool pprof <args> <path>`` and return its stdout, or None when `go` is
    not installed (callers then ``pytest.skip(GO_MISSING)``).  A non-zero exit raises
    AssertionError with the tool's stderr."""
    go = shutil.which("go")
    if go is None:
        return None
    proc = subprocess.run(
        [go, "tool", "pprof", *args, path], capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"`go tool pprof {' '.join(args)} {path}` exited {proc.returncode}:\n{proc.stderr}\n{proc.stdout}"
        )
    return proc.stdout
