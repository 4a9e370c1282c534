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
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Optional

from .aggregate import StackSet, fold_library
from .index import IndexError_, ProfileIndex
from .layout import PROFILE_FILE_RE
from .pprof import DEFAULT_LIMITS, FunctionTable, Limits, PprofError, ProfileStacks, read_stacks
from .selector import Selector, parse_selector

__all__ = ["ProfileFolder", "NotFound", "Ambiguous", "Busy", "MergeResult", "DEFAULT_MERGE_LIMIT"]

DEFAULT_MERGE_LIMIT = 1000
MAX_MERGE_LIMIT = 20_000
_MAX_FUNCTIONS = 2_000_000  # the shared function table is started afresh beyond this


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


class ProfileFolder:
    """Queries and views over one folder written by the ``file`` exporter."""

    def __init__(self, directory: str, *, limits: Limits = DEFAULT_LIMITS, writable: Optional[bool] = None,
                 decode_timeout: float = 60.0) -> None:
        directory = os.path.realpath(os.path.abspath(directory))
        if writable is None:
            writable = os.path.isdir(directory) and os.access(directory, os.W_OK)
        self.index = ProfileIndex(directory, writable=writable)
        self.directory = self.index.directory
        self.limits = limits
        self.decode_timeout = decode_timeout
        self._decode = threading.Lock()
        self._table = FunctionTable()
        self._singles: "OrderedDict[tuple[Any, ...], ProfileStacks]" = OrderedDict()
        self._merges: "OrderedDict[tuple[Any, ...], MergeResult]" = OrderedDict()
        self._failures: "OrderedDict[tuple[Any, ...], str]" = OrderedDict()

    @property
    def exists(self) -> bool:
        return os.path.isdir(self.directory)

    def sync(self, *, budget: int = 500, force: bool = False) -> Any:
        if not self.exists:
            return None
        try:
            return self.index.sync(budget=budget, force=force)
        except IndexError_:
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
        """An exporter file's bytes: exporter names only, never a symlink or a
        non-regular file, at most ``limits.max_input_bytes``."""
        if not PROFILE_FILE_RE.match(fname or ""):
            raise NotFound(fname)
        path = os.path.join(self.directory, fname)
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
            if st.st_size > self.limits.max_input_bytes:
                raise PprofError(f"{fname}: file of {st.st_size:,} bytes (limit max_input_bytes="
                                 f"{self.limits.max_input_bytes:,})")
            data = f.read(self.limits.max_input_bytes + 1)
        if len(data) > self.limits.max_input_bytes:
            raise PprofError(f"{fname}: larger than max_input_bytes={self.limits.max_input_bytes:,}")
        return data

    def file_of(self, profile_id: str) -> str:
        return str(self.entry(profile_id)["file"])

    def _acquire(self) -> None:
        if not self._decode.acquire(timeout=self.decode_timeout):
            raise Busy("the viewer is busy with another large request; try again")

    def _table_for_use(self) -> FunctionTable:
        if len(self._table) > _MAX_FUNCTIONS:
            self._table = FunctionTable()
            self._singles.clear()
            self._merges.clear()
        return self._table

    def _stacks_of(self, fname: str, *, by_thread: bool = False, with_labels: bool = False,
                   cache: bool = True) -> ProfileStacks:
        """Decoded stacks of one file (caller holds the decode lock)."""
        path = os.path.join(self.directory, fname)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise NotFound(fname) from None
        key = (fname, st.st_size, st.st_mtime_ns, by_thread, with_labels)
        failed = self._failures.get(key[:3])
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
            self._failures[key[:3]] = str(e)
            while len(self._failures) > 512:
                self._failures.popitem(last=False)
            raise
        if cache:
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

    def merge(self, sel: Selector, *, limit: int = DEFAULT_MERGE_LIMIT, my_code: bool = False) -> MergeResult:
        """The newest ``limit`` profiles matching ``sel``, summed."""
        limit = max(1, min(int(limit), MAX_MERGE_LIMIT))
        rows = self.index.files(sel, limit=limit)
        matched = self.index.count(sel) if len(rows) >= limit else len(rows)
        ids = tuple(pid for pid, _f in rows)
        key = (hashlib.sha1("\n".join(ids).encode()).hexdigest(), len(ids), my_code)
        self._acquire()
        try:
            hit = self._merges.get(key)
            if hit is not None and hit.stacks.table is self._table:
                self._merges.move_to_end(key)
                return MergeResult(hit.stacks, hit.profile_ids, matched, hit.skipped, limit)
            table = self._table_for_use()
            ss = StackSet(table)
            used: list[str] = []
            skipped: list[dict[str, str]] = []
            for pid, fname in rows:
                try:
                    ps = self._stacks_of(fname, cache=False)
                except NotFound:
                    skipped.append({"profile_id": pid, "error": "file removed"})
                    continue
                except PprofError as e:
                    skipped.append({"profile_id": pid, "error": str(e)})
                    continue
                ss.add(ps)
                used.append(pid)
            if my_code:
                ss = fold_library(ss)
            result = MergeResult(ss, used, matched, skipped, limit)
            self._merges[key] = result
            while len(self._merges) > 4:
                self._merges.popitem(last=False)
            return result
        finally:
            self._decode.release()

    def selector(self, text: str) -> Selector:
        return parse_selector(text or "")
