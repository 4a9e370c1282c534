"""The local profile viewer's HTTP server (standard library only).

It serves one folder written by the ``file`` exporter through
:class:`~otelprof_middleware.store.folder.ProfileFolder` (the same reader the CLI
uses): pages, a JSON API (``/api/v1/...``, documented in ``docs/viewer.md``) and
downloads.

Safety: read-only HTTP (GET and HEAD only), binds to 127.0.0.1 by default and then
checks the ``Host`` header (DNS rebinding), never opens a file outside the folder
(profile files are reached by id through the index, must carry the exporter's
own name and be regular files, not symlinks), decodes with the bounded pprof
reader one request at a time, closes idle connections after ``idle_timeout``
seconds and answers ``503`` beyond ``max_connections`` concurrent connections.
Response headers never carry data from the folder except hex ids.

Routes (pages are ``static/index.html``; its script reads the path)::

    GET /  /explore  /compare  /profile/<id>      pages
    GET /static/<name>                           the page's script and style
    GET /api/v1/...                              see docs/viewer.md
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import sys
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from ..store.folder import DEFAULT_MERGE_LIMIT, Ambiguous, Busy, NotFound, ProfileFolder
from ..store.index import IndexUnusable
from ..store.jsonout import dumps
from ..store.outputs import OutputError, render_diff, render_merge
from ..store.pprof import PprofError
from ..store.selector import SelectorError, parse_selector
from .text import safe

__all__ = ["ViewerServer", "make_server", "serve", "DEFAULT_HOST", "DEFAULT_PORT", "API_PREFIX"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
API_PREFIX = "/api/v1"
STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
IDLE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 32
SYNC_INTERVAL_S = 3.0
MAX_PAGE = 500

_ID = r"[0-9a-fA-F]{4,32}"
_PAGE_RE = re.compile(r"^/(?:|index\.html|explore/?|compare/?|profile/" + _ID + r"/?)$")
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
     "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
)
_HEADER_VALUE_RE = re.compile(r"^[\x20-\x7e]*$")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.extra = extra


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _flag(query: dict[str, list[str]], name: str, default: bool = False) -> bool:
    v = query.get(name, [None])[-1]
    if v is None:
        return default
    return v.lower() in ("1", "true", "yes", "on")


def _int(query: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    v = query.get(name, [None])[-1]
    if v is None or v == "":
        return default
    try:
        n = int(v)
    except ValueError:
        raise HTTPError(400, f"bad {name} {v!r}: a whole number from {lo} to {hi}") from None
    if not lo <= n <= hi:
        raise HTTPError(400, f"bad {name} {v!r}: a whole number from {lo} to {hi}")
    return n


def _one(query: dict[str, list[str]], name: str, default: str = "") -> str:
    return query.get(name, [default])[-1]


def _view(query: dict[str, list[str]]) -> bool:
    v = _one(query, "view", "all")
    if v not in ("all", "mycode"):
        raise HTTPError(400, f"bad view {v!r}: all or mycode")
    return v == "mycode"


# --------------------------------------------------------------------------- the API


def display_path(directory: str, relative_to: str) -> str:
    """The folder as people name it: ``./profiles`` inside ``relative_to`` (where the
    viewer was started), ``~/...`` inside the home directory, else the whole path."""
    base = os.path.realpath(relative_to)
    if directory == base:
        return "."
    if directory.startswith(base.rstrip(os.sep) + os.sep):
        return "." + os.sep + os.path.relpath(directory, base)
    home = os.path.realpath(os.path.expanduser("~"))
    if home != os.sep and directory.startswith(home + os.sep):
        return "~" + os.sep + os.path.relpath(directory, home)
    return directory


class ViewerAPI:
    """The ``/api/v1`` endpoints over one :class:`ProfileFolder` (no HTTP here)."""

    def __init__(self, folder: ProfileFolder, display: str = "") -> None:
        self.folder = folder
        self.display = display or folder.directory

    def _sel(self, query: dict[str, list[str]], name: str = "q") -> Any:
        try:
            return parse_selector(_one(query, name))
        except SelectorError as e:
            raise HTTPError(400, str(e), term=e.term, parameter=name) from None

    def folder_info(self) -> dict[str, Any]:
        f = self.folder
        info: dict[str, Any] = {"directory": f.directory, "display": self.display, "exists": f.exists}
        if f.exists:
            info.update(f.index.summary())
            info["in_memory_index"] = f.index.in_memory
        return info

    def route(self, path: str, query: dict[str, list[str]]) -> tuple[int, Any, str, tuple[tuple[str, str], ...]]:
        """``(status, body, content type, extra headers)``; body is bytes or a JSON-able object."""
        rest = path[len(API_PREFIX):].rstrip("/") or "/"
        f = self.folder
        if rest == "/folder":
            info = self.folder_info()
            info["skipped_files"] = f.index.skipped_files() if f.exists else []
            return 200, info, "", ()
        if rest == "/profiles":
            sel = self._sel(query)
            limit = _int(query, "limit", 50, 1, MAX_PAGE)
            offset = _int(query, "offset", 0, 0, 10_000_000)
            sort = _one(query, "sort", "-start")
            try:
                rows = f.index.query(sel, limit=limit, offset=offset, sort=sort) if f.exists else []
            except ValueError as e:
                raise HTTPError(400, str(e)) from None
            count = f.index.count(sel) if f.exists else 0
            return 200, {"selector": sel.text, "count": count, "limit": limit, "offset": offset, "sort": sort,
                         "profiles": rows, "folder": self.folder_info()}, "", ()
        if rest == "/count":
            sel = self._sel(query)
            return 200, {"selector": sel.text, "count": f.index.count(sel) if f.exists else 0}, "", ()
        if rest == "/resolve":
            text = _one(query, "id")
            try:
                pid = f.resolve(text)
            except NotFound:
                raise HTTPError(404, f"no profile, trace or span id starts with {text!r}") from None
            except Ambiguous as e:
                raise HTTPError(409, str(e), matches=e.matches) from None
            return 200, {"id": text, "profile_id": pid}, "", ()
        m = re.match(r"^/profiles/([^/]+)(/flame|/pprof)?$", rest)
        if m:
            try:
                pid = f.resolve(unquote(m.group(1)))
            except NotFound:
                raise HTTPError(404, f"no profile {m.group(1)!r} (removed by retention, or never written)") from None
            except Ambiguous as e:
                raise HTTPError(409, str(e), matches=e.matches) from None
            if m.group(2) == "/pprof":
                body = f.read_bytes(f.file_of(pid))
                return 200, body, "application/gzip", (("Content-Disposition", f'attachment; filename="{pid}.pb.gz"'),)
            if m.group(2) == "/flame":
                view = f.profile_view(pid, by_thread=_flag(query, "by_thread"), my_code=_view(query))
                view["download"] = f"{API_PREFIX}/profiles/{pid}/pprof"
                view["directory"] = f.directory
                view["display_directory"] = self.display
                return 200, view, "", ()
            return 200, f.entry(pid), "", ()
        if rest == "/merge":
            sel = self._sel(query)
            fmt = _one(query, "format", "json")
            limit = _int(query, "limit", DEFAULT_MERGE_LIMIT, 1, 20_000)
            my_code = _view(query)
            result = f.merge(sel, limit=limit, my_code=my_code)
            body, ctype, ext = render_merge(result, fmt, sel=sel, metric=_one(query, "metric"),
                                            aggregate=_one(query, "aggregate", "total"), my_code=my_code)
            extra: tuple[tuple[str, str], ...] = ()
            if fmt != "json" or _flag(query, "download"):
                extra = (("Content-Disposition", f'attachment; filename="otelprof-merge.{ext}"'),)
            return 200, body, ctype, extra
        if rest == "/diff":
            a, b = self._sel(query, "a"), self._sel(query, "b")
            fmt = _one(query, "format", "json")
            limit = _int(query, "limit", DEFAULT_MERGE_LIMIT, 1, 20_000)
            my_code = _view(query)
            left = f.merge(a, limit=limit, my_code=my_code)
            right = f.merge(b, limit=limit, my_code=my_code)
            body, ctype, ext = render_diff(left, right, fmt, a=a, b=b, normalize=_flag(query, "normalize", True),
                                           metric=_one(query, "metric"), my_code=my_code)
            extra = (("Content-Disposition", f'attachment; filename="otelprof-{ext}"'),) if fmt != "json" else ()
            return 200, body, ctype, extra
        if rest == "/top":
            from ..store.aggregate import pick_metric, top_functions
            from ..store.outputs import merge_scale

            sel = self._sel(query)
            result = f.merge(sel, limit=_int(query, "limit_profiles", DEFAULT_MERGE_LIMIT, 1, 20_000),
                             my_code=_view(query))
            try:
                scale = merge_scale(result, _one(query, "aggregate", "total"))
            except OutputError as e:
                raise HTTPError(400, str(e)) from None
            rows = top_functions(result.stacks, scale=scale)[:_int(query, "limit", 50, 1, 10_000)]
            ss = result.stacks
            return 200, {"selector": sel.text, "sample_types": [{"type": t, "unit": u} for t, u in ss.sample_types],
                         "default_type": pick_metric(ss.sample_types, ss.totals(), _one(query, "metric")),
                         "merge": result.info(), "functions": rows}, "", ()
        if rest == "/timeline":
            sel = self._sel(query)
            step = _int(query, "step", 0, 0, 30 * 86400)
            points = _int(query, "points", 2000, 0, 20_000)
            data = f.index.timeline(sel, step_s=step, points=points) if f.exists else {
                "step_s": step or 60, "buckets": [], "points": []}
            return 200, {"selector": sel.text, **data}, "", ()
        m = re.match(r"^/values/([a-z]+)$", rest)
        if m:
            sel = self._sel(query)
            try:
                values = f.index.values(m.group(1), sel, limit=_int(query, "limit", 200, 1, 5000)) if f.exists else []
            except ValueError as e:
                raise HTTPError(404, str(e)) from None
            return 200, {"field": m.group(1), "selector": sel.text,
                         "values": [{"value": v, "count": n} for v, n in values]}, "", ()
        raise HTTPError(404, f"no API endpoint {path!r} (see docs/viewer.md)")


# --------------------------------------------------------------------------- HTTP


class ViewerHandler(BaseHTTPRequestHandler):
    server: "ViewerServer"
    server_version = "otelprof-viewer"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    _head = False

    def setup(self) -> None:
        # idle keep-alive connections and slow clients are dropped after idle_timeout
        self.request.settimeout(self.server.idle_timeout)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:  # request lines come from clients: no control characters on the terminal
            sys.stderr.write(safe(f"{self.address_string()} - - [{self.log_date_time_string()}] {format % args}") + "\n")

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
            parts = urlsplit(self.path)
            path = unquote(parts.path, errors="strict")
            query = parse_qs(parts.query, keep_blank_values=True, max_num_fields=64)
            if "\x00" in path or "\\" in path or any(p in ("..", ".") for p in path.split("/")):
                raise HTTPError(404, "not found")
            self._route(path, query)
        except HTTPError as e:
            self._send_json(e.status, {"error": str(e), **e.extra})
        except NotFound:
            self._send_json(HTTPStatus.NOT_FOUND, {"error": "not found"})
        except Ambiguous as e:
            self._send_json(HTTPStatus.CONFLICT, {"error": str(e), "matches": e.matches})
        except (SelectorError, OutputError) as e:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(e)})
        except PprofError as e:
            self._send_json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": f"unreadable profile: {e}"})
        except Busy as e:
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(e)}, extra=(("Retry-After", "2"),))
        except IndexUnusable as e:
            self._send_json(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"the folder's index is not usable: {e}"})
        except (UnicodeDecodeError, ValueError):
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": "bad request"})
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception as e:  # a viewer bug must still answer
            self.log_error("viewer error on %r: %r", self.path, e)
            try:
                self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal viewer error"})
            except Exception:
                self.close_connection = True

    def _host_allowed(self) -> bool:
        if not self.server.check_host:
            return True
        host = self.headers.get("Host", "")
        if not host:
            return True  # HTTP/1.0 clients may omit it
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return _is_loopback(name.strip().lower())

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        if _PAGE_RE.match(path):
            self._send_static("index.html")
            return
        if path.startswith("/static/"):
            self._send_static(path[len("/static/"):])
            return
        if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
            if path.rstrip("/") == API_PREFIX + "/folder" and _flag(query, "sync"):
                self.server.maybe_sync(force=True)  # the page's Refresh button
            status, body, ctype, extra = self.server.api.route(path, query)
            if isinstance(body, (bytes, bytearray)):
                self._send(status, bytes(body), ctype, extra)
            else:
                self._send_json(status, body, extra)
            return
        if path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
            return
        raise HTTPError(404, "not found")

    # ---------------------------------------------------------------- responses
    def _send(self, status: int, body: bytes, ctype: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        headers = (("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
                   *_SECURITY_HEADERS, *extra)
        for k, v in headers:  # never let data reach a header line (CR/LF, controls, non-ASCII)
            if not _HEADER_VALUE_RE.match(v):
                raise AssertionError(f"unsafe value for header {k}")
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        if not self._head and body:
            self.wfile.write(body)

    def _send_json(self, status: int, obj: Any, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self._send(status, dumps(obj).encode("utf-8"), "application/json; charset=utf-8", extra)

    def _send_static(self, name: str) -> None:
        if name not in self.server.static_files:
            raise HTTPError(404, "not found")
        try:
            with open(os.path.join(STATIC_DIR, name), "rb") as f:
                body = f.read()
        except OSError:
            raise HTTPError(404, "not found") from None
        self._send(HTTPStatus.OK, body, _CONTENT_TYPES.get(os.path.splitext(name)[1], "application/octet-stream"))


class ViewerServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` serving one profile folder, with bounded connections."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, directory: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 verbose: bool = False, idle_timeout: float = IDLE_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS, sync_interval: float = SYNC_INTERVAL_S,
                 relative_to: Optional[str] = None) -> None:
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.folder = ProfileFolder(directory)
        # the pages name the folder relative to where the viewer was started (``relative_to``)
        self.api = ViewerAPI(self.folder, display_path(self.folder.directory, relative_to or os.getcwd()))
        self.verbose = verbose
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.sync_interval = sync_interval
        self.check_host = _is_loopback(host)
        self._slots = threading.BoundedSemaphore(max_connections)
        self._count_lock = threading.Lock()
        self.active_connections = 0  # connections holding a handler thread now
        self._sync_lock = threading.Lock()
        self._last_sync = 0.0
        self.rejected_connections = 0
        try:
            self.static_files = frozenset(
                n for n in os.listdir(STATIC_DIR) if os.path.isfile(os.path.join(STATIC_DIR, n)))
        except OSError:
            self.static_files = frozenset()
        self._stop = threading.Event()
        super().__init__((host, port), ViewerHandler)
        self.maybe_sync(force=True)
        # new profiles are indexed in the background: a page never waits for a folder scan
        threading.Thread(target=self._sync_loop, name="otelprof-viewer-sync", daemon=True).start()

    @property
    def store(self) -> ProfileFolder:
        return self.folder

    def maybe_sync(self, force: bool = False) -> None:
        """Index new files (at most every ``sync_interval`` seconds unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_sync < self.sync_interval:
            return
        if not self._sync_lock.acquire(blocking=force):
            return  # already syncing
        try:
            self._last_sync = time.monotonic()
            self.folder.sync(budget=2000 if force else 200)
        except Exception as e:  # an unusable index must not take pages down
            if self.verbose:
                print(f"otelprof viewer: indexing {self.folder.directory} failed: {e}", file=sys.stderr)
        finally:
            self._sync_lock.release()

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.sync_interval):
            self.maybe_sync()
            try:  # digest the newest profiles while nobody asks, so merges seldom decode
                while not self._stop.is_set() and self.folder.prefill(budget=50):
                    pass
            except Exception as e:  # never let the background work take the viewer down
                if self.verbose:
                    print(f"otelprof viewer: background decoding failed: {e}", file=sys.stderr)

    def server_close(self) -> None:
        self._stop.set()
        super().server_close()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.rejected_connections += 1
            try:
                request.settimeout(1.0)
                body = b'{"error":"too many connections to the viewer"}'
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Connection: close\r\nRetry-After: 1\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._count_lock:
            self.active_connections += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        with self._count_lock:
            self.active_connections -= 1
        self._slots.release()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    @property
    def url(self) -> str:
        address, port = self.server_address[:2]
        host = address.decode() if isinstance(address, bytes) else str(address)
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{port}/"


def make_server(directory: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                *, verbose: bool = False, **options: Any) -> ViewerServer:
    """A bound, not yet running viewer server (``port=0`` picks a free port)."""
    return ViewerServer(directory, host, port, verbose=verbose, **options)


def serve(directory: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
          open_browser: bool = False, verbose: bool = False,
          announce: Optional[Callable[[str], None]] = None) -> None:
    """Serve ``directory`` until interrupted (Ctrl-C)."""
    server = make_server(directory, host, port, verbose=verbose)
    say = announce or (lambda text: print(text, file=sys.stderr, flush=True))
    url = server.url
    say(f"otelprof viewer: {server.folder.directory} at {url} (Ctrl-C to stop)")
    if not server.folder.exists:
        say("  (the folder does not exist yet: profiles appear once the file exporter writes some; "
            "set OTELPROF_EXPORTER=file and OTELPROF_OUTPUT_DIR to choose it)")
    if not _is_loopback(host):
        say(f"  warning: listening on {host}, not loopback: anyone who can reach it can read these profiles")
    if open_browser:
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(url,), daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
