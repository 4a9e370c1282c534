"""Grafana Pyroscope exporter (``exporter="pyroscope"``).

Sends each batch as one Connect ``POST {pyroscope_endpoint}/push.v1.PusherService/Push``
whose ``PushRequest`` (hand-encoded: no generated classes are shipped for it) holds
one series per profile: labels ``__name__="process_cpu"`` and ``service_name``, and
one ``RawSample`` with the gzip'd pprof (samples labelled ``span_id``/``trace_id``/
``span_name`` by :func:`~otelprof_middleware.encoding.encode_pprof`) and a UUID.

When the push API is unavailable (404, 415, 501 or Connect ``unimplemented``: an old
server or a proxy that only forwards ``/ingest``) the exporter switches to the legacy
``POST /ingest?format=pprof`` for good, one request per profile.  Authentication:
``pyroscope_basic_auth`` (``user:password``), ``pyroscope_token`` (bearer) and
``pyroscope_tenant_id`` (``X-Scope-OrgID``), plus ``pyroscope_headers``.  The OTLP
``headers`` (often a vendor's API key, from ``OTEL_EXPORTER_OTLP_HEADERS``) are
never sent here.
"""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
import zlib
from typing import Any, Optional, Sequence

from .._redact import redact_url
from ..encoding import encode_pprof
from ..encoding._protowire import field_bytes
from ..profile import Profile
from ._http import HTTPTransport, Reply
from .base import NetworkExporter, Prepared
from .retry import Attempt, RetryPolicy, classify_http_status
from .settings import PyroscopeTarget

__all__ = ["PyroscopeExporter", "encode_push_request", "PUSH_PATH", "INGEST_PATH", "PROFILE_NAME"]

log = logging.getLogger("otelprof_middleware")

PUSH_PATH = "/push.v1.PusherService/Push"
INGEST_PATH = "/ingest"
PROFILE_NAME = "process_cpu"
SPY_NAME = "otelprof"  # not "pyspy": that makes the server rewrite function names
_PUSH_UNAVAILABLE = frozenset({404, 415, 501})


def _label(name: str, value: str) -> bytes:
    return field_bytes(1, name.encode()) + field_bytes(2, value.encode("utf-8", "replace"))


def encode_push_request(series: Sequence[tuple[Sequence[tuple[str, str]], bytes, str]]) -> bytes:
    """A serialized ``push.v1.PushRequest``: ``series`` = ``[(labels, raw_profile, id)]``."""
    out = []
    for labels, raw_profile, sample_id in series:
        sample = field_bytes(1, raw_profile) + field_bytes(2, sample_id.encode())
        body = b"".join(field_bytes(1, _label(k, v)) for k, v in labels) + field_bytes(2, sample)
        out.append(field_bytes(1, body))
    return b"".join(out)


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()


class PyroscopeExporter(NetworkExporter):
    name = "pyroscope"

    def __init__(self, target: PyroscopeTarget, *, max_request_bytes: int = 4 * 1024 * 1024,
                 retry_policy: Optional[RetryPolicy] = None) -> None:
        super().__init__(max_request_bytes=max_request_bytes, retry_policy=retry_policy)
        base = target.endpoint.rstrip("/")
        self.push_url = base + PUSH_PATH
        self.ingest_url = base + INGEST_PATH
        self.destination = redact_url(base)
        self.service_name = target.service_name
        headers = dict(target.headers)
        if target.basic_auth:
            token = base64.b64encode(target.basic_auth.encode()).decode()
            headers["Authorization"] = "Basic " + token
        elif target.token:
            headers["Authorization"] = "Bearer " + target.token
        if target.tenant_id:
            headers["X-Scope-OrgID"] = target.tenant_id
        self.headers = headers
        self.mode = "push"
        secrets = [*target.headers.values(), target.basic_auth, target.token, headers.get("Authorization", "")]
        self.http = HTTPTransport(certificate=target.certificate, secrets=secrets)

    def series_labels(self, profile: Profile) -> list[tuple[str, str]]:
        return [("__name__", PROFILE_NAME), ("service_name", self.service_name)]

    # ---------------------------------------------------------------- encoding
    def encode(self, profiles: Sequence[Profile]) -> tuple[int, Any]:
        raws = [encode_pprof(p, compress=False) for p in profiles]
        return sum(len(r) for r in raws) + 128 * len(raws), raws

    def wrap(self, profiles: list[Profile], state: Any) -> Prepared:
        parts = [(p, _gzip(raw)) for p, raw in zip(profiles, state)]
        body = encode_push_request([(self.series_labels(p), gz, str(uuid.uuid4())) for p, gz in parts])
        return Prepared(profiles=profiles, body=body, size=sum(len(r) for r in state), parts=parts)

    # ---------------------------------------------------------------- sending
    def send(self, prepared: Prepared, timeout: float) -> Attempt:
        """One attempt within ``timeout`` seconds in all (the ``/ingest`` requests of a
        batch share it)."""
        deadline = time.monotonic() + timeout
        if self.mode == "push":
            headers = {**self.headers, "Content-Type": "application/proto", "Connect-Protocol-Version": "1"}
            resp = self.http.post(self.push_url, content=prepared.body, headers=headers, timeout=timeout)
            if not isinstance(resp, Reply):
                return resp
            if 200 <= resp.status < 300:
                return Attempt(ok=True)
            if not self._push_unavailable(resp):
                return classify_http_status(resp.status, resp.headers, PUSH_PATH)
            log.warning("otelprof: %s answered HTTP %d: push API unavailable, using %s from now on",
                        redact_url(self.push_url), resp.status, redact_url(self.ingest_url))
            self.mode = "ingest"
        return self._send_ingest(prepared, deadline)

    @staticmethod
    def _push_unavailable(resp: Reply) -> bool:
        if resp.status in _PUSH_UNAVAILABLE:
            return True
        if "json" in resp.headers.get("content-type", ""):
            try:
                return json.loads(resp.body or b"{}").get("code") == "unimplemented"
            except (ValueError, AttributeError):
                return False
        return False

    def probe_address(self) -> tuple[str, int]:
        return self.http.probe_address(self.push_url)

    def interrupt(self) -> None:
        self.http.interrupt()

    def _send_ingest(self, prepared: Prepared, deadline: float) -> Attempt:
        """One ``/ingest`` request per profile, all before ``deadline``; a retry
        resumes after those delivered."""
        failed = 0
        message = ""
        headers = {**self.headers, "Content-Type": "application/octet-stream"}
        while prepared.sent_parts < len(prepared.parts):
            profile, gz = prepared.parts[prepared.sent_parts]
            start_s = profile.start_time_ns // 1_000_000_000
            until_s = -(-(profile.start_time_ns + profile.duration_ns) // 1_000_000_000)
            params = {"name": self.service_name, "from": str(start_s), "until": str(max(until_s, start_s + 1)),
                      "format": "pprof", "spyName": SPY_NAME}
            resp = self.http.post(self.ingest_url, content=gz, headers=headers, timeout=deadline - time.monotonic(),
                                  params=params)
            if not isinstance(resp, Reply):
                if resp.retryable or resp.reason == "shutdown":
                    return resp
                failed += 1
                message = resp.message
            elif not 200 <= resp.status < 300:
                attempt = classify_http_status(resp.status, resp.headers, INGEST_PATH)
                if attempt.retryable:
                    return attempt
                failed += 1
                message = attempt.message
            prepared.sent_parts += 1
        if failed:
            return Attempt(ok=True, rejected=failed, partial_reason="export_failed", message=message)
        return Attempt(ok=True)

    def after_fork(self) -> None:
        self.http.forget()

    def shutdown(self) -> None:
        self.http.close()
