"""Profile digests: what merges need of a profile, stored so that nobody decodes pprof.

A merge, diff or top table only needs each profile's stacks (frames root first:
function name, file, start line, line) and their summed values (samples, CPU and
wall time; thread names and labels are not used).  Decoding that from a
``.pb.gz`` in pure Python costs ~2 ms for a 300-stack request profile, so the
``file`` exporter, which holds the :class:`~otelprof_middleware.profile.Profile`
anyway, also writes a *digest* of it into the index database (tables ``digests``
and ``digest_data``, in the same transaction as the profile's row; retention deletes
them in one step with the row).  Profiles written by other tools, or before digests existed, are digested
the first time they are read and the digest is stored then.

A digest is one blob, in three parts after a fixed header:

* the stacks' content hashes (``HASH_BYTES`` each), as they are;
* zlib: the sample types (JSON) and each stack's values (``VALUE_BYTES`` per
  sample type, unsigned little-endian);
* zlib: the tables a reader needs only for stacks it has not seen: the functions
  (JSON ``[name, file, start_line]``), per distinct (function, line) its function
  index and line (lines already cut to ``LINE_BITS``, as the reader cuts them), each
  stack's depth and its frame indices, root first.  Integer arrays are ``'H'``
  where the values fit, else ``'I'`` (header flags).

The content hash (BLAKE2b of the stack's frames' names, files and lines) lets a
reader recognise a stack it has already interned without decoding its frames: a
merge of many profiles of one route inflates the third part only for profiles
with a stack it has not seen, decodes each distinct stack once, and adds the
others by hash.  A hash only ever stands for the content it was computed
from, so two hashes of one stack (say, from differently normalised names) cost a
second decode, never a wrong sum: stacks are interned by content as well.

Values are stored as 80-bit fields so that one Python integer carries all of a
stack's values (``v0 | v1 << 80 | v2 << 160``) and a merge adds one integer per
stack; every stored value is below ``2**63`` (pprof's ``int64``), so a sum of up
to ``2**16`` profiles cannot carry from one field into the next.  A profile with
a negative or larger value, or too big a digest (:data:`MAX_DIGEST_BYTES`), gets
no digest and is read from its pprof as before.

``FORMAT_VERSION`` changes with the layout; a stored digest of another version is
ignored and rebuilt from the pprof the next time the profile is read.

This module is imported by the exporter in the application's process: it needs
only the standard library (the reader side is handed its function table).
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from array import array
from hashlib import blake2b
from itertools import chain
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

if TYPE_CHECKING:
    from ..profile import Profile
    from .pprof import FunctionTable, ProfileStacks

__all__ = ["FORMAT_VERSION", "HEADER", "MAX_DIGEST_BYTES", "LINE_BITS", "PROFILE_TYPES", "DigestError", "Digest",
           "StackTable", "digest_profile", "digest_stacks", "load_digest", "sum_digests"]

FORMAT_VERSION = 1
MAX_DIGEST_BYTES = 1024 * 1024  # a larger profile is read from its pprof each time
MAX_RAW_BYTES = 16 * 1024 * 1024  # inflated body, as the pprof reader's max_decompressed_bytes
MAX_TYPES = 16
LINE_BITS = 24  # a frame key of the reader is function_id << LINE_BITS | line
LINE_MASK = (1 << LINE_BITS) - 1
VALUE_BYTES = 10  # one 80-bit field per sample type
_FIELD_MASK = (1 << (8 * VALUE_BYTES)) - 1
_INT64 = 1 << 63
HASH_BYTES = 12  # 96 bits: a collision is not expected below ~10**14 distinct stacks
#: the sample types of a digest made from a Profile: the order of encode_pprof's
PROFILE_TYPES: tuple[tuple[str, str], ...] = (("samples", "count"), ("cpu", "nanoseconds"), ("wall", "nanoseconds"))

_MAGIC = b"OPdg"
# magic, version, types, flags, functions, frames, stacks, frame refs, type JSON bytes, function JSON bytes,
# compressed bytes of the values part; flags: which integer arrays are 'I' rather than 'H'
HEADER = struct.Struct("<4sHBBIIIIIII")
_WIDE_FUNCTIONS, _WIDE_LINES, _WIDE_REFS = 1, 2, 4
_SWAP = sys.byteorder != "little"


class DigestError(ValueError):
    """A stored digest that cannot be used (another version, damaged, over a limit)."""


# --------------------------------------------------------------------------- writing


_FUNCTION_HASHES: dict[tuple[str, str, int], bytes] = {}  # the functions a process keeps profiling


def _function_hash(function: tuple[str, str, int]) -> bytes:
    h = _FUNCTION_HASHES.get(function)
    if h is None:
        name, filename, start_line = function
        text = f"{len(name)}:{name}{len(filename)}:{filename}{start_line}"
        h = blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        if len(_FUNCTION_HASHES) >= 8192:  # bounded: a few hundred kB in the application
            _FUNCTION_HASHES.clear()
        _FUNCTION_HASHES[function] = h
    return h


_SHIFT = 8 * VALUE_BYTES
_MAX_RECORDS = 1 << 16  # sample records summed into 80-bit fields without a carry
# the bits of each field at and above 2**63: a value there is not an int64
_HIGH = sum((_FIELD_MASK ^ (_INT64 - 1)) << (_SHIFT * i) for i in range(MAX_TYPES))


def _encode(types: Sequence[tuple[str, str]], functions: Sequence[tuple[str, str, int]], frame_fn: Sequence[int],
            frame_line: Sequence[int], stacks: Sequence[Sequence[int]], packed: Sequence[int],
            ) -> Optional[tuple[bytes, bytes, bytes]]:
    """``(blob, stack hashes, values)``, None when the profile cannot have a digest.
    ``stacks`` are frame indices root first, ``packed`` their values as one integer
    each (80-bit fields); lines already cut to ``LINE_BITS``."""
    ntypes = len(types)
    if not 0 < ntypes <= MAX_TYPES:
        return None
    for _name, _file, start in functions:
        if not -_INT64 <= start < _INT64:
            return None
    nbytes = VALUE_BYTES * ntypes
    high = _HIGH & ((1 << (8 * nbytes)) - 1)
    flags = ((_WIDE_FUNCTIONS if len(functions) > 1 << 16 else 0) | (_WIDE_REFS if len(frame_fn) > 1 << 16 else 0)
             | (_WIDE_LINES if max(frame_line, default=0) > 0xFFFF else 0))
    try:
        values = b"".join([v.to_bytes(nbytes, "little") for v in packed if not v & high])
        depths = array("H", map(len, stacks))
        refs = array("I" if flags & _WIDE_REFS else "H", list(chain.from_iterable(stacks)))
        fn_arr = array("I" if flags & _WIDE_FUNCTIONS else "H", frame_fn)
        line_arr = array("I" if flags & _WIDE_LINES else "H", frame_line)
    except OverflowError:  # a value of 2**(80 * ntypes) or more, a stack of 65,536 frames
        return None
    if len(values) != nbytes * len(packed):
        return None  # a value of 2**63 or more (or negative: it was refused before packing)
    fh = [_function_hash(f) for f in functions]
    frame_key = [fh[f] + line.to_bytes(4, "little") for f, line in zip(frame_fn, frame_line)]
    key_of = frame_key.__getitem__
    hashes = b"".join([blake2b(b"".join(map(key_of, stack)), digest_size=HASH_BYTES).digest() for stack in stacks])
    # as pprof stores names: UTF-8, a lone surrogate replaced
    type_json = json.dumps([list(t) for t in types], ensure_ascii=False, separators=(",", ":"))
    fn_json = json.dumps([list(f) for f in functions], ensure_ascii=False, separators=(",", ":"))
    if _SWAP:
        for a in (fn_arr, line_arr, depths, refs):
            a.byteswap()
    types_part = type_json.encode("utf-8", "replace")
    fn_part = fn_json.encode("utf-8", "replace")
    tables = b"".join([fn_part, fn_arr.tobytes(), line_arr.tobytes(), depths.tobytes(), refs.tobytes()])
    if len(tables) + len(values) > MAX_RAW_BYTES:
        return None
    head = zlib.compress(types_part + values, 1)
    header = HEADER.pack(_MAGIC, FORMAT_VERSION, ntypes, flags, len(functions), len(frame_fn), len(stacks),
                          len(refs), len(types_part), len(fn_part), len(head))
    blob = b"".join([header, hashes, head, zlib.compress(tables, 1)])
    return (blob, hashes, values) if len(blob) <= MAX_DIGEST_BYTES else None


def digest_profile(profile: "Profile") -> Optional[bytes]:
    """The digest of a profile as ``encode_pprof`` writes it and the bounded reader
    reads it back: values summed per stack over threads, samples whose values are
    all zero left out.  None when it cannot have one (see the module docstring)."""
    if len(profile.samples) >= _MAX_RECORDS:
        return None
    sums: dict[int, int] = {}
    get = sums.get
    for s in profile.samples:
        c, cpu, wall = s.count, s.cpu_ns, s.wall_ns
        if not (0 <= c < _INT64 and 0 <= cpu < _INT64 and 0 <= wall < _INT64):
            return None  # not an int64 value pprof could hold, or negative
        if c or cpu or wall:
            i = s.stack_index
            sums[i] = get(i, 0) + (c | cpu << _SHIFT | wall << 2 * _SHIFT)
    locations = profile.locations
    frame_fn = [loc.function_index for loc in locations]
    frame_line = [loc.line for loc in locations]
    if frame_line and (min(frame_line) < 0 or max(frame_line) > LINE_MASK):
        if min(frame_line) < -_INT64 or max(frame_line) >= _INT64:
            return None  # pprof would wrap it
        frame_line = [line if 0 <= line <= LINE_MASK else 0 for line in frame_line]  # as the reader cuts it
    stacks = profile.stacks
    done = _encode(PROFILE_TYPES, [(f.name, f.filename, f.start_line) for f in profile.functions], frame_fn,
                   frame_line, [stacks[i][::-1] for i in sums], list(sums.values()))
    return done[0] if done is not None else None


def digest_stacks(ps: "ProfileStacks", stacks: "StackTable") -> tuple[Optional[bytes], Optional["Digest"]]:
    """The digest of a profile decoded by :func:`.pprof.read_stacks` (not by thread)
    over ``stacks.table``, and the same digest ready to merge (its stacks interned in
    ``stacks``); ``(None, None)`` when it cannot have one."""
    done = _digest_stacks(ps, stacks.table)
    if done is None:
        return None, None
    blob, hashes, values = done
    sids = array("I")
    by_hash = stacks.by_hash
    for i, key in enumerate(ps.stacks):
        sid = stacks.intern(key)
        by_hash[hashes[i * HASH_BYTES:(i + 1) * HASH_BYTES]] = sid
        sids.append(sid)
    return blob, Digest(tuple((str(t), str(u)) for t, u in ps.sample_types), sids, values)


def _digest_stacks(ps: "ProfileStacks", table: "FunctionTable") -> Optional[tuple[bytes, bytes, bytes]]:
    frames = list(dict.fromkeys(chain.from_iterable(ps.stacks)))  # distinct frame keys, first seen first
    if not all(type(k) is int for k in frames):
        return None  # split by thread: not what merges read
    fids = list(dict.fromkeys(k >> LINE_BITS for k in frames))
    fn_index = {fid: i for i, fid in enumerate(fids)}
    frame_index = {k: i for i, k in enumerate(frames)}
    index_of = frame_index.__getitem__
    stacks = [list(map(index_of, key)) for key in ps.stacks]
    rows = list(ps.stacks.values())
    flat = list(chain.from_iterable(rows))
    if flat and (min(flat) < 0 or max(flat) >= _INT64):
        return None  # not what a digest holds: the reader sums the pprof's values itself
    if len(ps.sample_types) == 3:  # ours: samples, cpu, wall
        packed = [a | b << _SHIFT | c << 2 * _SHIFT for a, b, c in rows]
    else:
        shifts = range(0, _SHIFT * len(ps.sample_types), _SHIFT)
        packed = [sum([x << shift for x, shift in zip(v, shifts)]) for v in rows]
    return _encode(ps.sample_types, [table.functions[fid] for fid in fids], [fn_index[k >> LINE_BITS] for k in frames],
                   [k & LINE_MASK for k in frames], stacks, packed)


# --------------------------------------------------------------------------- reading


class StackTable:
    """A reader's stacks: ids for distinct stacks (frame-key tuples over one
    :class:`~.pprof.FunctionTable`), found by content and by digest hash."""

    def __init__(self, table: "FunctionTable") -> None:
        self.table = table
        self.ids: dict[tuple[Any, ...], int] = {}
        self.by_hash: dict[bytes, int] = {}
        self.stacks: list[tuple[Any, ...]] = []

    def __len__(self) -> int:
        return len(self.stacks)

    def intern(self, key: tuple[Any, ...]) -> int:
        sid = self.ids.get(key)
        if sid is None:
            sid = self.ids[key] = len(self.stacks)
            self.stacks.append(key)
        return sid


class Digest:
    """One profile ready to merge: stack ids of a :class:`StackTable` and, per
    stack, its values as ``width`` little-endian bytes (80 bits per sample type)."""

    __slots__ = ("types", "sids", "values", "width")

    def __init__(self, types: tuple[tuple[str, str], ...], sids: "array[int]", values: bytes) -> None:
        self.types = types
        self.sids = sids
        self.values = values
        self.width = VALUE_BYTES * len(types)

    @property
    def nbytes(self) -> int:
        return len(self.values) + self.sids.itemsize * len(self.sids) + 64


def _array(code: str, data: bytes) -> "array[int]":
    a = array(code)
    a.frombytes(data)
    if _SWAP:
        a.byteswap()
    return a


def load_digest(blob: bytes, stacks: StackTable, *, max_stack_depth: int = 4096) -> Digest:
    """A stored digest read into ``stacks`` (its new stacks and functions interned).
    Raises :class:`DigestError` for another version or anything inconsistent."""
    if len(blob) < HEADER.size or len(blob) > MAX_DIGEST_BYTES:
        raise DigestError("not a digest")
    magic, version, ntypes, flags, nfn, nframes, nstacks, nrefs, types_len, fn_len, head_len = \
        HEADER.unpack_from(blob)
    if magic != _MAGIC or version != FORMAT_VERSION:
        raise DigestError(f"digest format {version}, not {FORMAT_VERSION}")
    width = VALUE_BYTES * ntypes
    if not 0 < ntypes <= MAX_TYPES or types_len + width * nstacks > MAX_RAW_BYTES:
        raise DigestError("digest over its limits")
    at = HEADER.size + HASH_BYTES * nstacks
    hashes = blob[HEADER.size:at]
    head = _inflate(blob, at, at + head_len, types_len + width * nstacks)
    types = _types(head[:types_len], ntypes)
    values = head[types_len:]
    fields = nstacks * ntypes
    # every value below 2**63: the two top bytes of its field zero, and the top bit of its eighth
    if values[8::VALUE_BYTES] != bytes(fields) or values[9::VALUE_BYTES] != bytes(fields) \
            or values[7::VALUE_BYTES].translate(None, _BELOW_0X80):
        raise DigestError("digest value out of range")
    get = stacks.by_hash.get
    sids = array("I", [get(hashes[i:i + HASH_BYTES], _NEW) for i in range(0, len(hashes), HASH_BYTES)])
    if _NEW in sids:  # stacks this reader has not seen: decode their frames
        codes = ["I" if flags & wide else "H" for wide in (_WIDE_FUNCTIONS, _WIDE_LINES, _WIDE_REFS)]
        fn_size, line_size, ref_size = (4 if c == "I" else 2 for c in codes)
        sizes = [fn_len, fn_size * nframes, line_size * nframes, 2 * nstacks, ref_size * nrefs]
        if sum(sizes) > MAX_RAW_BYTES:
            raise DigestError("digest over its limits")
        tables = _inflate(blob, at + head_len, len(blob), sum(sizes))
        bounds = []
        pos = 0
        for n in sizes:
            bounds.append(tables[pos:pos + n])
            pos += n
        _decode_new(bounds, hashes, sids, stacks, nfn, nrefs, codes, max_stack_depth)
    return Digest(types, sids, values)


def _inflate(blob: bytes, start: int, end: int, size: int) -> bytes:
    """``blob[start:end]`` inflated, which must give exactly ``size`` bytes."""
    if end > len(blob):
        raise DigestError("damaged digest: truncated")
    try:
        d = zlib.decompressobj()
        out = d.decompress(memoryview(blob)[start:end], size + 1)
    except zlib.error as e:
        raise DigestError(f"damaged digest: {e}") from None
    if len(out) != size or not d.eof or d.unused_data:
        raise DigestError("damaged digest: wrong length")
    return out


_NEW = 0xFFFFFFFF  # a stack id not known yet
_BELOW_0X80 = bytes(range(0x80))


def _decode_new(parts: list[bytes], hashes: bytes, sids: "array[int]", stacks: StackTable, nfn: int, nrefs: int,
                codes: list[str], max_stack_depth: int) -> None:
    fn_json, fn_data, lines, depth_data, ref_data = parts
    table = stacks.table
    try:
        functions = json.loads(fn_json)
        fids = [table.intern(str(n), str(f), int(s)) for n, f, s in functions]
    except (ValueError, TypeError, RecursionError):
        raise DigestError("damaged digest: bad function table") from None
    fn_code, line_code, ref_code = codes
    depths = _array("H", depth_data)
    if len(fids) != nfn or sum(depths) != nrefs or (depths and max(depths) > max_stack_depth) \
            or (line_code == "I" and lines[3::4] != bytes(len(lines) // 4)):  # a line has at most LINE_BITS bits
        raise DigestError("damaged digest: inconsistent tables")
    refs = _array(ref_code, ref_data)
    try:
        keys = [fids[f] << LINE_BITS | line for f, line in zip(_array(fn_code, fn_data), _array(line_code, lines))]
        key_of = keys.__getitem__
        ids = stacks.ids
        known = stacks.stacks
        by_hash = stacks.by_hash
        at = 0
        for i, depth in enumerate(depths):
            if sids[i] == _NEW:
                key = tuple(map(key_of, refs[at:at + depth]))
                sid = ids.get(key)
                if sid is None:
                    sid = ids[key] = len(known)
                    known.append(key)
                by_hash[hashes[i * HASH_BYTES:(i + 1) * HASH_BYTES]] = sid
                sids[i] = sid
            at += depth
    except IndexError:
        raise DigestError("damaged digest: a reference out of range") from None


_TYPES: dict[bytes, tuple[tuple[str, str], ...]] = {}  # the few distinct sample type lists seen


def _types(text: bytes, ntypes: int) -> tuple[tuple[str, str], ...]:
    types = _TYPES.get(text)
    if types is not None:
        return types
    try:
        types = tuple((str(t), str(u)) for t, u in json.loads(text))
    except (ValueError, TypeError, RecursionError):
        raise DigestError("damaged digest: bad sample types") from None
    if len(types) != ntypes:
        raise DigestError("damaged digest: sample type count")
    if len(_TYPES) > 64:
        _TYPES.clear()
    _TYPES[text] = types
    return types


def sum_digests(digests: Iterable[Digest]) -> dict[tuple[tuple[str, str], ...], tuple[dict[int, list[int]], int]]:
    """Per set of sample types: ``(stack id -> summed values, profiles)``.  One integer
    addition per stack and profile (all of a stack's values are one 80-bit-field
    integer); at most ``2**16`` digests per call keep the fields from carrying."""
    digests = list(digests)
    if len(digests) > 1 << 16:
        raise ValueError("at most 65,536 digests per sum")
    acc_by: dict[tuple[tuple[str, str], ...], tuple[dict[int, int], list[int]]] = {}
    from_bytes = int.from_bytes
    for d in digests:
        slot = acc_by.get(d.types)
        if slot is None:
            slot = acc_by[d.types] = ({}, [0])
        acc, count = slot
        count[0] += 1
        get = acc.get
        values = d.values
        w = d.width
        for sid, i in zip(d.sids, range(0, len(values), w)):
            acc[sid] = get(sid, 0) + from_bytes(values[i:i + w], "little")
    out = {}
    for types, (acc, count) in acc_by.items():
        shifts = range(0, 8 * VALUE_BYTES * len(types), 8 * VALUE_BYTES)
        out[types] = ({sid: [v >> s & _FIELD_MASK for s in shifts] for sid, v in acc.items()}, count[0])
    return out
