"""The profile folder's index: SQLite (standard library, WAL mode), one per folder.

Writers are the ``file`` exporters of every process that shares the folder
(gunicorn workers); readers are the viewer and the CLI, while the writers run.

* **One lock for everything a writer changes.**  An export takes the database's
  write lock (``BEGIN IMMEDIATE``), moves the already written ``.pb.gz`` into
  place, inserts its row, appends its ``index.jsonl`` line and applies retention
  (deleting a file and its row in the same transaction), then commits.  So a
  reader never sees a row without its file, retention covers all processes, and
  the log is rewritten (atomically, to a temporary file then renamed) by the one
  process that holds the lock.
* **Retention** keeps at most ``max_files`` profiles and ``max_bytes`` bytes, and
  optional per-class quotas.  A profile's class is its strongest trigger
  (:data:`KEEP_ORDER`); under ``max_files``/``max_bytes`` pressure profiles that
  were only sampled by chance (``probability``, or no trigger) go first, oldest
  first, so profiles kept for a reason (header, error, slow, high CPU ...)
  outlive them.  Only files named like the exporter's own
  (:data:`.layout.PROFILE_FILE_RE`, regular files, not symlinks) are ever indexed
  or deleted.
* **The log is the backup.**  ``index.jsonl`` gets one line per profile (also
  when the database is unusable); :meth:`ProfileIndex.sync` imports lines it has
  not seen (a folder written by an older version, or lines written while the
  database was locked) and adopts exporter files that have no row, reading them
  with the bounded pprof reader.  Unreadable and foreign files are counted, never
  listed, never deleted.
* **Digests.**  Next to its row, a profile may have a digest (see :mod:`.digest`):
  its stacks and values in the compact form merges read instead of the pprof
  (``digests`` holds what it is for and its size, ``digest_data`` the blob, so
  that sizes are summed without reading blobs).  The exporter stores one in the same transaction as the row;
  readers store one for a profile they had to decode.  A digest is deleted with
  its row (retention, a vanished file), and its bytes count towards ``max_bytes``.
* Files and the database are created ``0600``, a folder the exporter creates
  ``0700``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sqlite3
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Optional, Sequence

from ..config import RETENTION_CLASSES
from .layout import INDEX_DB, INDEX_LOG, PROFILE_FILE_RE, file_stamp_ns

if TYPE_CHECKING:  # the exporter imports this module; it never parses selectors
    from .selector import Selector

__all__ = ["ProfileIndex", "Retention", "IndexUnusable", "KEEP_ORDER", "keep_class",
           "SCHEMA_VERSION", "entry_from_row"]

log = logging.getLogger("otelprof_middleware")

SCHEMA_VERSION = 2  # 2: digests
#: retention classes, strongest first: a profile belongs to the first of its triggers found here
KEEP_ORDER = RETENTION_CLASSES[:-1]
_BASELINE = ("probability", "other")  # evicted first under max_files / max_bytes pressure
BUSY_TIMEOUT_S = 10.0
MAX_TEXT = 512  # longest name/route/method/service stored
MAX_ATTRS = 128
MAX_ATTR_VALUE = 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS profiles (
    id INTEGER PRIMARY KEY,
    profile_id TEXT NOT NULL UNIQUE,
    file TEXT NOT NULL UNIQUE,
    start_ns INTEGER NOT NULL,
    duration_ms REAL,
    service TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    method TEXT NOT NULL DEFAULT '',
    route TEXT NOT NULL DEFAULT '',
    status INTEGER,
    triggers TEXT NOT NULL DEFAULT '',
    trace_id TEXT,
    span_id TEXT,
    cpu_ms REAL,
    wall_ms REAL,
    samples INTEGER,
    size INTEGER NOT NULL DEFAULT 0,
    keep_class TEXT NOT NULL,
    tier INTEGER NOT NULL,
    source TEXT NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS profiles_time ON profiles(start_ns, duration_ms, cpu_ms);
CREATE INDEX IF NOT EXISTS profiles_size ON profiles(size);
CREATE INDEX IF NOT EXISTS profiles_route ON profiles(route, start_ns);
CREATE INDEX IF NOT EXISTS profiles_name ON profiles(name, start_ns);
CREATE INDEX IF NOT EXISTS profiles_trace ON profiles(trace_id);
CREATE INDEX IF NOT EXISTS profiles_span ON profiles(span_id);
CREATE INDEX IF NOT EXISTS profiles_keep ON profiles(keep_class, start_ns);
CREATE INDEX IF NOT EXISTS profiles_tier ON profiles(tier, start_ns);
CREATE TABLE IF NOT EXISTS attributes (
    key TEXT NOT NULL, value TEXT NOT NULL, num REAL, ref INTEGER NOT NULL,
    PRIMARY KEY (key, value, ref)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS attributes_ref ON attributes(ref);
CREATE TABLE IF NOT EXISTS digests (
    ref INTEGER PRIMARY KEY, version INTEGER NOT NULL, file_size INTEGER NOT NULL, file_mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS digest_data (ref INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS skipped (
    file TEXT PRIMARY KEY, reason TEXT NOT NULL, size INTEGER, mtime_ns INTEGER
) WITHOUT ROWID;
"""

_COLUMNS = ("id", "profile_id", "file", "start_ns", "duration_ms", "service", "name", "method", "route", "status",
            "triggers", "trace_id", "span_id", "cpu_ms", "wall_ms", "samples", "size", "keep_class", "doc")
_SELECT = "SELECT " + ", ".join(_COLUMNS) + " FROM profiles"
_SORTS = {"start": "start_ns", "duration": "duration_ms", "cpu": "cpu_ms", "wall": "wall_ms", "samples": "samples",
          "name": "name", "route": "route", "status": "status", "trigger": "triggers", "method": "method"}


class IndexUnusable(RuntimeError):
    """The index database cannot be used (locked for too long, corrupt, newer schema)."""


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True)
class Retention:
    max_files: int = 1000
    max_bytes: int = 256 * 1024 * 1024
    quotas: Mapping[str, int] = field(default_factory=dict)


def keep_class(triggers: Iterable[str]) -> str:
    present = set(triggers)
    for name in KEEP_ORDER:
        if name in present:
            return name
    return "other"


# --------------------------------------------------------------------------- rows


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        return "" if value is None or isinstance(value, (dict, list)) else str(value)[:limit]
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _hexid(value: Any, size: int) -> Optional[str]:
    if isinstance(value, str) and len(value) == size:
        v = value.lower()
        if all(c in "0123456789abcdef" for c in v):
            return v
    return None


def clean_attributes(attrs: Any) -> dict[str, Any]:
    """Attributes as stored: at most 128, scalar values, long strings cut."""
    out: dict[str, Any] = {}
    if not isinstance(attrs, dict):
        return out
    for k, v in attrs.items():
        if len(out) >= MAX_ATTRS:
            break
        if not isinstance(k, str) or not k:
            continue
        if isinstance(v, bool) or isinstance(v, (int, float)):
            out[k[:256]] = v
        elif isinstance(v, str):
            out[k[:256]] = _text(v, MAX_ATTR_VALUE)
    return out


def row_values(entry: Mapping[str, Any], file: str, size: int, source: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(column values, cleaned index entry)`` for an index line (exporter, log or scan)."""
    attrs = clean_attributes(entry.get("attributes"))
    triggers = [t for t in _text(entry.get("trigger")).split(",") if t]
    status: Optional[int] = None
    raw_status = attrs.get("http.response.status_code")
    if isinstance(raw_status, (int, str)) and not isinstance(raw_status, bool) and str(raw_status).isdigit():
        status = int(raw_status)
    start_ns = entry.get("start_unix_nano")
    if not isinstance(start_ns, int) or isinstance(start_ns, bool) or start_ns <= 0:
        start_ns = file_stamp_ns(file)
    duration = _number(attrs.get("otelprof.duration_ms"))
    if duration is None:
        duration = _number(entry.get("duration_ms"))
    top = entry.get("top")
    doc = {
        "profile_id": _text(entry.get("profile_id")).lower(),
        "trace_id": _hexid(entry.get("trace_id"), 32),
        "span_id": _hexid(entry.get("span_id"), 16),
        "link_source": _text(entry.get("link_source")) or None,
        "name": _text(entry.get("name")),
        "trigger": ",".join(triggers),
        "start": _text(entry.get("start")) or None,
        "start_unix_nano": start_ns,
        "duration_ms": _number(entry.get("duration_ms")),
        "cpu_ms": _number(entry.get("cpu_ms")),
        "wall_ms": _number(entry.get("wall_ms")),
        "samples": _number(entry.get("samples")),
        "top": [{"function": _text(t.get("function")), "value": _number(t.get("value"))}
                for t in (top if isinstance(top, list) else [])[:5] if isinstance(t, dict)],
        "attributes": attrs,
        "service": _text(entry.get("service")) or _text(attrs.get("service.name")),
        "file": file,
    }
    cls = keep_class(triggers)
    samples = _number(entry.get("samples"))
    cols = {
        "profile_id": doc["profile_id"], "file": file, "start_ns": start_ns, "duration_ms": duration,
        "service": doc["service"], "name": doc["name"], "method": _text(attrs.get("http.request.method")).upper(),
        "route": _text(attrs.get("http.route")), "status": status, "triggers": doc["trigger"],
        "trace_id": doc["trace_id"], "span_id": doc["span_id"], "cpu_ms": doc["cpu_ms"], "wall_ms": doc["wall_ms"],
        "samples": int(samples) if samples is not None else None, "size": size, "keep_class": cls,
        "tier": 0 if cls in _BASELINE else 1, "source": source,
        "doc": json.dumps(doc, separators=(",", ":"), default=str),
    }
    return cols, doc


def entry_from_row(row: Sequence[Any]) -> dict[str, Any]:
    """The API's view of one profile (a row selected with ``_SELECT``)."""
    r = dict(zip(_COLUMNS, row))
    try:
        doc = json.loads(r["doc"])
    except ValueError:
        doc = {}
    out = dict(doc) if isinstance(doc, dict) else {}
    out.update({
        "profile_id": r["profile_id"], "file": r["file"], "start_unix_nano": r["start_ns"],
        "start": out.get("start") or _rfc3339(r["start_ns"]), "duration_ms": r["duration_ms"],
        "service": r["service"], "name": r["name"], "method": r["method"], "route": r["route"],
        "status": r["status"], "trigger": r["triggers"], "triggers": [t for t in r["triggers"].split(",") if t],
        "trace_id": r["trace_id"], "span_id": r["span_id"], "cpu_ms": r["cpu_ms"], "wall_ms": r["wall_ms"],
        "samples": r["samples"], "size": r["size"], "keep_class": r["keep_class"],
    })
    if "profile_duration_ms" not in out:
        out["profile_duration_ms"] = doc.get("duration_ms") if isinstance(doc, dict) else None
    out.pop("doc", None)
    return out


def _rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000)) + f".{(ns // 1_000_000) % 1000:03d}Z"


# --------------------------------------------------------------------------- files


def _open_private(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0), 0o600)


def write_private(path: str, data: bytes) -> os.stat_result:
    """Write ``data`` to a new file ``path`` created 0600 (fails if it exists); its stat."""
    fd = _open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        return os.fstat(fd)
    finally:
        os.close(fd)


def _regular_file(path: str) -> Optional[os.stat_result]:
    """``lstat`` of ``path`` if it is a regular file (not a symlink)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


@dataclass
class FolderStats:
    profiles: int = 0
    bytes: int = 0
    foreign: int = 0
    unreadable: int = 0
    imported: int = 0
    adopted: int = 0
    removed_rows: int = 0
    pending: int = 0  # exporter files not read yet (the next sync continues)


# --------------------------------------------------------------------------- the index


class ProfileIndex:
    """The index of one profile folder.  Thread-safe; one SQLite connection per thread.

    ``writable=False`` never creates or changes anything: when the folder has no
    usable database, an in-memory copy is built from ``index.jsonl`` and the files."""

    def __init__(self, directory: str, *, writable: bool = True, create_dir: bool = False,
                 keep_open: bool = True) -> None:
        self.directory = os.path.realpath(os.path.abspath(directory))
        self.path = os.path.join(self.directory, INDEX_DB)
        self.log_path = os.path.join(self.directory, INDEX_LOG)
        self.writable = writable
        self.keep_open = keep_open
        if create_dir and not os.path.isdir(self.directory):
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._local = threading.local()
        self._memory: Optional[sqlite3.Connection] = None
        self._memory_lock = threading.RLock()
        self._sync_lock = threading.Lock()
        self._last_listing: Optional[tuple[int, int]] = None

    # ------------------------------------------------------------------ connections
    def _connect(self) -> sqlite3.Connection:
        if self.writable and not os.path.exists(self.path) and os.path.isdir(self.directory):
            try:
                os.close(_open_private(self.path, os.O_WRONLY | os.O_CREAT))
            except FileExistsError:
                pass
        if not os.path.exists(self.path):
            raise IndexUnusable(f"no index database in {self.directory}")
        uri = "file:" + _uri_path(self.path) + ("" if self.writable else "?mode=ro")
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if self.writable:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                self._ensure_schema(conn)
            else:
                self._check_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        version = self._schema_version(conn)
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise IndexUnusable(f"{self.path} was written by a newer otelprof-middleware (schema {version})")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> Optional[int]:
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        except sqlite3.OperationalError:
            return None
        return int(row[0]) if row and str(row[0]).isdigit() else None

    def _check_schema(self, conn: sqlite3.Connection) -> None:
        if self._schema_version(conn) != SCHEMA_VERSION:
            raise IndexUnusable(f"{self.path} has no usable index (schema)")

    def _memory_db(self) -> sqlite3.Connection:
        with self._memory_lock:
            if self._memory is None:
                conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
                for stmt in _SCHEMA.split(";"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
                self._memory = conn
            return self._memory

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection for this thread (the in-memory copy is shared under a lock).

        Without ``keep_open`` the connection lives only as long as the outermost use:
        an exporter in a process that forks (gunicorn ``--preload``) then holds no
        SQLite state across a fork, which SQLite does not support."""
        if self._memory is None:
            conn = getattr(self._local, "conn", None)
            opened = False
            if conn is None:
                try:
                    conn = self._connect()
                    opened = True
                except (sqlite3.Error, IndexUnusable, OSError) as e:
                    if self.writable:
                        raise IndexUnusable(f"cannot use {self.path}: {e}") from e
                    conn = None
                if conn is not None:
                    self._local.conn = conn
            if conn is not None:
                try:
                    yield conn
                finally:
                    if opened and not self.keep_open:
                        self._local.conn = None
                        conn.close()
                return
        with self._memory_lock:
            yield self._memory_db()

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``: the folder's one write lock."""
        with self._db() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def abandon(self) -> None:
        """After ``fork``: forget the parent's connections without closing them
        (closing would touch the parent's locks and WAL state)."""
        _ABANDONED.append((self._local, self._memory))
        self._local = threading.local()
        self._memory_lock = threading.RLock()
        self._sync_lock = threading.Lock()

    # ------------------------------------------------------------------ writing
    def add(self, fname: str, tmp_path: str, size: int, entry: Mapping[str, Any], line: bytes,
            retention: Retention, digest: Optional[tuple[int, int, bytes]] = None) -> list[str]:
        """Move ``tmp_path`` to ``fname``, index it (with ``digest``: ``(format
        version, file mtime_ns, blob)``), log ``line``, apply retention.

        Returns the file names retention removed."""
        cols, _doc = row_values(entry, fname, size, "exporter")
        with self._db(), self.transaction() as conn:
            os.replace(tmp_path, os.path.join(self.directory, fname))
            rid = self._insert(conn, cols, replace=True)
            if digest is not None and rid is not None:
                version, mtime_ns, blob = digest
                _put_digest(conn, rid, version, size, mtime_ns, blob)
            offset = self._append_log(line)
            if offset is not None:
                self._set_meta(conn, "log", offset)
            removed = self._retention(conn, retention)
            if removed:
                self._maybe_compact_log(conn, len(removed))
        return removed

    def _insert(self, conn: sqlite3.Connection, cols: dict[str, Any], *, replace: bool) -> Optional[int]:
        """Insert a row and its attributes; its id, or None when it was there already."""
        names = [c for c in cols if c != "id"]
        verb = "INSERT OR REPLACE" if replace else "INSERT OR IGNORE"
        if replace:
            old = conn.execute("SELECT id FROM profiles WHERE profile_id = ? OR file = ?",
                               (cols["profile_id"], cols["file"])).fetchall()
            for (rid,) in old:
                _delete_children(conn, rid)
        cur = conn.execute(f"{verb} INTO profiles ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                           [cols[c] for c in names])
        if not cur.rowcount:
            return None
        rid = cur.lastrowid
        attrs = json.loads(cols["doc"]).get("attributes") or {}
        rows = []
        for k, v in attrs.items():
            num = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
            if num is None and isinstance(v, str):
                try:
                    num = float(v)
                except ValueError:
                    num = None
            rows.append((k, str(v).lower() if isinstance(v, bool) else str(v), num, rid))
        conn.executemany("INSERT OR IGNORE INTO attributes (key, value, num, ref) VALUES (?, ?, ?, ?)", rows)
        return rid

    def _append_log(self, line: bytes) -> Optional[str]:
        """Append one line (one ``write``); returns ``"<inode>:<size after>"``."""
        fd = _open_private(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            st = os.fstat(fd)
            before = st.st_size
            os.write(fd, line)
            return f"{st.st_ino}:{before + len(line)}" if self._log_known(before, st.st_ino) else None
        finally:
            os.close(fd)

    def _log_known(self, size: int, ino: int) -> bool:
        """True when everything in the log before ``size`` is already imported."""
        with self._db() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'log'").fetchone()
        if row is None:
            return size == 0
        return str(row[0]) == f"{ino}:{size}"

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: Any) -> None:
        conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, str(value)))

    def _retention(self, conn: sqlite3.Connection, r: Retention) -> list[str]:
        victims: dict[int, tuple[str, int]] = {}
        for cls, quota in r.quotas.items():
            for rid, fname, size in conn.execute(
                    f"SELECT id, file, {_SIZE_WITH_DIGEST} FROM profiles WHERE keep_class = ? "
                    "ORDER BY start_ns DESC, id DESC LIMIT -1 OFFSET ?", (cls, quota)):
                victims[rid] = (fname, size)
        count, total = conn.execute("SELECT count(*), total(size) FROM profiles").fetchone()
        total += conn.execute("SELECT total(size) FROM digests").fetchone()[0]
        count -= len(victims)
        total -= sum(s for _f, s in victims.values())
        if count > r.max_files or total > r.max_bytes:
            for rid, fname, size in conn.execute(f"SELECT id, file, {_SIZE_WITH_DIGEST} FROM profiles "
                                                 "ORDER BY tier, start_ns, id"):
                if count <= r.max_files and total <= r.max_bytes:
                    break
                if rid in victims:
                    continue
                victims[rid] = (fname, size)
                count -= 1
                total -= size
        removed = []
        for rid, (fname, _size) in victims.items():
            if PROFILE_FILE_RE.match(fname):
                path = os.path.join(self.directory, fname)
                if _regular_file(path) is not None:
                    try:
                        os.unlink(path)
                    except FileNotFoundError:
                        pass
            _delete_children(conn, rid)
            conn.execute("DELETE FROM profiles WHERE id = ?", (rid,))
            removed.append(fname)
        return removed

    def _maybe_compact_log(self, conn: sqlite3.Connection, dropped: int) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key = 'log_stale'").fetchone()
        stale = (int(row[0]) if row and str(row[0]).isdigit() else 0) + dropped
        live = conn.execute("SELECT count(*) FROM profiles").fetchone()[0]
        if stale < max(1, live // 8):
            self._set_meta(conn, "log_stale", stale)
            return
        self._rewrite_log(conn)

    def _rewrite_log(self, conn: sqlite3.Connection) -> None:
        """Keep the log lines of indexed profiles only (temporary file, then rename)."""
        keep = {pid for (pid,) in conn.execute("SELECT profile_id FROM profiles")}
        tmp = os.path.join(self.directory, f".{INDEX_LOG}.{os.getpid()}.tmp")
        kept: list[bytes] = []
        try:
            with open(self.log_path, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        continue
                    try:
                        pid = json.loads(line).get("profile_id")
                    except (ValueError, AttributeError, RecursionError):
                        continue
                    if pid in keep:
                        kept.append(line)
                        keep.discard(pid)
        except FileNotFoundError:
            pass
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        write_private(tmp, b"".join(kept))
        os.replace(tmp, self.log_path)
        st = os.stat(self.log_path)
        self._set_meta(conn, "log", f"{st.st_ino}:{st.st_size}")
        self._set_meta(conn, "log_stale", 0)

    # ------------------------------------------------------------------ maintenance
    def sync(self, *, budget: int = 500, force: bool = False) -> FolderStats:
        """Bring the index up to date with the folder: import new log lines, adopt
        exporter files without a row (reading at most ``budget`` of them), drop rows
        whose file is gone, count foreign and unreadable files."""
        with self._sync_lock:
            if not os.path.isdir(self.directory):
                return FolderStats()
            try:
                with self._db():
                    pass
            except IndexUnusable:
                if self.writable:
                    raise
            stats = FolderStats()
            with self._db():
                stats.imported = self._import_log()
                listing_key = _dir_key(self.directory)
                if force or listing_key != self._last_listing:
                    self._reconcile(stats, budget)
                    if not stats.pending:
                        self._last_listing = listing_key
            return stats

    def _import_log(self) -> int:
        try:
            st = os.stat(self.log_path)
        except OSError:
            return 0
        with self._db() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = 'log'").fetchone()
        start = 0
        if row:
            ino, _, size = str(row[0]).partition(":")
            if ino == str(st.st_ino) and size.isdigit() and int(size) <= st.st_size:
                start = int(size)
        if start == st.st_size:
            return 0
        imported = 0
        entries: list[tuple[dict[str, Any], str, int]] = []
        end = start
        with open(self.log_path, "rb") as f:
            f.seek(start)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a line being written: read it next time
                end += len(line)
                try:
                    entry = json.loads(line)
                except (ValueError, RecursionError):
                    at = line.rfind(b'{"profile_id"')  # a torn line glued to the next one
                    try:
                        entry = json.loads(line[at:]) if at > 0 else None
                    except (ValueError, RecursionError):
                        entry = None
                if not isinstance(entry, dict):
                    continue
                fname = entry.get("file")
                if not isinstance(fname, str) or not PROFILE_FILE_RE.match(fname):
                    continue
                fst = _regular_file(os.path.join(self.directory, fname))
                if fst is None:
                    continue  # its file is gone (retention): nothing to index
                m = PROFILE_FILE_RE.match(fname)
                if m is None or _text(entry.get("profile_id")).lower() != m.group(8):
                    continue
                entries.append((entry, fname, fst.st_size))
        with self.transaction() as conn:
            for entry, fname, file_size in entries:
                cols, _doc = row_values(entry, fname, file_size, "log")
                if self._insert(conn, cols, replace=False) is not None:
                    imported += 1
                    conn.execute("DELETE FROM skipped WHERE file = ?", (fname,))
            self._set_meta(conn, "log", f"{st.st_ino}:{end}")
        return imported

    def _reconcile(self, stats: FolderStats, budget: int) -> None:
        with self._db() as conn:
            indexed = {f: rid for rid, f in conn.execute("SELECT id, file FROM profiles")}
            skipped = {f: (reason, size, mtime) for f, reason, size, mtime in
                       conn.execute("SELECT file, reason, size, mtime_ns FROM skipped")}
        present: dict[str, os.stat_result] = {}
        foreign: list[str] = []
        try:
            with os.scandir(self.directory) as it:
                for e in it:
                    name = e.name
                    if PROFILE_FILE_RE.match(name):
                        try:
                            st = e.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        if stat.S_ISREG(st.st_mode):
                            present[name] = st
                        else:
                            foreign.append(name)
                    elif not name.startswith(".") and name.endswith((".pb.gz", ".pprof", ".pb")):
                        foreign.append(name)
        except OSError:
            return
        gone = [f for f in indexed if f not in present]
        new = [f for f in present if f not in indexed]
        to_read: list[str] = []
        unreadable: dict[str, tuple[str, int, int]] = {}
        for f in sorted(new):
            st = present[f]
            prev = skipped.get(f)
            if prev and prev[0] != "foreign" and prev[1] == st.st_size and prev[2] == st.st_mtime_ns:
                unreadable[f] = prev
                continue
            to_read.append(f)
        stats.pending = max(0, len(to_read) - budget)
        adopted: list[dict[str, Any]] = []
        for f in to_read[:budget]:
            st = present[f]
            try:
                adopted.append(row_values(_scan_entry(self.directory, f), f, st.st_size, "scan")[0])
            except (ValueError, OSError) as e:
                unreadable[f] = (f"unreadable: {e}"[:300], st.st_size, st.st_mtime_ns)
        try:
            with self.transaction() as conn:
                for f in gone:
                    if _regular_file(os.path.join(self.directory, f)) is None:
                        # the row that names ``f`` now: the id read before this transaction
                        # may have been reused by another writer's new profile meanwhile (its
                        # retention removed ``f``'s row, then an insert took the free id), and
                        # deleting by that id lost the new profile's row and digest
                        row = conn.execute("SELECT id FROM profiles WHERE file = ?", (f,)).fetchone()
                        if row is None:
                            continue
                        _delete_children(conn, row[0])
                        conn.execute("DELETE FROM profiles WHERE id = ?", (row[0],))
                        stats.removed_rows += 1
                for cols in adopted:
                    if self._insert(conn, cols, replace=False) is not None:
                        stats.adopted += 1
                # digests of rows another version's writer removed
                conn.execute("DELETE FROM digests WHERE ref NOT IN (SELECT id FROM profiles)")
                conn.execute("DELETE FROM digest_data WHERE ref NOT IN (SELECT ref FROM digests)")
                conn.execute("DELETE FROM skipped")
                conn.executemany("INSERT OR REPLACE INTO skipped VALUES (?, ?, ?, ?)",
                                 [(f, r, s, m) for f, (r, s, m) in unreadable.items()]
                                 + [(f, "foreign", None, None) for f in foreign])
        except sqlite3.OperationalError as e:
            if "readonly" not in str(e).lower():
                raise
        stats.foreign = len(foreign)
        stats.unreadable = len(unreadable)

    # ------------------------------------------------------------------ reading
    def summary(self) -> dict[str, Any]:
        with self._db() as conn:
            count, total = conn.execute("SELECT count(*), total(size) FROM profiles").fetchone()
            digests, digest_bytes = conn.execute("SELECT count(*), total(size) FROM digests").fetchone()
            kinds = dict(conn.execute("SELECT CASE WHEN reason = 'foreign' THEN 'foreign' ELSE 'unreadable' END, "
                                      "count(*) FROM skipped GROUP BY 1").fetchall())
        return {"profiles": count, "bytes": int(total), "digests": digests, "digest_bytes": int(digest_bytes),
                "foreign_files": kinds.get("foreign", 0),
                "unreadable_files": kinds.get("unreadable", 0)}

    def skipped_files(self, limit: int = 100) -> list[dict[str, Any]]:
        with self._db() as conn:
            rows = conn.execute("SELECT file, reason FROM skipped ORDER BY file LIMIT ?", (limit,)).fetchall()
        return [{"file": f, "reason": r} for f, r in rows]

    def query(self, sel: Selector, *, limit: int = 50, offset: int = 0, sort: str = "-start") -> list[dict[str, Any]]:
        """Profiles matching ``sel``, sorted (``-start``: newest first; ``-duration``: slowest first)."""
        where, params = sel.to_sql()
        desc = sort.startswith("-")
        col = _SORTS.get(sort.lstrip("-+"))
        if col is None:
            raise ValueError(f"unknown sort {sort!r}; sorts: " + ", ".join(sorted(_SORTS)))
        direction = "DESC" if desc else "ASC"
        if col == "start_ns":  # never NULL: the start index serves the order (rowid breaks ties)
            order = f"start_ns {direction}, id {direction}"
        else:
            order = f"{col} IS NULL, {col} {direction}, start_ns DESC, id DESC"
        with self._db() as conn:
            rows = conn.execute(f"{_SELECT} WHERE {where} ORDER BY {order} LIMIT ? OFFSET ?",
                                [*params, limit, offset]).fetchall()
        return [entry_from_row(r) for r in rows]

    def count(self, sel: Selector) -> int:
        where, params = sel.to_sql()
        with self._db() as conn:
            return int(conn.execute(f"SELECT count(*) FROM profiles WHERE {where}", params).fetchone()[0])

    def files(self, sel: Selector, *, limit: int) -> list[tuple[str, str, int]]:
        """``(profile id, file name, row id)`` of the newest ``limit`` profiles matching ``sel``."""
        where, params = sel.to_sql()
        with self._db() as conn:
            return conn.execute(f"SELECT profile_id, file, id FROM profiles WHERE {where} "
                                "ORDER BY start_ns DESC, id DESC LIMIT ?", [*params, limit]).fetchall()

    def digests(self, refs: Sequence[int]) -> dict[int, tuple[int, int, int, bytes]]:
        """Stored digests of the rows ``refs``: ``{ref: (version, file size, file mtime_ns, blob)}``."""
        out: dict[int, tuple[int, int, int, bytes]] = {}
        with self._db() as conn:
            for i in range(0, len(refs), 500):
                chunk = list(refs[i:i + 500])
                for ref, version, size, mtime, data in conn.execute(
                        "SELECT d.ref, d.version, d.file_size, d.file_mtime_ns, b.data FROM digests d "
                        f"JOIN digest_data b ON b.ref = d.ref WHERE d.ref IN ({','.join('?' * len(chunk))})", chunk):
                    out[ref] = (version, size, mtime, data)
        return out

    def clear_digests(self) -> int:
        """Forget every stored digest (readers rebuild them from the files as they
        read them); how many there were."""
        with self.transaction() as conn:
            n = conn.execute("DELETE FROM digests").rowcount
            conn.execute("DELETE FROM digest_data")
        return int(n)

    def put_digests(self, rows: Sequence[tuple[int, str, int, int, int, bytes]], *, wait_s: float = 0.5) -> int:
        """Store digests a reader made: ``(ref, file, version, file size, file mtime_ns,
        blob)``, each only while its row still names that file.  Waits at most
        ``wait_s`` for the write lock (a reader never holds up exporters for long);
        returns how many were stored (0 for a read-only or in-memory index)."""
        if not rows or not self.writable or self._memory is not None:
            return 0
        stored = 0
        try:
            with self._db() as conn:
                conn.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
                try:
                    with self.transaction() as tx:
                        for ref, fname, version, size, mtime, blob in rows:
                            if tx.execute("SELECT 1 FROM profiles WHERE id = ? AND file = ?",
                                          (ref, fname)).fetchone():
                                _put_digest(tx, ref, version, size, mtime, blob)
                                stored += 1
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        except (sqlite3.Error, IndexUnusable):
            return 0  # locked or read-only after all: kept in memory, stored another time
        return stored

    def get(self, profile_id: str) -> Optional[dict[str, Any]]:
        with self._db() as conn:
            row = conn.execute(f"{_SELECT} WHERE profile_id = ?", (profile_id,)).fetchone()
        return entry_from_row(row) if row else None

    def resolve(self, text: str) -> list[str]:
        """Profile ids that a pasted id (profile, trace or span id; any prefix, ``0x``,
        traceparent) names: newest first, at most 2 per kind (2 means ambiguous)."""
        from .selector import parse_id

        try:
            kind, v = parse_id(text)
        except ValueError:
            return []
        hi = v + "g"
        out: list[str] = []
        with self._db() as conn:
            for col in (("trace_id",) if kind == "traceparent" else ("profile_id", "trace_id", "span_id")):
                for (pid,) in conn.execute(f"SELECT profile_id FROM profiles WHERE {col} >= ? AND {col} < ? "
                                           "ORDER BY start_ns DESC LIMIT 2", (v, hi)):
                    if pid not in out:
                        out.append(pid)
                if out:
                    break
        return out

    def values(self, column: str, sel: Selector, *, limit: int = 200) -> list[tuple[Any, int]]:
        """Distinct values of ``column`` (route, name, service, method, status, trigger) with counts."""
        cols = {"route": "route", "name": "name", "service": "service", "method": "method", "status": "status",
                "trigger": "triggers"}
        col = cols.get(column)
        if col is None:
            raise ValueError(f"unknown field {column!r}; fields: " + ", ".join(cols))
        where, params = sel.to_sql()
        with self._db() as conn:
            rows = conn.execute(f"SELECT {col}, count(*) FROM profiles WHERE {where} GROUP BY {col} "
                                f"ORDER BY count(*) DESC, {col} LIMIT ?", [*params, limit]).fetchall()
        if column == "trigger":
            merged: dict[str, int] = {}
            for value, n in rows:
                for t in str(value or "").split(","):
                    if t:
                        merged[t] = merged.get(t, 0) + n
            return sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(v, n) for v, n in rows]

    def timeline(self, sel: Selector, *, step_s: int = 0, points: int = 2000) -> dict[str, Any]:
        """Per time bucket: profiles, p50/p95 duration (nearest rank: the value at rank
        ``ceil(q * n)``), CPU; and the newest ``points`` requests.  Without a narrower
        selector the rows come from a covering index, not the table."""
        where, params = sel.to_sql()
        with self._db() as conn:
            rows = conn.execute(f"SELECT start_ns, duration_ms, cpu_ms FROM profiles WHERE {where}", params).fetchall()
            pts = conn.execute(f"SELECT start_ns, duration_ms, profile_id, status, cpu_ms FROM profiles "
                               f"WHERE {where} ORDER BY start_ns DESC, id DESC LIMIT ?", [*params, points]).fetchall()
        if not rows:
            return {"step_s": step_s or 60, "buckets": [], "points": []}
        lo = min(r[0] for r in rows)
        hi = max(r[0] for r in rows)
        if sel.from_ns is not None:
            lo = min(lo, sel.from_ns)
        if sel.until_ns is not None:
            hi = max(hi, sel.until_ns)
        if step_s <= 0:
            span_s = max(1, (hi - lo) // 1_000_000_000)
            step_s = next((s for s in (60, 300, 900, 3600, 6 * 3600, 86400) if span_s / s <= 500), 7 * 86400)
        step = step_s * 1_000_000_000
        buckets: dict[int, list[Any]] = {}
        for start, dur, cpu in rows:
            b = buckets.get(start // step)
            if b is None:
                b = buckets[start // step] = [0, [], 0.0]
            b[0] += 1
            if dur is not None:
                b[1].append(dur)
            if cpu:
                b[2] += cpu
        out = []
        for k in sorted(buckets):
            n, durs, cpu = buckets[k]
            durs.sort()
            out.append({"start_unix_nano": k * step, "profiles": n, "p50_ms": _rank(durs, 0.5),
                        "p95_ms": _rank(durs, 0.95), "cpu_ms": round(cpu, 3)})
        return {"step_s": step_s, "buckets": out,
                "points": [{"start_unix_nano": s, "duration_ms": d, "profile_id": p, "status": st, "cpu_ms": c}
                           for s, d, p, st, c in pts]}


_ABANDONED: list[Any] = []
_SIZE_WITH_DIGEST = "size + coalesce((SELECT d.size FROM digests d WHERE d.ref = profiles.id), 0)"


def _delete_children(conn: sqlite3.Connection, rid: int) -> None:
    """What hangs off a profile row, deleted before the row in the same transaction."""
    conn.execute("DELETE FROM attributes WHERE ref = ?", (rid,))
    conn.execute("DELETE FROM digests WHERE ref = ?", (rid,))
    conn.execute("DELETE FROM digest_data WHERE ref = ?", (rid,))


def _put_digest(conn: sqlite3.Connection, rid: int, version: int, file_size: int, mtime_ns: int, blob: bytes) -> None:
    conn.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?)",
                 (rid, version, file_size, mtime_ns, len(blob)))
    conn.execute("INSERT OR REPLACE INTO digest_data VALUES (?, ?)", (rid, blob))


def _rank(sorted_values: list[float], q: float) -> Optional[float]:
    """The nearest-rank ``q`` quantile: the value at rank ``ceil(q * n)``."""
    if not sorted_values:
        return None
    return round(sorted_values[max(1, math.ceil(q * len(sorted_values))) - 1], 3)


def _uri_path(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def _dir_key(directory: str) -> Optional[tuple[int, int]]:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _scan_entry(directory: str, fname: str) -> dict[str, Any]:
    """An index entry for an exporter file that has no index line, from its pprof."""
    from .pprof import DEFAULT_LIMITS, FunctionTable, read_stacks

    path = os.path.join(directory, fname)
    with open(path, "rb") as f:
        data = f.read(DEFAULT_LIMITS.max_input_bytes + 1)
    ps = read_stacks(data, FunctionTable(), with_labels=True)
    totals = dict(zip((t for t, _u in ps.sample_types), ps.totals()))
    m = PROFILE_FILE_RE.match(fname)
    assert m is not None

    def single(key: str) -> Optional[str]:
        values = ps.labels.get(key) or {}
        return next(iter(values)) if len(values) == 1 else None

    return {
        "profile_id": m.group(8), "trace_id": single("trace_id"), "span_id": single("span_id"),
        "name": single("span_name") or "", "trigger": "", "start_unix_nano": ps.time_nanos or file_stamp_ns(fname),
        "duration_ms": round(ps.duration_nanos / 1e6, 3) if ps.duration_nanos else None,
        "cpu_ms": round(totals["cpu"] / 1e6, 3) if "cpu" in totals else None,
        "wall_ms": round(totals["wall"] / 1e6, 3) if "wall" in totals else None,
        "samples": totals.get("samples"), "top": [], "attributes": {},
    }
