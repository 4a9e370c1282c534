"""One profile folder as the viewer and the CLI see it: the index plus bounded reads.

:class:`ProfileFolder` is the one reader shared by the viewer's API and the CLI
commands: it answers selector queries from the index, resolves pasted ids, reads
profile files safely (exporter names only, no symlinks, a size cap, the bounded
pprof reader) and builds merged, differential and single-profile views.

Decoding is the expensive part, so it is serialised (one at a time per folder,
which also bounds memory when several requests arrive at once), recent merges and
single profiles are cached, and an unreadable file's error is remembered by
``(name, size, mtime)`` instead of being parsed again.
"""

from __future__ import annotations

import hashlib
import operator
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from .aggregate import StackSet, fold_library
from .index import IndexUnusable, ProfileIndex
from .layout import PROFILE_FILE_RE
from .pprof import DEFAULT_LIMITS, LINE_BITS, FunctionTable, Limits, PprofError, ProfileStacks, read_stacks
from .selector import Selector, parse_selector

__all__ = ["ProfileFolder", "NotFound", "Ambiguous", "Busy", "MergeResult", "DEFAULT_MERGE_LIMIT"]

DEFAULT_MERGE_LIMIT = 1000
MAX_MERGE_LIMIT = 20_000
_MAX_FUNCTIONS = 2_000_000  # the shared function table is started afresh beyond this
_MAX_STACKS = 4_000_000  # and so is the stack table of the digest cache


_ADD = operator.add


class NotFound(LookupError):
    pass


class Ambiguous(LookupError):
    def __init__(self, text: str, matches: list[str]) -> None:
        self.matches = matches
        super().__init__(f"{text!r} matches several profiles ({', '.join(m[:12] for m in matches)}, ...): "
                         "give more digits")


class Busy(RuntimeError):
    """Another heavy request holds the decoder for too long."""


@dataclass
class MergeResult:
    stacks: StackSet
    profile_ids: list[str]
    matched: int  # profiles the selector matched (may exceed the merge limit)
    skipped: list[dict[str, str]] = field(default_factory=list)  # unreadable files: {"profile_id", "error"}
    limit: int = DEFAULT_MERGE_LIMIT

    @property
    def truncated(self) -> bool:
        return self.matched > len(self.profile_ids) + len(self.skipped)

    def info(self) -> dict[str, Any]:
        return {"profiles": len(self.profile_ids), "matched": self.matched, "limit": self.limit,
                "truncated": self.truncated, "skipped": self.skipped}


def read_profile_file(directory: str, fname: str, limits: Limits = DEFAULT_LIMITS) -> bytes:
    """An exporter file's bytes: exporter names only, never a symlink or a non-regular
    file (a FIFO cannot block: it is opened non-blocking), at most ``max_input_bytes``."""
    if not PROFILE_FILE_RE.match(fname or ""):
        raise NotFound(fname)
    path = os.path.join(directory, fname)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise NotFound(fname) from None
    except OSError as e:  # ELOOP: a symlink
        raise PprofError(f"cannot open {fname}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise PprofError(f"{fname} is not a regular file")
        if st.st_size > limits.max_input_bytes:
            raise PprofError(f"{fname}: file of {st.st_size:,} bytes (limit max_input_bytes="
                             f"{limits.max_input_bytes:,})")
        data = f.read(limits.max_input_bytes + 1)
    if len(data) > limits.max_input_bytes:
        raise PprofError(f"{fname}: larger than max_input_bytes={limits.max_input_bytes:,}")
    return data


def _file_key(directory: str, fname: str) -> tuple[str, int, int]:
    try:
        st = os.lstat(os.path.join(directory, fname))
    except OSError:
        return (fname, -1, -1)
    return (fname, st.st_size, st.st_mtime_ns)


def _read_row(directory: str, pid: str, fname: str, table: FunctionTable, limits: Limits,
              failures: Optional[Mapping[tuple[str, int, int], str]], skipped: list[dict[str, str]],
              ) -> Optional[ProfileStacks]:
    """One selected profile decoded, or None with the reason added to ``skipped``; files
    in ``failures`` (by name, size, mtime) are not read again."""
    if failures:
        known = failures.get(_file_key(directory, fname))
        if known is not None:
            skipped.append({"profile_id": pid, "error": known})
            return None
    try:
        return read_stacks(read_profile_file(directory, fname, limits), table, limits=limits)
    except NotFound:
        skipped.append({"profile_id": pid, "error": "file removed"})
    except PprofError as e:
        skipped.append({"profile_id": pid, "error": str(e)})
    return None


def merge_files(directory: str, rows: Sequence[tuple[str, str]], table: FunctionTable, limits: Limits,
                failures: Optional[Mapping[tuple[str, int, int], str]] = None,
                ) -> tuple[StackSet, list[str], list[dict[str, str]]]:
    """``(summed stacks, profile ids used, skipped)`` of ``rows`` (``(profile id, file)``)."""
    ss = StackSet(table)
    used: list[str] = []
    skipped: list[dict[str, str]] = []
    for pid, fname in rows:
        ps = _read_row(directory, pid, fname, table, limits, failures, skipped)
        if ps is not None:
            ss.add(ps)
            used.append(pid)
    return ss, used, skipped


def merge_in_worker(directory: str, rows: Sequence[tuple[str, str]], limits: Limits) -> tuple[Any, ...]:
    """:func:`merge_files` in a worker process: plain data back (its own function table)."""
    table = FunctionTable()
    ss, used, skipped = merge_files(directory, rows, table, limits)
    return ss.sample_types, table.functions, ss.stacks, ss.profiles, used, skipped


def _absorb(ss: StackSet, part: tuple[Any, ...]) -> tuple[list[str], list[dict[str, str]]]:
    """Add a worker's merged stacks to ``ss`` (its frames re-interned in ``ss.table``)."""
    sample_types, functions, stacks, profiles, used, skipped = part
    remap = [ss.table.intern(*f) << LINE_BITS for f in functions]
    mask = (1 << LINE_BITS) - 1
    other = StackSet(ss.table, sample_types)
    other.stacks = {tuple(remap[k >> LINE_BITS] | (k & mask) for k in key): values for key, values in stacks.items()}
    other.profiles = profiles
    ss.absorb(other)
    return used, skipped


class _Worker:
    """One helper process decoding a share of a large merge (the decoder is pure Python:
    a second core halves a 1000-profile merge).  Any failure to start or run it means
    the share is decoded in this process instead."""

    def __init__(self, directory: str, rows: Sequence[tuple[str, str]], limits: Limits) -> None:
        import pickle
        import subprocess
        import sys

        self.rows = rows
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        self.proc = subprocess.Popen([sys.executable, "-m", "otelprof_middleware.store._worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=env, close_fds=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(pickle.dumps((directory, list(rows), limits)))
        self.proc.stdin.close()
        self.proc.stdin = None  # communicate() must not touch it again

    def result(self, timeout: float) -> tuple[Any, ...]:
        import pickle

        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            raise
        if self.proc.returncode != 0:
            raise RuntimeError(f"merge worker exited {self.proc.returncode}")
        return pickle.loads(out)  # type: ignore[no-any-return]  # from our own child process


class _Digests:
    """Decoded profiles kept compact for repeated merges: every distinct stack gets a
    small id (one table per folder reader), and a profile is kept as one flat
    ``array('q')`` of ``[stack id, value, value, ...]`` rows (about 10 KB for 300
    stacks), up to ``budget`` bytes, least recently used first out.  Merging a cached
    profile is then a few integer-keyed additions per stack instead of a decode."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self.stack_ids: dict[tuple[Any, ...], int] = {}
        self.stacks: list[tuple[Any, ...]] = []
        self.entries: "OrderedDict[tuple[str, int, int], tuple[tuple[tuple[str, str], ...], Any]]" = OrderedDict()

    def clear(self) -> None:
        self.size = 0
        self.stack_ids.clear()
        self.stacks.clear()
        self.entries.clear()

    def get(self, key: tuple[str, int, int]) -> Optional[tuple[tuple[tuple[str, str], ...], Any]]:
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
        return hit

    def put(self, key: tuple[str, int, int], ps: ProfileStacks) -> tuple[tuple[tuple[str, str], ...], Any]:
        from array import array

        ids = self.stack_ids
        rows: list[int] = []
        for stack, values in ps.stacks.items():
            sid = ids.get(stack)
            if sid is None:
                sid = ids[stack] = len(self.stacks)
                self.stacks.append(stack)
            rows.append(sid)
            rows.extend(values)
        entry = (tuple(ps.sample_types), array("q", rows))
        self.entries[key] = entry
        self.size += len(rows) * 8
        while self.size > self.budget and self.entries:
            _k, (_t, old) = self.entries.popitem(last=False)
            self.size -= len(old) * 8
        return entry


PARALLEL_MIN_FILES = 200


class ProfileFolder:
    """Queries and views over one folder written by the ``file`` exporter."""

    def __init__(self, directory: str, *, limits: Limits = DEFAULT_LIMITS, writable: Optional[bool] = None,
                 decode_timeout: float = 60.0, parallel: bool = True, digest_budget: int = 48 * 1024 * 1024) -> None:
        directory = os.path.realpath(os.path.abspath(directory))
        if writable is None:
            writable = os.path.isdir(directory) and os.access(directory, os.W_OK)
        self.index = ProfileIndex(directory, writable=writable)
        self.directory = self.index.directory
        self.limits = limits
        self.decode_timeout = decode_timeout
        self.parallel = parallel
        self._decode = threading.Lock()
        self._table = FunctionTable()
        self._singles: "OrderedDict[tuple[Any, ...], ProfileStacks]" = OrderedDict()
        self._merges: "OrderedDict[tuple[Any, ...], MergeResult]" = OrderedDict()
        self._failures: "OrderedDict[tuple[str, int, int], str]" = OrderedDict()
        self._digests = _Digests(digest_budget)
        #: how the last merge got its profiles: from the digest cache, decoded here, by helpers
        self.last_merge = {"from_digests": 0, "decoded": 0, "by_helpers": 0}

    @property
    def exists(self) -> bool:
        return os.path.isdir(self.directory)

    def sync(self, *, budget: int = 500, force: bool = False) -> Any:
        if not self.exists:
            return None
        try:
            return self.index.sync(budget=budget, force=force)
        except IndexUnusable:
            if self.index.writable:  # e.g. a folder we may not write after all: read it as it is
                self.index = ProfileIndex(self.directory, writable=False)
                return self.index.sync(budget=budget, force=force)
            raise

    # ------------------------------------------------------------------ ids
    def resolve(self, text: str) -> str:
        """The profile id that ``text`` names (full or unique prefix of a profile, trace
        or span id; ``0x`` and a whole traceparent accepted).  The newest profile of a
        trace wins when a full trace id is given."""
        text = (text or "").strip()
        matches = self.index.resolve(text)
        if not matches:
            raise NotFound(text)
        if len(matches) > 1:
            from .selector import parse_id

            try:
                kind, hexid = parse_id(text)
            except ValueError:
                kind, hexid = "", ""
            full_trace = kind == "traceparent" or len(hexid) == 32
            exact = [m for m in matches if m == hexid]
            if exact:
                return exact[0]
            if full_trace or (len(hexid) == 16 and self._all_span(hexid, matches)):
                return matches[0]  # several profiles of one trace (or span): the newest
            raise Ambiguous(text, matches)
        return matches[0]

    def _all_span(self, hexid: str, matches: list[str]) -> bool:
        return all((self.index.get(m) or {}).get("span_id") == hexid for m in matches)

    def entry(self, profile_id: str) -> dict[str, Any]:
        e = self.index.get(profile_id)
        if e is None:
            raise NotFound(profile_id)
        return e

    # ------------------------------------------------------------------ files
    def read_bytes(self, fname: str) -> bytes:
        """An exporter file's bytes (see :func:`read_profile_file`)."""
        return read_profile_file(self.directory, fname, self.limits)

    def file_of(self, profile_id: str) -> str:
        return str(self.entry(profile_id)["file"])

    def _acquire(self) -> None:
        if not self._decode.acquire(timeout=self.decode_timeout):
            raise Busy("the viewer is busy with another large request; try again")

    def _table_for_use(self) -> FunctionTable:
        if len(self._table) > _MAX_FUNCTIONS or len(self._digests.stacks) > _MAX_STACKS:
            self._table = FunctionTable()
            self._singles.clear()
            self._merges.clear()
            self._digests.clear()
        return self._table

    def _stacks_of(self, fname: str, *, by_thread: bool = False, with_labels: bool = False) -> ProfileStacks:
        """Decoded stacks of one file (caller holds the decode lock)."""
        path = os.path.join(self.directory, fname)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise NotFound(fname) from None
        key = (fname, st.st_size, st.st_mtime_ns, by_thread, with_labels)
        failed = self._failures.get((fname, st.st_size, st.st_mtime_ns))
        if failed is not None:
            raise PprofError(failed)
        hit = self._singles.get(key)
        if hit is not None:
            self._singles.move_to_end(key)
            return hit
        try:
            ps = read_stacks(self.read_bytes(fname), self._table_for_use(), limits=self.limits,
                             by_thread=by_thread, with_labels=with_labels)
        except PprofError as e:
            self._failures[(fname, st.st_size, st.st_mtime_ns)] = str(e)
            while len(self._failures) > 512:
                self._failures.popitem(last=False)
            raise
        self._singles[key] = ps
        while len(self._singles) > 16:
            self._singles.popitem(last=False)
        return ps

    # ------------------------------------------------------------------ views
    def profile_view(self, profile_id: str, *, by_thread: bool = False, my_code: bool = False) -> dict[str, Any]:
        """One profile: its index entry and the decoded header, stacks and labels."""
        from .aggregate import flame_json

        entry = self.entry(profile_id)
        self._acquire()
        try:
            ps = self._stacks_of(entry["file"], by_thread=by_thread, with_labels=True)
            ss = StackSet(self._table, ps.sample_types)
            ss.add(ps)
            if my_code:
                ss = fold_library(ss)
            tree = flame_json(ss)
        finally:
            self._decode.release()
        tree.update({
            "time_nanos": ps.time_nanos, "duration_nanos": ps.duration_nanos, "period": ps.period,
            "period_type": {"type": ps.period_type[0], "unit": ps.period_type[1]}, "comments": ps.comments,
            "labels": {k: sorted(v) for k, v in sorted(ps.labels.items())},
            "threads": [{"name": k, "v": v} for k, v in sorted(ps.threads.items())],
        })
        for key in ("trace_id", "span_id"):  # fall back to the pprof's labels
            values = tree["labels"].get(key, [])
            if not entry.get(key) and len(values) == 1:
                entry[key] = values[0]
        return {"profile": entry, **tree}

    def merge(self, sel: Selector, *, limit: int = DEFAULT_MERGE_LIMIT, my_code: bool = False,
              reuse: bool = True) -> MergeResult:
        """The newest ``limit`` profiles matching ``sel``, summed (``reuse``: answer a
        repeated request from the last few merges)."""
        limit = max(1, min(int(limit), MAX_MERGE_LIMIT))
        rows = self.index.files(sel, limit=limit)
        matched = self.index.count(sel) if len(rows) >= limit else len(rows)
        ids = tuple(pid for pid, _f in rows)
        key = (hashlib.sha1("\n".join(ids).encode()).hexdigest(), len(ids), my_code)
        self._acquire()
        try:
            hit = self._merges.get(key) if reuse else None
            if hit is not None and hit.stacks.table is self._table:
                self._merges.move_to_end(key)
                return MergeResult(hit.stacks, hit.profile_ids, matched, hit.skipped, limit)
            table = self._table_for_use()
            ss, used, skipped = self._merge_rows(list(rows), table)
            if my_code:
                ss = fold_library(ss)
            result = MergeResult(ss, used, matched, skipped, limit)
            self._merges[key] = result
            while len(self._merges) > 4:
                self._merges.popitem(last=False)
            return result
        finally:
            self._decode.release()

    def _merge_rows(self, rows: list[tuple[str, str]], table: FunctionTable,
                    ) -> tuple[StackSet, list[str], list[dict[str, str]]]:
        """Decode and sum ``rows``: profiles in the digest cache are added from it; the
        others are decoded (and kept in the cache).  When many are not cached, helper
        processes (one per extra core, at most 3) decode a share each meanwhile."""
        cached: list[tuple[str, Any]] = []
        todo: list[tuple[str, str]] = []
        keys: dict[str, tuple[str, int, int]] = {}
        for pid, fname in rows:
            k = keys[pid] = _file_key(self.directory, fname)
            entry = self._digests.get(k) if k[1] >= 0 else None
            if entry is not None:
                cached.append((pid, entry))
            else:
                todo.append((pid, fname))
        ss = StackSet(table)
        used: list[str] = []
        skipped: list[dict[str, str]] = []
        stats = self.last_merge = {"from_digests": len(cached), "decoded": 0, "by_helpers": 0}
        helpers = min(3, (os.cpu_count() or 1) - 1)
        workers: list[Any] = []
        if len(todo) >= PARALLEL_MIN_FILES and self.parallel and helpers >= 1:
            chunk = -(-len(todo) // (helpers + 1))
            for share in (todo[i:i + chunk] for i in range(chunk, len(todo), chunk)):
                try:
                    workers.append(_Worker(self.directory, share, self.limits))
                except Exception:  # cannot start a process here: this process decodes that share
                    workers.append(share)
            todo = todo[:chunk]
        for pid, fname in todo:  # this process's share, digested for next time
            ps = _read_row(self.directory, pid, fname, table, self.limits, self._failures, skipped)
            if ps is not None:
                cached.append((pid, self._digests.put(keys[pid], ps)))
                stats["decoded"] += 1
        self._add_digests(ss, [e for _pid, e in cached])
        used += [pid for pid, _e in cached]
        for w in workers:
            try:
                if isinstance(w, list):
                    raise RuntimeError("no worker")
                part_used, part_skipped = _absorb(ss, w.result(timeout=self.decode_timeout))
                stats["by_helpers"] += len(part_used)
            except Exception:  # the worker failed: decode its share here
                share = w if isinstance(w, list) else w.rows
                extra, part_used, part_skipped = merge_files(self.directory, share, table, self.limits,
                                                             self._failures)
                ss.absorb(extra)
                stats["decoded"] += len(part_used)
            used += part_used
            skipped += part_skipped
        order = {pid: n for n, (pid, _f) in enumerate(rows)}
        used.sort(key=order.__getitem__)
        return self._remember(rows, ss, used, skipped)

    def _add_digests(self, ss: StackSet, entries: Sequence[tuple[tuple[tuple[str, str], ...], Any]]) -> None:
        """Sum digested profiles by stack id, then add each distinct stack once."""
        by_types: dict[tuple[tuple[str, str], ...], dict[int, list[int]]] = {}
        counts: dict[tuple[tuple[str, str], ...], int] = {}
        for types, rows in entries:
            acc = by_types.get(types)
            if acc is None:
                acc = by_types[types] = {}
            counts[types] = counts.get(types, 0) + 1
            width = len(types) + 1
            get = acc.get
            for i in range(0, len(rows), width):
                sid = rows[i]
                values = rows[i + 1:i + width]
                old = get(sid)
                if old is None:
                    acc[sid] = values.tolist()
                else:
                    acc[sid] = list(map(_ADD, old, values))
        stacks = self._digests.stacks
        for types, acc in by_types.items():
            part = StackSet(ss.table, list(types))
            part.stacks = {stacks[sid]: values for sid, values in acc.items()}
            part.profiles = counts[types]
            ss.absorb(part)

    def prefill(self, *, newest: int = 2000, budget: int = 100) -> int:
        """Digest up to ``budget`` of the ``newest`` profiles that are not cached yet (the
        viewer calls this in the background, so a merge of stored profiles rarely has to
        decode).  Returns how many were digested."""
        done = 0
        for pid, fname in self.index.files(parse_selector(""), limit=newest):
            if done >= budget:
                break
            k = _file_key(self.directory, fname)
            if k[1] < 0 or self._digests.get(k) is not None or k in self._failures:
                continue
            if self._digests.size >= self._digests.budget * 0.9:
                break  # full: digesting more would only push out others
            if not self._decode.acquire(timeout=1.0):
                break  # a request is decoding: leave the processor to it
            try:
                table = self._table_for_use()
                ps = read_stacks(read_profile_file(self.directory, fname, self.limits), table, limits=self.limits)
                self._digests.put(k, ps)
                done += 1
            except (NotFound, PprofError) as e:
                if isinstance(e, PprofError):
                    self._failures[k] = str(e)
            finally:
                self._decode.release()
        return done

    def _remember(self, rows: list[tuple[str, str]], ss: StackSet, used: list[str], skipped: list[dict[str, str]],
                  ) -> tuple[StackSet, list[str], list[dict[str, str]]]:
        """Keep unreadable files' errors, so the next merge does not read them again."""
        if skipped:
            files = dict(rows)
            for s in skipped:
                if s["error"] != "file removed":
                    self._failures[_file_key(self.directory, files[s["profile_id"]])] = s["error"]
            while len(self._failures) > 512:
                self._failures.popitem(last=False)
        return ss, used, skipped

    def selector(self, text: str) -> Selector:
        return parse_selector(text or "")
