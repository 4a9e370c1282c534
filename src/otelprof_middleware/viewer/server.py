"""The local profile viewer's HTTP server (standard library only).

It serves one folder written by the ``file`` exporter: ``index.jsonl`` plus the
``*.pb.gz`` profiles.  It is read-only (GET and HEAD only), binds to 127.0.0.1
by default, checks the ``Host`` header when bound to a loopback address (so a
web page elsewhere cannot read it through DNS rebinding), and never opens a
file outside that folder: profile files are found by listing the folder, and a
name taken from the index must be a plain ``*.pb.gz`` file name whose real path
is inside the folder.

Routes::

    GET /                         the list page          (static/index.html)
    GET /profile/<id>             a profile page         (static/index.html)
    GET /static/<name>            viewer.js, viewer.css, index.html
    GET /api/profiles             {"profiles": [...newest first], "skipped_lines", ...}
    GET /api/profiles/<id>        the index entry + flame tree (?by_thread=1)
    GET /api/profiles/<id>/pprof  the .pb.gz file (download)
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
import threading
from collections import OrderedDict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from .pprof_reader import PprofError, flame_tree, read_pprof

__all__ = ["ViewerServer", "ProfileStore", "make_server", "serve", "DEFAULT_HOST", "DEFAULT_PORT"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
INDEX_NAME = "index.jsonl"
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")

MAX_INDEX_BYTES = 32 * 1024 * 1024  # only the newest 32 MiB of a huge index are read
MAX_PROFILE_FILE_BYTES = 64 * 1024 * 1024
TREE_CACHE_SIZE = 8

_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")
_FILE_RE = re.compile(r"^[^/\\\x00]+\.pb\.gz$")
_FILE_ID_RE = re.compile(r"_([0-9a-f]{8,64})\.pb\.gz$")
_STAMP_RE = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(\d{6})Z_")
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
_SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
     "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)


class NotFound(Exception):
    pass


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _within(base: str, path: str) -> bool:
    """True when the real path of ``path`` is inside the real folder ``base``."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return False
    return os.path.commonpath([base, real]) == base and real != base


def _num(value: Any) -> Optional[float]:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _str(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _clean_entry(raw: Any) -> Optional[dict[str, Any]]:
    """An index line as the viewer uses it, or None when it is not usable."""
    if not isinstance(raw, dict):
        return None
    pid = _str(raw.get("profile_id"))
    if pid is None or not _ID_RE.match(pid.lower()):
        return None
    file = _str(raw.get("file"))
    if file is not None and (not _FILE_RE.match(file) or file in (".", "..")):
        file = None  # never follow a path from the index
    attrs = raw.get("attributes")
    top = raw.get("top")
    return {
        "profile_id": pid.lower(),
        "trace_id": _str(raw.get("trace_id")),
        "span_id": _str(raw.get("span_id")),
        "link_source": _str(raw.get("link_source")),
        "name": _str(raw.get("name")) or "",
        "trigger": _str(raw.get("trigger")) or "",
        "start": _str(raw.get("start")),
        "start_unix_nano": _num(raw.get("start_unix_nano")) or 0,
        "duration_ms": _num(raw.get("duration_ms")),
        "cpu_ms": _num(raw.get("cpu_ms")),
        "wall_ms": _num(raw.get("wall_ms")),
        "samples": _num(raw.get("samples")),
        "top": [t for t in top if isinstance(t, dict)] if isinstance(top, list) else [],
        "attributes": attrs if isinstance(attrs, dict) else {},
        "file": file,
    }


def _parse_line(line: bytes) -> Optional[dict[str, Any]]:
    try:
        return _clean_entry(json.loads(line))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


def _stamp_ns(fname: str) -> int:
    """Start time from a file name ``YYYYmmddTHHMMSSffffffZ_<id>.pb.gz`` (0 if unknown)."""
    import calendar

    m = _STAMP_RE.match(fname)
    if not m:
        return 0
    y, mo, d, h, mi, s, us = (int(g) for g in m.groups())
    try:
        return (calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 1_000_000 + us) * 1000
    except (ValueError, OverflowError):
        return 0


class ProfileStore:
    """Reads the exporter's folder; caches the parsed index and a few flame trees."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.realpath(os.path.abspath(directory))
        self._lock = threading.Lock()
        self._index_key: Optional[tuple[int, int, int]] = None
        self._index: tuple[list[dict[str, Any]], int] = ([], 0)
        self._trees: "OrderedDict[tuple[Any, ...], dict[str, Any]]" = OrderedDict()

    # ------------------------------------------------------------------ files
    def _pprof_files(self) -> dict[str, str]:
        """profile id -> file name, for every ``*.pb.gz`` regular file in the folder."""
        out: dict[str, str] = {}
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    name = entry.name
                    if not name.endswith(".pb.gz") or name.startswith("."):
                        continue
                    try:
                        if not entry.is_file():
                            continue
                    except OSError:
                        continue
                    m = _FILE_ID_RE.search(name)
                    if m:
                        out[m.group(1)] = name
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            pass
        return out

    def _read_index(self) -> tuple[list[dict[str, Any]], int]:
        path = os.path.join(self.directory, INDEX_NAME)
        try:
            st = os.stat(path)
        except OSError:
            return [], 0
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            if key == self._index_key:
                return self._index
        entries: list[dict[str, Any]] = []
        skipped = 0
        try:
            with open(path, "rb") as f:
                if st.st_size > MAX_INDEX_BYTES:
                    f.seek(st.st_size - MAX_INDEX_BYTES)
                    f.readline()  # drop the partial first line
                data = f.read(MAX_INDEX_BYTES)
        except OSError:
            return [], 0
        seen: dict[str, int] = {}
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            entry = _parse_line(line)
            if entry is None:
                # a torn line glued to the next one: keep the complete record at its end
                at = line.rfind(b'{"profile_id"')
                entry = _parse_line(line[at:]) if at > 0 else None
                skipped += 1
                if entry is None:
                    continue
            if entry["profile_id"] in seen:  # a repeated id: the later line wins
                entries[seen[entry["profile_id"]]] = entry
                continue
            seen[entry["profile_id"]] = len(entries)
            entries.append(entry)
        with self._lock:
            self._index_key = key
            self._index = (entries, skipped)
        return entries, skipped

    # ------------------------------------------------------------------ API
    def list_profiles(self) -> dict[str, Any]:
        entries, skipped = self._read_index()
        files = self._pprof_files()
        out: list[dict[str, Any]] = []
        listed: set[str] = set()
        for e in entries:
            e = dict(e)
            fname = files.get(e["profile_id"])
            e["available"] = fname is not None
            e["file"] = fname or e["file"]
            e["orphan"] = False
            listed.add(e["profile_id"])
            out.append(e)
        for pid, fname in files.items():  # a profile whose index line is missing or garbled
            if pid in listed:
                continue
            out.append(
                {
                    "profile_id": pid, "trace_id": None, "span_id": None, "link_source": None,
                    "name": "", "trigger": "", "start": None, "start_unix_nano": _stamp_ns(fname),
                    "duration_ms": None, "cpu_ms": None, "wall_ms": None, "samples": None, "top": [],
                    "attributes": {}, "file": fname, "available": True, "orphan": True,
                }
            )
        out.sort(key=lambda e: (e["start_unix_nano"], e["profile_id"]), reverse=True)
        return {
            "directory": self.directory,
            "directory_exists": os.path.isdir(self.directory),
            "profiles": out,
            "skipped_lines": skipped,
            "available": sum(1 for e in out if e["available"]),
        }

    def entry(self, pid: str) -> dict[str, Any]:
        entries, _ = self._read_index()
        for e in reversed(entries):
            if e["profile_id"] == pid:
                return dict(e)
        return {}

    def profile_path(self, pid: str) -> tuple[str, str]:
        """``(file name, absolute path)`` of a profile's pprof; NotFound if absent."""
        if not _ID_RE.match(pid):
            raise NotFound(pid)
        fname = self._pprof_files().get(pid)
        if fname is None:
            raise NotFound(pid)
        path = os.path.join(self.directory, fname)
        if not _within(self.directory, path) or not os.path.isfile(path):
            raise NotFound(pid)
        return fname, path

    def profile_detail(self, pid: str, by_thread: bool = False) -> dict[str, Any]:
        fname, path = self.profile_path(pid)
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                key = (path, st.st_ino, st.st_size, st.st_mtime_ns, by_thread)
                with self._lock:
                    cached = self._trees.get(key)
                    if cached is not None:
                        self._trees.move_to_end(key)
                if cached is None:
                    if st.st_size > MAX_PROFILE_FILE_BYTES:
                        raise PprofError("profile file too large for the viewer")
                    data = f.read()
        except FileNotFoundError:
            raise NotFound(pid) from None
        if cached is None:
            prof = read_pprof(data)
            tree = flame_tree(prof, by_thread=by_thread)
            tree["time_nanos"] = prof.time_nanos
            tree["duration_nanos"] = prof.duration_nanos
            tree["period"] = prof.period
            tree["period_type"] = {"type": prof.period_type[0], "unit": prof.period_type[1]}
            tree["comments"] = prof.comments
            cached = tree
            with self._lock:
                self._trees[key] = cached
                while len(self._trees) > TREE_CACHE_SIZE:
                    self._trees.popitem(last=False)
        entry = self.entry(pid)
        if not entry:
            entry = {"profile_id": pid, "name": "", "trigger": "", "attributes": {}, "orphan": True,
                     "start_unix_nano": cached["time_nanos"]}
        entry["file"] = fname
        entry["available"] = True
        labels = cached.get("labels", {})
        for key_name in ("trace_id", "span_id"):  # fall back to the pprof's labels
            if not entry.get(key_name) and len(labels.get(key_name, [])) == 1:
                entry[key_name] = labels[key_name][0]
        return {"profile": entry, "directory": self.directory, "download": f"/api/profiles/{pid}/pprof", **cached}


# --------------------------------------------------------------------------- HTTP


class ViewerHandler(BaseHTTPRequestHandler):
    server: "ViewerServer"
    server_version = "otelprof-viewer"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    _head = False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    # ---------------------------------------------------------------- dispatch
    def do_GET(self) -> None:
        self._handle(head=False)

    def do_HEAD(self) -> None:
        self._handle(head=True)

    def _refuse(self) -> None:
        self._send_json(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "read-only viewer: GET and HEAD only"},
                        extra=(("Allow", "GET, HEAD"),))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse  # type: ignore[assignment]

    def _handle(self, head: bool) -> None:
        self._head = head
        try:
            if not self._host_allowed():
                self._send_json(HTTPStatus.FORBIDDEN, {"error": "unexpected Host header"})
                return
            raw_path = urlsplit(self.path).path
            path = unquote(raw_path, errors="strict")
            query = parse_qs(urlsplit(self.path).query)
            if "\x00" in path or "\\" in path or any(p in ("..", ".") for p in path.split("/")):
                self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
                return
            self._route(path, query)
        except NotFound:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        except PprofError as e:
            self._send_json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": f"unreadable profile: {e}"})
        except UnicodeDecodeError:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:  # a viewer bug must still answer
            self.log_error("viewer error on %r: %r", self.path, e)
            try:
                self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal viewer error"})
            except Exception:
                pass

    def _host_allowed(self) -> bool:
        if not self.server.check_host:
            return True
        host = self.headers.get("Host", "")
        if not host:
            return True  # HTTP/1.0 clients may omit it
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return _is_loopback(name.strip().lower())

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        store = self.server.store
        if path in ("/", "/index.html") or re.match(r"^/profile/[0-9a-fA-F]{8,64}/?$", path):
            self._send_static("index.html")
            return
        if path.startswith("/static/"):
            self._send_static(path[len("/static/"):])
            return
        if path in ("/api/profiles", "/api/profiles/"):
            self._send_json(HTTPStatus.OK, store.list_profiles())
            return
        m = re.match(r"^/api/profiles/([0-9a-fA-F]{8,64})(/pprof)?/?$", path)
        if m:
            pid = m.group(1).lower()
            if m.group(2):
                self._send_pprof(pid)
            else:
                by_thread = query.get("by_thread", ["0"])[-1] in ("1", "true", "yes")
                self._send_json(HTTPStatus.OK, store.profile_detail(pid, by_thread=by_thread))
            return
        if path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            return
        raise NotFound(path)

    # ---------------------------------------------------------------- responses
    def _send(self, status: int, body: bytes, ctype: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for k, v in _SECURITY_HEADERS + extra:
            self.send_header(k, v)
        self.end_headers()
        if not self._head and body:
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, extra: tuple[tuple[str, str], ...] = ()) -> None:
        body = json.dumps(obj, separators=(",", ":"), default=str).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8", extra)

    def _send_static(self, name: str) -> None:
        files = self.server.static_files
        if name not in files:
            raise NotFound(name)
        path = os.path.join(STATIC_DIR, name)
        try:
            with open(path, "rb") as f:
                body = f.read()
        except OSError:
            raise NotFound(name) from None
        ext = os.path.splitext(name)[1]
        self._send(HTTPStatus.OK, body, _CONTENT_TYPES.get(ext, "application/octet-stream"))

    def _send_pprof(self, pid: str) -> None:
        fname, path = self.server.store.profile_path(pid)
        try:
            with open(path, "rb") as f:
                body = f.read(MAX_PROFILE_FILE_BYTES + 1)
        except FileNotFoundError:
            raise NotFound(pid) from None
        if len(body) > MAX_PROFILE_FILE_BYTES:
            raise PprofError("profile file too large for the viewer")
        self._send(HTTPStatus.OK, body, "application/gzip",
                   (("Content-Disposition", f'attachment; filename="{fname}"'),))


class ViewerServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` serving one profile folder."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, directory: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 *, verbose: bool = False) -> None:
        if ":" in host:
            self.address_family = __import__("socket").AF_INET6
        self.store = ProfileStore(directory)
        self.verbose = verbose
        self.check_host = _is_loopback(host)
        try:
            self.static_files = frozenset(
                n for n in os.listdir(STATIC_DIR) if os.path.isfile(os.path.join(STATIC_DIR, n))
            )
        except OSError:
            self.static_files = frozenset()
        super().__init__((host, port), ViewerHandler)

    @property
    def url(self) -> str:
        address, port = self.server_address[:2]
        host = address.decode() if isinstance(address, bytes) else str(address)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"


def make_server(directory: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                *, verbose: bool = False) -> ViewerServer:
    """A bound, not yet running viewer server (``port=0`` picks a free port)."""
    return ViewerServer(directory, host, port, verbose=verbose)


def serve(directory: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          open_browser: bool = False, verbose: bool = False) -> None:
    """Serve ``directory`` until interrupted (Ctrl-C)."""
    server = make_server(directory, host, port, verbose=verbose)
    url = server.url
    print(f"otelprof viewer: {server.store.directory} at {url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    if not os.path.isdir(server.store.directory):
        print("  (the folder does not exist yet: profiles appear once the file exporter writes some)",
              file=sys.stderr, flush=True)
    if not _is_loopback(host):
        print(f"  warning: listening on {host}, not loopback: anyone who can reach it can read these profiles",
              file=sys.stderr, flush=True)
    if open_browser:
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
