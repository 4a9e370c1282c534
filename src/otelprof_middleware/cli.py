"""Command line: ``python -m otelprof_middleware summary <file.pb.gz | folder> [options]``.

``summary`` prints a ``go tool pprof -top``-style table of one profile written by
the ``file`` exporter: flat (self) and cumulative values per function, for the
CPU, wall or sample-count type.  Given a folder (the exporter's ``output_dir``),
it lists the profiles from ``index.jsonl`` and summarises the newest one, or the
one chosen with ``--profile-id`` / ``--trace-id``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import IO, Any, Optional, Sequence

__all__ = ["main", "format_top", "summarize_file", "read_index"]

_UNITS = {"nanoseconds": 1e6}  # shown in ms


def read_index(directory: str) -> list[dict[str, Any]]:
    """The ``index.jsonl`` lines of an output folder whose file still exists, oldest first."""
    path = os.path.join(directory, "index.jsonl")
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if isinstance(entry, dict) and os.path.exists(os.path.join(directory, str(entry.get("file", "")))):
                    out.append(entry)
    except FileNotFoundError:
        pass
    if not out:  # no index: the files themselves, by name (names start with the UTC time)
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(".pb.gz"))
        except FileNotFoundError:
            names = []
        out = [{"file": n} for n in names]
    return out


def _function_rows(prof: Any, value_index: int) -> tuple[list[tuple[str, int, int]], int]:
    """(function, flat, cum) per function, and the total, for one sample type."""
    flat: dict[str, int] = {}
    cum: dict[str, int] = {}
    total = 0
    for sample in prof.samples:
        if value_index >= len(sample.values):
            continue
        v = sample.values[value_index]
        if not v:
            continue
        total += v
        names: list[str] = []
        for loc_id in sample.location_ids:  # leaf first
            lines = prof.locations.get(loc_id) or []
            for fid, _line in lines:
                fn = prof.functions.get(fid)
                names.append(fn.name if fn is not None else f"<function {fid}>")
            if not lines:
                names.append(f"<location {loc_id}>")
        if not names:
            continue
        flat[names[0]] = flat.get(names[0], 0) + v
        for name in set(names):
            cum[name] = cum.get(name, 0) + v
    rows = [(name, flat.get(name, 0), c) for name, c in cum.items()]
    rows.sort(key=lambda r: (-r[1], -r[2], r[0]))
    return rows, total


def format_top(prof: Any, *, sample_type: str = "", n: int = 15, title: str = "") -> str:
    """``go tool pprof -top``-style text for a decoded profile (:mod:`.viewer.pprof_reader`)."""
    types = [t for t, _u in prof.sample_types]
    wanted = sample_type or prof.default_sample_type or (types[-1] if types else "")
    if wanted not in types:
        raise ValueError(f"sample type {wanted!r} not in profile (has {', '.join(types)})")
    index = types.index(wanted)
    unit = prof.sample_types[index][1]
    scale = _UNITS.get(unit, 1.0)
    unit_text = "ms" if unit in _UNITS else unit

    def fmt(v: int) -> str:
        return f"{v / scale:.2f}{unit_text}" if scale != 1.0 else f"{v}"

    rows, total = _function_rows(prof, index)
    lines: list[str] = []
    if title:
        lines.append(title)
    lines.append(f"Type: {wanted}")
    if prof.duration_nanos:
        lines.append(f"Duration: {prof.duration_nanos / 1e6:.1f}ms, Total samples = {fmt(total)}")
    labels: dict[str, str] = {}
    for s in prof.samples:
        for k in ("trace_id", "span_id", "span_name"):
            if k in s.labels and k not in labels:
                labels[k] = s.labels[k]
    for k, v in labels.items():
        lines.append(f"{k}: {v}")
    for c in prof.comments:
        lines.append(f"Comment: {c}")
    if not rows:
        lines.append("(no samples of this type)")
        return "\n".join(lines)
    shown = rows[:n]
    lines.append(f"Showing top {len(shown)} of {len(rows)} functions")
    width = max(len(fmt(r[1])) for r in shown)
    cwidth = max(len(fmt(r[2])) for r in shown)
    lines.append(f"{'flat':>{width}}  {'flat%':>6} {'sum%':>6}  {'cum':>{cwidth}}  {'cum%':>6}  function")
    running = 0
    for name, f, c in shown:
        running += f
        pct = (lambda x: 100.0 * x / total if total else 0.0)
        lines.append(f"{fmt(f):>{width}}  {pct(f):5.2f}% {pct(running):5.2f}%  {fmt(c):>{cwidth}}  {pct(c):5.2f}%  {name}")
    return "\n".join(lines)


def summarize_file(path: str, *, sample_type: str = "", n: int = 15) -> str:
    from .viewer.pprof_reader import read_pprof

    with open(path, "rb") as f:
        prof = read_pprof(f.read())
    return format_top(prof, sample_type=sample_type, n=n, title=f"File: {path}")


def _pick(entries: list[dict[str, Any]], profile_id: str, trace_id: str) -> Optional[dict[str, Any]]:
    for entry in reversed(entries):
        if profile_id and str(entry.get("profile_id", "")) != profile_id.lower():
            continue
        if trace_id and str(entry.get("trace_id", "")) != trace_id.lower():
            continue
        return entry
    return None


def _cmd_summary(args: argparse.Namespace, out: IO[str]) -> int:
    target = args.path
    if os.path.isdir(target):
        entries = read_index(target)
        if not entries:
            print(f"no profiles in {os.path.abspath(target)}", file=sys.stderr)
            return 1
        if args.list:
            for e in entries:
                print(f"{e.get('file')}  {e.get('name', '')!s:30}  samples={e.get('samples', '?')} "
                      f"cpu={e.get('cpu_ms', '?')}ms wall={e.get('wall_ms', '?')}ms "
                      f"trace_id={e.get('trace_id') or '-'} trigger={e.get('trigger', '')}", file=out)
            print("", file=out)
        entry = _pick(entries, args.profile_id, args.trace_id)
        if entry is None:
            print("no profile matches", file=sys.stderr)
            return 1
        target = os.path.join(target, str(entry["file"]))
    try:
        print(summarize_file(target, sample_type=args.type, n=args.top), file=out)
    except (OSError, ValueError) as exc:
        print(f"cannot summarise {target}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None, out: Optional[IO[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m otelprof_middleware",
                                     description="otelprof-middleware command line tools")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="print a go tool pprof -top style summary of a profile")
    p.add_argument("path", nargs="?", default=os.environ.get("OTELPROF_OUTPUT_DIR") or "profiles",
                   help="a .pb.gz file, or the file exporter's folder (default: $OTELPROF_OUTPUT_DIR or ./profiles)")
    p.add_argument("--type", default="", choices=["", "cpu", "wall", "samples"],
                   help="sample type (default: the profile's default, cpu)")
    p.add_argument("--top", type=int, default=15, help="number of functions (default 15)")
    p.add_argument("--profile-id", default="", help="in a folder: the profile with this id")
    p.add_argument("--trace-id", default="", help="in a folder: the newest profile of this trace")
    p.add_argument("--list", action="store_true", help="in a folder: list all profiles first")
    sub.add_parser("view", add_help=False,
                   help="browse the file exporter's folder in the local viewer "
                        "(same options as python -m otelprof_middleware.viewer)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["view"]:  # the viewer parses its own options
        from .viewer.__main__ import main as viewer_main

        return viewer_main(argv[1:])
    args = parser.parse_args(argv)
    out = out or sys.stdout
    if args.command == "summary":
        return _cmd_summary(args, out)
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
