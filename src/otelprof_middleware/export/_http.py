"""The HTTP transport shared by the OTLP/HTTP and Pyroscope exporters (httpcore).

* **One deadline per attempt.**  :meth:`HTTPTransport.post` is given the time the
  whole attempt may take.  Connecting, the TLS handshake, sending and every read of
  the answer take their timeout from what is left of it: the connection pool runs
  on a network backend that wraps httpcore's own and clamps each operation.  So a
  server that answers one byte per second cannot hold an attempt past its deadline
  (an HTTP client's usual timeouts apply to each read, not to the request).
* :meth:`~HTTPTransport.interrupt` (shutdown) cuts the request in flight by
  shutting its socket down, and fails every later request at once.
* At most ``max_response_bytes`` of an answer are read (4 MiB, the OTLP
  recommendation); a longer answer is cut off and its connection closed.
* One connection pool per exporter, made lazily and made again (never closing the
  parent's sockets) after ``fork``.  Proxies come from the environment
  (``HTTPS_PROXY``, ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``) and the default
  trust roots are httpx's (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), as when
  the exporters used an httpx client.
* A failure becomes an :class:`~.retry.Attempt`; its message never holds a
  credential: header values and URL userinfo are scrubbed.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
import urllib.request
import weakref
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Union
from urllib.parse import unquote, urlencode, urlsplit

import httpcore

from .._redact import Scrubber
from .._version import __version__
from .retry import Attempt, interrupted

__all__ = ["HTTPTransport", "Reply", "MAX_RESPONSE_BYTES", "USER_AGENT"]

#: the OTLP specification's recommended client limit on an answer
MAX_RESPONSE_BYTES = 4 * 1024 * 1024
USER_AGENT = f"otelprof-middleware/{__version__}"
#: idle connections are closed after this long (as httpx does)
KEEPALIVE_EXPIRY = 5.0
#: a body is written in pieces of this size, so the deadline is checked between them
_WRITE_CHUNK = 64 * 1024


@dataclass
class Reply:
    """An HTTP answer: status, headers (lower-case names) and at most
    ``max_response_bytes`` of the (decoded) body; ``truncated`` when there was more."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    truncated: bool = False


class _Interrupted(Exception):
    pass


class _Clock:
    """The deadline of the attempt running on this thread, and the shutdown flag."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.interrupted = False

    def timeout(self, requested: Optional[float], exc: type[Exception]) -> Optional[float]:
        """``requested`` cut to what is left of the current deadline; ``exc`` when
        nothing is left (or after :meth:`HTTPTransport.interrupt`)."""
        if self.interrupted:
            raise _Interrupted()
        end: Optional[float] = getattr(self.local, "end", None)
        if end is None:
            return requested
        left = end - time.monotonic()
        if left <= 0:
            raise exc("deadline of the attempt reached")
        return left if requested is None else min(requested, left)


class _Stream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the attempt's deadline."""

    def __init__(self, inner: httpcore.NetworkStream, backend: "_Backend") -> None:
        self._inner = inner
        self._backend = backend
        backend.live.add(self)

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        return self._inner.read(max_bytes, self._backend.clock.timeout(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        view = memoryview(buffer)
        for start in range(0, len(view), _WRITE_CHUNK):
            self._inner.write(bytes(view[start:start + _WRITE_CHUNK]),
                              self._backend.clock.timeout(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._backend.live.discard(self)
        self._inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: Optional[str] = None,
                  timeout: Optional[float] = None) -> httpcore.NetworkStream:
        inner = self._inner.start_tls(ssl_context, server_hostname,
                                      self._backend.clock.timeout(timeout, httpcore.ConnectTimeout))
        self._backend.live.discard(self)
        return _Stream(inner, self._backend)

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def cut(self) -> None:
        """Wake a read or write blocked on this stream (from another thread)."""
        sock = self._inner.get_extra_info("socket")
        if isinstance(sock, socket.socket):
            try:  # the plain socket's shutdown, also under TLS: it never touches the TLS state
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass


class _Backend(httpcore.NetworkBackend):
    """httpcore's synchronous backend, with every operation clamped to the deadline."""

    def __init__(self, clock: _Clock) -> None:
        self.clock = clock
        self.inner = httpcore.SyncBackend()
        self.live: "weakref.WeakSet[_Stream]" = weakref.WeakSet()

    def connect_tcp(self, host: str, port: int, timeout: Optional[float] = None, local_address: Optional[str] = None,
                    socket_options: Optional[Iterable[Any]] = None) -> httpcore.NetworkStream:
        t = self.clock.timeout(timeout, httpcore.ConnectTimeout)
        return _Stream(self.inner.connect_tcp(host, port, t, local_address, socket_options), self)

    def connect_unix_socket(self, path: str, timeout: Optional[float] = None,
                            socket_options: Optional[Iterable[Any]] = None) -> httpcore.NetworkStream:
        t = self.clock.timeout(timeout, httpcore.ConnectTimeout)
        return _Stream(self.inner.connect_unix_socket(path, t, socket_options), self)

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def cut_all(self) -> None:
        for stream in list(self.live):
            stream.cut()


def proxy_for(url: str) -> Optional[str]:
    """The proxy URL the environment gives for ``url`` (None: connect directly)."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy if "://" in proxy else "http://" + proxy


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or (443 if parts.scheme == "https" else 80)


class HTTPTransport:
    """POSTs through one lazily made connection pool; ``secrets`` are masked in messages."""

    def __init__(self, *, certificate: str = "", secrets: Iterable[str] = (),
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.certificate = certificate
        self.scrub = Scrubber(secrets)
        self.max_response_bytes = max_response_bytes
        self._init()

    def _init(self) -> None:
        self._clock = _Clock()
        self._backend = _Backend(self._clock)
        self._pools: dict[Optional[str], Any] = {}
        self._ssl: Optional[ssl.SSLContext] = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    # ---------------------------------------------------------------- pools
    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            if self.certificate:
                self._ssl = ssl.create_default_context(cafile=self.certificate)
            else:
                import httpx  # its default trust roots (certifi, SSL_CERT_FILE, SSL_CERT_DIR)

                self._ssl = httpx.create_ssl_context()
        return self._ssl

    def _pool(self, proxy: Optional[str]) -> Any:
        if self._pid != os.getpid():
            self.forget()
        with self._lock:
            pool = self._pools.get(proxy)
            if pool is None:
                common: dict[str, Any] = dict(ssl_context=self._ssl_context(), network_backend=self._backend,
                                              keepalive_expiry=KEEPALIVE_EXPIRY)
                if proxy is None:
                    pool = httpcore.ConnectionPool(**common)
                else:
                    p = urlsplit(proxy)
                    auth = (unquote(p.username), unquote(p.password or "")) if p.username else None
                    bare = f"{p.scheme}://{p.hostname}" + (f":{p.port}" if p.port else "")
                    if p.scheme.startswith("socks"):
                        pool = httpcore.SOCKSProxy(proxy_url=bare, proxy_auth=auth, **common)
                    else:
                        pool = httpcore.HTTPProxy(proxy_url=bare, proxy_auth=auth, **common)
                self._pools[proxy] = pool
            return pool

    def probe_address(self, url: str) -> tuple[str, int]:
        """Where a request to ``url`` connects first: the proxy, or the server."""
        proxy = proxy_for(url)
        return _host_port(proxy if proxy else url)

    # ---------------------------------------------------------------- requests
    def post(self, url: str, *, content: bytes, headers: Mapping[str, str], timeout: float,
             params: Optional[Mapping[str, str]] = None) -> Union[Reply, Attempt]:
        """POST within ``timeout`` seconds in all: the :class:`Reply`, or a retryable or
        final :class:`Attempt` for a transport failure (``timed_out`` past the deadline)."""
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        started = time.monotonic()
        local = self._clock.local
        local.end = started + max(timeout, 0.0)
        hdrs = [("User-Agent", USER_AGENT), *headers.items()]
        try:
            pool = self._pool(proxy_for(url))
            ext = {"timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}}
            with pool.stream("POST", url, headers=hdrs, content=content, extensions=ext) as resp:
                reply = Reply(resp.status, {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in resp.headers})
                body = bytearray()
                for chunk in resp.iter_stream():
                    body += chunk
                    if len(body) > self.max_response_bytes:
                        reply.truncated = True
                        del body[self.max_response_bytes:]
                        break
            reply.body = self._decode(bytes(body), reply)
            return reply
        except _Interrupted:
            return interrupted()
        except httpcore.TimeoutException as exc:
            if self._clock.interrupted:
                return interrupted()
            took = time.monotonic() - started
            return Attempt(ok=False, retryable=True, timed_out=True, status=type(exc).__name__,
                           message=f"{type(exc).__name__}: no complete answer within {took:.3g} s "
                                   f"(the attempt's deadline: {timeout:.3g} s)")
        except (httpcore.UnsupportedProtocol, httpcore.LocalProtocolError, ValueError, ImportError,
                ssl.SSLError) as exc:  # a bad URL, a proxy without its extra, a TLS set-up problem: final
            return Attempt(ok=False, retryable=False, message=self.scrub(f"{type(exc).__name__}: {exc}"),
                           status=type(exc).__name__)
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError, OSError) as exc:
            if self._clock.interrupted:
                return interrupted()
            return Attempt(ok=False, retryable=True, message=self.scrub(f"{type(exc).__name__}: {exc}"),
                           status=type(exc).__name__)
        finally:
            local.end = None

    def _decode(self, body: bytes, reply: Reply) -> bytes:
        """The body without its ``Content-Encoding: gzip`` (bounded like the raw body)."""
        if reply.headers.get("content-encoding", "").lower() != "gzip" or not body:
            return body
        try:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out = d.decompress(body, self.max_response_bytes)
            if d.unconsumed_tail:
                reply.truncated = True
            return out
        except zlib.error:
            return body

    # ---------------------------------------------------------------- lifecycle
    def interrupt(self) -> None:
        """Shutdown: cut the request in flight; every later one fails at once."""
        self._clock.interrupted = True
        self._backend.cut_all()

    def forget(self) -> None:
        """Drop the pools without closing them (after fork they are the parent's)."""
        self._init()

    def close(self) -> None:
        with self._lock:
            pools, self._pools = list(self._pools.values()), {}
        if self._pid != os.getpid():
            return
        for pool in pools:
            try:
                pool.close()
            except Exception:  # pragma: no cover
                pass
