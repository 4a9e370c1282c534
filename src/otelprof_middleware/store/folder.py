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
from typing import Any, Mapping, Optional, Sequence

from .aggregate import StackSet, fold_library
from .digest import FORMAT_VERSION, Digest, DigestError, StackTable, digest_stacks, load_digest, sum_digests
from .index import IndexUnusable, ProfileIndex
from .layout import PROFILE_FILE_RE
from .pprof import DEFAULT_LIMITS, FunctionTable, Limits, PprofError, ProfileStacks, read_stacks
from .selector import Selector, parse_selector

__all__ = ["ProfileFolder", "NotFound", "Ambiguous", "Busy", "MergeResult", "DEFAULT_MERGE_LIMIT"]

DEFAULT_MERGE_LIMIT = 1000
MAX_MERGE_LIMIT = 20_000
_MAX_FUNCTIONS = 2_000_000  # the shared function table is started afresh beyond this
_MAX_STACKS = 4_000_000  # and so is the stack table of the digest cache



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


def digest_files(directory: str, rows: Sequence[tuple[str, str]], limits: Limits) -> list[tuple[str, str, Any]]:
    """Decode and digest profile files in a helper process: per ``(profile id, file)``
    ``(profile id, "digest", blob)``, ``(profile id, "skip", error)``, or ``(profile id,
    "here", None)`` for one that has no digest (the parent decodes it itself)."""
    stacks = StackTable(FunctionTable())
    out: list[tuple[str, str, Any]] = []
    for pid, fname in rows:
        skipped: list[dict[str, str]] = []
        ps = _read_row(directory, pid, fname, stacks.table, limits, None, skipped)
        if ps is None:
            out.append((pid, "skip", skipped[0]["error"]))
            continue
        blob, _d = digest_stacks(ps, stacks)
        out.append((pid, "digest", blob) if blob is not None else (pid, "here", None))
    return out


class _Worker:
    """One helper process decoding and digesting a share of the profiles a merge found
    without a digest (the decoder is pure Python: a second core halves that work).  Any
    failure to start or run it means the share is decoded in this process instead."""

    def __init__(self, directory: str, rows: Sequence[tuple[str, str, int]], limits: Limits) -> None:
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
        self.proc.stdin.write(pickle.dumps((directory, [(pid, fname) for pid, fname, _ref in rows], limits)))
        self.proc.stdin.close()
        self.proc.stdin = None  # communicate() must not touch it again

    def result(self, timeout: float) -> list[tuple[str, str, Any]]:
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
    """Digests loaded in memory, on top of the stored ones: by file ``(name, size,
    mtime)``, least recently used first out beyond ``budget`` bytes, their stacks in
    one :class:`~.digest.StackTable` (over the folder reader's function table)."""

    def __init__(self, budget: int, table: FunctionTable) -> None:
        self.budget = budget
        self.size = 0
        self.stacks = StackTable(table)
        self.entries: "OrderedDict[tuple[str, int, int], Digest]" = OrderedDict()

    def clear(self, table: FunctionTable) -> None:
        self.size = 0
        self.stacks = StackTable(table)
        self.entries.clear()

    def get(self, key: tuple[str, int, int]) -> Optional[Digest]:
        hit = self.entries.get(key)
        if hit is not None:
            self.entries.move_to_end(key)
        return hit

    def put(self, key: tuple[str, int, int], digest: Digest) -> None:
        old = self.entries.pop(key, None)
        if old is not None:
            self.size -= old.nbytes
        self.entries[key] = digest
        self.size += digest.nbytes
        while self.size > self.budget and self.entries:
            _k, out = self.entries.popitem(last=False)
            self.size -= out.nbytes


PARALLEL_MIN_FILES = 200


def _merge_stats() -> dict[str, int]:
    return {"from_memory": 0, "from_store": 0, "decoded": 0, "by_helpers": 0}


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
        self._digests = _Digests(digest_budget, self._table)
        self._no_digest: "OrderedDict[tuple[str, int, int], None]" = OrderedDict()  # files that cannot have one
        #: how the last merge got its profiles: digests already in memory, stored digests,
        #: decoded (and digested) here, by helper processes
        self.last_merge = _merge_stats()

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
            self._digests.clear(self._table)
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
        ids = tuple(pid for pid, _f, _r in rows)
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

    def _merge_rows(self, rows: list[tuple[str, str, int]], table: FunctionTable,
                    ) -> tuple[StackSet, list[str], list[dict[str, str]]]:
        """Sum ``rows`` (``(profile id, file, row id)``, caller holds the decode lock)
        from their digests: in memory, else stored, else decoded from the pprof and
        digested (stored for next time).  When many need decoding, helper processes (one
        per extra core, at most 3) take a share each."""
        ready, plain, skipped, stats = self._digests_of(rows, helpers=self.parallel)
        self.last_merge = stats
        ss = StackSet(table)
        stacks = self._digests.stacks.stacks
        for types, (sums, count) in sum_digests(d for _pid, d in ready).items():
            part = StackSet(table, list(types))
            part.stacks = {stacks[sid]: values for sid, values in sums.items()}
            part.profiles = count
            ss.absorb(part)
        for _pid, ps in plain:
            ss.add(ps)
        order = {pid: n for n, (pid, _f, _r) in enumerate(rows)}
        used = sorted([pid for pid, _d in ready] + [pid for pid, _ps in plain], key=order.__getitem__)
        return self._remember(rows, ss, used, skipped)

    def _digests_of(self, rows: Sequence[tuple[str, str, int]], *, helpers: bool,
                    ) -> tuple[list[tuple[str, Digest]], list[tuple[str, ProfileStacks]], list[dict[str, str]],
                               dict[str, int]]:
        """``(digests, decoded profiles that have none, skipped, stats)`` of ``rows``
        (the caller holds the decode lock)."""
        stats = _merge_stats()
        memory = self._digests
        ready: list[tuple[str, Digest]] = []
        plain: list[tuple[str, ProfileStacks]] = []
        skipped: list[dict[str, str]] = []
        keys: dict[str, tuple[str, int, int]] = {}
        missing: list[tuple[str, str, int]] = []
        for pid, fname, ref in rows:
            k = keys[pid] = _file_key(self.directory, fname)
            hit = memory.get(k) if k[1] >= 0 else None
            if hit is not None:
                ready.append((pid, hit))
            else:
                missing.append((pid, fname, ref))
        stats["from_memory"] = len(ready)
        stored = self.index.digests([ref for _pid, _f, ref in missing]) if missing else {}
        todo: list[tuple[str, str, int]] = []
        for pid, fname, ref in missing:
            k = keys[pid]
            row = stored.get(ref)
            if row is not None and row[0] == FORMAT_VERSION and (row[1], row[2]) == k[1:]:
                try:
                    d = load_digest(row[3], memory.stacks, max_stack_depth=self.limits.max_stack_depth)
                except DigestError:
                    pass  # damaged: decoded below, and stored again
                else:
                    memory.put(k, d)
                    ready.append((pid, d))
                    stats["from_store"] += 1
                    continue
            todo.append((pid, fname, ref))
        if not todo:
            return ready, plain, skipped, stats
        # no usable digest: decode the pprof, digest it, store the digest
        refs = {pid: (fname, ref) for pid, fname, ref in todo}
        new: list[tuple[int, str, int, int, int, bytes]] = []

        def keep(pid: str, blob: Optional[bytes], d: Optional[Digest]) -> None:
            fname, ref = refs[pid]
            k = keys[pid]
            if d is not None:
                memory.put(k, d)
                ready.append((pid, d))
            if blob is not None and k[1] >= 0 and len(blob) <= 2 * k[1] + 4096:  # bounded by the files' sizes
                new.append((ref, fname, FORMAT_VERSION, k[1], k[2], blob))

        workers: list[Any] = []
        n_helpers = min(3, (os.cpu_count() or 1) - 1)
        if helpers and len(todo) >= PARALLEL_MIN_FILES and n_helpers >= 1:
            chunk = -(-len(todo) // (n_helpers + 1))
            for share in (todo[i:i + chunk] for i in range(chunk, len(todo), chunk)):
                try:
                    workers.append(_Worker(self.directory, share, self.limits))
                except Exception:  # cannot start a process here: this process decodes that share
                    workers.append(share)
            todo = todo[:chunk]
        for w in [todo] + workers:
            share = w if isinstance(w, list) else w.rows
            if not isinstance(w, list):
                try:
                    done = w.result(timeout=self.decode_timeout)
                except Exception:  # the helper failed: its share is decoded here
                    pass
                else:
                    again = []
                    for pid, kind, payload in done:
                        if kind == "digest":
                            try:
                                loaded = load_digest(payload, memory.stacks,
                                                     max_stack_depth=self.limits.max_stack_depth)
                            except DigestError:
                                again.append(pid)
                                continue
                            keep(pid, payload, loaded)
                            stats["by_helpers"] += 1
                        elif kind == "skip":
                            skipped.append({"profile_id": pid, "error": str(payload)})
                        else:
                            again.append(pid)
                    retry = set(again)
                    share = [row for row in share if row[0] in retry]
            for pid, fname, _ref in share:
                ps = _read_row(self.directory, pid, fname, memory.stacks.table, self.limits, self._failures, skipped)
                if ps is None:
                    continue
                stats["decoded"] += 1
                blob, made = digest_stacks(ps, memory.stacks)
                if made is None:
                    plain.append((pid, ps))
                    self._no_digest[keys[pid]] = None
                    while len(self._no_digest) > 4096:
                        self._no_digest.popitem(last=False)
                keep(pid, blob, made)
        self.index.put_digests(new)
        return ready, plain, skipped, stats

    def prefill(self, *, newest: int = 2000, budget: int = 100) -> int:
        """Load (or decode, digest and store) up to ``budget`` of the ``newest``
        profiles' digests that are not in memory yet (the viewer calls this in the
        background, so merges in its pages rarely wait).  Returns how many."""
        todo: list[tuple[str, str, int]] = []
        for pid, fname, ref in self.index.files(parse_selector(""), limit=newest):
            if len(todo) >= budget or self._digests.size + 64 * 1024 * len(todo) >= self._digests.budget * 0.9:
                break  # full: loading more would only push out others
            k = _file_key(self.directory, fname)
            if k[1] >= 0 and self._digests.get(k) is None and k not in self._failures and k not in self._no_digest:
                todo.append((pid, fname, ref))
        done = 0
        for i in range(0, len(todo), 10):  # a few at a time: a request waits for one chunk at most
            if not self._decode.acquire(timeout=1.0):
                break  # a request is decoding: leave the processor to it
            try:
                self._table_for_use()
                ready, plain, skipped, _stats = self._digests_of(todo[i:i + 10], helpers=False)
                self._remember(todo[i:i + 10], None, [], skipped)
                done += len(ready) + len(plain)
            finally:
                self._decode.release()
        return done

    def _remember(self, rows: Sequence[tuple[str, str, int]], ss: Any, used: list[str],
                  skipped: list[dict[str, str]]) -> tuple[Any, list[str], list[dict[str, str]]]:
        """Keep unreadable files' errors, so the next merge does not read them again."""
        if skipped:
            files = {pid: fname for pid, fname, _ref in rows}
            for s in skipped:
                if s["error"] != "file removed":
                    self._failures[_file_key(self.directory, files[s["profile_id"]])] = s["error"]
            while len(self._failures) > 512:
                self._failures.popitem(last=False)
        return ss, used, skipped

    def selector(self, text: str) -> Selector:
        return parse_selector(text or "")
