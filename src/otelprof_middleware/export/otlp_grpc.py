"""OTLP/gRPC exporter (``protocol="grpc"``, extra ``[grpc]``): unary
``opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export``,
default port 4317, gzip compression, headers sent as metadata.

TLS, as the OTLP specification says: an ``https://`` endpoint always uses TLS
(with the system roots or ``certificate``, a PEM CA bundle) and an ``http://``
endpoint never does; ``insecure`` only decides for an endpoint without a scheme.
Retryable status codes follow the OTLP specification ("Failures" in the OTLP
protocol document); ``google.rpc.RetryInfo`` in the status details sets the delay
before the retry.  The request body is the one OTLP/HTTP sends (:mod:`._otlp`).

Each call carries the attempt's whole time as its gRPC deadline (which bounds
connecting, sending and the answer together), answers larger than 4 MiB are
refused by the channel (``grpc.max_receive_message_length``), and
:meth:`~OTLPGRPCExporter.interrupt` (shutdown) cancels the call in flight.  The
channel reconnects at most a second apart, so a collector that is back is used at
once (grpcio's default reconnect backoff grows to two minutes)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Mapping, Optional, Sequence, Union
from urllib.parse import urlsplit

from .._redact import Scrubber
from ..encoding._protowire import iter_fields
from ..profile import Profile
from ._http import MAX_RESPONSE_BYTES
from ._otlp import encode_request, partial_success
from .base import NetworkExporter, Prepared
from .resource import refresh_pid, resource_attributes
from .retry import Attempt, RetryPolicy, interrupted
from .settings import OTLPTarget

__all__ = ["OTLPGRPCExporter", "EXPORT_METHOD", "parse_retry_info", "grpc_target"]

log = logging.getLogger("otelprof_middleware")

EXPORT_METHOD = "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"

# grpc.StatusCode names the OTLP specification lists as retryable
RETRYABLE_CODES = frozenset({"CANCELLED", "DEADLINE_EXCEEDED", "ABORTED", "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"})


def parse_retry_info(status_details: Optional[bytes]) -> Optional[float]:
    """``RetryInfo.retry_delay`` in seconds from a serialized ``google.rpc.Status``
    (the ``grpc-status-details-bin`` trailer), or None."""
    if not status_details:
        return None
    try:
        for num, _wt, value in iter_fields(status_details):
            if num != 3 or not isinstance(value, bytes):  # Status.details (Any)
                continue
            type_url, payload = "", b""
            for n2, _wt, v2 in iter_fields(value):
                if n2 == 1 and isinstance(v2, bytes):
                    type_url = v2.decode("utf-8", "replace")
                elif n2 == 2 and isinstance(v2, bytes):
                    payload = v2
            if type_url != RETRY_INFO_TYPE:
                continue
            seconds = nanos = 0
            for n3, _wt, v3 in iter_fields(payload):
                if n3 == 1 and isinstance(v3, bytes):  # retry_delay (Duration)
                    for n4, _wt, v4 in iter_fields(v3):
                        if n4 == 1 and isinstance(v4, int):
                            seconds = v4
                        elif n4 == 2 and isinstance(v4, int):
                            nanos = v4
            return max(0.0, seconds + nanos / 1e9)
    except (ValueError, IndexError):
        return None
    return None


def grpc_target(endpoint: str, insecure: bool = False) -> tuple[str, bool]:
    """``(host:port, tls)`` for a gRPC endpoint (default port 4317).  ``https://``
    means TLS and ``http://`` plaintext whatever ``insecure`` says; without a scheme,
    TLS unless ``insecure``."""
    has_scheme = "://" in endpoint
    parts = urlsplit(endpoint if has_scheme else "//" + endpoint)
    host = parts.hostname or "localhost"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port or 4317
    scheme = parts.scheme.lower()
    tls = scheme == "https" if has_scheme else not insecure
    return f"{host}:{port}", tls


class OTLPGRPCExporter(NetworkExporter):
    name = "otlp"

    def __init__(self, target: OTLPTarget, *, resource: Optional[Mapping[str, Union[str, int]]] = None,
                 max_request_bytes: int = 4 * 1024 * 1024, retry_policy: Optional[RetryPolicy] = None) -> None:
        try:
            import grpc  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("protocol='grpc' needs grpcio: pip install 'otelprof-middleware[grpc]'") from exc
        super().__init__(max_request_bytes=max_request_bytes, retry_policy=retry_policy)
        self.endpoint = target.endpoint
        self.target, self.tls = grpc_target(target.endpoint, target.insecure)
        self.destination = ("https://" if self.tls else "http://") + self.target  # the scheme says TLS or not
        self.certificate = target.certificate
        self.gzip = target.compression == "gzip"
        self.metadata = tuple((k.lower(), v) for k, v in target.headers.items())
        self.scrub = Scrubber(target.headers.values())
        self.resource = dict(resource) if resource is not None else resource_attributes()
        self._channel: Any = None
        self._call: Any = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._in_flight: Any = None  # the call's future, for interrupt()
        self._interrupted = False

    def _stub(self) -> Any:
        import grpc

        if self._pid != os.getpid():
            self.after_fork()
        if self._call is None:
            options = [("grpc.max_send_message_length", max(self.max_request_bytes * 2, 4 * 1024 * 1024)),
                       ("grpc.max_receive_message_length", MAX_RESPONSE_BYTES),
                       ("grpc.enable_retries", 0),
                       # the channel's own reconnect backoff (up to 120 s by default) would
                       # fail calls fast long after the collector is back; the exporter paces
                       # its retries itself (backoff, probes)
                       ("grpc.initial_reconnect_backoff_ms", 250),
                       ("grpc.min_reconnect_backoff_ms", 250),
                       ("grpc.max_reconnect_backoff_ms", 1000)]
            if self.tls:
                root = None
                if self.certificate:
                    with open(self.certificate, "rb") as f:
                        root = f.read()
                creds = grpc.ssl_channel_credentials(root_certificates=root)
                self._channel = grpc.secure_channel(self.target, creds, options=options)
            else:
                self._channel = grpc.insecure_channel(self.target, options=options)
            # bytes in, bytes out: the request is already serialized
            self._call = self._channel.unary_unary(EXPORT_METHOD)
        return self._call

    def encode(self, profiles: Sequence[Profile]) -> tuple[int, Any]:
        raw = encode_request(profiles, self.resource)
        return len(raw), raw

    def wrap(self, profiles: list[Profile], state: Any) -> Prepared:
        return Prepared(profiles=profiles, body=state, size=len(state))

    def send(self, prepared: Prepared, timeout: float) -> Attempt:
        import grpc

        kwargs: dict[str, Any] = {"timeout": max(timeout, 0.0), "metadata": self.metadata or None}
        if self.gzip:
            kwargs["compression"] = grpc.Compression.Gzip
        with self._lock:
            if self._interrupted:
                return interrupted()
            future = self._in_flight = self._stub().future(prepared.body, **kwargs)
        started = time.monotonic()
        try:
            response = future.result()
        except grpc.FutureCancelledError:
            return interrupted()
        except grpc.RpcError as exc:
            if self._interrupted:
                return interrupted()
            # DEADLINE_EXCEEDED is "the attempt itself was a wait" only when the deadline
            # really ran out; a server answering it at once gets the whole backoff
            return self._classify(exc, deadline_reached=time.monotonic() - started >= 0.9 * kwargs["timeout"])
        finally:
            with self._lock:
                self._in_flight = None
        partial, _warning = partial_success(response or b"", prepared.count)
        return partial if partial is not None else Attempt(ok=True)

    def probe_address(self) -> tuple[str, int]:
        host, _, port = self.target.rpartition(":")
        return host.strip("[]"), int(port)

    def interrupt(self) -> None:
        """Shutdown: cancel the call in flight; every later one fails at once."""
        with self._lock:
            self._interrupted = True
            future = self._in_flight
        if future is not None:
            future.cancel()

    def _classify(self, exc: Any, deadline_reached: bool = True) -> Attempt:
        try:
            code = exc.code()
            name = code.name if code is not None else "UNKNOWN"
        except Exception:
            name = "UNKNOWN"
        try:
            details = exc.details() or ""
        except Exception:
            details = ""
        delay = None
        try:
            for key, value in exc.trailing_metadata() or ():
                if key == "grpc-status-details-bin":
                    delay = parse_retry_info(value if isinstance(value, bytes) else None)
        except Exception:
            delay = None
        message = f"gRPC {name}" + (f": {self.scrub(details)}" if details else "")
        retryable = name in RETRYABLE_CODES or (name == "RESOURCE_EXHAUSTED" and delay is not None)
        return Attempt(ok=False, retryable=retryable, retry_after=delay, message=message, status="gRPC " + name,
                       timed_out=name == "DEADLINE_EXCEEDED" and deadline_reached)

    def after_fork(self) -> None:
        # never close the parent's channel from the child
        refresh_pid(self.resource)
        self._channel = None
        self._call = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._in_flight = None
        self._interrupted = False

    def shutdown(self) -> None:
        ch, self._channel, self._call = self._channel, None, None
        if ch is not None and self._pid == os.getpid():
            try:
                ch.close()
            except Exception:  # pragma: no cover
                pass
