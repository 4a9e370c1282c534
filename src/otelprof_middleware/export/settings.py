"""Typed settings of the export components, and the one place they are built from ``Config``.

``Config`` (58 options) is the front door: it loads and validates.  Each export
component takes only the small frozen slice it needs, so an exporter or the
pipeline can be built and tested on its own:

* :class:`~.retry.RetryPolicy`: attempt timeout, retry budget, backoff;
* :class:`BatchSettings`: queue bounds, batching and upload pacing (the pipeline);
* :class:`OTLPTarget`: where and how OTLP is sent (HTTP and gRPC);
* :class:`PyroscopeTarget`: where and how Pyroscope is pushed, with its own credentials.

The functions at the bottom build them from a ``Config``; nothing else in
``export/`` reads ``Config`` fields (the file exporter, owned by the local store,
still takes the ``Config``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping
from urllib.parse import urlsplit

from .._redact import redact_url
from ..config import ConfigError
from ..privacy import Privacy
from .resource import DEFAULT_SERVICE_NAME
from .resource import resource_attributes as _resource_attributes
from .retry import RetryPolicy

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["BatchSettings", "OTLPTarget", "PyroscopeTarget", "retry_policy", "batch_settings", "otlp_target",
           "pyroscope_target", "resource"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class BatchSettings:
    """How the export pipeline queues, batches and paces profiles."""

    queue_size: int = 1000  # profiles waiting, per exporter
    max_queue_bytes: int = 64 * _MIB  # estimated bytes waiting, per exporter
    batch_size: int = 10  # profiles per request (network exporters)
    batch_timeout: float = 5.0  # longest wait to fill a batch
    max_upload_rate: int = 0  # bytes/s per network exporter; 0 = unpaced


@dataclass(frozen=True)
class OTLPTarget:
    """Where OTLP profiles go.  ``endpoint`` is the full URL for HTTP and the
    collector address for gRPC.  ``insecure`` only matters to gRPC endpoints
    without a scheme (``https://`` always means TLS, ``http://`` never does)."""

    endpoint: str
    protocol: str = "http/protobuf"  # or "grpc"
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # values are credentials
    compression: str = "gzip"  # or "none"
    certificate: str = ""  # CA bundle (PEM) for TLS
    insecure: bool = False


@dataclass(frozen=True)
class PyroscopeTarget:
    """Where Pyroscope profiles go, with Pyroscope's own credentials (never OTLP's)."""

    endpoint: str = "http://localhost:4040"
    service_name: str = DEFAULT_SERVICE_NAME
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    basic_auth: str = field(default="", repr=False)  # "user:password"
    token: str = field(default="", repr=False)  # bearer token
    tenant_id: str = ""  # X-Scope-OrgID
    certificate: str = ""


# --------------------------------------------------------------------------- from Config


def retry_policy(config: "Config") -> RetryPolicy:
    return RetryPolicy(export_timeout=config.export_timeout, retry_timeout=config.retry_timeout,
                       initial_backoff=config.retry_initial_backoff, max_backoff=config.retry_max_backoff)


def batch_settings(config: "Config") -> BatchSettings:
    return BatchSettings(queue_size=config.queue_size, max_queue_bytes=config.max_queue_bytes,
                         batch_size=config.batch_size, batch_timeout=config.batch_timeout,
                         max_upload_rate=config.max_upload_rate)


def otlp_target(config: "Config") -> OTLPTarget:
    """The OTLP target; a ``ConfigError`` when ``insecure`` was asked for an
    ``https://`` gRPC endpoint in our own options (the standard
    ``OTEL_EXPORTER_OTLP_INSECURE`` is ignored there, as the OTLP spec says)."""
    scheme = urlsplit(config.endpoint).scheme.lower() if "://" in config.endpoint else ""
    if config.protocol == "grpc" and config.insecure and scheme == "https":
        source = config.source_of("insecure")
        if not source.startswith("OTEL_"):
            raise ConfigError("insecure", True, "cannot be combined with the https:// endpoint "
                              f"{redact_url(config.endpoint)} (from {config.source_of('endpoint')}): https always "
                              "uses TLS; use an http:// endpoint for a plaintext connection",
                              "" if source == "keyword argument" else source)
    return OTLPTarget(endpoint=config.endpoint, protocol=config.protocol, headers=dict(config.headers),
                      compression=config.compression, certificate=config.certificate, insecure=config.insecure)


def pyroscope_target(config: "Config") -> PyroscopeTarget:
    """Pyroscope's target: its own headers and auth options only; the ``certificate``
    option applies unless it came from ``OTEL_EXPORTER_OTLP_*`` (meant for OTLP)."""
    certificate = "" if config.source_of("certificate").startswith("OTEL_") else config.certificate
    return PyroscopeTarget(endpoint=config.pyroscope_endpoint, service_name=config.service_name,
                           headers=dict(config.pyroscope_headers), basic_auth=config.pyroscope_basic_auth,
                           token=config.pyroscope_token, tenant_id=config.pyroscope_tenant_id,
                           certificate=certificate)


def resource(config: "Config") -> dict[str, str | int]:
    """The OpenTelemetry resource of this process for ``config``'s service (its
    string values pass ``redact_patterns``)."""
    return Privacy.from_config(config).resource(_resource_attributes(config.service_name, config.resource_attributes))
