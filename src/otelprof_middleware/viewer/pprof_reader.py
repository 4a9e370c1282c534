"""A small pprof reader for the local viewer.

It reads the gzip'd (or raw) ``perftools.profiles.Profile`` protobuf by hand
(wire format only, no generated classes), and turns it into the JSON the viewer
page draws: a flame tree (root first, frames merged by function) with one value
per sample type, and a per-function self/total table.

Only what the viewer needs is decoded; unknown fields are skipped.  Bad input
raises :class:`PprofError` (never anything else), and the decompressed size is
capped so that a hostile file cannot use unbounded memory.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from ..encoding._protowire import iter_fields as _fields
from ..encoding._protowire import read_packed as _ints

__all__ = [
    "PprofError",
    "PprofProfile",
    "PprofFunction",
    "PprofSample",
    "read_pprof",
    "flame_tree",
    "MAX_DECOMPRESSED_BYTES",
]

MAX_DECOMPRESSED_BYTES = 256 * 1024 * 1024
_MASK64 = (1 << 64) - 1


class PprofError(ValueError):
    """The bytes are not a readable pprof profile."""


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


# ----------------------------------------------------------------------------- wire format


def _signed(n: int) -> int:
    return n - (1 << 64) if n >= 1 << 63 else n


def _int(value: Any) -> int:
    if not isinstance(value, int):
        raise PprofError("expected a varint")
    return value


def _msg(value: Any) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise PprofError("expected an embedded message")
    return bytes(value)


def _decompress(data: bytes, limit: int) -> bytes:
    if data[:2] != b"\x1f\x8b":
        if len(data) > limit:
            raise PprofError("profile too large")
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
                    raise PprofError("profile too large when decompressed")
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


def read_pprof(data: bytes, *, max_bytes: int = MAX_DECOMPRESSED_BYTES) -> PprofProfile:
    """Decode a pprof profile (gzip'd or raw)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise PprofError("expected bytes")
    buf = _decompress(bytes(data), max_bytes)
    try:
        return _decode(buf)
    except PprofError:
        raise
    except (IndexError, ValueError, TypeError) as e:
        raise PprofError(f"malformed profile: {e}") from None


def _decode(buf: bytes) -> PprofProfile:
    strings: list[str] = []
    raw_types: list[tuple[int, int]] = []
    raw_samples: list[tuple[list[int], list[int], list[tuple[int, int]]]] = []
    raw_functions: dict[int, tuple[int, int, int]] = {}
    prof = PprofProfile()
    period_type = (0, 0)
    comment_idx: list[int] = []
    default_idx = 0

    for num, _wt, value in _fields(buf):
        if num == 1:  # sample_type
            raw_types.append(_value_type(_msg(value)))
        elif num == 2:  # sample
            ids: list[int] = []
            values: list[int] = []
            labels: list[tuple[int, int]] = []
            for n2, _w2, v2 in _fields(_msg(value)):
                if n2 == 1:
                    ids.extend(_ints(v2))
                elif n2 == 2:
                    values.extend(_signed(v) for v in _ints(v2))
                elif n2 == 3:
                    key = sval = 0
                    for n3, _w3, v3 in _fields(_msg(v2)):
                        if n3 == 1:
                            key = _int(v3)
                        elif n3 == 2:
                            sval = _int(v3)
                    if sval:
                        labels.append((key, sval))
            raw_samples.append((ids, values, labels))
        elif num == 4:  # location
            loc_id = 0
            address = 0
            lines: list[tuple[int, int]] = []
            for n2, _w2, v2 in _fields(_msg(value)):
                if n2 == 1:
                    loc_id = _int(v2)
                elif n2 == 3:
                    address = _int(v2)
                elif n2 == 4:
                    fid = line = 0
                    for n3, _w3, v3 in _fields(_msg(v2)):
                        if n3 == 1:
                            fid = _int(v3)
                        elif n3 == 2:
                            line = _signed(_int(v3))
                    lines.append((fid, line))
            if loc_id:
                prof.locations[loc_id] = lines
                prof.location_addresses[loc_id] = address
        elif num == 5:  # function
            fid = name = filename = start = 0
            for n2, _w2, v2 in _fields(_msg(value)):
                if n2 == 1:
                    fid = _int(v2)
                elif n2 == 2:
                    name = _int(v2)
                elif n2 == 4:
                    filename = _int(v2)
                elif n2 == 5:
                    start = _signed(_int(v2))
            if fid:
                raw_functions[fid] = (name, filename, start)
        elif num == 6:  # string_table
            strings.append(bytes(_msg(value)).decode("utf-8", "replace"))
        elif num == 9:
            prof.time_nanos = _signed(_int(value))
        elif num == 10:
            prof.duration_nanos = _signed(_int(value))
        elif num == 11:
            period_type = _value_type(_msg(value))
        elif num == 12:
            prof.period = _signed(_int(value))
        elif num == 13:
            comment_idx.extend(_ints(value))
        elif num == 14:
            default_idx = _int(value)

    if not strings:
        strings = [""]
    if strings[0] != "":
        raise PprofError("string_table[0] must be empty")

    def s(i: int) -> str:
        return strings[i] if 0 <= i < len(strings) else ""

    prof.sample_types = [(s(t), s(u)) for t, u in raw_types]
    prof.period_type = (s(period_type[0]), s(period_type[1]))
    prof.comments = [s(i) for i in comment_idx]
    prof.default_sample_type = s(default_idx)
    prof.functions = {fid: PprofFunction(s(n), s(f), st) for fid, (n, f, st) in raw_functions.items()}
    ntypes = len(prof.sample_types)
    for ids, values, labels in raw_samples:
        if len(values) < ntypes:
            values = values + [0] * (ntypes - len(values))
        prof.samples.append(PprofSample(ids, values[:ntypes], {s(k): s(v) for k, v in labels}))
    return prof


def _value_type(buf: bytes) -> tuple[int, int]:
    t = u = 0
    for num, _wt, value in _fields(buf):
        if num == 1:
            t = _int(value)
        elif num == 2:
            u = _int(value)
    return t, u


# ----------------------------------------------------------------------------- flame tree


def _frames(prof: PprofProfile, location_ids: list[int]) -> list[tuple[PprofFunction, int]]:
    """Root-first ``(function, line)`` frames of one sample; inlined lines expanded."""
    out: list[tuple[PprofFunction, int]] = []
    for loc_id in location_ids:  # leaf first
        lines = prof.locations.get(loc_id)
        if not lines:
            addr = prof.location_addresses.get(loc_id, 0)
            out.append((PprofFunction(f"0x{addr:x}" if addr else f"<location {loc_id}>"), 0))
            continue
        for fid, line in lines:  # innermost first
            fn = prof.functions.get(fid) or PprofFunction(f"<function {fid}>")
            out.append((fn, line))
    out.reverse()
    return out


def flame_tree(prof: PprofProfile, *, by_thread: bool = False, max_nodes: int = 200_000) -> dict[str, Any]:
    """The JSON-ready flame tree and per-function table of ``prof``.

    Returns ``{"sample_types", "default_type", "totals", "functions", "tree", "top",
    "threads", "labels", "truncated_nodes"}``.  ``functions`` is a table of
    ``{"name", "file", "start_line"}``; a tree node is ``{"f": function index (-1 for the
    root, -2 for a thread), "name", "v": values, "s": self values (left out when all
    zero), "line": hottest line, "c": children}``.  Every node's values equal the sum of its children's values plus
    its self values, and the root's values equal the sum over all samples.  ``top``
    lists ``{"f", "self", "total"}`` per function (total counts a recursive function once
    per sample).  Frames beyond ``max_nodes`` distinct tree nodes are folded into their
    parent's self value (counted in ``truncated_nodes``), so totals stay exact.
    """
    ntypes = len(prof.sample_types)
    fn_index: dict[PprofFunction, int] = {}
    functions: list[dict[str, Any]] = []
    # node: [f, values, self, children dict, line counts dict, name]
    root: list[Any] = [-1, [0] * ntypes, [0] * ntypes, {}, {}, "all"]
    nodes = 1
    truncated = 0
    self_by_fn: dict[int, list[int]] = {}
    total_by_fn: dict[int, list[int]] = {}
    threads: dict[str, list[int]] = {}
    label_values: dict[str, dict[str, int]] = {}
    loc_frames: dict[int, list[tuple[int, int]]] = {}  # location id -> [(function index, line)], leaf first

    def intern(fn: PprofFunction) -> int:
        f = fn_index.get(fn)
        if f is None:
            f = fn_index[fn] = len(functions)
            functions.append({"name": fn.name, "file": fn.filename, "start_line": fn.start_line})
        return f

    for sample in prof.samples:
        values = sample.values
        if not any(values):
            continue
        thread = sample.labels.get("thread_name", "")
        acc = threads.setdefault(thread, [0] * ntypes)
        for i in range(ntypes):
            acc[i] += values[i]
        for k, v in sample.labels.items():
            counts = label_values.setdefault(k, {})
            if v in counts or len(counts) < 50:
                counts[v] = counts.get(v, 0) + 1

        node = root
        _add(node[1], values)
        if by_thread:
            key = ("thread", thread)
            child = node[3].get(key)
            if child is None:
                child = node[3][key] = [-2, [0] * ntypes, [0] * ntypes, {}, {}, f"thread: {thread or '?'}"]
                nodes += 1
            node = child
            _add(node[1], values)
        frames: list[tuple[int, int]] = []
        for loc_id in sample.location_ids:  # leaf first
            lf = loc_frames.get(loc_id)
            if lf is None:
                lf = loc_frames[loc_id] = [(intern(fn), line) for fn, line in reversed(_frames(prof, [loc_id]))]
            frames.extend(lf)
        frames.reverse()  # root first
        seen: set[int] = set()
        stopped = False
        f = -1
        for f, line in frames:
            if f not in seen:
                seen.add(f)
                _add(total_by_fn.setdefault(f, [0] * ntypes), values)
            if stopped:
                continue
            child = node[3].get(f)
            if child is None:
                if nodes >= max_nodes:
                    truncated += 1
                    stopped = True
                    continue
                child = node[3][f] = [f, [0] * ntypes, [0] * ntypes, {}, {}, None]
                nodes += 1
            node = child
            _add(node[1], values)
            if line:
                node[4][line] = node[4].get(line, 0) + (values[0] if values else 1)
        _add(node[2], values)
        if f >= 0:
            _add(self_by_fn.setdefault(f, [0] * ntypes), values)

    tree = _export_iter(root, functions)
    top = [
        {"f": f, "self": self_by_fn.get(f, [0] * ntypes), "total": total_by_fn.get(f, [0] * ntypes)}
        for f in range(len(functions))
    ]
    types = [t for t, _ in prof.sample_types]
    default = prof.default_sample_type if prof.default_sample_type in types else (types[-1] if types else "")
    return {
        "sample_types": [{"type": t, "unit": u} for t, u in prof.sample_types],
        "default_type": default,
        "totals": prof.totals(),
        "functions": functions,
        "tree": tree,
        "top": top,
        "threads": [{"name": k, "v": v} for k, v in sorted(threads.items(), key=lambda kv: kv[0])],
        "labels": {k: sorted(v) for k, v in sorted(label_values.items())},
        "truncated_nodes": truncated,
    }


def _add(acc: list[int], values: list[int]) -> None:
    for i, v in enumerate(values):
        acc[i] += v


def _export_iter(root: list[Any], functions: list[dict[str, Any]]) -> dict[str, Any]:
    """Convert the internal tree to JSON-ready dicts without recursion (deep stacks)."""

    def convert(node: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"f": node[0], "v": node[1]}
        if any(node[2]):
            out["s"] = node[2]
        if node[5] is not None:
            out["name"] = node[5]
        if node[4]:
            out["line"] = max(node[4].items(), key=lambda kv: (kv[1], -kv[0]))[0]
        return out

    top = convert(root)
    stack: list[tuple[list[Any], dict[str, Any]]] = [(root, top)]
    while stack:
        node, out = stack.pop()
        children = list(node[3].values())
        if not children:
            continue
        children.sort(key=lambda c: (c[5] or functions[c[0]]["name"], c[0]))
        converted = [convert(c) for c in children]
        out["c"] = converted
        stack.extend(zip(children, converted))
    return top
