"""The bounded pprof reader of the local store, the viewer and the CLI.

Any ``.pb.gz`` in a profile folder may be foreign or hostile, so reading one is
bounded in time and memory by :class:`Limits`, and each limit fails with its own
:class:`PprofLimitError` naming it:

1. the input (``max_input_bytes``, 10 MiB) and its decompressed size
   (``max_decompressed_bytes``) are capped while inflating;
2. a pure-Python scan of the top-level fields checks the wire format and counts
   samples, locations, functions and strings *before* anything is built, so a
   16 KiB file that inflates to millions of empty samples is refused after one
   cheap pass (the scan stops at the first limit exceeded);
3. only then does the protobuf runtime (its C ``upb`` backend) parse the message
   against a schema built here at import time (no generated code, no encoder
   internals), and per-sample stack depth (and, where labels are read, label
   counts) are checked while the samples are read.

The scan is skipped for inputs too small to break a count limit (every field takes
at least two bytes), which is every profile this package writes.

Two views come out: :func:`read_pprof` (a plain :class:`PprofProfile`, for the
CLI summary and tests) and :func:`read_stacks` (a :class:`ProfileStacks`, the
compact form merges, diffs and flame graphs are built from: identical stacks are
summed at once, frames are interned in a shared :class:`FunctionTable`).
"""

from __future__ import annotations

import operator
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from .digest import LINE_BITS  # a frame key is function_id << LINE_BITS | line

__all__ = [
    "Limits",
    "DEFAULT_LIMITS",
    "PprofError",
    "PprofLimitError",
    "PprofFunction",
    "PprofSample",
    "PprofProfile",
    "FunctionTable",
    "ProfileStacks",
    "read_pprof",
    "read_stacks",
    "decompress",
    "LINE_BITS",
]

MiB = 1024 * 1024
_add = operator.add
_LINE_MASK = (1 << LINE_BITS) - 1


@dataclass(frozen=True)
class Limits:
    """What one profile may hold before it is refused (each limit has its own error)."""

    max_input_bytes: int = 10 * MiB
    max_decompressed_bytes: int = 16 * MiB
    max_samples: int = 250_000
    max_locations: int = 250_000
    max_functions: int = 250_000
    max_strings: int = 500_000
    max_stack_depth: int = 4096  # location ids per sample (our profiles allow 2048 frames)
    max_labels: int = 64  # labels per sample


DEFAULT_LIMITS = Limits()


class PprofError(ValueError):
    """The bytes are not a readable pprof profile."""


class PprofLimitError(PprofError):
    """The profile is larger than a :class:`Limits` field allows."""

    def __init__(self, limit: str, allowed: int, what: str) -> None:
        self.limit = limit
        self.allowed = allowed
        super().__init__(f"{what} (limit {limit}={allowed:,})")


@dataclass(frozen=True)
class PprofFunction:
    name: str
    filename: str = ""
    start_line: int = 0


@dataclass
class PprofSample:
    location_ids: list[int]  # leaf first
    values: list[int]
    labels: dict[str, str]


@dataclass
class PprofProfile:
    sample_types: list[tuple[str, str]] = field(default_factory=list)
    samples: list[PprofSample] = field(default_factory=list)
    # location id -> [(function id, line)], innermost first (the last one is the caller)
    locations: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    location_addresses: dict[int, int] = field(default_factory=dict)
    functions: dict[int, PprofFunction] = field(default_factory=dict)
    time_nanos: int = 0
    duration_nanos: int = 0
    period_type: tuple[str, str] = ("", "")
    period: int = 0
    comments: list[str] = field(default_factory=list)
    default_sample_type: str = ""

    def totals(self) -> list[int]:
        out = [0] * len(self.sample_types)
        for s in self.samples:
            for i, v in enumerate(s.values[: len(out)]):
                out[i] += v
        return out


# ----------------------------------------------------------------------------- schema


def _build_schema() -> Any:
    """The ``perftools.profiles.Profile`` message class, from a descriptor written here.

    Strings are declared ``bytes`` so that bad UTF-8 never fails a whole parse;
    only the fields this package reads are declared (the rest is skipped)."""
    F = descriptor_pb2.FieldDescriptorProto
    rep, opt = F.LABEL_REPEATED, F.LABEL_OPTIONAL
    fdp = descriptor_pb2.FileDescriptorProto(name="otelprof_store_pprof.proto", package="otelprof_store_pprof",
                                             syntax="proto3")

    def message(name: str, *fields: tuple[int, str, int, int, str]) -> None:
        m = fdp.message_type.add(name=name)
        for number, fname, ftype, label, tname in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if tname:
                f.type_name = ".otelprof_store_pprof." + tname

    i64, u64, msg, byt = F.TYPE_INT64, F.TYPE_UINT64, F.TYPE_MESSAGE, F.TYPE_BYTES
    message("Profile", (1, "sample_type", msg, rep, "ValueType"), (2, "sample", msg, rep, "Sample"),
            (4, "location", msg, rep, "Location"), (5, "function", msg, rep, "Function"),
            (6, "string_table", byt, rep, ""), (9, "time_nanos", i64, opt, ""), (10, "duration_nanos", i64, opt, ""),
            (11, "period_type", msg, opt, "ValueType"), (12, "period", i64, opt, ""), (13, "comment", i64, rep, ""),
            (14, "default_sample_type", i64, opt, ""))
    message("ValueType", (1, "type", i64, opt, ""), (2, "unit", i64, opt, ""))
    message("Sample", (1, "location_id", u64, rep, ""), (2, "value", i64, rep, ""), (3, "label", msg, rep, "Label"))
    message("Label", (1, "key", i64, opt, ""), (2, "str", i64, opt, ""), (3, "num", i64, opt, ""))
    message("Location", (1, "id", u64, opt, ""), (3, "address", u64, opt, ""), (4, "line", msg, rep, "Line"))
    message("Line", (1, "function_id", u64, opt, ""), (2, "line", i64, opt, ""))
    message("Function", (1, "id", u64, opt, ""), (2, "name", i64, opt, ""), (4, "filename", i64, opt, ""),
            (5, "start_line", i64, opt, ""))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("otelprof_store_pprof.Profile"))


_Profile = _build_schema()


# ----------------------------------------------------------------------------- bytes


def decompress(data: bytes, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """The raw protobuf of a gzip'd (or already raw) profile, within the size limits."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PprofError("expected bytes")
    data = bytes(data)
    if len(data) > limits.max_input_bytes:
        raise PprofLimitError("max_input_bytes", limits.max_input_bytes, f"file of {len(data):,} bytes")
    limit = limits.max_decompressed_bytes
    if data[:2] != b"\x1f\x8b":
        if len(data) > limit:
            raise PprofLimitError("max_decompressed_bytes", limit, f"profile of {len(data):,} bytes")
        return data
    out: list[bytes] = []
    size = 0
    rest = data
    try:
        while rest[:2] == b"\x1f\x8b":  # concatenated gzip members are allowed
            d = zlib.decompressobj(31)
            chunk = d.decompress(rest, limit - size + 1)
            while True:
                size += len(chunk)
                if size > limit:
                    raise PprofLimitError("max_decompressed_bytes", limit,
                                          f"more than {limit:,} bytes when decompressed")
                out.append(chunk)
                if d.eof or not d.unconsumed_tail:
                    break
                chunk = d.decompress(d.unconsumed_tail, limit - size + 1)
            if not d.eof:
                raise PprofError("truncated gzip data")
            rest = d.unused_data
    except zlib.error as e:
        raise PprofError(f"bad gzip data: {e}") from None
    return b"".join(out)


_COUNTED = {2: ("max_samples", "samples"), 4: ("max_locations", "locations"),
            5: ("max_functions", "functions"), 6: ("max_strings", "strings")}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it (IndexError when truncated)."""
    b = buf[pos]
    pos += 1
    value = b & 0x7F
    shift = 7
    while b & 0x80:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if shift > 63:
            raise PprofError("malformed profile: varint too long")
    return value, pos


def _scan(buf: bytes, limits: Limits) -> None:
    """Walk the top-level fields once: wire format checks and element counts."""
    caps = {num: getattr(limits, name) for num, (name, _what) in _COUNTED.items()}
    counts = dict.fromkeys(caps, 0)
    n = len(buf)
    pos = 0
    try:
        while pos < n:
            key, pos = _varint(buf, pos)
            num, wt = key >> 3, key & 7
            if num == 0:
                raise PprofError("malformed profile: field number 0")
            if wt == 2 or wt == 0:
                value, pos = _varint(buf, pos)
                if wt == 2:
                    pos += value
                    if pos > n:
                        raise PprofError("malformed profile: length-delimited field past the end")
            elif wt == 1:
                pos += 8
            elif wt == 5:
                pos += 4
            else:
                raise PprofError(f"malformed profile: unsupported wire type {wt}")
            if num in counts:
                c = counts[num] = counts[num] + 1
                if c > caps[num]:
                    limit_name, what = _COUNTED[num]
                    raise PprofLimitError(limit_name, caps[num], f"more than {caps[num]:,} {what}")
        if pos > n:
            raise PprofError("malformed profile: truncated field")
    except IndexError:
        raise PprofError("malformed profile: truncated field") from None


def _parse(data: bytes, limits: Limits) -> tuple[Any, list[str]]:
    buf = decompress(data, limits)
    # every field takes at least 2 bytes: a small profile cannot exceed a count limit,
    # and the protobuf runtime checks its wire format itself
    if len(buf) // 2 > min(limits.max_samples, limits.max_locations, limits.max_functions, limits.max_strings):
        _scan(buf, limits)
    try:
        msg = _Profile.FromString(buf)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise PprofError(f"malformed profile: {e}") from None
    strings = [b.decode("utf-8", "replace") for b in msg.string_table] or [""]
    if strings[0] != "":
        raise PprofError("malformed profile: string_table[0] must be empty")
    return msg, strings


class _Strings:
    """``s[i]`` is string ``i``, or ``""`` for an index out of range."""

    __slots__ = ("table",)

    def __init__(self, table: list[str]) -> None:
        self.table = table

    def __getitem__(self, i: int) -> str:
        return self.table[i] if 0 <= i < len(self.table) else ""


def _check_sample(sample: Any, limits: Limits) -> None:
    if len(sample.location_id) > limits.max_stack_depth:
        raise PprofLimitError("max_stack_depth", limits.max_stack_depth,
                              f"a sample with {len(sample.location_id):,} locations")
    if len(sample.label) > limits.max_labels:
        raise PprofLimitError("max_labels", limits.max_labels, f"a sample with {len(sample.label):,} labels")


def _header(msg: Any, s: _Strings, prof: Any) -> None:
    prof.sample_types = [(s[t.type], s[t.unit]) for t in msg.sample_type]
    prof.time_nanos = msg.time_nanos
    prof.duration_nanos = msg.duration_nanos
    prof.period = msg.period
    prof.period_type = (s[msg.period_type.type], s[msg.period_type.unit])
    prof.comments = [s[i] for i in msg.comment]
    prof.default_sample_type = s[msg.default_sample_type]


def read_pprof(data: bytes, *, limits: Optional[Limits] = None, max_bytes: Optional[int] = None) -> PprofProfile:
    """Decode a pprof profile (gzip'd or raw) into a :class:`PprofProfile`.

    ``max_bytes`` overrides ``limits.max_decompressed_bytes``.  Raises
    :class:`PprofError` (and nothing else) for bad or oversized input."""
    lim = limits or DEFAULT_LIMITS
    if max_bytes is not None:
        lim = Limits(**{**lim.__dict__, "max_decompressed_bytes": max_bytes})
    msg, strings = _parse(data, lim)
    s = _Strings(strings)
    prof = PprofProfile()
    _header(msg, s, prof)
    ntypes = len(prof.sample_types)
    for f in msg.function:
        if f.id:
            prof.functions[f.id] = PprofFunction(s[f.name], s[f.filename], f.start_line)
    for loc in msg.location:
        if loc.id:
            prof.locations[loc.id] = [(ln.function_id, ln.line) for ln in loc.line]
            prof.location_addresses[loc.id] = loc.address
    for sample in msg.sample:
        _check_sample(sample, lim)
        values = list(sample.value[:ntypes])
        if len(values) < ntypes:
            values += [0] * (ntypes - len(values))
        labels = {s[lb.key]: s[lb.str] for lb in sample.label if lb.str}
        prof.samples.append(PprofSample(list(sample.location_id), values, labels))
    return prof


# ----------------------------------------------------------------------------- stacks


class FunctionTable:
    """Interns ``(name, file, start_line)`` across profiles; ids start at 0."""

    def __init__(self) -> None:
        self.functions: list[tuple[str, str, int]] = []
        self._index: dict[tuple[str, str, int], int] = {}

    def __len__(self) -> int:
        return len(self.functions)

    def intern(self, name: str, filename: str = "", start_line: int = 0) -> int:
        key = (name, filename, start_line)
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.functions)
            self.functions.append(key)
        return i


@dataclass
class ProfileStacks:
    """One profile as summed stacks: ``stacks[(frame keys, root first)] = [values]``.

    A frame key is ``function_id << LINE_BITS | line`` (ids of the shared
    :class:`FunctionTable`).  With ``by_thread``, a key starts with the thread
    name (a ``str``).  Samples whose values are all zero are left out."""

    sample_types: list[tuple[str, str]]
    stacks: dict[tuple[Any, ...], list[int]]
    time_nanos: int = 0
    duration_nanos: int = 0
    period: int = 0
    period_type: tuple[str, str] = ("", "")
    comments: list[str] = field(default_factory=list)
    default_sample_type: str = ""
    labels: dict[str, dict[str, int]] = field(default_factory=dict)  # key -> value -> samples (<= 50 values)
    threads: dict[str, list[int]] = field(default_factory=dict)

    def totals(self) -> list[int]:
        return column_sums(self.stacks.values(), len(self.sample_types))


def column_sums(rows: Iterable[Sequence[int]], width: int) -> list[int]:
    """Per-column sums of value lists."""
    out = [0] * width
    for values in rows:
        for i, v in enumerate(values):
            out[i] += v
    return out


class _LocationFrames(dict):  # type: ignore[type-arg]  # location id -> frame keys, leaf first
    """The slow path of a sample: inlined locations expand to several frames; an
    unknown location id is an error."""

    __slots__ = ("table", "flat", "multi")

    def __init__(self, table: FunctionTable, flat: dict[int, int], multi: dict[int, tuple[int, ...]]) -> None:
        super().__init__()
        self.table = table
        self.flat = flat
        self.multi = multi

    def __missing__(self, loc_id: int) -> tuple[int, ...]:
        key = self.multi.get(loc_id)
        if key is None:
            one = self.flat.get(loc_id)
            if one is None:  # as go tool pprof does; it also keeps frames bounded by max_locations
                raise PprofError(f"malformed profile: a sample names location {loc_id}, which does not exist")
            key = (one,)
        self[loc_id] = key
        return key


def _frame(fid: int, line: int) -> int:
    return fid << LINE_BITS | (line if 0 <= line <= _LINE_MASK else 0)


def read_stacks(data: bytes, table: FunctionTable, *, limits: Optional[Limits] = None,
                by_thread: bool = False, with_labels: bool = False) -> ProfileStacks:
    """Decode a pprof into summed stacks, frames interned in ``table``."""
    lim = limits or DEFAULT_LIMITS
    msg, strings = _parse(data, lim)
    s = _Strings(strings)
    out = ProfileStacks(sample_types=[], stacks={})
    _header(msg, s, out)
    ntypes = len(out.sample_types)
    intern = table.intern
    functions: dict[int, int] = {}
    for f in msg.function:
        functions[f.id] = intern(s[f.name], s[f.filename], f.start_line)

    def function_of(fid: int) -> int:
        g = functions.get(fid)
        if g is None:
            g = functions[fid] = intern(f"<function {fid}>")
        return g

    flat: dict[int, int] = {}  # location id -> its one frame key (the common case: no inlining)
    multi: dict[int, tuple[int, ...]] = {}  # location id -> frame keys, innermost first (inlined)
    for loc in msg.location:
        try:
            (ln,) = loc.line
        except ValueError:  # no line (an address only) or inlined frames
            lines = loc.line
            if lines:
                multi[loc.id] = tuple(_frame(function_of(x.function_id), x.line) for x in lines)
            else:
                flat[loc.id] = intern(f"0x{loc.address:x}" if loc.address else f"<location {loc.id}>") << LINE_BITS
            continue
        fid = functions.get(ln.function_id)
        if fid is None:
            fid = function_of(ln.function_id)
        line = ln.line
        flat[loc.id] = fid << LINE_BITS | line if 0 <= line <= _LINE_MASK else fid << LINE_BITS
    locs = _LocationFrames(table, flat, multi)
    get = flat.__getitem__
    stacks = out.stacks
    need_labels = by_thread or with_labels
    label_values = out.labels
    threads = out.threads
    max_depth = lim.max_stack_depth
    max_labels = lim.max_labels
    for sample in msg.sample:
        ids = sample.location_id[::-1]  # root first
        if len(ids) > max_depth or (need_labels and len(sample.label) > max_labels):
            _check_sample(sample, lim)
        values = sample.value[:]
        if len(values) != ntypes:
            values = (values + [0] * ntypes)[:ntypes]
        if not any(values):
            continue
        try:
            key: tuple[Any, ...] = tuple(map(get, ids))
        except KeyError:  # an inlined or unknown location
            key = tuple(k for i in ids for k in reversed(locs[i]))
        if need_labels:
            thread = ""
            for lb in sample.label:
                k = s[lb.key]
                v = s[lb.str] if lb.str else str(lb.num)
                if k == "thread_name":
                    thread = v
                counts = label_values.setdefault(k, {})
                if v in counts or len(counts) < 50:
                    counts[v] = counts.get(v, 0) + 1
            acc_t = threads.get(thread)
            if acc_t is None:
                threads[thread] = list(values)
            else:
                for i, v in enumerate(values):
                    acc_t[i] += v
            if by_thread:
                key = (thread,) + key
        acc = stacks.get(key)
        if acc is None:
            stacks[key] = values
        else:
            stacks[key] = list(map(_add, acc, values))
    return out
