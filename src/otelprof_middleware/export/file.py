"""The file exporter: one gzip'd pprof per profile in ``output_dir``, indexed.

Each profile is written to a private temporary file (``0600``), then moved into
place, indexed, logged to ``index.jsonl`` and retention applied, all under the
folder's one write lock (:class:`~otelprof_middleware.store.index.ProfileIndex`),
so several processes (gunicorn workers) can share a folder and retention counts
all of them.  A folder the exporter creates is ``0700``.

Retention: ``max_files`` and ``max_bytes`` bound the folder; profiles sampled only
by chance (``probability``) are removed first, oldest first, so profiles kept for
a reason (header, error, slow, high CPU ...) outlive them; ``retention`` adds
per-class quotas (``"probability=1000,slow=500,error=500,header=200"``).  Only
files named like the exporter's own are ever deleted.

Each profile's *digest* (:mod:`~otelprof_middleware.store.digest`: its stacks and
summed values in the compact form merges read) is stored with its row, from the
:class:`~otelprof_middleware.profile.Profile` in hand, so the viewer and the CLI
merge and compare stored profiles without decoding a pprof.  A digest that cannot
be made (or a bug making it) never stops the profile being written: it is then
made the first time a reader decodes the file.

If the index database cannot be used (locked for longer than its timeout, a
read-only copy), the profile is still written and logged, and the next
:meth:`~otelprof_middleware.store.index.ProfileIndex.sync` indexes it; a corrupt
database is moved aside and rebuilt from the log and the files.

Fork: SQLite keeps process-wide locks and file state that a child inherits as they
were, so a fork in the middle of an export (gunicorn ``--preload`` forks its
workers while the master's first profile is written) could leave the child's
SQLite stuck.  Before a fork the exporter waits (at most ``FORK_WAIT_S``) for the
export in progress to end and holds its lock until the fork is done
(``_safety.around_fork``); the child starts with a fresh lock and no connection
(``_safety.at_fork_reinit``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .._safety import LogOnce, around_fork, at_fork_reinit
from ..encoding import encode_pprof
from ..store.digest import FORMAT_VERSION, digest_profile
from ..store.index import IndexUnusable, ProfileIndex, Retention, clean_attributes, write_private
from ..store.layout import INDEX_DB, INDEX_LOG, PROFILE_FILE_RE, profile_file_name
from .base import ExportResult

if TYPE_CHECKING:
    from ..config import Config
    from ..profile import Profile

__all__ = ["FileExporter", "profile_summary", "INDEX_LOG"]

_log_once = LogOnce(every=300.0)
_STALE_TMP_S = 600.0
FORK_WAIT_S = 5.0


def profile_summary(profile: "Profile") -> dict[str, Any]:
    """The JSON-friendly facts about a profile (the index line, minus the file name)."""
    link = profile.link if profile.link is not None and profile.link.is_valid else None
    return {
        "profile_id": profile.profile_id_hex,
        "trace_id": link.trace_id_hex if link else None,
        "span_id": link.span_id_hex if link else None,
        "link_source": link.source if link else None,
        "name": profile.name,
        "trigger": ",".join(profile.triggers),
        "start": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(profile.start_time_ns // 1_000_000_000))
        + f".{(profile.start_time_ns // 1_000_000) % 1000:03d}Z",
        "start_unix_nano": profile.start_time_ns,
        "duration_ms": round(profile.duration_ns / 1e6, 3),
        "cpu_ms": round(profile.cpu_ns / 1e6, 3),
        "wall_ms": round(profile.wall_ns / 1e6, 3),
        "samples": profile.sample_count,
        "top": [{"function": n, "value": v} for n, v in profile.top_self(3)],
        "attributes": dict(profile.attributes),
    }


class FileExporter:
    name = "file"

    def __init__(self, config: "Config") -> None:
        self.dir = os.path.abspath(config.output_dir)
        self.service = config.service_name
        self.retention = Retention(max_files=config.max_files, max_bytes=config.max_bytes,
                                   quotas=dict(config.retention))
        self._lock = threading.Lock()
        self._index: Optional[ProfileIndex] = None
        self._held_for_fork = False
        at_fork_reinit(self.after_fork)
        around_fork(self._before_fork, self._after_fork_in_parent)

    # ------------------------------------------------------------------ index
    def _open(self) -> ProfileIndex:
        if self._index is None:
            created = not os.path.isdir(self.dir)
            index = ProfileIndex(self.dir, create_dir=True, keep_open=False)  # no SQLite state across fork
            if created:
                _log_once("file-dir:" + self.dir, "otelprof: created %s (mode 0700) for the file exporter", self.dir,
                          level=logging.INFO)
            self._remove_stale_tmp()
            try:
                index.sync(budget=100)  # a folder from an older version, or lines the index missed
            except (sqlite3.Error, IndexUnusable, OSError) as e:
                self._index_failed(index, e)
            self._index = index
        return self._index

    def _remove_stale_tmp(self) -> None:
        now = time.time()
        try:
            with os.scandir(self.dir) as it:
                for e in it:
                    n = e.name
                    if n.startswith(".") and n.endswith(".tmp") and PROFILE_FILE_RE.match(n[1:-4]):
                        try:
                            if now - e.stat(follow_symlinks=False).st_mtime > _STALE_TMP_S:
                                os.unlink(e.path)
                        except OSError:
                            pass
        except OSError:
            pass

    def _index_failed(self, index: ProfileIndex, exc: BaseException) -> None:
        corrupt = isinstance(exc, sqlite3.DatabaseError) and any(
            m in str(exc).lower() for m in ("not a database", "malformed", "corrupt"))
        cause = exc.__cause__ if isinstance(exc, IndexUnusable) and exc.__cause__ is not None else exc
        if not corrupt and isinstance(cause, sqlite3.DatabaseError):
            corrupt = any(m in str(cause).lower() for m in ("not a database", "malformed", "corrupt"))
        if corrupt:
            index.close()
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.replace(index.path + suffix, f"{index.path}.corrupt-{stamp}{suffix}")
                except OSError:
                    pass
            _log_once("file-index-corrupt", "otelprof: %s was corrupt; moved aside, rebuilding it from %s "
                      "and the files", index.path, INDEX_LOG)
            return
        _log_once("file-index:" + type(cause).__name__,
                  "otelprof: the profile index %s could not be used (%s); profiles are still written to %s and "
                  "indexed later", os.path.join(self.dir, INDEX_DB), cause, self.dir)

    # ------------------------------------------------------------------ export
    def export(self, profiles: Sequence["Profile"]) -> ExportResult:
        done = 0
        with self._lock:
            index = self._open()
            for profile in profiles:
                data = encode_pprof(profile)
                fname = profile_file_name(profile.start_time_ns, profile.profile_id_hex)
                tmp = os.path.join(self.dir, f".{fname}.tmp")
                st = write_private(tmp, data)
                digest = _digest(profile)
                entry = profile_summary(profile)
                entry["name"] = _cut(entry["name"], 512)
                entry["attributes"] = clean_attributes(entry["attributes"])
                entry["service"] = self.service
                entry["file"] = fname
                line = (json.dumps(entry, separators=(",", ":"), default=str) + "\n").encode("utf-8", "replace")
                try:
                    index.add(fname, tmp, len(data), entry, line, self.retention,
                              digest=(FORMAT_VERSION, st.st_mtime_ns, digest) if digest is not None else None)
                except (sqlite3.Error, IndexUnusable) as e:
                    self._index_failed(index, e)
                    if os.path.exists(tmp):  # not moved yet: keep the profile, log it, index it later
                        os.replace(tmp, os.path.join(self.dir, fname))
                        _append(os.path.join(self.dir, INDEX_LOG), line)
                done += 1
        return ExportResult(exported=done)

    def _before_fork(self) -> None:
        self._held_for_fork = self._lock.acquire(timeout=FORK_WAIT_S)

    def _after_fork_in_parent(self) -> None:
        if self._held_for_fork:
            self._held_for_fork = False
            self._lock.release()

    def after_fork(self) -> None:
        # the parent's worker may have held the lock at fork time; the parent's
        # SQLite connections must not be used (nor closed) in the child
        self._lock = threading.Lock()
        self._held_for_fork = False
        if self._index is not None:
            self._index.abandon()
        self._index = None

    def shutdown(self) -> None:
        if self._index is not None:
            self._index.close()


def _digest(profile: "Profile") -> Optional[bytes]:
    try:
        return digest_profile(profile)
    except Exception:  # a bug here must not lose the profile: readers digest it from the pprof
        _log_once("file-digest", "otelprof: could not make a digest of a profile; it is still written, and "
                  "digested when first read", exc=True)
        return None


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _append(path: str, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
