"""OTLP/HTTP exporter: ``POST .../v1development/profiles`` with a binary
``ExportProfilesServiceRequest`` (gzip by default), using httpx.

A batch of profiles shares one dictionary in one request.  Retries, batching and
pacing are done by the pipeline (:mod:`.pipeline`, :mod:`.retry`); this module
only encodes, sends once and classifies the answer."""

from __future__ import annotations

import gzip
import logging
import os
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence

import httpx

from ..encoding import encode_otlp_request
from .base import SCOPE_NAME, SCOPE_VERSION, NetworkExporter, Prepared, resource_attributes
from .retry import Attempt, classify_http_status

if TYPE_CHECKING:
    from ..config import Config
    from ..profile import Profile

__all__ = ["OTLPHTTPExporter", "HTTPTransport", "parse_export_response"]

log = logging.getLogger("otelprof_middleware")


class HTTPTransport:
    """An httpx client made lazily, and again (without closing the parent's) after fork."""

    def __init__(self, *, verify: Any = True) -> None:
        self.verify = verify
        self._client: Optional[httpx.Client] = None
        self._pid = os.getpid()

    def client(self) -> httpx.Client:
        if self._pid != os.getpid():
            self.forget()
        if self._client is None:
            self._client = httpx.Client(verify=self.verify)
        return self._client

    def post(self, url: str, *, content: bytes, headers: Mapping[str, str], timeout: float,
             params: Optional[Mapping[str, str]] = None) -> "httpx.Response | Attempt":
        """The response, or a retryable/final :class:`Attempt` for a transport failure."""
        try:
            return self.client().post(url, content=content, headers=dict(headers), params=params,
                                      timeout=httpx.Timeout(timeout))
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return Attempt(ok=False, retryable=False, message=f"{url}: {exc}", status=type(exc).__name__)
        except httpx.TransportError as exc:  # connect/read/write errors, timeouts, disconnects
            return Attempt(ok=False, retryable=True, message=f"{url}: {type(exc).__name__} {exc}",
                           status=type(exc).__name__)

    def forget(self) -> None:
        self._client = None
        self._pid = os.getpid()

    def close(self) -> None:
        c, self._client = self._client, None
        if c is not None and self._pid == os.getpid():
            try:
                c.close()
            except Exception:  # pragma: no cover
                pass


def parse_export_response(body: bytes) -> tuple[int, str]:
    """``(rejected_profiles, error_message)`` of an ``ExportProfilesServiceResponse``
    (``(0, "")`` for an empty or unreadable body)."""
    if not body:
        return 0, ""
    from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
        ExportProfilesServiceResponse,
    )

    try:
        resp = ExportProfilesServiceResponse.FromString(body)
    except Exception:
        return 0, ""
    if not resp.HasField("partial_success"):
        return 0, ""
    return int(resp.partial_success.rejected_profiles), resp.partial_success.error_message


def otlp_profiles_per_input(request_size_hint: int = 0) -> int:
    """OTLP ``Profile`` messages per library profile (CPU + wall): the unit of
    ``rejected_profiles`` in a partial success."""
    return 2


def rejected_to_profiles(rejected_otlp: int, count: int) -> int:
    """Our profiles that lost data when the server rejected ``rejected_otlp`` OTLP
    profiles of a request holding ``count`` of ours (at least this many)."""
    if rejected_otlp <= 0:
        return 0
    per = otlp_profiles_per_input()
    return min(count, -(-rejected_otlp // per))


class OTLPHTTPExporter(NetworkExporter):
    name = "otlp"

    def __init__(self, config: "Config") -> None:
        super().__init__(config)
        self.endpoint = config.endpoint
        self.gzip = config.compression == "gzip"
        self.headers = {"Content-Type": "application/x-protobuf", **config.headers}
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.resource = resource_attributes(config)
        self.http = HTTPTransport(verify=config.certificate or True)
        self._warned = False

    def encode_request(self, profiles: Sequence["Profile"]) -> bytes:
        req = encode_otlp_request(profiles, resource_attributes=self.resource,
                                  scope_name=SCOPE_NAME, scope_version=SCOPE_VERSION)
        return req.SerializeToString()

    # compatibility with the first version of this exporter
    encode_bytes = encode_request

    def encode(self, profiles: Sequence["Profile"]) -> tuple[int, Any]:
        raw = self.encode_request(profiles)
        return len(raw), raw

    def wrap(self, profiles: list["Profile"], state: Any) -> Prepared:
        raw: bytes = state
        body = gzip.compress(raw, compresslevel=6) if self.gzip else raw
        return Prepared(profiles=profiles, body=body, size=len(raw))

    def send(self, prepared: Prepared, timeout: float) -> Attempt:
        resp = self.http.post(self.endpoint, content=prepared.body, headers=self.headers, timeout=timeout)
        if isinstance(resp, Attempt):
            return resp
        if 200 <= resp.status_code < 300:
            rejected, message = parse_export_response(resp.content)
            if rejected:
                return Attempt(ok=True, rejected=rejected_to_profiles(rejected, prepared.count),
                               message=f"server rejected {rejected} OTLP profile(s): {message}",
                               status="partial_success")
            if message and not self._warned:
                self._warned = True
                log.warning("otelprof: %s accepted profiles with a warning: %s", self.endpoint, message)
            return Attempt(ok=True)
        return classify_http_status(resp.status_code, resp.headers, self.endpoint)

    def after_fork(self) -> None:
        self.http.forget()
        if "process.pid" in self.resource:  # the resource was built in the parent
            self.resource["process.pid"] = os.getpid()

    def shutdown(self) -> None:
        self.http.close()
