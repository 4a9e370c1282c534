"""One typed, immutable configuration object for the whole library.

Every option can be given as a keyword argument, in a framework settings mapping
(Django ``OTELPROF = {...}``, Flask ``app.config["OTELPROF_*"]``) or as an
environment variable ``OTELPROF_<OPTION_UPPERCASE>``.  Precedence: keyword
arguments, then settings, then ``OTELPROF_*`` variables, then the standard
OpenTelemetry variables (``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_*`` ...),
then the defaults below.  Values are validated once, when the object is built;
a bad value raises :class:`ConfigError` naming the option, the value and what is
allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Optional
from urllib.parse import unquote

__all__ = ["Config", "ConfigError", "parse_duration", "parse_size"]

ENV_PREFIX = "OTELPROF_"
OTLP_PROFILES_PATH = "/v1development/profiles"
DEFAULT_OTLP_HTTP_ENDPOINT = "http://localhost:4318"
DEFAULT_OTLP_GRPC_ENDPOINT = "http://localhost:4317"
EXPORTER_NAMES = ("file", "otlp", "console", "pyroscope", "none")


class ConfigError(ValueError):
    """A configuration value is invalid.  The message names the option, the
    value and what is allowed, e.g. ``probability=1.5: must be a number from 0 to 1``."""

    def __init__(self, option: str, value: Any, allowed: str, source: str = "") -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid option {option}={value!r}{where}: {allowed}")


# --------------------------------------------------------------------------- parsers

_DURATION_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.I)
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": 1024**2, "gb": 1000**3, "gib": 1024**3,
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_duration(value: Any) -> float:
    """Seconds as a float from a number (seconds) or a string like ``"250ms"``, ``"5s"``, ``"5m"``."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        m = _DURATION_RE.match(value)
        if not m:
            raise ValueError("not a duration")
        result = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    else:
        raise ValueError("not a duration")
    if not math.isfinite(result) or result < 0:
        raise ValueError("not a duration")
    return result


def parse_size(value: Any) -> int:
    """Bytes from an int or a string like ``"4MiB"``, ``"512kb"``."""
    if isinstance(value, bool):
        raise ValueError("not a size")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float) and value.is_integer():
        result = int(value)
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        if not m:
            raise ValueError("not a size")
        result = int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()])
    else:
        raise ValueError("not a size")
    if result < 0:
        raise ValueError("not a size")
    return result


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    raise ValueError("not a boolean")


def parse_key_values(value: Any) -> dict[str, str]:
    """``k1=v1,k2=v2`` (URL-encoded values, as in ``OTEL_RESOURCE_ATTRIBUTES``) or a mapping."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if not isinstance(value, str):
        raise ValueError("not key=value pairs")
    result: dict[str, str] = {}
    for part in value.split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ValueError("not key=value pairs")
        k, v = part.split("=", 1)
        k = unquote(k.strip())
        if not k:
            raise ValueError("not key=value pairs")
        result[k] = unquote(v.strip())
    return result


def _parse_url_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items = [p.strip() for p in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = [str(p).strip() for p in value]
    else:
        raise ValueError("not a list")
    items = [p for p in items if p]
    for p in items:
        re.compile(p)  # raises re.error (not a ValueError: caught by _convert)
    return tuple(items)


# --------------------------------------------------------------------------- option specs


@dataclass(frozen=True)
class _Spec:
    kind: str  # bool, int, float, duration, size, str, choice, url, kv, urls, callable, exporters
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()
    optional: bool = False


def _opt(default: Any, kind: str, lo: float | None = None, hi: float | None = None,
         choices: tuple[str, ...] = (), optional: bool = False, doc: str = "") -> Any:
    meta = {"spec": _Spec(kind, lo, hi, choices, optional), "doc": doc}
    if default is dict:
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Config:
    """All options, with their defaults.  Build with :meth:`Config.load`."""

    # --- engine
    enabled: bool = _opt(True, "bool", doc="master switch; OTEL_SDK_DISABLED=true turns it off")
    service_name: str = _opt("", "str", doc="service.name; default OTEL_SERVICE_NAME or unknown_service:python")
    resource_attributes: Mapping[str, str] = _opt(dict, "kv",
                                                  doc="extra resource attributes (OTEL_RESOURCE_ATTRIBUTES)")
    sample_hz: int = _opt(100, "int", 1, 1000, doc="stack samples per second while a profile runs")
    max_stack_depth: int = _opt(128, "int", 8, 2048, doc="frames kept per sample (leaf frames and the root)")
    max_profile_duration: float = _opt(30.0, "duration", 0.01, 3600, doc="hard cap on one profile's length")
    max_samples: int = _opt(10000, "int", 10, 10_000_000, doc="hard cap on sampler ticks per profile")
    min_samples: int = _opt(1, "int", 0, 1000, doc="profiles with fewer samples are not exported")

    # --- export
    exporter: tuple[str, ...] = _opt((), "exporters", doc="file, otlp, console, pyroscope, none (comma list)")
    output_dir: str = _opt("profiles", "str", doc="folder of the file exporter")
    max_files: int = _opt(1000, "int", 1, 10_000_000, doc="file exporter retention: number of profiles")
    max_bytes: int = _opt(256 * 1024 * 1024, "size", 1024, None, doc="file exporter retention: total bytes")
    retention: Mapping[str, str] = _opt(dict, "kv", doc="file exporter per-class quotas, e.g. "
                                        "'probability=1000,slow=500,error=500,header=200'")
    endpoint: str = _opt("", "url", optional=True, doc="full OTLP profiles URL")
    protocol: str = _opt("http/protobuf", "choice", choices=("http/protobuf", "grpc"))
    headers: Mapping[str, str] = _opt(dict, "kv", doc="extra headers for OTLP/Pyroscope")
    compression: str = _opt("gzip", "choice", choices=("gzip", "none"))
    certificate: str = _opt("", "str", doc="CA bundle for TLS")
    insecure: bool = _opt(False, "bool", doc="gRPC without TLS for https-less endpoints")
    export_timeout: float = _opt(10.0, "duration", 0.001, 600, doc="per export attempt")
    retry_timeout: float = _opt(60.0, "duration", 0, 3600, doc="total retry budget per batch")
    retry_initial_backoff: float = _opt(1.0, "duration", 0.001, 600, doc="first retry delay (doubles, with jitter)")
    retry_max_backoff: float = _opt(30.0, "duration", 0.001, 3600, doc="longest delay between two retries")
    queue_size: int = _opt(1000, "int", 1, 1_000_000, doc="profiles waiting for export, per exporter")
    max_queue_bytes: int = _opt(64 * 1024 * 1024, "size", 1024, None, doc="bytes waiting for export")
    batch_size: int = _opt(10, "int", 1, 10_000, doc="profiles per export request")
    batch_timeout: float = _opt(5.0, "duration", 0, 600, doc="longest wait to fill a batch")
    max_request_bytes: int = _opt(4 * 1024 * 1024, "size", 1024, None, doc="uncompressed request cap")
    max_upload_rate: int = _opt(1024 * 1024, "size", 0, None, doc="bytes/s; 0 = unlimited")
    shutdown_timeout: float = _opt(5.0, "duration", 0, 600, doc="flush budget at shutdown")
    pyroscope_endpoint: str = _opt("http://localhost:4040", "url", doc="Pyroscope base URL")
    pyroscope_basic_auth: str = _opt("", "str", doc="user:password for Pyroscope")
    pyroscope_token: str = _opt("", "str", doc="bearer token for Pyroscope")
    pyroscope_tenant_id: str = _opt("", "str", doc="X-Scope-OrgID for Pyroscope")

    # --- request policy
    probability: float = _opt(0.01, "float", 0.0, 1.0, doc="share of requests profiled")
    profile_unsampled_traces: bool = _opt(False, "bool")
    header: str = _opt("X-Enable-Profiling", "str", doc="request header that asks for a profile")
    header_secret: str = _opt("", "str", doc="if set, the header value must equal it")
    max_header_profiles_per_minute: int = _opt(60, "int", 0, 1_000_000)
    max_concurrent_profiles: int = _opt(8, "int", 1, 10_000)
    max_profiles_per_minute: int = _opt(60, "int", 0, 1_000_000)
    expose_profile_id: Optional[bool] = _opt(None, "bool", optional=True,
                                             doc="X-Profile-Id response header; default: header-triggered only")
    slow_threshold: float = _opt(5.0, "duration", 0.001, 86400)
    slow_promotion: bool = _opt(True, "bool", doc="start sampling a request once it runs past slow_threshold")
    slow_route_arming: bool = _opt(True, "bool", doc="profile a route for a while after a slow request")
    slow_profile_duration: float = _opt(10.0, "duration", 0, 86400)
    tail_sampling_hz: int = _opt(0, "int", 0, 1000, doc="flight recorder rate; 0 = off")
    error_profile_duration: float = _opt(10.0, "duration", 0, 86400)
    error_sample_rate: float = _opt(0.5, "float", 0.0, 1.0)
    cpu_threshold: float = _opt(0.8, "float", 0.0, 1.0)
    cpu_window: float = _opt(5.0, "duration", 1, 3600)
    cpu_profile_duration: float = _opt(30.0, "duration", 0, 86400)
    cpu_cooldown: float = _opt(300.0, "duration", 0, 86400)
    cpu_trigger: bool = _opt(True, "bool", doc="high-CPU trigger on/off")
    max_window: float = _opt(300.0, "duration", 1, 86400)
    should_profile: Optional[Callable[..., Optional[bool]]] = _opt(None, "callable", optional=True)
    excluded_urls: tuple[str, ...] = _opt((), "urls", doc="comma-separated regexes (re.search on the URL)")
    max_overhead: float = _opt(0.05, "float", 0.0, 1.0, doc="profiler CPU / process CPU budget")
    trigger_limits: Mapping[str, str] = _opt(dict, "kv", doc="per-trigger profiles per minute under "
                                             "max_profiles_per_minute, e.g. 'high_cpu=10,probability=30'")

    # ------------------------------------------------------------------ building

    @classmethod
    def load(
        cls,
        kwargs: Mapping[str, Any] | None = None,
        *,
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        settings_name: str = "settings",
    ) -> "Config":
        """Build and validate a config from keyword arguments, a settings mapping and the environment."""
        env = os.environ if env is None else env
        kwargs = dict(kwargs or {})
        settings = dict(settings or {})
        specs = {f.name: f for f in fields(cls)}
        for source, mapping in (("keyword arguments", kwargs), (settings_name, settings)):
            unknown = sorted(k for k in mapping if k not in specs)
            if unknown:
                raise ConfigError(unknown[0], mapping[unknown[0]],
                                  "unknown option; allowed: " + ", ".join(sorted(specs)), source)

        values: dict[str, Any] = {}
        for name, f in specs.items():
            spec: _Spec = f.metadata["spec"]
            if name in kwargs:
                raw, source = kwargs[name], "keyword argument"
            elif name in settings:
                raw, source = settings[name], settings_name
            elif (ENV_PREFIX + name.upper()) in env:
                raw, source = env[ENV_PREFIX + name.upper()], ENV_PREFIX + name.upper()
            else:
                std = _standard_env(name, env)
                if std is None:
                    continue
                raw, source = std
            values[name] = _convert(name, raw, spec, source)

        # standard OpenTelemetry variables that only ever narrow or complete ours
        if _parse_env_bool(env.get("OTEL_SDK_DISABLED")) and "enabled" not in kwargs and "enabled" not in settings:
            values["enabled"] = False
        if not values.get("service_name"):
            res = values.get("resource_attributes") or {}
            values["service_name"] = res.get("service.name") or "unknown_service:python"
        protocol = values.get("protocol", "http/protobuf")
        if not values.get("endpoint"):
            values["endpoint"] = _default_endpoint(env, protocol)
        if not values.get("exporter"):
            configured = bool(env.get("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                              or "endpoint" in kwargs or "endpoint" in settings
                              or (ENV_PREFIX + "ENDPOINT") in env)
            values["exporter"] = ("otlp",) if configured else ("file",)
        return cls(**values)

    def replace(self, **changes: Any) -> "Config":
        """A copy with some options changed (validated like :meth:`load`)."""
        specs = {f.name: f for f in fields(self)}
        converted = {}
        for k, v in changes.items():
            if k not in specs:
                raise ConfigError(k, v, "unknown option; allowed: " + ", ".join(sorted(specs)))
            converted[k] = _convert(k, v, specs[k].metadata["spec"], "keyword argument")
        return dataclasses.replace(self, **converted)

    @staticmethod
    def option_names() -> list[str]:
        return [f.name for f in fields(Config)]


def _parse_env_bool(value: str | None) -> bool:
    return bool(value) and value.strip().lower() in _TRUE  # type: ignore[union-attr]


def _default_endpoint(env: Mapping[str, str], protocol: str) -> str:
    full = env.get("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT")
    if full:
        return full.strip()
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if protocol == "grpc":
        return base or DEFAULT_OTLP_GRPC_ENDPOINT
    return (base or DEFAULT_OTLP_HTTP_ENDPOINT).rstrip("/") + OTLP_PROFILES_PATH


def _standard_env(name: str, env: Mapping[str, str]) -> tuple[Any, str] | None:
    """The standard OpenTelemetry variable that feeds an option, if any."""
    candidates: dict[str, tuple[str, ...]] = {
        "service_name": ("OTEL_SERVICE_NAME",),
        "resource_attributes": ("OTEL_RESOURCE_ATTRIBUTES",),
        "headers": ("OTEL_EXPORTER_OTLP_PROFILES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
        "protocol": ("OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        "compression": ("OTEL_EXPORTER_OTLP_PROFILES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"),
        "certificate": ("OTEL_EXPORTER_OTLP_PROFILES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        "insecure": ("OTEL_EXPORTER_OTLP_PROFILES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"),
        "excluded_urls": ("OTEL_PYTHON_EXCLUDED_URLS",),
    }
    for var in candidates.get(name, ()):
        if var in env and env[var].strip():
            return env[var], var
    if name == "export_timeout":  # OTLP timeouts are milliseconds
        for var in ("OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
            if env.get(var, "").strip():
                try:
                    return float(env[var]) / 1000.0, var
                except ValueError:
                    return env[var], var
    return None


def _range_text(spec: _Spec, what: str) -> str:
    if spec.lo is not None and spec.hi is not None:
        return f"must be {what} from {spec.lo:g} to {spec.hi:g}"
    if spec.lo is not None:
        return f"must be {what} of at least {spec.lo:g}"
    return f"must be {what}"


def _convert(name: str, raw: Any, spec: _Spec, source: str) -> Any:
    def fail(allowed: str) -> ConfigError:
        return ConfigError(name, raw, allowed, source if source != "keyword argument" else "")

    if raw is None and spec.optional:
        return None
    if isinstance(raw, str) and spec.optional and raw.strip().lower() in ("", "none", "auto"):
        return None
    kind = spec.kind
    v: Any
    try:
        if kind == "bool":
            return _parse_bool(raw)
        if kind == "str":
            if not isinstance(raw, (str, os.PathLike)):
                raise ValueError
            return os.fspath(raw)
        if kind == "url":
            if not isinstance(raw, str):
                raise ValueError
            v = raw.strip()
            if v and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", v):
                raise ValueError
            return v
        if kind == "choice":
            v = str(raw).strip().lower()
            if v not in spec.choices:
                raise ValueError
            return v
        if kind == "kv":
            return parse_key_values(raw)
        if kind == "urls":
            return _parse_url_list(raw)
        if kind == "exporters":
            items = [p.strip().lower() for p in (raw.split(",") if isinstance(raw, str) else list(raw))]
            items = [p for p in items if p]
            if not items or any(p not in EXPORTER_NAMES for p in items):
                raise ValueError
            return tuple(dict.fromkeys(items))
        if kind == "callable":
            if callable(raw):
                return raw
            if isinstance(raw, str):
                return _import_dotted(raw)
            raise ValueError
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError
            v = int(raw, 10) if isinstance(raw, str) else raw
            if not isinstance(v, int) and not (isinstance(v, float) and v.is_integer()):
                raise ValueError
            v = int(v)
        elif kind == "float":
            if isinstance(raw, bool):
                raise ValueError
            v = float(raw)
            if not math.isfinite(v):
                raise ValueError
        elif kind == "duration":
            v = parse_duration(raw)
        elif kind == "size":
            v = parse_size(raw)
        else:  # pragma: no cover - programming error
            raise AssertionError(kind)
    except (ValueError, TypeError, ImportError, AttributeError, re.error):
        raise fail(_allowed_text(spec)) from None
    if (spec.lo is not None and v < spec.lo) or (spec.hi is not None and v > spec.hi):
        raise fail(_allowed_text(spec))
    return v


def _allowed_text(spec: _Spec) -> str:
    kind = spec.kind
    if kind == "bool":
        return "must be a boolean (true/false, 1/0, yes/no, on/off)"
    if kind == "int":
        return _range_text(spec, "a whole number")
    if kind == "float":
        return _range_text(spec, "a number")
    if kind == "duration":
        return _range_text(spec, "a duration in seconds or like '250ms', '5s', '5m',") + " seconds"
    if kind == "size":
        return _range_text(spec, "a size in bytes or like '512KiB', '4MiB',") + " bytes"
    if kind == "choice":
        return "must be one of " + ", ".join(spec.choices)
    if kind == "exporters":
        return "must be one or more of " + ", ".join(EXPORTER_NAMES) + " (comma-separated)"
    if kind == "url":
        return "must be an absolute URL such as http://localhost:4318/v1development/profiles"
    if kind == "kv":
        return "must be key=value pairs separated by commas, or a mapping"
    if kind == "urls":
        return "must be comma-separated regular expressions"
    if kind == "callable":
        return "must be a callable or a dotted path 'package.module:function' to one"
    return "must be a string"


def _import_dotted(path: str) -> Callable[..., Any]:
    import importlib

    if ":" in path:
        module_name, attr = path.split(":", 1)
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ValueError(path)
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(path)
    return obj
