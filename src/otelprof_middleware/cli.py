"""Command line: ``otelprof`` (or ``python -m otelprof_middleware``).

Commands over a folder written by the ``file`` exporter (``--dir``, default
``$OTELPROF_OUTPUT_DIR`` or ``./profiles``), all reading it through the same
:class:`~otelprof_middleware.store.folder.ProfileFolder` as the viewer and taking
the same selectors (``route=/checkout status=5xx from=now-1h``, see
``docs/viewer.md``):

* ``summary [FILE|DIR]``: a ``go tool pprof -top`` style table of one profile;
* ``query SELECTOR``: the matching profiles, newest first (text, JSON, JSON lines);
* ``top SELECTOR``: functions by self and total value over a merge of the selection;
* ``merge SELECTOR``: the selection as one profile (pprof, JSON, collapsed stacks,
  d3-flame-graph JSON, speedscope), so ``go tool pprof -diff_base a.pb.gz b.pb.gz``
  works on two merges;
* ``diff -a SELECTOR -b SELECTOR``: what changed between two selections, per request;
* ``view [DIR]``: the local viewer.

Text printed from profile data goes through :func:`safe`, so names cannot carry
terminal control sequences.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import IO, Any, Optional, Sequence

from ._version import __version__
from .profile import EXTRA_TYPES
from .viewer.text import safe

__all__ = ["main", "read_index", "safe", "summarize_file"]

def _prog() -> str:
    base = os.path.basename(sys.argv[0] or "")
    return "python -m otelprof_middleware" if base in ("__main__.py", "-m", "") else "otelprof"


def _default_dir() -> str:
    return os.environ.get("OTELPROF_OUTPUT_DIR") or "profiles"


class CLIError(Exception):
    pass


def _missing_folder(directory: str) -> CLIError:
    return CLIError(
        f"no profile folder at {os.path.abspath(directory)}: the file exporter writes profiles there "
        "(OTELPROF_EXPORTER=file; OTELPROF_OUTPUT_DIR or output_dir= chooses the folder, default ./profiles); "
        "pass another folder with --dir")


def _open(directory: str) -> Any:
    from .store.folder import ProfileFolder

    if not os.path.isdir(directory):
        if os.path.exists(directory):
            raise CLIError(f"{directory} is not a folder (pass the file exporter's output_dir)")
        raise _missing_folder(directory)
    folder = ProfileFolder(directory)
    folder.sync(budget=2000)
    return folder


def _selector(words: Sequence[str], *, whole: bool = False) -> Any:
    """A selector from shell words (each word one term) or, ``whole``, one string."""
    from .store.selector import SelectorError, parse_selector

    try:
        return parse_selector(" ".join(words) if whole else " ".join(_quote_word(w) for w in words))
    except SelectorError as e:
        raise CLIError(str(e)) from None


def _quote_word(word: str) -> str:
    """One shell word as one selector term (``name=GET /a`` keeps its space)."""
    if " " not in word or '"' in word:
        return word
    m = re.match(r"^([^=!<>~\s]+)(!=|>=|<=|=|>|<|~)(.*)$", word)
    if m:
        return f'{m.group(1)}{m.group(2)}"{m.group(3)}"'
    return f'"{word}"'


def read_index(directory: str) -> list[dict[str, Any]]:
    """The profiles of an output folder, oldest first (index entries with ``file``)."""
    if not os.path.isdir(directory):
        return []
    from .store.selector import Selector

    folder = _open(directory)
    rows = folder.index.query(Selector(), limit=10_000_000, sort="start")
    return rows


# --------------------------------------------------------------------------- formatting


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f}ms"


def _fmt_value(v: float, unit: str) -> str:
    if unit == "bytes":  # allocation profiles (profile_types)
        for scale, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(v) >= scale:
                return f"{v / scale:.2f}{suffix}"
        return f"{int(v)}B"
    return _ms(v) if unit == "nanoseconds" else (f"{v:g}" if isinstance(v, float) else str(v))


def _local(ns: Optional[int]) -> str:
    if not ns:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def _top_table(rows: list[dict[str, Any]], index: int, unit: str, total: float, n: int) -> list[str]:
    shown = [r for r in rows if r["total"][index]][:n]
    if not shown:
        return ["(no samples of this type)"]
    fmt = lambda v: _fmt_value(v, unit)  # noqa: E731
    width = max(len(fmt(r["self"][index])) for r in shown)
    cwidth = max(len(fmt(r["total"][index])) for r in shown)
    pct = (lambda x: 100.0 * x / total if total else 0.0)
    out = [f"Showing top {len(shown)} of {len([r for r in rows if r['total'][index]])} functions",
           f"{'flat':>{width}}  {'flat%':>6} {'sum%':>6}  {'cum':>{cwidth}}  {'cum%':>6}  function"]
    running = 0.0
    for r in shown:
        f, c = r["self"][index], r["total"][index]
        running += f
        where = f" ({safe(os.path.basename(r['file']))}:{r['start_line']})" if r["file"] else ""
        out.append(f"{fmt(f):>{width}}  {pct(f):5.2f}% {pct(running):5.2f}%  {fmt(c):>{cwidth}}  {pct(c):5.2f}%  "
                   f"{safe(r['name'])}{where}")
    return out


def _choose_type(types: Sequence[tuple[str, str]], totals: Sequence[float], wanted: str) -> tuple[int, str]:
    """``(index, note)``: ``wanted``, else the first of cpu, wall, samples that has data."""
    names = [t for t, _u in types]
    if wanted:
        if wanted not in names:
            raise CLIError(f"sample type {wanted!r} not in this profile (it has {', '.join(names)})")
        return names.index(wanted), ""
    from .store.aggregate import pick_metric

    chosen = pick_metric(types, totals)
    i = names.index(chosen) if chosen in names else 0
    note = ""
    if chosen != "cpu" and "cpu" in names:
        note = f" (no CPU samples in this profile: showing {chosen}; --type cpu to force)"
    return i, note


def summarize_stacks(ps: Any, table: Any, *, title: str, sample_type: str = "", n: int = 15) -> str:
    """``go tool pprof -top``-style text of one decoded profile (:class:`ProfileStacks` over ``table``)."""
    from .store.aggregate import StackSet, top_functions

    ss = StackSet(table, ps.sample_types)
    ss.add(ps)
    totals = ss.totals()
    index, note = _choose_type(ss.sample_types, totals, sample_type)
    t, unit = ss.sample_types[index]
    lines = [title, f"Type: {t}{note}"]
    if ps.duration_nanos:
        lines.append(f"Duration: {ps.duration_nanos / 1e6:.1f}ms, Total {t} = {_fmt_value(totals[index], unit)}")
    for k in ("trace_id", "span_id", "span_name"):
        values = ps.labels.get(k) or {}
        if values:
            lines.append(f"{k}: {safe(', '.join(sorted(values)))}")
    for c in ps.comments:
        lines.append(f"Comment: {safe(c)}")
    lines += _top_table(top_functions(ss), index, unit, totals[index], n)
    return "\n".join(lines)


def _read_stacks(data: bytes) -> tuple[Any, Any]:
    from .store.pprof import FunctionTable, read_stacks

    table = FunctionTable()
    return read_stacks(data, table, with_labels=True), table


def _read_user_file(path: str) -> bytes:
    """A profile file named on the command line: a regular file within the size limit."""
    import stat

    from .store.pprof import DEFAULT_LIMITS

    limit = DEFAULT_LIMITS.max_input_bytes
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise CLIError(f"{path} is not a regular file")
            if st.st_size > limit:
                raise CLIError(f"{path}: {st.st_size:,} bytes is more than the {limit:,} bytes a profile may have")
            return f.read(limit + 1)
    except FileNotFoundError:
        raise CLIError(f"no such file: {path}") from None


def summarize_file(path: str, *, sample_type: str = "", n: int = 15) -> str:
    ps, table = _read_stacks(_read_user_file(path))
    return summarize_stacks(ps, table, title=f"File: {safe(path)}", sample_type=sample_type, n=n)


# --------------------------------------------------------------------------- commands


def _cmd_summary(args: argparse.Namespace, out: IO[str]) -> int:
    from .store.folder import Ambiguous, NotFound
    from .store.selector import Selector

    target = args.path
    if not os.path.isdir(target):
        if not os.path.exists(target):
            if target == _default_dir() or os.path.basename(target.rstrip("/")) == "profiles":
                raise _missing_folder(target)
            raise CLIError(f"no such file or folder: {target}")
        print(summarize_file(target, sample_type=args.type, n=args.top), file=out)
        return 0
    folder = _open(target)
    if args.list:
        rows = folder.index.query(Selector(), limit=10_000_000, sort="start")
        if not rows:
            print(f"no profiles in {folder.directory}", file=sys.stderr)
            return 1
        for e in rows:
            print(_list_line(e), file=out)
        return 0
    try:
        if args.profile_id:
            pid = folder.resolve(args.profile_id)
        elif args.trace_id:
            pid = folder.resolve(args.trace_id)
            if folder.entry(pid).get("trace_id") is None:
                raise NotFound(args.trace_id)
        else:
            newest = folder.index.query(Selector(), limit=1)
            if not newest:
                print(f"no profiles in {folder.directory}", file=sys.stderr)
                return 1
            pid = newest[0]["profile_id"]
    except NotFound as e:
        raise CLIError(f"no profile matches {safe(e.args[0] if e.args else '')!r} "
                       f"(ids may be given in full, as a unique prefix, with 0x, or as a traceparent)") from None
    except Ambiguous as e:
        raise CLIError(safe(str(e))) from None
    entry = folder.entry(pid)
    ps, table = _read_stacks(folder.read_bytes(entry["file"]))
    title = f"Profile: {pid}  {safe(entry.get('name'))}  ({safe(entry['file'])})"
    print(summarize_stacks(ps, table, title=title, sample_type=args.type, n=args.top), file=out)
    return 0


def _list_line(e: dict[str, Any]) -> str:
    status = e.get("status")
    return (f"{e['file']}  {safe(e.get('name')):30}  status={status if status is not None else '-'} "
            f"samples={e.get('samples') if e.get('samples') is not None else '?'} cpu={e.get('cpu_ms', '?')}ms "
            f"wall={e.get('wall_ms', '?')}ms trace_id={e.get('trace_id') or '-'} trigger={safe(e.get('trigger'))}")


def _cmd_query(args: argparse.Namespace, out: IO[str]) -> int:
    folder = _open(args.dir)
    sel = _selector(args.selector)
    if args.count:
        n = folder.index.count(sel)
        print(json.dumps({"selector": sel.text, "count": n}) if args.format == "json" else n, file=out)
        return 0
    try:
        rows = folder.index.query(sel, limit=args.limit, offset=args.offset, sort=args.sort)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.format == "json":
        print(json.dumps({"selector": sel.text, "count": folder.index.count(sel), "profiles": rows}, indent=1),
              file=out)
    elif args.format == "jsonl":
        for r in rows:
            print(json.dumps(r, separators=(",", ":")), file=out)
    else:
        if not rows:
            print(f"no profiles match {safe(sel.text)!r} in {safe(folder.directory)}", file=sys.stderr)
            return 1
        print(f"{'start':19}  {'duration':>9}  {'status':>6}  {'cpu':>9}  {'samples':>7}  {'profile':12}  "
              f"{'trace':12}  trigger  name", file=out)
        for r in rows:
            dur = f"{r['duration_ms']:.1f}ms" if r.get("duration_ms") is not None else "-"
            cpu = f"{r['cpu_ms']:.1f}ms" if r.get("cpu_ms") is not None else "-"
            status = str(r["status"]) if r.get("status") is not None else "-"
            print(f"{_local(r['start_unix_nano']):19}  {dur:>9}  {status:>6}  {cpu:>9}  "
                  f"{r.get('samples') if r.get('samples') is not None else '-':>7}  {r['profile_id'][:12]:12}  "
                  f"{(r.get('trace_id') or '-')[:12]:12}  {safe(r.get('trigger')) or '-'}  {safe(r.get('name'))}",
                  file=out)
        total = folder.index.count(sel)
        if total > len(rows):
            print(f"({len(rows)} of {total}; --limit/--offset for more)", file=out)
    return 0


def _merge(folder: Any, sel: Any, args: argparse.Namespace) -> Any:
    from .store.folder import Busy

    try:
        result = folder.merge(sel, limit=args.limit, my_code=args.my_code)
    except Busy as e:  # pragma: no cover - one CLI process has one request
        raise CLIError(str(e)) from None
    if not result.profile_ids:
        extra = f" ({len(result.skipped)} unreadable)" if result.skipped else ""
        raise CLIError(f"no readable profiles match {safe(sel.text) or '(everything)'!r}{extra}")
    for s in result.skipped:
        print(f"skipped {s['profile_id'][:12]}: {safe(s['error'])}", file=sys.stderr)
    if result.truncated:
        print(f"note: {result.matched} profiles match; merged the newest {len(result.profile_ids)} "
              f"(--limit to change)", file=sys.stderr)
    return result


def _cmd_top(args: argparse.Namespace, out: IO[str]) -> int:
    from .store.aggregate import top_functions
    from .store.outputs import merge_scale

    folder = _open(args.dir)
    sel = _selector(args.selector)
    result = _merge(folder, sel, args)
    ss = result.stacks
    scale = merge_scale(result, args.aggregate)
    rows = top_functions(ss, scale=scale)
    totals = [v * scale for v in ss.totals()] if scale else ss.totals()
    index, note = _choose_type(ss.sample_types, totals, args.metric)
    t, unit = ss.sample_types[index]
    if args.format == "json":
        print(json.dumps({"selector": sel.text, "metric": t, "aggregate": args.aggregate, "merge": result.info(),
                          "functions": rows[:args.n]}, indent=1), file=out)
        return 0
    rows.sort(key=lambda r: (-r["self"][index], -r["total"][index], r["name"]))
    what = "per profile (average)" if args.aggregate == "average" else "total"
    print(f"Selection: {safe(sel.text) or '(everything)'}  {len(result.profile_ids)} profiles, {what}", file=out)
    print(f"Type: {t}{note}", file=out)
    for line in _top_table(rows, index, unit, totals[index], args.n):
        print(line, file=out)
    return 0


def _write_binary(data: bytes, path: str, out: IO[str]) -> None:
    if path and path != "-":
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return
    stream = getattr(out, "buffer", None)
    if stream is None:
        raise CLIError("binary output needs -o FILE")
    if out.isatty():
        raise CLIError("not writing a binary profile to a terminal: use -o FILE (or pipe it)")
    out.flush()
    stream.write(data)
    stream.flush()


def _cmd_merge(args: argparse.Namespace, out: IO[str]) -> int:
    from .store.outputs import OutputError, render_merge

    folder = _open(args.dir)
    sel = _selector(args.selector)
    result = _merge(folder, sel, args)
    try:
        body, _ctype, _ext = render_merge(result, args.format, sel=sel, metric=args.metric,
                                          aggregate=args.aggregate, my_code=args.my_code)
    except OutputError as e:
        raise CLIError(str(e)) from None
    if args.format == "pprof":
        _write_binary(body, args.output, out)
    elif args.output and args.output != "-":
        with open(args.output, "wb") as f:
            f.write(body)
    else:
        out.write(body.decode("utf-8"))
        if not body.endswith(b"\n"):
            out.write("\n")
    if args.output and args.output != "-":
        print(f"wrote {args.output}: {len(result.profile_ids)} profiles merged ({args.format})", file=sys.stderr)
    return 0


def _cmd_diff(args: argparse.Namespace, out: IO[str]) -> int:
    from .store.aggregate import diff_json
    from .store.outputs import OutputError, render_diff

    folder = _open(args.dir)
    a, b = _selector([args.a], whole=True), _selector([args.b], whole=True)
    left = _merge(folder, a, args)
    right = _merge(folder, b, args)
    normalize = not args.no_normalize
    if args.format in ("json", "collapsed"):
        try:
            body, _c, _e = render_diff(left, right, args.format, a=a, b=b, normalize=normalize,
                                       metric=args.metric, my_code=args.my_code)
        except OutputError as e:
            raise CLIError(str(e)) from None
        if args.output and args.output != "-":
            with open(args.output, "wb") as f:
                f.write(body)
        else:
            out.write(body.decode("utf-8"))
        return 0
    d = diff_json(left.stacks, right.stacks, normalize=normalize)
    names = [t["type"] for t in d["sample_types"]]
    if args.metric and args.metric not in names:
        raise CLIError(f"sample type {args.metric!r} not in these profiles (they have {', '.join(names)})")
    metric = args.metric or d["default_type"]
    mi = names.index(metric)
    unit = d["sample_types"][mi]["unit"]
    per = "per request" if normalize else "total"
    fmt = lambda v: _fmt_value(v, unit)  # noqa: E731
    lt, rt = d["left_totals"][mi], d["right_totals"][mi]
    print(f"A: {safe(a.text) or '(everything)'}  ({left.stacks.profiles} profiles)", file=out)
    print(f"B: {safe(b.text) or '(everything)'}  ({right.stacks.profiles} profiles)", file=out)
    change = f" ({100.0 * (rt - lt) / lt:+.1f}%)" if lt else ""
    sign = "+" if rt > lt else ""
    print(f"Type: {metric}, {per}: A {fmt(lt)}  B {fmt(rt)}  change {sign}{fmt(rt - lt)}{change}", file=out)
    # functions whose own time changed first: their callers' totals only follow them
    rows = sorted(d["functions_changed"], key=lambda r: (-abs(r["delta_self"][mi]), -abs(r["delta_total"][mi]),
                                                         d["functions"][r["f"]]["name"]))
    rows = [r for r in rows if r["delta_total"][mi] or r["delta_self"][mi]][:args.n]
    if not rows:
        print("(no difference)", file=out)
        return 0
    w = max(8, *(len(fmt(r["delta_total"][mi])) + 1 for r in rows))
    print(f"{'A total':>{w}}  {'B total':>{w}}  {'change':>{w}}  {'self chg':>{w}}  function", file=out)
    for r in rows:
        fn = d["functions"][r["f"]]
        dt = r["delta_total"][mi]
        print(f"{fmt(r['left_total'][mi]):>{w}}  {fmt(r['right_total'][mi]):>{w}}  {('+' if dt > 0 else '') + fmt(dt):>{w}}  "
              f"{('+' if r['delta_self'][mi] > 0 else '') + fmt(r['delta_self'][mi]):>{w}}  {safe(fn['name'])}",
              file=out)
    return 0


# --------------------------------------------------------------------------- parser


def _add_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--dir", default=_default_dir(),
                   help="the file exporter's folder (default: $OTELPROF_OUTPUT_DIR or ./profiles)")


def _add_merge_options(p: argparse.ArgumentParser, *, aggregate: bool = True) -> None:
    p.add_argument("--metric", default="", choices=["cpu", "wall", "samples"],
                   help="value to show (default: cpu, or wall/samples when there is no CPU time)")
    if aggregate:
        p.add_argument("--aggregate", default="total", choices=["total", "average"],
                       help="sum over the profiles (total) or per profile (average)")
    p.add_argument("--my-code", action="store_true",
                   help="fold library, framework and standard-library frames into their callers")
    p.add_argument("--limit", type=int, default=1000, help="merge at most the newest N profiles (default 1000)")


def build_parser() -> argparse.ArgumentParser:
    prog = _prog()
    sel_help = "selector terms, e.g. route=/checkout status=5xx from=now-1h (see docs/viewer.md)"
    parser = argparse.ArgumentParser(prog=prog, description="otelprof-middleware: look at the profiles the file "
                                     "exporter wrote, from the command line or in the local viewer.")
    parser.add_argument("--version", action="version", version=f"otelprof-middleware {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("summary", help="a go tool pprof -top style summary of one profile",
                       description="Summarise one profile: a .pb.gz file, or a profile of the file exporter's "
                                   "folder (the newest, or the one given by --profile-id / --trace-id).")
    p.add_argument("path", nargs="?", default=_default_dir(),
                   help="a .pb.gz file, or the file exporter's folder (default: $OTELPROF_OUTPUT_DIR or ./profiles)")
    p.add_argument("--type", default="", choices=["cpu", "wall", "samples", *EXTRA_TYPES],
                   metavar="{cpu,wall,samples}",
                   help="sample type (default: cpu, or wall/samples when the profile has no CPU time; "
                        "alloc_space, alloc_objects, inuse_space, inuse_objects, lock_wait, lock_acquires "
                        "for profiles with those profile_types)")
    p.add_argument("--top", type=int, default=15, help="number of functions (default 15)")
    p.add_argument("--profile-id", default="", help="in a folder: this profile (a unique prefix, 0x... are fine)")
    p.add_argument("--trace-id", default="",
                   help="in a folder: the newest profile of this trace (hex, 0x..., a traceparent, a prefix)")
    p.add_argument("--list", action="store_true", help="in a folder: list the profiles (oldest first) and stop")

    p = sub.add_parser("query", help="list the profiles a selector matches",
                       description="List the profiles that match a selector, newest first.")
    p.add_argument("selector", nargs="*", help=sel_help)
    _add_dir(p)
    p.add_argument("--limit", type=int, default=50, help="rows (default 50)")
    p.add_argument("--offset", type=int, default=0, help="skip this many rows")
    p.add_argument("--sort", default="-start",
                   help="start, duration, cpu, wall, samples, name, route, status; a leading - sorts "
                        "descending: --sort=-duration is the slowest first (default -start, the newest first)")
    p.add_argument("--count", action="store_true", help="print only how many profiles match")
    p.add_argument("--format", default="text", choices=["text", "json", "jsonl"])

    p = sub.add_parser("top", help="functions by self and total value over a selection",
                       description="Merge the selected profiles and list functions by self value.")
    p.add_argument("selector", nargs="*", help=sel_help)
    _add_dir(p)
    _add_merge_options(p)
    p.add_argument("-n", type=int, default=20, help="number of functions (default 20)")
    p.add_argument("--format", default="text", choices=["text", "json"])

    p = sub.add_parser("merge", help="merge a selection into one profile (pprof, JSON, collapsed ...)",
                       description="Merge the selected profiles into one. Formats: pprof (go tool pprof, "
                                   "Pyroscope), json (the viewer's tree), collapsed (flamegraph.pl), d3 "
                                   "(d3-flame-graph), speedscope.")
    p.add_argument("selector", nargs="*", help=sel_help)
    _add_dir(p)
    _add_merge_options(p)
    p.add_argument("--format", default="pprof", choices=["pprof", "json", "collapsed", "d3", "speedscope"])
    p.add_argument("-o", "--output", default="", help="write to this file (pprof needs it unless piped)")

    p = sub.add_parser("diff", help="what changed between two selections",
                       description="Compare two selections (A, the baseline, and B): per function the change "
                                   "of total and self value, per request unless --no-normalize.")
    p.add_argument("-a", required=True, help="the baseline selector (quote it), e.g. 'route=/checkout until=now-1h'")
    p.add_argument("-b", required=True, help="the selector to compare, e.g. 'route=/checkout from=now-1h'")
    _add_dir(p)
    _add_merge_options(p, aggregate=False)
    p.add_argument("--no-normalize", action="store_true", help="compare totals, not per-request values")
    p.add_argument("-n", type=int, default=20, help="number of functions (default 20)")
    p.add_argument("--format", default="text", choices=["text", "json", "collapsed"],
                   help="collapsed: 'stack A B' lines for flamegraph.pl's differential graphs")
    p.add_argument("-o", "--output", default="", help="write to this file")

    sub.add_parser("view", add_help=False, help="browse the folder in the local viewer (otelprof view --help)")
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Like ``parse_args``, but a command's options may come between its selector terms
    (``otelprof merge route=/a --format collapsed from=now-1h``)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for i, word in enumerate(argv):
        if word.startswith("-"):
            if word in ("-h", "--help", "--version"):
                break
            continue
        command = sub.choices.get(word)
        if command is None or any(a.startswith("-") for a in argv[:i]):
            break
        args = command.parse_intermixed_args(argv[i + 1:])
        args.command = word
        return args
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None, out: Optional[IO[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["view"]:  # the viewer parses its own options
        from .viewer.__main__ import main as viewer_main

        return viewer_main(argv[1:], prog=f"{_prog()} view")
    parser = build_parser()
    args = _parse(parser, argv)
    out = out or sys.stdout
    commands = {"summary": _cmd_summary, "query": _cmd_query, "top": _cmd_top, "merge": _cmd_merge,
                "diff": _cmd_diff}
    from .store.index import IndexUnusable
    from .store.pprof import PprofError

    try:
        return commands[args.command](args, out)
    except CLIError as e:
        print(f"{parser.prog} {args.command}: {e}", file=sys.stderr)
        return 1
    except PprofError as e:
        print(f"{parser.prog} {args.command}: unreadable profile: {safe(e)}", file=sys.stderr)
        return 1
    except IndexUnusable as e:
        print(f"{parser.prog} {args.command}: {safe(e)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `otelprof query | head`
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
