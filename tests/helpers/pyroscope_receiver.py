"""A test Grafana Pyroscope receiver on 127.0.0.1 (project-owned): the Connect push API
``POST /push.v1.PusherService/Push`` and the legacy ``POST /ingest``.

    with PyroscopeReceiver(push_statuses=[503], retry_after="0") as rx:
        profiler = Profiler(exporter="pyroscope", pyroscope_endpoint=rx.url)
        ...
        series = rx.series()          # [DecodedSeries(labels, raw_profile, id)]

* ``push_available=False``: the push path answers ``unavailable_status`` (404 by
  default; 415/501 or a Connect ``unimplemented`` JSON body are other ways a server
  says "no push here").
* ``push_statuses`` / ``ingest_statuses``: answers of the 1st, 2nd ... request on each
  path (then 200); ``retry_after`` is sent with non-2xx answers.
* ``PushRequest`` bodies are decoded by a wire-format reader written here, independent
  of the library's encoder.
* ``fault="trickle"``: answer one byte every ``trickle_interval`` seconds (far longer
  than any deadline); ``fault="hang"``: never answer (until ``stop()``).
"""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional, Sequence
from urllib.parse import parse_qs, urlsplit

__all__ = ["PyroscopeReceiver", "DecodedSeries", "decode_push_request", "PyroRequest"]


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, Any]]:
    out = []
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 2:
            n, pos = _varint(buf, pos)
            v = buf[pos:pos + n]
            if len(v) != n:
                raise ValueError("truncated field")
            pos += n
        else:
            raise ValueError(f"unexpected wire type {wt}")
        out.append((num, v))
    return out


@dataclass
class DecodedSeries:
    labels: dict[str, str]
    samples: list[tuple[bytes, str]]  # (raw_profile, ID)


def decode_push_request(body: bytes) -> list[DecodedSeries]:
    series = []
    for num, v in _fields(body):
        if num != 1:
            raise ValueError(f"unknown PushRequest field {num}")
        labels: dict[str, str] = {}
        samples = []
        for n2, v2 in _fields(v):
            if n2 == 1:
                kv = dict(_fields(v2))
                labels[kv.get(1, b"").decode()] = kv.get(2, b"").decode()
            elif n2 == 2:
                sv = dict(_fields(v2))
                samples.append((sv.get(1, b""), sv.get(2, b"").decode()))
        series.append(DecodedSeries(labels, samples))
    return series


@dataclass
class PyroRequest:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    status: int = 0
    series: list[DecodedSeries] = field(default_factory=list)
    received_at: float = field(default_factory=time.monotonic)


class PyroscopeReceiver:
    def __init__(
        self,
        *,
        push_available: bool = True,
        unavailable_status: int = 404,
        push_statuses: Sequence[int] = (),
        ingest_statuses: Sequence[int] = (),
        retry_after: Optional[str] = None,
        fault: Optional[str] = None,
        trickle_interval: float = 0.2,
    ) -> None:
        self.fault = fault
        self.trickle_interval = trickle_interval
        self._stopping = threading.Event()
        self.push_available = push_available
        self.unavailable_status = unavailable_status
        self.push_statuses = list(push_statuses)
        self.ingest_statuses = list(ingest_statuses)
        self.retry_after = retry_after
        self.requests: list[PyroRequest] = []
        self._n = {"push": 0, "ingest": 0}
        self._cond = threading.Condition()
        self._server: Optional[ThreadingHTTPServer] = None

    def start(self) -> "PyroscopeReceiver":
        rx = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                rx._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "PyroscopeReceiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        rec = PyroRequest(parts.path, query, {k.lower(): v for k, v in h.headers.items()}, body)
        if rec.headers.get("content-encoding") == "gzip":
            rec.body = gzip.decompress(body)
        ctype, payload = "application/json", b"{}"
        if parts.path == "/push.v1.PusherService/Push":
            with self._cond:
                nth = self._n["push"]
                self._n["push"] += 1
            if not self.push_available:
                status = self.unavailable_status
                payload = b'{"code":"unimplemented","message":"no push here"}'
            else:
                status = self.push_statuses[nth] if nth < len(self.push_statuses) else 200
                if status == 200:
                    try:
                        rec.series = decode_push_request(rec.body)
                        ctype, payload = "application/proto", b""
                    except (ValueError, IndexError) as exc:
                        status, payload = 400, f'{{"code":"invalid_argument","message":"{exc}"}}'.encode()
        elif parts.path == "/ingest":
            with self._cond:
                nth = self._n["ingest"]
                self._n["ingest"] += 1
            status = self.ingest_statuses[nth] if nth < len(self.ingest_statuses) else 200
            payload = b""
        else:
            status = 404
        rec.status = status
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()
        if self.fault is not None:
            h.close_connection = True
            if self.fault == "hang":
                self._stopping.wait()
                return
            head = f"HTTP/1.1 {status} OK\r\nContent-Length: 0\r\nX-Pad: {'a' * 64}\r\n\r\n".encode()
            try:
                for i in range(len(head)):
                    if self._stopping.wait(self.trickle_interval):
                        return
                    h.wfile.write(head[i:i + 1])
                    h.wfile.flush()
            except OSError:
                pass
            return
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(payload)))
        if status >= 400 and self.retry_after is not None:
            h.send_header("Retry-After", self.retry_after)
        h.end_headers()
        h.wfile.write(payload)

    # ---------------------------------------------------------------- results
    def accepted(self, path: str) -> list[PyroRequest]:
        with self._cond:
            return [r for r in self.requests if r.path == path and 200 <= r.status < 300]

    def series(self) -> list[DecodedSeries]:
        return [s for r in self.accepted("/push.v1.PusherService/Push") for s in r.series]

    def wait_for(self, n: int, timeout: float = 10.0, path: Optional[str] = None) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len([r for r in self.requests if path is None or r.path == path]) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True
