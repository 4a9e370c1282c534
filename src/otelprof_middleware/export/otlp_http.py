"""OTLP/HTTP exporter: ``POST .../v1development/profiles`` with a binary
``ExportProfilesServiceRequest`` (gzip by default), through the shared HTTP
transport (:mod:`._http`: one deadline per attempt, a cap on the answer's size).

A batch of profiles shares one dictionary in one request.  Retries, batching and
pacing are done by the pipeline (:mod:`.channel`, :mod:`.retry`); this module
only encodes, sends once and classifies the answer."""

from __future__ import annotations

import gzip
import logging
from typing import Any, Mapping, Optional, Sequence, Union

from .._redact import redact_url
from .._safety import LogOnce
from ..profile import Profile
from ._http import HTTPTransport, Reply
from ._otlp import encode_request, partial_success
from .base import NetworkExporter, Prepared
from .resource import refresh_pid, resource_attributes
from .retry import Attempt, RetryPolicy, classify_http_status
from .settings import OTLPTarget

__all__ = ["OTLPHTTPExporter"]

log = logging.getLogger("otelprof_middleware")


class OTLPHTTPExporter(NetworkExporter):
    name = "otlp"

    def __init__(self, target: OTLPTarget, *, resource: Optional[Mapping[str, Union[str, int]]] = None,
                 max_request_bytes: int = 4 * 1024 * 1024, retry_policy: Optional[RetryPolicy] = None) -> None:
        super().__init__(max_request_bytes=max_request_bytes, retry_policy=retry_policy)
        self.endpoint = target.endpoint
        self.destination = redact_url(target.endpoint)
        self.gzip = target.compression == "gzip"
        self.headers = {"Content-Type": "application/x-protobuf", **target.headers}
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.resource = dict(resource) if resource is not None else resource_attributes()
        self.http = HTTPTransport(certificate=target.certificate, secrets=target.headers.values())
        self._log_once = LogOnce(log)

    def encode(self, profiles: Sequence[Profile]) -> tuple[int, Any]:
        raw = encode_request(profiles, self.resource)
        return len(raw), raw

    def wrap(self, profiles: list[Profile], state: Any) -> Prepared:
        raw: bytes = state
        body = gzip.compress(raw, compresslevel=6) if self.gzip else raw
        return Prepared(profiles=profiles, body=body, size=len(raw))

    def send(self, prepared: Prepared, timeout: float) -> Attempt:
        resp = self.http.post(self.endpoint, content=prepared.body, headers=self.headers, timeout=timeout)
        if not isinstance(resp, Reply):
            return resp
        if 200 <= resp.status < 300:
            if resp.truncated:  # accepted; a partial success we could not read is not one we can count
                self._log_once("truncated", "otelprof: %s answered with more than %d bytes; only the status is used",
                               self.destination, self.http.max_response_bytes)
                return Attempt(ok=True)
            partial, warning = partial_success(resp.body, prepared.count)
            if partial is not None:
                return partial
            if warning:
                self._log_once("warning", "otelprof: %s accepted profiles with a warning: %s",
                               self.destination, self.http.scrub(warning))
            return Attempt(ok=True)
        return classify_http_status(resp.status, resp.headers)

    def probe_address(self) -> tuple[str, int]:
        return self.http.probe_address(self.endpoint)

    def interrupt(self) -> None:
        self.http.interrupt()

    def after_fork(self) -> None:
        self.http.forget()
        refresh_pid(self.resource)

    def shutdown(self) -> None:
        self.http.close()
