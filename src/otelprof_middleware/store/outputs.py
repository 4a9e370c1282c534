"""Merged and differential results written out in each supported format.

Shared by the viewer's API and the CLI, so ``/api/v1/merge?format=pprof`` and
``otelprof merge --format pprof`` produce the same bytes.
"""

from __future__ import annotations

from typing import Any, Optional

from .._version import __version__
from . import aggregate as agg
from .folder import MergeResult
from .jsonout import dumps
from .selector import Selector

__all__ = ["MERGE_FORMATS", "DIFF_FORMATS", "render_merge", "render_diff", "merge_scale", "OutputError"]

MERGE_FORMATS = ("json", "d3", "pprof", "collapsed", "speedscope")
DIFF_FORMATS = ("json", "collapsed")
_CTYPES = {"json": "application/json", "d3": "application/json", "speedscope": "application/json",
           "pprof": "application/gzip", "collapsed": "text/plain; charset=utf-8"}
_EXT = {"json": "json", "d3": "d3.json", "speedscope": "speedscope.json", "pprof": "pb.gz", "collapsed": "folded.txt"}


class OutputError(ValueError):
    """A bad output request (format, metric, aggregate); the message says what is allowed."""


def merge_scale(result: MergeResult, aggregate: str) -> Optional[float]:
    if aggregate not in ("total", "average"):
        raise OutputError(f"bad aggregate {aggregate!r}: use total or average (per profile)")
    n = result.stacks.profiles
    return (1.0 / n) if aggregate == "average" and n else None


def _metric(ss: agg.StackSet, metric: str) -> str:
    names = [t for t, _u in ss.sample_types]
    if metric and metric not in names:
        raise OutputError(f"bad metric {metric!r}: this selection has {', '.join(names)}")
    return agg.pick_metric(ss.sample_types, ss.totals(), metric)


def render_merge(result: MergeResult, fmt: str, *, sel: Selector, metric: str = "", aggregate: str = "total",
                 my_code: bool = False) -> tuple[bytes, str, str]:
    """``(body, content type, file extension)``."""
    if fmt not in MERGE_FORMATS:
        raise OutputError(f"bad format {fmt!r}: use one of {', '.join(MERGE_FORMATS)}")
    ss = result.stacks
    scale = merge_scale(result, aggregate)
    m = _metric(ss, metric)
    title = f"otelprof merge of {len(result.profile_ids)} profiles" + (f": {sel.text}" if sel.text else "")
    body: Any
    if fmt == "json":
        tree = agg.flame_json(ss, scale=scale)
        tree.update({"selector": sel.text, "aggregate": aggregate, "view": "mycode" if my_code else "all",
                     "merge": result.info(), "pyroscope": sel.pyroscope(m or "cpu")})
        body = dumps(tree).encode()
    elif fmt == "d3":
        body = dumps(agg.d3_json(ss, m, scale=scale)).encode()
    elif fmt == "speedscope":
        body = dumps(agg.speedscope_json(ss, name=title, scale=scale,
                                         exporter=f"otelprof-middleware {__version__}")).encode()
    elif fmt == "collapsed":
        body = agg.collapsed(ss, m, scale=scale).encode("utf-8", "replace")
    else:
        comments = [title[:1000], f"otelprof.aggregate={aggregate}"]
        body = agg.to_pprof(ss, scale=scale, comments=comments)
    return body, _CTYPES[fmt], _EXT[fmt]


def render_diff(left: MergeResult, right: MergeResult, fmt: str, *, a: Selector, b: Selector,
                normalize: bool = True, metric: str = "", my_code: bool = False) -> tuple[bytes, str, str]:
    if fmt not in DIFF_FORMATS:
        raise OutputError(f"bad format {fmt!r}: use one of {', '.join(DIFF_FORMATS)}")
    if fmt == "json":
        d = agg.diff_json(left.stacks, right.stacks, normalize=normalize)
        names = [t["type"] for t in d["sample_types"]]
        if metric and metric not in names:
            raise OutputError(f"bad metric {metric!r}: this comparison has {', '.join(names)}")
        if metric:
            d["default_type"] = metric
        d.update({"a": a.text, "b": b.text, "view": "mycode" if my_code else "all",
                  "left": left.info(), "right": right.info()})
        return dumps(d).encode(), _CTYPES["json"], "diff.json"
    # flamegraph.pl's differential input: "stack left right" per line
    m = _metric(left.stacks, metric) if left.stacks.profiles else _metric(right.stacks, metric)
    sides = []
    for r in (left, right):
        ss = r.stacks
        mi = [t for t, _u in ss.sample_types].index(m) if m in [t for t, _u in ss.sample_types] else -1
        scale = (1.0 / ss.profiles) if normalize and ss.profiles else 1.0
        folded: dict[str, float] = {}
        if mi >= 0:
            for line in agg.collapsed(ss, m).splitlines():
                stack, _, v = line.rpartition(" ")
                folded[stack] = int(v) * scale
        sides.append(folded)
    keys = sorted(set(sides[0]) | set(sides[1]))
    text = "".join(f"{k} {int(round(sides[0].get(k, 0)))} {int(round(sides[1].get(k, 0)))}\n" for k in keys)
    return text.encode("utf-8", "replace"), _CTYPES["collapsed"], "diff.folded.txt"
