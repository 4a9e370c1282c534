"""Grafana Pyroscope exporter (``exporter="pyroscope"``).

Sends each batch as one Connect ``POST {pyroscope_endpoint}/push.v1.PusherService/Push``
whose ``PushRequest`` (hand-encoded: no generated classes are shipped for it) holds
two series per profile, each one ``RawSample`` (a gzip'd pprof and a UUID):

* CPU: ``__name__="process_cpu"``, a pprof of ``cpu/nanoseconds`` with period type
  ``cpu/nanoseconds`` (``encode_pprof(kind="cpu")``), the profile type
  ``process_cpu:cpu:nanoseconds:cpu:nanoseconds``;
* wall: ``__name__="wall"``, ``wall/nanoseconds`` with period type
  ``wall/nanoseconds``: ``wall:wall:nanoseconds:wall:nanoseconds``.

Those are the names the OTLP path produces in Pyroscope too (see
:mod:`~otelprof_middleware.encoding.otlp`), so a Grafana panel works whichever
path delivered the data.  Samples carry ``span_id``/``trace_id``/``span_name``/
``http.route``/``thread_name`` labels.  Series labels: ``service_name`` and every
resource attribute as Pyroscope maps OTLP resources (dots become underscores:
``service.version`` -> ``service_version``; a name Pyroscope would reject is left
out), at most :data:`MAX_SERIES_LABELS` of them (Pyroscope accepts 30 label names
per series, sample labels included).

When the push API is unavailable (404, 415, 501 or Connect ``unimplemented``: an old
server or a proxy that only forwards ``/ingest``) the exporter switches to the legacy
``POST /ingest?format=pprof`` for good, one request per series, the labels in
``name=<service>{k=v,...}``.  Authentication: ``pyroscope_basic_auth``
(``user:password``), ``pyroscope_token`` (bearer) and ``pyroscope_tenant_id``
(``X-Scope-OrgID``), plus ``pyroscope_headers``.  The OTLP ``headers`` (often a
vendor's API key, from ``OTEL_EXPORTER_OTLP_HEADERS``) are never sent here.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
import zlib
from typing import Any, Mapping, Optional, Sequence

from .._redact import redact_url
from ..encoding import encode_pprof
from ..encoding._protowire import field_bytes
from ..profile import EXTRA_TYPES, Profile, clean_text
from ._http import HTTPTransport, Reply
from .base import NetworkExporter, Prepared
from .resource import refresh_pid, resource_attributes
from .retry import Attempt, RetryPolicy, classify_http_status
from .settings import PyroscopeTarget

__all__ = ["PyroscopeExporter", "encode_push_request", "series_labels", "pyroscope_label_name", "PUSH_PATH",
           "INGEST_PATH", "PROFILE_NAME", "WALL_PROFILE_NAME", "SERIES"]

log = logging.getLogger("otelprof_middleware")

PUSH_PATH = "/push.v1.PusherService/Push"
INGEST_PATH = "/ingest"
PROFILE_NAME = "process_cpu"
WALL_PROFILE_NAME = "wall"
#: (pprof kind, ``__name__``) of the series sent for each profile
SERIES = (("cpu", PROFILE_NAME), ("wall", WALL_PROFILE_NAME))
#: series sent only for profiles that measured them (``profile_types``), in Go's heap
#: and mutex shapes: ``memory:alloc_space:bytes:space:bytes``, ``mutex:delay:nanoseconds:contentions:count``
EXTRA_SERIES = (("memory", "memory"), ("mutex", "mutex"))
#: series labels we send at most (Pyroscope's default limit is 30 names per series; the
#: sample labels thread_name, span_name, http_route and its own come on top)
MAX_SERIES_LABELS = 24
SPY_NAME = "otelprof"  # not "pyspy": that makes the server rewrite function names
_PUSH_UNAVAILABLE = frozenset({404, 415, 501})
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.]*$")
# resource attributes first in line for a series label (the rest follow in resource order)
_FIRST = ("service.version", "deployment.environment.name", "deployment.environment", "service.namespace",
          "service.instance.id", "host.name")


def _has(profile: Profile, kind: str) -> bool:
    """Does ``profile`` have a value of this series' kind?"""
    if kind in ("cpu", "wall"):
        return any(getattr(smp, kind + "_ns") for smp in profile.samples)
    types = [t for t in profile.extra_types if EXTRA_TYPES.get(t, ("", ""))[1] == kind]
    return any(smp.values.get(t) for smp in profile.samples for t in types)


def _label(name: str, value: str) -> bytes:
    return field_bytes(1, clean_text(name).encode()) + field_bytes(2, clean_text(value).encode())


def pyroscope_label_name(key: str) -> Optional[str]:
    """The label name Pyroscope gives a resource attribute (dots become underscores,
    as its label sanitizer does), or None where it would reject the name."""
    if not _LABEL_RE.match(key):
        return None
    return key.replace(".", "_")


def series_labels(resource: Mapping[str, object], limit: int = MAX_SERIES_LABELS - 2) -> list[tuple[str, str]]:
    """Series labels for ``resource`` (without ``__name__``/``service_name``), as
    Pyroscope maps an OTLP resource: string and int values, names sanitized."""
    keys = [k for k in _FIRST if k in resource] + [k for k in resource if k not in _FIRST]
    out: list[tuple[str, str]] = []
    seen = {"__name__", "service_name"}
    for key in keys:
        value = resource[key]
        name = pyroscope_label_name(key)
        if key == "service.name" or name is None or name in seen or isinstance(value, (bool, float)):
            continue
        if not isinstance(value, (str, int)) or value == "":
            continue
        seen.add(name)
        out.append((name, clean_text(str(value))))
        if len(out) >= limit:
            break
    return out


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
                 retry_policy: Optional[RetryPolicy] = None,
                 resource: Optional[Mapping[str, Any]] = None) -> None:
        super().__init__(max_request_bytes=max_request_bytes, retry_policy=retry_policy)
        base = target.endpoint.rstrip("/")
        self.push_url = base + PUSH_PATH
        self.ingest_url = base + INGEST_PATH
        self.destination = redact_url(base)
        self.resource = dict(resource) if resource is not None else resource_attributes(target.service_name)
        self.service_name = clean_text(str(self.resource.get("service.name") or target.service_name))
        self.resource_labels = series_labels(self.resource)
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

    def series_labels(self, profile: Profile, name: str = PROFILE_NAME) -> list[tuple[str, str]]:
        return [("__name__", name), ("service_name", self.service_name)] + self.resource_labels

    # ---------------------------------------------------------------- encoding
    def encode(self, profiles: Sequence[Profile]) -> tuple[int, Any]:
        """Per profile: the (kind, raw pprof) of each series that has samples (the CPU
        series at least, so an idle profile still arrives)."""
        state = []
        for p in profiles:
            raws = [(kind, name, encode_pprof(p, compress=False, kind=kind)) for kind, name in SERIES + EXTRA_SERIES
                    if kind == "cpu" or _has(p, kind)]
            state.append(raws)
        size = sum(len(raw) + 128 for raws in state for _k, _n, raw in raws)
        return size, state

    def wrap(self, profiles: list[Profile], state: Any) -> Prepared:
        parts = [(p, name, _gzip(raw)) for p, raws in zip(profiles, state) for _kind, name, raw in raws]
        body = encode_push_request([(self.series_labels(p, name), gz, str(uuid.uuid4())) for p, name, gz in parts])
        return Prepared(profiles=profiles, body=body, size=sum(len(r) for raws in state for _k, _n, r in raws),
                        parts=parts)

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

    def _ingest_name(self) -> str:
        """``service{k=v,...}``: the series labels in the legacy API's name (values that
        its parser cannot hold are left out)."""
        pairs = [f"{k}={v}" for k, v in self.resource_labels if not set(v) & set(",{}=")]
        return self.service_name + ("{" + ",".join(pairs) + "}" if pairs else "")

    def _send_ingest(self, prepared: Prepared, deadline: float) -> Attempt:
        """One ``/ingest`` request per series (the server names it after its sample
        type: ``process_cpu`` or ``wall``), all before ``deadline``; a retry resumes
        after those delivered."""
        failed: set[int] = set()  # profiles with a series the server refused
        message = ""
        headers = {**self.headers, "Content-Type": "application/octet-stream"}
        name = self._ingest_name()
        while prepared.sent_parts < len(prepared.parts):
            profile, _series, gz = prepared.parts[prepared.sent_parts]
            start_s = profile.start_time_ns // 1_000_000_000
            until_s = -(-(profile.start_time_ns + profile.duration_ns) // 1_000_000_000)
            params = {"name": name, "from": str(start_s), "until": str(max(until_s, start_s + 1)),
                      "format": "pprof", "spyName": SPY_NAME}
            resp = self.http.post(self.ingest_url, content=gz, headers=headers, timeout=deadline - time.monotonic(),
                                  params=params)
            if not isinstance(resp, Reply):
                if resp.retryable or resp.reason == "shutdown":
                    return resp
                failed.add(id(profile))
                message = resp.message
            elif not 200 <= resp.status < 300:
                attempt = classify_http_status(resp.status, resp.headers, INGEST_PATH)
                if attempt.retryable:
                    return attempt
                failed.add(id(profile))
                message = attempt.message
            prepared.sent_parts += 1
        if failed:
            return Attempt(ok=True, rejected=len(failed), partial_reason="export_failed", message=message)
        return Attempt(ok=True)

    def after_fork(self) -> None:
        self.http.forget()
        refresh_pid(self.resource)
        self.resource_labels = series_labels(self.resource)  # process_pid changed

    def shutdown(self) -> None:
        self.http.close()
