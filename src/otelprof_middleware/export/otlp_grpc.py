"""OTLP/gRPC exporter (``protocol="grpc"``, extra ``[grpc]``): unary
``opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export``,
default port 4317, gzip compression, headers sent as metadata.

TLS: ``http://`` endpoints and ``insecure=True`` use a plaintext channel;
``https://`` endpoints use TLS with the system roots or ``certificate`` (a PEM CA
bundle).  Retryable status codes follow the OTLP specification (formats.md §1.8);
``google.rpc.RetryInfo`` in the status details sets the delay before the retry."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Optional, Sequence
from urllib.parse import urlsplit

from .base import NetworkExporter, Prepared
from .otlp_http import OTLPHTTPExporter, parse_export_response, rejected_to_profiles
from ..encoding._protowire import iter_fields
from .retry import Attempt

if TYPE_CHECKING:
    from ..config import Config
    from ..profile import Profile

__all__ = ["OTLPGRPCExporter", "EXPORT_METHOD", "parse_retry_info", "grpc_target"]

log = logging.getLogger("otelprof_middleware")

EXPORT_METHOD = "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export"
RETRY_INFO_TYPE = "type.googleapis.com/google.rpc.RetryInfo"

# grpc.StatusCode names (formats.md §1.8)
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


def grpc_target(endpoint: str) -> tuple[str, bool]:
    """``(host:port, tls)`` for a gRPC endpoint URL (default port 4317)."""
    parts = urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
    host = parts.hostname or "localhost"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port or 4317
    return f"{host}:{port}", parts.scheme == "https"


class OTLPGRPCExporter(NetworkExporter):
    name = "otlp"

    def __init__(self, config: "Config") -> None:
        try:
            import grpc  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("protocol='grpc' needs grpcio: pip install 'otelprof-middleware[grpc]'") from exc
        super().__init__(config)
        self.endpoint = config.endpoint
        self.target, tls = grpc_target(config.endpoint)
        self.tls = tls and not config.insecure
        self.certificate = config.certificate
        self.gzip = config.compression == "gzip"
        self.metadata = tuple((k.lower(), v) for k, v in config.headers.items())
        self._encoder = OTLPHTTPExporter(config)  # request encoding is shared with OTLP/HTTP
        self._channel: Any = None
        self._call: Any = None
        self._pid = os.getpid()

    def _stub(self) -> Any:
        import grpc

        if self._pid != os.getpid():
            self.after_fork()
        if self._call is None:
            options = [("grpc.max_send_message_length", max(self.max_request_bytes * 2, 4 * 1024 * 1024)),
                       ("grpc.enable_retries", 0)]
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

    def encode(self, profiles: Sequence["Profile"]) -> tuple[int, Any]:
        raw = self._encoder.encode_request(profiles)
        return len(raw), raw

    def wrap(self, profiles: list["Profile"], state: Any) -> Prepared:
        return Prepared(profiles=profiles, body=state, size=len(state))

    def send(self, prepared: Prepared, timeout: float) -> Attempt:
        import grpc

        kwargs: dict[str, Any] = {"timeout": timeout, "metadata": self.metadata or None}
        if self.gzip:
            kwargs["compression"] = grpc.Compression.Gzip
        try:
            response = self._stub()(prepared.body, **kwargs)
        except grpc.RpcError as exc:
            return self._classify(exc)
        rejected, message = parse_export_response(response or b"")
        if rejected:
            return Attempt(ok=True, rejected=rejected_to_profiles(rejected, prepared.count),
                           message=f"server rejected {rejected} OTLP profile(s): {message}", status="partial_success")
        return Attempt(ok=True)

    def _classify(self, exc: Any) -> Attempt:
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
        message = f"gRPC {name} from {self.target}" + (f": {details}" if details else "")
        retryable = name in RETRYABLE_CODES or (name == "RESOURCE_EXHAUSTED" and delay is not None)
        return Attempt(ok=False, retryable=retryable, retry_after=delay, message=message, status=name)

    def after_fork(self) -> None:
        # never close the parent's channel from the child
        self._encoder.after_fork()
        self._channel = None
        self._call = None
        self._pid = os.getpid()

    def shutdown(self) -> None:
        ch, self._channel, self._call = self._channel, None, None
        if ch is not None and self._pid == os.getpid():
            try:
                ch.close()
            except Exception:  # pragma: no cover
                pass
