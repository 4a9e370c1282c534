"""A test OTLP/HTTP profiles receiver (project-owned; no network beyond 127.0.0.1).

    with OTLPReceiver(statuses=[503, 503, 200], retry_after="1") as rx:
        profiler = Profiler(exporter="otlp", endpoint=rx.url)
        ...
        assert rx.wait_for(1, timeout=5)
        req = rx.accepted[0].message          # ExportProfilesServiceRequest

Behaviour:

* ``POST <path>`` (default ``/v1development/profiles``) with a binary
  ``ExportProfilesServiceRequest``; ``Content-Encoding: gzip`` is honoured.
  Other paths answer 404, other methods 405 (both recorded, ``message`` None).
* ``statuses``: the status of the 1st, 2nd ... request; once exhausted,
  ``default_status`` (200).  ``retry_after``: a ``Retry-After`` value (str/int)
  sent with every non-2xx answer, or a list aligned with ``statuses`` (``None``
  entries send no header).  ``delay``: seconds to wait before answering (a number,
  or a list aligned with the requests).
* ``partial_success=(rejected_profiles, error_message)`` puts an
  ``ExportProfilesPartialSuccess`` into 2xx answers.
* ``respond``: optional ``callable(ReceivedRequest) -> (status, headers, body) | None``
  that overrides everything above for one request when it returns a tuple.
* A body that does not parse answers 400 (``parse_error`` is set on the record).
* Every request is recorded in ``requests`` (``accepted`` = those answered 2xx
  that parsed); ``wait_for(n, timeout)`` waits for ``n`` recorded requests
  (``accepted_only=True``: ``n`` accepted ones).

Faults (``fault=``, or ``set_fault(...)`` while running; ``None`` = answer normally):

* ``"trickle"``: a valid answer (status, headers, a padding header) written one
  byte every ``trickle_interval`` seconds, so it takes far longer than any deadline;
* ``"trickle-body"``: the status and headers at once, then the body one byte at a time;
* ``"hang"``: read the request, never answer (until the receiver stops);
* ``"reset"``: read the request, then close with a TCP reset (no answer);
* ``"garbage"``: answer bytes that are not HTTP, then close;
* ``"huge"``: 200 with an endless body (``Transfer-Encoding: chunked``), until the client goes.

A request is ``acked`` only when its whole answer was written to a client that was
still waiting for it: ``acked`` requests are the ones the sender can know were
delivered (a client that gave up on a hung, slow or trickled answer never acks).  An
outage is ``stop()`` then ``start()`` again on the same ``port``.
"""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional, Sequence, Union

from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

__all__ = ["OTLPReceiver", "ReceivedRequest", "PROFILES_PATH"]

PROFILES_PATH = "/v1development/profiles"

Delay = Union[float, Sequence[float]]
RetryAfter = Union[None, str, int, Sequence[Union[None, str, int]]]


@dataclass
class ReceivedRequest:
    index: int  # 0-based arrival order
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    raw_body: bytes  # as sent (maybe gzip)
    body: bytes = b""  # decompressed
    message: Optional[svc.ExportProfilesServiceRequest] = None
    parse_error: str = ""
    status: int = 0  # what we answered
    received_at: float = field(default_factory=time.monotonic)
    fault: Optional[str] = None  # the fault mode it met
    acked: bool = False  # the whole answer was written to a client still reading

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300 and self.message is not None

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


class OTLPReceiver:
    def __init__(
        self,
        statuses: Sequence[int] = (),
        *,
        default_status: int = 200,
        retry_after: RetryAfter = None,
        partial_success: Optional[tuple[int, str]] = None,
        delay: Delay = 0.0,
        respond: Optional[Callable[[ReceivedRequest], Optional[tuple[int, dict[str, str], bytes]]]] = None,
        path: str = PROFILES_PATH,
        host: str = "127.0.0.1",
        port: int = 0,
        fault: Optional[str] = None,
        trickle_interval: float = 0.2,
    ) -> None:
        self.statuses = list(statuses)
        self.default_status = default_status
        self.retry_after = retry_after
        self.partial_success = partial_success
        self.delay = delay
        self.respond = respond
        self.path = path
        self.host = host
        self.bind_port = port  # 0 = any free port; set to restart a receiver on a known port
        self.requests: list[ReceivedRequest] = []
        self._cond = threading.Condition()
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._count = 0  # requests to the profiles path, for the status sequence
        self.fault = fault
        self.trickle_interval = trickle_interval
        self._stopping = threading.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "OTLPReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                receiver._handle(self)

            def finish(self) -> None:  # the client may be gone (faults): no traceback
                try:
                    super().finish()
                except OSError:
                    pass

            def do_GET(self) -> None:
                receiver._handle(self)

            do_PUT = do_GET

        self._stopping.clear()
        server = ThreadingHTTPServer((self.host, self.bind_port), Handler)
        server.daemon_threads = True
        self.bind_port = server.server_address[1]  # a restart after an outage comes back on the same port
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="otlp-test-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # hung answers end (without an answer)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "OTLPReceiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ addresses
    @property
    def port(self) -> int:
        assert self._server is not None, "receiver not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The full profiles URL (what ``endpoint=`` takes)."""
        return self.base_url + self.path

    # ------------------------------------------------------------------ results
    @property
    def accepted(self) -> list[ReceivedRequest]:
        with self._cond:
            return [r for r in self.requests if r.accepted]

    @property
    def messages(self) -> list[svc.ExportProfilesServiceRequest]:
        """Parsed bodies of the accepted requests."""
        return [r.message for r in self.accepted if r.message is not None]

    def profiles(self) -> list[Any]:
        """Every ``Profile`` message in the accepted requests, in order."""
        out = []
        for m in self.messages:
            for rp in m.resource_profiles:
                for sp in rp.scope_profiles:
                    out.extend(sp.profiles)
        return out

    def wait_for(self, n: int, timeout: float = 5.0, *, accepted_only: bool = False) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                have = sum(1 for r in self.requests if r.accepted) if accepted_only else len(self.requests)
                if have >= n:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)

    def set_fault(self, fault: Optional[str]) -> None:
        with self._cond:
            self.fault = fault

    @property
    def acked(self) -> list[ReceivedRequest]:
        with self._cond:
            return [r for r in self.requests if r.acked and r.accepted]

    def acked_ids(self) -> list[str]:
        """Our profile ids in the acked requests (CPU + wall share one id), in order."""
        out = []
        for r in self.acked:
            assert r.message is not None
            for rp in r.message.resource_profiles:
                for sp in rp.scope_profiles:
                    out.extend(p.profile_id.hex() for p in sp.profiles[::2])
        return out

    def reset(self, statuses: Optional[Sequence[int]] = None) -> None:
        """Forget recorded requests (and optionally set a new status sequence)."""
        with self._cond:
            self.requests.clear()
            self._count = 0
            if statuses is not None:
                self.statuses = list(statuses)

    # ------------------------------------------------------------------ handling
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length > 0 else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        with self._cond:
            rec = ReceivedRequest(index=len(self.requests), method=h.command, path=h.path.split("?", 1)[0],
                                  headers=headers, raw_body=raw)
            nth = self._count if (rec.method == "POST" and rec.path == self.path) else -1
            if nth >= 0:
                self._count += 1

        status, extra, body = self._decide(rec, nth)

        delay = self._pick(self.delay, nth, 0.0) if nth >= 0 else 0.0
        if delay:
            time.sleep(float(delay))

        with self._cond:
            fault = rec.fault = self.fault if nth >= 0 else None
        rec.status = status
        with self._cond:
            self.requests.append(rec)
            self._cond.notify_all()
        if fault is not None:
            self._misbehave(h, rec, fault, status, body)
            return
        # set before the answer goes out (the client may read it and go on at once);
        # a client that gave up on a slow answer has closed its side already
        rec.acked = _still_connected(h.connection)
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/x-protobuf")
            h.send_header("Content-Length", str(len(body)))
            for k, v in extra.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body)
            h.wfile.flush()
        except OSError:  # client went away (timeout tests)
            rec.acked = False

    def _misbehave(self, h: BaseHTTPRequestHandler, rec: ReceivedRequest, fault: str, status: int,
                   body: bytes) -> None:
        h.close_connection = True
        rec.status = 0 if fault in ("hang", "reset", "garbage") else rec.status
        try:
            if fault == "hang":
                self._stopping.wait()
            elif fault == "reset":
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                h.connection.close()
            elif fault == "garbage":
                h.wfile.write(b"\x00\x13\x37NOT-HTTP\xff\xfe garbage\r\n\r\n")
                h.wfile.flush()
            elif fault in ("trickle", "trickle-body"):
                head = (f"HTTP/1.1 {status} OK\r\nContent-Type: application/x-protobuf\r\n"
                        f"Content-Length: {len(body) + 64}\r\nX-Pad: {'a' * 64}\r\n\r\n").encode()
                data = head + body + b"\x00" * 64  # (a padded body: long enough to outlast any deadline)
                if fault == "trickle-body":
                    h.wfile.write(head)
                    h.wfile.flush()
                    data = body + b"\x00" * 64
                for i in range(len(data)):
                    if self._stopping.wait(self.trickle_interval) or not _still_connected(h.connection):
                        return
                    if i == len(data) - 1:
                        rec.acked = True  # (before the last byte: the client may go on at once)
                    h.wfile.write(data[i:i + 1])
                    h.wfile.flush()
            elif fault == "huge":
                h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n")
                chunk = b"%x\r\n" % (64 * 1024) + b"\x01" * (64 * 1024) + b"\r\n"
                while not self._stopping.is_set():
                    h.wfile.write(chunk)
            else:
                raise ValueError(f"unknown fault {fault!r}")
        except OSError:  # the client gave up: exactly what these modes provoke
            rec.acked = False

    def _decide(self, rec: ReceivedRequest, nth: int) -> tuple[int, dict[str, str], bytes]:
        if nth < 0:
            return (404 if rec.method == "POST" else 405), {}, b""
        body = rec.raw_body
        if rec.header("content-encoding").lower() == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError) as exc:
                rec.parse_error = f"bad gzip: {exc!r}"
        rec.body = body
        if not rec.parse_error:
            msg = svc.ExportProfilesServiceRequest()
            try:
                msg.ParseFromString(body)
                rec.message = msg
            except Exception as exc:  # google.protobuf.message.DecodeError
                rec.parse_error = f"bad protobuf: {exc!r}"

        if self.respond is not None:
            custom = self.respond(rec)
            if custom is not None:
                return custom
        if rec.message is None:
            return 400, {}, _status_body(rec.parse_error)

        status = self.statuses[nth] if nth < len(self.statuses) else self.default_status
        extra: dict[str, str] = {}
        if 200 <= status < 300:
            resp = svc.ExportProfilesServiceResponse()
            if self.partial_success is not None:
                rejected, message = self.partial_success
                resp.partial_success.rejected_profiles = rejected
                resp.partial_success.error_message = message
            return status, extra, resp.SerializeToString()
        ra = self._pick(self.retry_after, nth, None)
        if ra is not None:
            extra["Retry-After"] = str(ra)
        return status, extra, _status_body(f"test receiver answered {status}")

    @staticmethod
    def _pick(value: Any, nth: int, default: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return value[nth] if nth < len(value) else default
        return value


def _still_connected(conn: socket.socket) -> bool:
    """Before writing (more of) an answer: is the client still there (not closed or reset)?"""
    try:
        conn.setblocking(False)
        try:
            data = conn.recv(1, socket.MSG_PEEK)
            return data != b""  # b"": the client closed its side
        except BlockingIOError:
            return True  # nothing to read, still open
        finally:
            conn.setblocking(True)
    except OSError:
        return False


def _status_body(message: str) -> bytes:
    """A ``google.rpc.Status`` (field 2 = message) as OTLP error bodies are."""
    data = message.encode()
    out = bytearray(b"\x12")
    n = len(data)
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            break
    return bytes(out) + data
