"""Merged, differential and "my code" views of profiles, and their output formats.

Everything here works on a :class:`StackSet`: the summed stacks of one or more
profiles (:func:`.pprof.read_stacks` output added together), whose frames are
keys of one shared :class:`~.pprof.FunctionTable` (``function_id << LINE_BITS |
line``).  From it come

* :func:`flame_json`: our flame tree (root first, merged by function, one value
  per sample type, self values, the hottest line per node) and per-function
  self/total table, the JSON the viewer draws;
* :func:`diff_json`: the same tree for two selections, per node ``l``, ``r`` and
  ``d`` (right minus left), normalised per profile by default, and the functions
  whose total changed most;
* :func:`top_functions`, :func:`collapsed` (``a;b;c 123``), :func:`d3_json`
  (d3-flame-graph's ``{name, value, children}``), :func:`speedscope_json` and
  :func:`to_pprof` (a gzip'd pprof that ``go tool pprof`` and Pyroscope open);
* :func:`fold_library`: the "my code" view, where library, framework and
  standard-library frames are folded into the user code that called them.

Values are exact integer sums; a ``scale`` (``1 / profiles`` for per-request
averages) is applied only when a result is written out.
"""

from __future__ import annotations

import operator
import os
import re
import sys
import zlib
from typing import Any, Optional, Sequence

from ..encoding._protowire import field_bytes, field_varint, packed
from .pprof import LINE_BITS, FunctionTable, ProfileStacks, column_sums

__all__ = [
    "StackSet",
    "CANONICAL_TYPES",
    "LIBRARY_FRAME",
    "is_library_file",
    "fold_library",
    "flame_json",
    "diff_json",
    "top_functions",
    "collapsed",
    "d3_json",
    "speedscope_json",
    "to_pprof",
    "pick_metric",
]

CANONICAL_TYPES: list[tuple[str, str]] = [("samples", "count"), ("cpu", "nanoseconds"), ("wall", "nanoseconds")]
LIBRARY_FRAME = "(library and framework code)"
_LINE_MASK = (1 << LINE_BITS) - 1
_add = operator.add


class StackSet:
    """Summed stacks of ``profiles`` profiles over one function table."""

    def __init__(self, table: FunctionTable, sample_types: Optional[Sequence[tuple[str, str]]] = None) -> None:
        self.table = table
        self.sample_types: list[tuple[str, str]] = list(sample_types if sample_types is not None else CANONICAL_TYPES)
        self.stacks: dict[tuple[Any, ...], list[int]] = {}
        self.profiles = 0
        self.by_thread = False

    def _type_map(self, types: Sequence[tuple[str, str]]) -> list[int]:
        names = [t for t, _u in self.sample_types]
        out = []
        for t, u in types:
            if t not in names:
                self.sample_types.append((t, u))
                names.append(t)
                for values in self.stacks.values():
                    values.append(0)
            out.append(names.index(t))
        return out

    def add(self, ps: ProfileStacks) -> None:
        """Add one profile's stacks."""
        self.profiles += 1
        first = next(iter(ps.stacks), ())
        if first and isinstance(first[0], str):
            self.by_thread = True
        stacks = self.stacks
        if ps.sample_types == self.sample_types:
            for key, values in ps.stacks.items():
                acc = stacks.get(key)
                stacks[key] = list(values) if acc is None else list(map(_add, acc, values))
            return
        where = self._type_map(ps.sample_types)
        n = len(self.sample_types)
        for key, values in ps.stacks.items():
            acc = stacks.get(key)
            if acc is None:
                acc = stacks[key] = [0] * n
            for i, v in zip(where, values):
                acc[i] += v

    def absorb(self, other: "StackSet") -> None:
        """Add another set's stacks (same function table) and profile count."""
        profiles = self.profiles
        self.add(ProfileStacks(sample_types=other.sample_types, stacks=other.stacks))
        self.profiles = profiles + other.profiles
        self.by_thread = self.by_thread or other.by_thread

    def totals(self) -> list[int]:
        return column_sums(self.stacks.values(), len(self.sample_types))

    def type_index(self, metric: str) -> int:
        for i, (t, _u) in enumerate(self.sample_types):
            if t == metric:
                return i
        raise KeyError(metric)


def pick_metric(sample_types: Sequence[tuple[str, str]], totals: Sequence[float], wanted: str = "") -> str:
    """``wanted`` if present, else the first of cpu, wall, samples with data (else the first type)."""
    names = [t for t, _u in sample_types]
    if wanted and wanted in names:
        return wanted
    for t in ("cpu", "wall", "samples"):
        if t in names and totals[names.index(t)]:
            return t
    return names[0] if names else ""


# --------------------------------------------------------------------------- my code

_STDLIB_DIR = re.compile(r"(^|[\\/])(lib|Lib)[\\/]python\d+(\.\d+)?t?[\\/]")
_THIRD_PARTY = re.compile(r"(^|[\\/<{])(site|dist)-packages([\\/>}]|$)")
_STDLIB_NAMES = frozenset(getattr(sys, "stdlib_module_names", ()))
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_library_file(path: str) -> bool:
    """True for frames that are not the user's own code: third-party packages
    (``site-packages``, ``dist-packages``), the standard library (by directory, or a
    relative path whose first part is a standard module), ``<frozen ...>``/``<built-in>``
    pseudo-files and this package itself.  A frame without a file name counts as
    library code."""
    if not path or path.startswith("<"):
        return True
    if _THIRD_PARTY.search(path):
        return True
    if _STDLIB_DIR.search(path) and "packages" not in path:
        return True
    if path.startswith(_OWN_DIR + os.sep) or "/otelprof_middleware/" in path:
        return True
    if not os.path.isabs(path):
        first = re.split(r"[\\/]", path, 1)[0]
        if first.endswith(".py"):
            first = first[:-3]
        return first in _STDLIB_NAMES
    return False


def fold_library(ss: StackSet) -> StackSet:
    """The "my code" view: library frames folded into their callers.

    Library frames above (rootward of) the first user frame are dropped; below
    a user frame, the first library function it calls is kept (``json.loads``,
    ``cursor.execute``) and the library frames under it are folded into it, until
    user code appears again (a callback).  A stack with no user frame at all becomes
    one :data:`LIBRARY_FRAME`."""
    table = ss.table
    functions = table.functions
    cache: dict[int, bool] = {}
    synth = (table.intern(LIBRARY_FRAME) << LINE_BITS,)
    out = StackSet(table, ss.sample_types)
    out.profiles = ss.profiles
    out.by_thread = ss.by_thread
    stacks = out.stacks
    for key, values in ss.stacks.items():
        head: tuple[Any, ...] = ()
        frames = key
        if key and isinstance(key[0], str):
            head, frames = key[:1], key[1:]
        kept: list[int] = []
        prev_user = False
        for k in frames:
            fid = k >> LINE_BITS
            lib = cache.get(fid)
            if lib is None:
                lib = cache[fid] = is_library_file(functions[fid][1])
            if not lib:
                kept.append(k)
                prev_user = True
            elif prev_user:
                kept.append(k)
                prev_user = False
        new_key = head + (tuple(kept) if kept else synth)
        acc = stacks.get(new_key)
        stacks[new_key] = list(values) if acc is None else list(map(_add, acc, values))
    return out


# --------------------------------------------------------------------------- flame tree


def _num(v: float) -> float:
    r = round(v, 3)
    return int(r) if r == int(r) else r


def _scaled(values: list[int], scale: Optional[float]) -> list[Any]:
    if scale is None:
        return values
    return [_num(v * scale) for v in values]


class _Functions:
    """Output function table: only the functions a result uses, in first-use order."""

    def __init__(self, table: FunctionTable) -> None:
        self.table = table
        self.index: dict[int, int] = {}
        self.rows: list[dict[str, Any]] = []

    def __call__(self, fid: int) -> int:
        i = self.index.get(fid)
        if i is None:
            name, file, start = self.table.functions[fid]
            i = self.index[fid] = len(self.rows)
            self.rows.append({"name": name, "file": file, "start_line": start})
        return i


class _Packed:
    """All of a stack's values in one integer (``v0 + v1 * 2**w + v2 * 2**(2w) ...``), so
    that building a tree adds one integer per frame instead of a list.  Fields are
    wide enough for the sum of every stack's absolute values, so any partial sum
    (a node, a function) unpacks exactly, negative values included."""

    def __init__(self, rows: Any, width: int) -> None:
        bound = 1
        for i in range(width):
            bound = max(bound, sum(abs(v[i]) for v in rows))
        self.bits = max(64, bound.bit_length() + 2)
        self.width = width
        self.shifts = range(0, self.bits * width, self.bits)

    def pack(self, values: Sequence[int]) -> int:
        if len(values) == 3 and self.width == 3:
            b = self.bits
            return values[0] + (values[1] << b) + (values[2] << 2 * b)
        return sum(v << s for v, s in zip(values, self.shifts))

    def unpack(self, x: int) -> list[int]:
        out = []
        b = self.bits
        mask = (1 << b) - 1
        half = 1 << (b - 1)
        for _ in range(self.width):
            f = x & mask
            if f >= half:
                f -= 1 << b
            out.append(f)
            x = (x - f) >> b
        return out


class _Tree:
    """Stacks merged into a tree by function, for :func:`flame_json` and :func:`diff_json`.

    A node is ``[f, children, name, line counts, *values]`` (``lists`` packed value
    integers, see :class:`_Packed`); beyond ``max_nodes`` nodes, :meth:`child` returns
    None and the caller folds the rest of that stack into the last node it reached."""

    def __init__(self, lists: int, max_nodes: int) -> None:
        self.lists = lists
        self.max_nodes = max_nodes
        self.root = self._node(-1, "all")
        self.nodes = 1
        self.truncated = 0

    def _node(self, f: int, name: Optional[str]) -> list[Any]:
        return [f, {}, name, {}] + [0] * self.lists

    def child(self, node: list[Any], key: Any, f: int, name: Optional[str] = None) -> Optional[list[Any]]:
        child = node[1].get(key)
        if child is None:
            if self.nodes >= self.max_nodes:
                self.truncated += 1
                return None
            child = node[1][key] = self._node(f, name)
            self.nodes += 1
        return child

    def export(self, rows: list[dict[str, Any]], convert: Any) -> dict[str, Any]:
        """JSON-ready dicts (``convert(node)`` each, children under ``"c"``), without
        recursion: a tree may be thousands of frames deep."""
        top = convert(self.root)
        stack: list[tuple[list[Any], dict[str, Any]]] = [(self.root, top)]
        while stack:
            node, out = stack.pop()
            children = sorted(node[1].values(), key=lambda c: (c[2] or rows[c[0]]["name"], c[0]))
            if children:
                converted = [convert(c) for c in children]
                out["c"] = converted
                stack.extend(zip(children, converted))
        return top


def _split_thread(key: tuple[Any, ...]) -> tuple[Optional[str], tuple[Any, ...]]:
    if key and isinstance(key[0], str):
        return key[0], key[1:]
    return None, key


def flame_json(ss: StackSet, *, max_nodes: int = 200_000, scale: Optional[float] = None) -> dict[str, Any]:
    """Our flame tree of ``ss`` (see the module docstring and docs/viewer.md).

    A node is ``{"f": function index (-1 root, -2 thread), "name" (root and threads),
    "v": values, "s": self values (left out when zero), "line": hottest line, "c":
    children}``; a node's ``v`` equals its children's plus its ``s``.  Frames past
    ``max_nodes`` distinct nodes are folded into their parent's self value
    (``truncated_nodes`` counts the stacks that were cut)."""
    ntypes = len(ss.sample_types)
    packer = _Packed(ss.stacks.values(), ntypes)
    pack, unpack = packer.pack, packer.unpack
    fns = _Functions(ss.table)
    fn_of = fns.index
    tree = _Tree(2, max_nodes)  # packed values: 4 = total, 5 = self
    root = tree.root
    self_by_fn: dict[int, int] = {}
    total_by_fn: dict[int, int] = {}
    threads: dict[str, int] = {}
    for key, values in ss.stacks.items():
        pv = pack(values)
        first = values[0] if values else 1  # what the hottest line is chosen by
        node: Optional[list[Any]] = root
        root[4] += pv
        thread, frames = _split_thread(key)
        if thread is not None:
            threads[thread] = threads.get(thread, 0) + pv
            node = tree.child(root, ("thread", thread), -2, f"thread: {thread or '?'}")
            if node is not None:
                node[4] += pv
        last = node if node is not None else root
        seen: set[int] = set()
        f = -1
        for k in frames:
            fid = k >> LINE_BITS
            f = fn_of[fid] if fid in fn_of else fns(fid)
            if f not in seen:
                seen.add(f)
                total_by_fn[f] = total_by_fn.get(f, 0) + pv
            if node is None:
                continue
            child = node[1].get(f)
            node = child if child is not None else tree.child(node, f, f)
            if node is None:
                continue
            last = node
            node[4] += pv
            line = k & _LINE_MASK
            if line:
                lines = node[3]
                lines[line] = lines.get(line, 0) + first
        last[5] += pv
        if f >= 0:
            self_by_fn[f] = self_by_fn.get(f, 0) + pv

    def convert(node: list[Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"f": node[0], "v": _scaled(unpack(node[4]), scale)}
        if node[5]:
            out["s"] = _scaled(unpack(node[5]), scale)
        if node[2] is not None:
            out["name"] = node[2]
        if node[3]:
            out["line"] = max(node[3].items(), key=lambda kv: (kv[1], -kv[0]))[0]
        return out

    totals = unpack(root[4])
    return {
        "sample_types": [{"type": t, "unit": u} for t, u in ss.sample_types],
        "default_type": pick_metric(ss.sample_types, totals),
        "totals": _scaled(totals, scale),
        "profiles": ss.profiles,
        "functions": fns.rows,
        "tree": tree.export(fns.rows, convert),
        "top": [{"f": f, "self": _scaled(unpack(self_by_fn.get(f, 0)), scale),
                 "total": _scaled(unpack(total_by_fn.get(f, 0)), scale)} for f in range(len(fns.rows))],
        "threads": [{"name": k, "v": _scaled(unpack(v), scale)} for k, v in sorted(threads.items())],
        "truncated_nodes": tree.truncated,
    }


def _acc(acc: list[int], values: Sequence[int]) -> None:
    for i, v in enumerate(values):
        acc[i] += v


# --------------------------------------------------------------------------- diff


def diff_json(left: StackSet, right: StackSet, *, normalize: bool = True, max_nodes: int = 200_000,
              regressions: int = 50) -> dict[str, Any]:
    """Two selections in one tree: per node ``l``, ``r`` and ``d = r - l``.

    With ``normalize`` (the default) each side is divided by its number of
    profiles, so the values are per request and selections of different sizes
    compare.  ``functions_changed`` lists per function self and total on both sides
    (most grown self value of the default metric first), and ``regressions`` the
    first ``regressions`` of them that grew."""
    if left.table is not right.table:
        raise ValueError("both sides must share one FunctionTable")
    types = list(left.sample_types)
    for t in right.sample_types:
        if t[0] not in [x for x, _ in types]:
            types.append(t)
    names = [t for t, _u in types]
    maps = [[names.index(t) for t, _u in side.sample_types] for side in (left, right)]
    scales = [(1.0 / side.profiles if normalize and side.profiles else 1.0) for side in (left, right)]
    n = len(types)
    sides: list[list[tuple[tuple[Any, ...], list[int]]]] = []
    for where, ss in zip(maps, (left, right)):
        rows = []
        for key, raw in ss.stacks.items():
            values = [0] * n
            for i, v in zip(where, raw):
                values[i] = v
            rows.append((key, values))
        sides.append(rows)
    packer = _Packed([v for rows in sides for _k, v in rows], n)
    pack, unpack = packer.pack, packer.unpack
    fns = _Functions(left.table)
    fn_of = fns.index
    tree = _Tree(4, max_nodes)  # packed values: 4 left, 5 right, 6 left self, 7 right self
    root = tree.root
    fn_stats: dict[int, list[int]] = {}  # f -> [l self, r self, l total, r total]
    for side, rows in enumerate(sides):
        for key, values in rows:
            pv = pack(values)
            node: Optional[list[Any]] = root
            last = root
            root[4 + side] += pv
            seen: set[int] = set()
            f = -1
            for k in _split_thread(key)[1]:
                fid = k >> LINE_BITS
                f = fn_of[fid] if fid in fn_of else fns(fid)
                st = fn_stats.get(f)
                if st is None:
                    st = fn_stats[f] = [0, 0, 0, 0]
                if f not in seen:
                    seen.add(f)
                    st[2 + side] += pv
                if node is None:
                    continue
                child = node[1].get(f)
                node = child if child is not None else tree.child(node, f, f)
                if node is None:
                    continue
                last = node
                node[4 + side] += pv
            last[6 + side] += pv
            if f >= 0:
                fn_stats[f][side] += pv
    sl, sr = scales

    def side_values(packed: int, scale: float) -> list[Any]:
        return [_num(v * scale) for v in unpack(packed)]

    def convert(node: list[Any]) -> dict[str, Any]:
        lv, rv = side_values(node[4], sl), side_values(node[5], sr)
        out: dict[str, Any] = {"f": node[0], "l": lv, "r": rv, "d": [_num(b - a) for a, b in zip(lv, rv)]}
        if node[6]:
            out["ls"] = side_values(node[6], sl)
        if node[7]:
            out["rs"] = side_values(node[7], sr)
        if node[2] is not None:
            out["name"] = node[2]
        return out

    rows_out = fns.rows
    top = tree.export(rows_out, convert)
    changed: list[dict[str, Any]] = []
    for f, (ls, rs, lt, rt) in fn_stats.items():
        left_self, right_self = side_values(ls, sl), side_values(rs, sr)
        left_total, right_total = side_values(lt, sl), side_values(rt, sr)
        changed.append({"f": f, "left_self": left_self, "right_self": right_self, "left_total": left_total,
                        "right_total": right_total,
                        "delta_self": [_num(b - a) for a, b in zip(left_self, right_self)],
                        "delta_total": [_num(b - a) for a, b in zip(left_total, right_total)]})
    ltot, rtot = top["l"], top["r"]
    metric = pick_metric(types, [a + b for a, b in zip(ltot, rtot)])
    mi = names.index(metric) if metric in names else 0
    # the culprit of a slowdown is where self time grew; its callers' totals only follow it
    changed.sort(key=lambda r: (-r["delta_self"][mi], -r["delta_total"][mi], rows_out[r["f"]]["name"]))
    return {
        "sample_types": [{"type": t, "unit": u} for t, u in types],
        "default_type": metric,
        "normalized": normalize,
        "left_profiles": left.profiles,
        "right_profiles": right.profiles,
        "left_totals": ltot,
        "right_totals": rtot,
        "functions": rows_out,
        "tree": top,
        "functions_changed": changed,
        "regressions": [r for r in changed if r["delta_self"][mi] > 0 or r["delta_total"][mi] > 0][:regressions],
        "truncated_nodes": tree.truncated,
    }


# --------------------------------------------------------------------------- tables and formats


def _function_stacks(ss: StackSet) -> dict[tuple[int, ...], list[int]]:
    """Stacks by function id only (lines and thread names dropped), summed."""
    out: dict[tuple[int, ...], list[int]] = {}
    for key, values in ss.stacks.items():
        if key and isinstance(key[0], str):
            key = key[1:]
        fkey = tuple(k >> LINE_BITS for k in key)
        acc = out.get(fkey)
        out[fkey] = list(values) if acc is None else list(map(_add, acc, values))
    return out


def top_functions(ss: StackSet, *, scale: Optional[float] = None) -> list[dict[str, Any]]:
    """Per function: ``{"name", "file", "start_line", "self": [...], "total": [...]}``,
    most self value (of the default metric) first.  A recursive function's total counts
    each stack once."""
    n = len(ss.sample_types)
    self_v: dict[int, list[int]] = {}
    total_v: dict[int, list[int]] = {}
    for fkey, values in _function_stacks(ss).items():
        if not fkey:
            continue
        _acc(self_v.setdefault(fkey[-1], [0] * n), values)
        for f in set(fkey):
            _acc(total_v.setdefault(f, [0] * n), values)
    metric = pick_metric(ss.sample_types, ss.totals())
    mi = [t for t, _u in ss.sample_types].index(metric) if metric else 0
    rows: list[dict[str, Any]] = []
    for f, total in total_v.items():
        name, file, start = ss.table.functions[f]
        rows.append({"name": name, "file": file, "start_line": start,
                     "self": _scaled(self_v.get(f, [0] * n), scale), "total": _scaled(total, scale)})
    rows.sort(key=lambda r: (-r["self"][mi], -r["total"][mi], r["name"]))
    return rows


def _frame_name(name: str) -> str:
    return name.replace(";", ":").replace("\n", " ").replace("\r", " ") or "?"


def collapsed(ss: StackSet, metric: str, *, scale: Optional[float] = None) -> str:
    """Brendan Gregg's collapsed stacks (``root;...;leaf value`` per line), integer values
    of ``metric``, sorted; stacks whose value rounds to 0 are left out."""
    mi = ss.type_index(metric)
    names = ss.table.functions
    lines = []
    for fkey, values in _function_stacks(ss).items():
        v = values[mi] * scale if scale is not None else values[mi]
        v = int(round(v))
        if v <= 0 or not fkey:
            continue
        lines.append(";".join(_frame_name(names[f][0]) for f in fkey) + f" {v}")
    lines.sort()
    return "\n".join(lines) + ("\n" if lines else "")


def d3_json(ss: StackSet, metric: str, *, scale: Optional[float] = None) -> dict[str, Any]:
    """d3-flame-graph's nested ``{"name", "value", "children"}`` (``value`` includes children)."""
    mi = ss.type_index(metric)
    names = ss.table.functions
    root: dict[str, Any] = {"name": "root", "value": 0, "children": []}
    index: dict[int, dict[int, dict[str, Any]]] = {}  # id(node dict) -> children by function
    for fkey, values in _function_stacks(ss).items():
        v = values[mi]
        if not v:
            continue
        node = root
        node["value"] += v
        for f in fkey:
            kids = index.setdefault(id(node), {})
            child = kids.get(f)
            if child is None:
                child = kids[f] = {"name": names[f][0], "value": 0, "children": []}
                node["children"].append(child)
            child["value"] += v
            node = child
    if scale is not None:
        stack = [root]
        while stack:
            n = stack.pop()
            n["value"] = _num(n["value"] * scale)
            stack.extend(n["children"])
    return root


def speedscope_json(ss: StackSet, *, name: str = "otelprof merge", scale: Optional[float] = None,
                    exporter: str = "otelprof-middleware") -> dict[str, Any]:
    """A speedscope file: one "sampled" profile per sample type over shared frames."""
    frames: list[dict[str, Any]] = []
    frame_of: dict[int, int] = {}
    fstacks = _function_stacks(ss)
    keys = sorted(fstacks)
    samples = []
    for fkey in keys:
        row = []
        for f in fkey:
            i = frame_of.get(f)
            if i is None:
                fname, file, start = ss.table.functions[f]
                i = frame_of[f] = len(frames)
                frame: dict[str, Any] = {"name": fname}
                if file:
                    frame["file"] = file
                if start:
                    frame["line"] = start
                frames.append(frame)
            row.append(i)
        samples.append(row)
    profiles = []
    totals = ss.totals()
    for ti, (t, unit) in enumerate(ss.sample_types):
        weights = [_num(fstacks[k][ti] * scale) if scale is not None else fstacks[k][ti] for k in keys]
        profiles.append({
            "type": "sampled", "name": f"{name} ({t})", "unit": unit if unit == "nanoseconds" else "none",
            "startValue": 0, "endValue": sum(weights), "samples": samples, "weights": weights,
        })
    metric = pick_metric(ss.sample_types, totals)
    active = [t for t, _u in ss.sample_types].index(metric) if metric else 0
    return {"$schema": "https://www.speedscope.app/file-format-schema.json", "name": name,
            "activeProfileIndex": active, "exporter": exporter, "shared": {"frames": frames}, "profiles": profiles}


# --------------------------------------------------------------------------- pprof writer


def to_pprof(ss: StackSet, *, scale: Optional[float] = None, comments: Sequence[str] = (),
             time_nanos: int = 0, duration_nanos: int = 0) -> bytes:
    """A gzip'd pprof of ``ss`` (values rounded to integers after ``scale``).

    One location per (function, line), thread names as ``thread_name`` labels."""
    strings: dict[str, int] = {"": 0}

    def s(text: str) -> int:
        i = strings.get(text)
        if i is None:
            i = strings[text] = len(strings)
        return i

    parts: list[bytes] = [field_bytes(1, field_varint(1, s(t)) + field_varint(2, s(u))) for t, u in ss.sample_types]
    locations: dict[int, int] = {}
    functions: dict[int, int] = {}
    loc_parts: list[bytes] = []
    fn_parts: list[bytes] = []
    for key, values in ss.stacks.items():
        thread = ""
        if key and isinstance(key[0], str):
            thread, key = key[0], key[1:]
        ids = []
        for k in reversed(key):  # leaf first
            loc = locations.get(k)
            if loc is None:
                fid = k >> LINE_BITS
                fn = functions.get(fid)
                if fn is None:
                    fn = functions[fid] = len(functions) + 1
                    name, file, start = ss.table.functions[fid]
                    fn_parts.append(field_bytes(5, field_varint(1, fn) + field_varint(2, s(name))
                                            + field_varint(4, s(file)) + field_varint(5, start)))
                loc = locations[k] = len(locations) + 1
                line = field_varint(1, fn) + field_varint(2, k & _LINE_MASK)
                loc_parts.append(field_bytes(4, field_varint(1, loc) + field_bytes(4, line)))
            ids.append(loc)
        vals = [int(round(v * scale)) if scale is not None else v for v in values]
        body = field_bytes(1, packed(ids)) if ids else b""
        body += field_bytes(2, packed(vals))
        if thread:
            body += field_bytes(3, field_varint(1, s("thread_name")) + field_varint(2, s(thread)))
        parts.append(field_bytes(2, body))
    parts += loc_parts
    parts += fn_parts
    names = [t for t, _u in ss.sample_types]
    period_type = field_bytes(11, field_varint(1, s("cpu")) + field_varint(2, s("nanoseconds"))) if "cpu" in names else b""
    comment_ids = [s(c) for c in comments]
    default = field_varint(14, s("cpu")) if "cpu" in names else b""
    table = b"".join(field_bytes(6, t.encode("utf-8", "replace")) for t in strings)
    tail = field_varint(9, time_nanos) + field_varint(10, duration_nanos) + period_type
    if comment_ids:
        tail += field_bytes(13, packed(comment_ids))
    raw = b"".join(parts) + table + tail + default
    c = zlib.compressobj(6, zlib.DEFLATED, 31)
    return c.compress(raw) + c.flush()
