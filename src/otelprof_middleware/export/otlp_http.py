"""OTLP/HTTP exporter: ``POST .../v1development/profiles`` with a binary
``ExportProfilesServiceRequest`` (gzip by default), using httpx."""

from __future__ import annotations

import gzip
from typing import TYPE_CHECKING, Optional, Sequence

import httpx

from ..encoding import encode_otlp_request
from .base import SCOPE_NAME, SCOPE_VERSION, ExportResult, resource_attributes

if TYPE_CHECKING:
    from ..config import Config
    from ..profile import Profile

__all__ = ["OTLPHTTPExporter"]


class OTLPHTTPExporter:
    name = "otlp"

    def __init__(self, config: "Config") -> None:
        self.endpoint = config.endpoint
        self.gzip = config.compression == "gzip"
        self.timeout = config.export_timeout
        self.headers = {"Content-Type": "application/x-protobuf", **config.headers}
        if self.gzip:
            self.headers["Content-Encoding"] = "gzip"
        self.resource = resource_attributes(config)
        self.verify: bool | str = config.certificate or True
        self._client: Optional[httpx.Client] = None

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, verify=self.verify)
        return self._client

    def encode(self, profiles: Sequence["Profile"]) -> bytes:
        req = encode_otlp_request(profiles, resource_attributes=self.resource,
                                  scope_name=SCOPE_NAME, scope_version=SCOPE_VERSION)
        return req.SerializeToString()

    def export(self, profiles: Sequence["Profile"]) -> ExportResult:
        body = self.encode(profiles)
        if self.gzip:
            body = gzip.compress(body, compresslevel=6)
        try:
            resp = self._http().post(self.endpoint, content=body, headers=self.headers)
        except httpx.HTTPError as exc:
            return ExportResult(dropped=len(profiles), reason="export_failed", message=repr(exc))
        if 200 <= resp.status_code < 300:
            return ExportResult(exported=len(profiles))
        return ExportResult(dropped=len(profiles), reason="export_failed",
                            message=f"HTTP {resp.status_code} from {self.endpoint}")

    def shutdown(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
