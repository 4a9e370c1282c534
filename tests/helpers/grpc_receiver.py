"""A test OTLP/gRPC profiles receiver on 127.0.0.1 (project-owned).

    with GRPCReceiver(codes=["UNAVAILABLE"], retry_delay=0.25) as rx:
        profiler = Profiler(exporter="otlp", protocol="grpc", endpoint=rx.url)
        ...
        assert rx.wait_for(2)
        req = rx.accepted[0].message      # ExportProfilesServiceRequest (opentelemetry-proto)

* ``codes``: the outcome of the 1st, 2nd ... call as ``grpc.StatusCode`` names
  ("OK" = accept); afterwards every call is accepted.
* ``retry_delay``: seconds put into a ``google.rpc.RetryInfo`` in the status details
  of failed calls (hand-encoded ``google.rpc.Status``), or None for no details.
* ``partial_success=(rejected, message)`` goes into accepted answers.
* ``block``: an Event; calls wait on it before answering (a receiver that hangs).
* ``port``: listen there (0 = any free port; an outage is ``stop()`` then a new
  receiver with ``port=`` the old one's).
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import grpc
from opentelemetry.proto.collector.profiles.v1development import profiles_service_pb2 as svc

__all__ = ["GRPCReceiver", "GRPCRequest", "status_details"]

SERVICE = "opentelemetry.proto.collector.profiles.v1development.ProfilesService"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num: int, data: bytes) -> bytes:
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def _vfield(num: int, value: int) -> bytes:
    return _varint(num << 3) + _varint(value) if value else b""


def status_details(code: int, message: str, retry_delay: Optional[float]) -> bytes:
    """A serialized ``google.rpc.Status`` with an optional ``RetryInfo`` detail."""
    out = _vfield(1, code) + _field(2, message.encode())
    if retry_delay is not None:
        seconds = int(retry_delay)
        nanos = int(round((retry_delay - seconds) * 1e9))
        duration = _vfield(1, seconds) + _vfield(2, nanos)
        retry_info = _field(1, duration)
        any_msg = _field(1, b"type.googleapis.com/google.rpc.RetryInfo") + _field(2, retry_info)
        out += _field(3, any_msg)
    return out


@dataclass
class GRPCRequest:
    index: int
    metadata: dict[str, str]
    message: svc.ExportProfilesServiceRequest
    code: str = "OK"
    received_at: float = field(default_factory=time.monotonic)

    @property
    def accepted(self) -> bool:
        return self.code == "OK"


class GRPCReceiver:
    def __init__(
        self,
        codes: Sequence[str] = (),
        *,
        retry_delay: Optional[float] = None,
        partial_success: Optional[tuple[int, str]] = None,
        block: Optional[threading.Event] = None,
        arrived: Optional[threading.Event] = None,
        port: int = 0,
    ) -> None:
        self.codes = list(codes)
        self.retry_delay = retry_delay
        self.partial_success = partial_success
        self.block = block
        self.arrived = arrived
        self.requests: list[GRPCRequest] = []
        self._cond = threading.Condition()
        self._server: Any = None
        self.port = port

    def _export(self, request: svc.ExportProfilesServiceRequest, context: Any) -> svc.ExportProfilesServiceResponse:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self._cond:
            nth = len(self.requests)
            code = self.codes[nth] if nth < len(self.codes) else "OK"
            rec = GRPCRequest(index=nth, metadata=md, message=request, code=code)
            self.requests.append(rec)
            self._cond.notify_all()
        if self.arrived is not None:
            self.arrived.set()
        if self.block is not None:
            self.block.wait()
        if code != "OK":
            status = getattr(grpc.StatusCode, code)
            if self.retry_delay is not None:
                context.set_trailing_metadata(
                    (("grpc-status-details-bin", status_details(status.value[0], "test", self.retry_delay)),))
            context.abort(status, f"test receiver answered {code}")
        resp = svc.ExportProfilesServiceResponse()
        if self.partial_success is not None:
            resp.partial_success.rejected_profiles = self.partial_success[0]
            resp.partial_success.error_message = self.partial_success[1]
        return resp

    def start(self) -> "GRPCReceiver":
        handler = grpc.method_handlers_generic_handler(SERVICE, {
            "Export": grpc.unary_unary_rpc_method_handler(
                self._export,
                request_deserializer=svc.ExportProfilesServiceRequest.FromString,
                response_serializer=svc.ExportProfilesServiceResponse.SerializeToString,
            )
        })
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers((handler,))
        wanted = self.port
        self.port = self._server.add_insecure_port(f"127.0.0.1:{wanted}")
        if not self.port or (wanted and self.port != wanted):  # (grpcio returns 0 when the port is taken)
            raise RuntimeError(f"the gRPC receiver could not listen on port {wanted}")
        self._server.start()
        return self

    def stop(self) -> None:
        if self.block is not None:
            self.block.set()
        if self._server is not None:
            self._server.stop(grace=0.5).wait(5)
            self._server = None

    def __enter__(self) -> "GRPCReceiver":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def accepted(self) -> list[GRPCRequest]:
        with self._cond:
            return [r for r in self.requests if r.accepted]

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True
