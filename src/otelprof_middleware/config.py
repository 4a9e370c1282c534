"""One typed, immutable configuration object for the whole library.

Every option can be given as a keyword argument, in a framework settings mapping
(Django ``OTELPROF = {...}``, Flask ``app.config["OTELPROF_*"]``) or as an
environment variable ``OTELPROF_<OPTION_UPPERCASE>``.  Precedence: keyword
arguments, then settings, then ``OTELPROF_*`` variables, then the standard
OpenTelemetry variables (``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_*`` ...),
then the defaults below.  Values are validated once, when the object is built;
a bad value raises :class:`ConfigError` naming the option, the value, where it
came from and what is allowed.

Load-time checks beyond single values, so that mistakes surface at start-up and
not as dropped profiles minutes later:

* an unknown keyword or settings key raises, with "did you mean ...?" (difflib);
  an unknown ``OTELPROF_*`` variable is logged once, with the nearest option;
* the OTLP endpoint is checked from whichever source gave it (``endpoint=``,
  ``OTELPROF_ENDPOINT``, ``OTEL_EXPORTER_OTLP_[PROFILES_]ENDPOINT``) when the
  ``otlp`` exporter is used; a port that belongs to the other OTLP protocol
  (4317 gRPC, 4318 HTTP) is logged once;
* ``protocol="grpc"`` needs grpcio.  When ``grpc`` comes only from the generic
  ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``opentelemetry-distro`` sets it by default for
  every signal) and grpcio is missing, or that variable says ``http/json`` (which
  we do not speak), profiles use ``http/protobuf`` and a warning names the
  variable; asked for explicitly, a missing grpcio is a :class:`ConfigError`;
* ``output_dir`` must be a writable folder (or creatable) when the ``file``
  exporter is used.  If neither the folder nor the exporter was chosen (the
  embedded default), a problem is a warning, not an error: adding the
  middleware with no configuration never stops an app that runs on a
  read-only file system.

Where each value came from is kept: :meth:`Config.source_of`.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping, Optional
from urllib.parse import unquote, urlsplit

from ._safety import LogOnce

from ._redact import MASK, mask_key_values, redact_url
from .privacy import parse_redact_patterns

__all__ = ["Config", "ConfigError", "parse_duration", "parse_size", "parse_trigger_limits", "parse_retention",
           "parse_profile_types", "PROFILE_TYPES"]

ENV_PREFIX = "OTELPROF_"
OTLP_PROFILES_PATH = "/v1development/profiles"
DEFAULT_OTLP_HTTP_ENDPOINT = "http://localhost:4318"
DEFAULT_OTLP_GRPC_ENDPOINT = "http://localhost:4317"
EXPORTER_NAMES = ("file", "otlp", "console", "pyroscope", "none")
#: options whose values are credentials: masked in ``repr(Config)`` and ``ConfigError``
SECRET_OPTIONS = frozenset({"header_secret", "headers", "pyroscope_headers", "pyroscope_basic_auth",
                            "pyroscope_token"})
#: options that may hold a password in their URL (``https://user:password@host``)
URL_OPTIONS = frozenset({"endpoint", "pyroscope_endpoint"})
#: triggers that ``trigger_limits`` can cap (the header has ``max_header_profiles_per_minute``)
LIMITABLE_TRIGGERS = frozenset({"probability", "slow", "error", "high_cpu", "on_demand"})
GENERIC_PROTOCOL_VAR = "OTEL_EXPORTER_OTLP_PROTOCOL"
#: ``OTELPROF_*`` variables read by parts of the package that are not options;
#: listed here so that the unknown-variable warning leaves them alone.
NON_OPTION_ENV_VARS: frozenset[str] = frozenset({
    "OTELPROF_BUILD_NATIVE",  # read by setup.py at install time: build the C extension or not
})
#: where a value came from when nobody gave it
DEFAULT_SOURCE = "default"

# warnings about the configuration: once per process and problem, however many
# times a configuration is loaded (each middleware, the default profiler, ...)
_warn_once = LogOnce()


def reset_warnings() -> None:
    """Forget which configuration warnings were already logged (each is logged
    once per process); for test suites that check them."""
    global _warn_once
    _warn_once = LogOnce()


class ConfigError(ValueError):
    """A configuration value is invalid.  The message names the option, the
    value and what is allowed, e.g. ``probability=1.5: must be a number from 0 to 1``."""

    def __init__(self, option: str, value: Any, allowed: str, source: str = "") -> None:
        self.option = option
        self.value = _shown_value(option, value)  # credentials masked
        self.allowed = allowed
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"invalid option {option}={self.value!r}{where}: {allowed}")


def _shown_value(option: str, value: Any) -> Any:
    """``value`` as it may appear in a message: credentials masked."""
    if option in SECRET_OPTIONS:
        if not value:
            return value
        return mask_key_values(value) if isinstance(value, (str, Mapping)) and option.endswith("headers") else MASK
    if option in URL_OPTIONS and isinstance(value, str) and "@" in value:
        return redact_url(value)
    return value


#: ``shown_value(option, value)``: how a value may appear in a message (credentials masked)
shown_value = _shown_value


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


def parse_trigger_limits(raw: Any) -> dict[str, int]:
    """``{trigger: profiles per minute}`` from ``"high_cpu=10,probability=30"`` or a
    mapping; ``ConfigError`` for an unknown trigger or a value that is not a whole
    number >= 0."""
    out: dict[str, int] = {}
    items = parse_key_values(raw) if isinstance(raw, str) else dict(raw or {})
    for k, v in items.items():
        name = str(k).strip()
        if name not in LIMITABLE_TRIGGERS:
            raise ConfigError("trigger_limits", raw, "keys must be among " + ", ".join(sorted(LIMITABLE_TRIGGERS))
                              + " (the header has max_header_profiles_per_minute)")
        try:
            n = int(str(v).strip())
        except ValueError:
            n = -1
        if n < 0:
            raise ConfigError("trigger_limits", raw, "values must be whole numbers of profiles per minute (>= 0)")
        out[name] = n
    return out


#: what a profile can measure (docs/profile-types.md); cpu and wall are always sampled together
PROFILE_TYPES = ("cpu", "wall", "alloc", "heap", "lock", "gc")


def parse_profile_types(raw: Any, option: str = "profile_types") -> tuple[str, ...]:
    """``("cpu", "wall", "lock")`` from ``"cpu,wall,lock"`` or a list; ``ConfigError``
    (with "did you mean") for an unknown type.  ``heap`` implies ``alloc`` (the live
    bytes are the sampled allocations not freed).  CPU and wall time are always
    sampled (the other types hang off their sessions): ``cpu``/``wall`` may be
    listed or left out.  ``option="header_profile_types"``: the types a trigger
    header may add, which may be none (an empty tuple; cpu and wall are left out)."""
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    out: list[str] = []
    for item in items:
        name = str(item).strip().lower()
        if not name:
            continue
        if name not in PROFILE_TYPES:
            close = difflib.get_close_matches(name, PROFILE_TYPES, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(option, raw, f"unknown type {name!r}{hint} (types: "
                              + ", ".join(PROFILE_TYPES) + ")")
        out.append(name)
    if option == "header_profile_types":
        return tuple(t for t in PROFILE_TYPES[2:] if t in out or (t == "alloc" and "heap" in out))
    if not out:
        raise ConfigError(option, raw, "needs at least one of " + ", ".join(PROFILE_TYPES))
    if "heap" in out and "alloc" not in out:
        out.append("alloc")
    out += ["cpu", "wall"]
    return tuple(t for t in PROFILE_TYPES if t in out)


#: file exporter retention classes: a profile's strongest trigger, strongest first ("other": none)
RETENTION_CLASSES = ("header", "error", "slow", "high_cpu", "on_demand", "custom", "manual", "probability", "other")


def parse_retention(raw: Any) -> dict[str, int]:
    """``{class: profiles kept}`` from ``"probability=1000,slow=500"`` or a mapping;
    ``ConfigError`` for an unknown class or a count that is not a whole number >= 0."""
    out: dict[str, int] = {}
    items = parse_key_values(raw) if isinstance(raw, str) else dict(raw or {})
    for k, v in items.items():
        name = str(k).strip().lower()
        if name not in RETENTION_CLASSES:
            raise ConfigError("retention", raw, f"unknown class {str(k)!r}; classes: " + ", ".join(RETENTION_CLASSES))
        try:
            n = int(str(v).strip())
        except ValueError:
            n = -1
        if n < 0:
            raise ConfigError("retention", raw, f"{k}={v!r}: counts must be whole numbers >= 0")
        out[name] = n
    return out


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
    kind: str  # bool, int, float, duration, size, str, dir, choice, url, kv, limits, urls, patterns, callable,
    # exporters, profile_types
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
    native_sampler: bool = _opt(True, "bool", doc="CPU samples from per-thread CPU timers (C extension, Linux); "
                                "false or unavailable: the pure-Python sampler")
    min_samples: int = _opt(1, "int", 0, 1000, doc="profiles with fewer samples are not exported")
    profile_types: tuple[str, ...] = _opt(("cpu", "wall"), "profile_types",
                                          doc="what profiles measure: cpu, wall, alloc, heap, lock, gc (comma list)")
    alloc_sample_interval: int = _opt(512 * 1024, "size", 1, 1024**3,
                                      doc="mean bytes allocated between two allocation samples (Poisson)")
    lock_sample_rate: float = _opt(1.0, "float", 0.0, 1.0, doc="share of lock acquisitions timed (lock type)")
    header_profile_types: tuple[str, ...] = _opt((), "profile_types",
                                                 doc="types a trigger header may add to its profile "
                                                 "(alloc, heap, lock, gc; docs/triggers.md); their hooks are "
                                                 "installed at start")
    # --- window profiles (aggregates of short requests, the continuous profile; windows.py)
    aggregate_window: float = _opt(10.0, "duration", 0, 3600, doc="short sampled requests' samples go into "
                                   "one profile per route and window of this length; 0 = off (dropped)")
    aggregate_max_routes: int = _opt(100, "int", 1, 100_000, doc="routes with an aggregate per window")
    window_max_stacks: int = _opt(10_000, "int", 10, 10_000_000, doc="distinct (stack, thread, span) entries "
                                  "held per window (all aggregates together; the continuous profile)")
    continuous_hz: int = _opt(0, "int", 0, 1000, doc="sample the whole process at this rate; 0 = off")
    continuous_window: float = _opt(60.0, "duration", 1, 3600, doc="length of one continuous profile")

    # --- export
    exporter: tuple[str, ...] = _opt((), "exporters", doc="file, otlp, console, pyroscope, none (comma list)")
    output_dir: str = _opt("profiles", "str", doc="folder of the file exporter")
    max_files: int = _opt(1000, "int", 1, 10_000_000, doc="file exporter retention: number of profiles")
    max_bytes: int = _opt(256 * 1024 * 1024, "size", 1024, None, doc="file exporter retention: total bytes")
    retention: Mapping[str, int] = _opt(dict, "retention", doc="file exporter per-class quotas, e.g. "
                                        "'probability=1000,slow=500,error=500,header=200'")
    endpoint: str = _opt("", "url", optional=True, doc="full OTLP profiles URL")
    protocol: str = _opt("http/protobuf", "choice", choices=("http/protobuf", "grpc"))
    headers: Mapping[str, str] = _opt(dict, "kv", doc="extra headers (gRPC metadata) for the OTLP endpoint only")
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
    pyroscope_headers: Mapping[str, str] = _opt(dict, "kv", doc="extra headers for Pyroscope (never the OTLP ones)")

    # --- request policy
    probability: float = _opt(0.01, "float", 0.0, 1.0, doc="share of requests profiled")
    profile_unsampled_traces: bool = _opt(False, "bool")
    trace_id_ratio: bool = _opt(True, "bool", doc="probability decided from the trace id (the same answer in "
                                "every service of a trace); false: a random draw per request (edge services)")
    header: str = _opt("X-Enable-Profiling", "str", doc="request header that asks for a profile")
    header_secret: str = _opt("", "str", doc="if set, the header value must equal it")
    header_trust: str = _opt("debug", "choice", choices=("debug", "any", "off"),
                             doc="without header_secret: debug = only in the framework's debug mode, "
                                 "any = from anyone, off = never")
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
    trigger_limits: Mapping[str, int] = _opt(dict, "limits", doc="per-trigger shares of max_profiles_per_minute, "
                                             "e.g. 'high_cpu=10,probability=30'; default: probability and "
                                             "high_cpu half each")

    # --- privacy (docs/privacy.md)
    url_paths: str = _opt("masked", "choice", choices=("masked", "raw", "off"),
                          doc="request paths in profiles: masked = ids, e-mails and tokens replaced, and none "
                              "when the route template is known; raw = as received; off = never")
    file_paths: str = _opt("relative", "choice", choices=("relative", "full"),
                           doc="source file names relative to app_root, site-packages, the standard library; "
                               "full = absolute paths")
    app_root: str = _opt("", "dir", doc="folder file names are made relative to; default: the working directory")
    redact_patterns: tuple[str, ...] = _opt((), "patterns", doc="regexes whose matches become *** in function and "
                                            "file names, profile names, labels and attributes")

    # where each option's value came from (not an option; see source_of)
    _sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

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
        specs = _specs()
        for source, mapping in (("keyword arguments", kwargs), (settings_name, settings)):
            unknown = sorted(k for k in mapping if k not in specs)
            if unknown:
                raise ConfigError(unknown[0], mapping[unknown[0]], _unknown_option_text(unknown[0]), source)
        _warn_unknown_env(env)

        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for name, spec in specs.items():
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
            if (name == "protocol" and source == GENERIC_PROTOCOL_VAR
                    and str(raw).strip().lower() == "http/json"):
                # valid for the SDK's traces, not a transport we offer for profiles
                values[name], sources[name] = "http/protobuf", source
                _fallback_note(source, "http/json", "profiles use http/protobuf (they have no JSON transport)")
                continue
            values[name] = _convert(name, raw, spec, source)
            sources[name] = source

        # standard OpenTelemetry variables that only ever narrow or complete ours
        if _parse_env_bool(env.get("OTEL_SDK_DISABLED")) and "enabled" not in kwargs and "enabled" not in settings:
            values["enabled"], sources["enabled"] = False, "OTEL_SDK_DISABLED"
        if not values.get("service_name"):
            res = values.get("resource_attributes") or {}
            if res.get("service.name"):
                values["service_name"] = res["service.name"]
                sources["service_name"] = sources["resource_attributes"]
            else:
                values["service_name"] = "unknown_service:python"
        if not values.get("exporter"):
            endpoint_var = _endpoint_var(env)
            values["exporter"] = ("otlp",) if (endpoint_var or values.get("endpoint")) else ("file",)
            sources["exporter"] = (f"{DEFAULT_SOURCE}, as {endpoint_var or sources['endpoint']} is set"
                                   if values["exporter"] == ("otlp",) else DEFAULT_SOURCE)
        uses_otlp = "otlp" in values["exporter"]
        if (uses_otlp and values.get("protocol") == "grpc" and sources["protocol"] == GENERIC_PROTOCOL_VAR
                and not grpc_available()):
            # opentelemetry-distro sets OTEL_EXPORTER_OTLP_PROTOCOL=grpc for every signal; asked
            # for anywhere else, a missing grpcio is an error (_check)
            values["protocol"] = "http/protobuf"
            _fallback_note(GENERIC_PROTOCOL_VAR, "grpc",
                           "opentelemetry-distro sets this by default, but grpcio is not installed, so "
                           "profiles use http/protobuf; pip install 'otelprof-middleware[grpc]' for gRPC")
        if not values.get("endpoint"):
            endpoint, source, raw = _default_endpoint(env, values.get("protocol", "http/protobuf"))
            if uses_otlp and source != DEFAULT_SOURCE and not _is_http_url(endpoint):
                raise ConfigError("endpoint", raw, _url_text("endpoint", source), source)
            values["endpoint"], sources["endpoint"] = endpoint, source
        config = cls(**values, _sources=sources)
        config._check(uses_otlp)
        return config

    def replace(self, **changes: Any) -> "Config":
        """A copy with some options changed (validated like :meth:`load`)."""
        specs = _specs()
        converted = {}
        for k, v in changes.items():
            if k not in specs:
                raise ConfigError(k, v, _unknown_option_text(k), "keyword arguments")
            converted[k] = _convert(k, v, specs[k], "keyword argument")
        sources = {**self._sources, **{k: "keyword argument" for k in converted}}
        config = dataclasses.replace(self, **converted, _sources=sources)
        config._check("otlp" in config.exporter, changed=set(converted))
        return config

    def source_of(self, option: str) -> str:
        """Where ``option``'s value came from: ``"keyword argument"``, a settings
        name, an environment variable (``"OTELPROF_ENDPOINT"``,
        ``"OTEL_EXPORTER_OTLP_ENDPOINT"``) or ``"default"``."""
        if option not in _specs():
            raise ConfigError(option, None, _unknown_option_text(option))
        return self._sources.get(option, DEFAULT_SOURCE)

    def __repr__(self) -> str:
        # credentials never appear in logs of a configuration (security review L9)
        shown = ", ".join(f"{f.name}={_shown_value(f.name, getattr(self, f.name))!r}" for f in fields(self) if f.repr)
        return f"Config({shown})"

    @staticmethod
    def option_names() -> list[str]:
        return list(_specs())

    # ------------------------------------------------------------------ load-time checks

    def _check(self, uses_otlp: bool, changed: Optional[set[str]] = None) -> None:
        """Checks across options and against the machine; ``changed`` limits them to
        what :meth:`replace` changed."""
        def wanted(*names: str) -> bool:
            return changed is None or any(n in changed for n in names)

        if uses_otlp and wanted("protocol", "exporter") and self.protocol == "grpc" and not grpc_available():
            raise ConfigError("protocol", "grpc", _GRPC_MISSING, _shown_source(self.source_of("protocol")))
        if uses_otlp and wanted("endpoint", "protocol", "exporter"):
            _warn_port_mismatch(self.endpoint, self.source_of("endpoint"),
                                self.protocol, self.source_of("protocol"))
        problem = _output_dir_problem(self.output_dir) \
            if "file" in self.exporter and wanted("output_dir", "exporter") else None
        if problem is not None:
            dir_source = self.source_of("output_dir")
            if dir_source != DEFAULT_SOURCE or self.source_of("exporter") != DEFAULT_SOURCE:
                raise ConfigError("output_dir", self.output_dir, problem, _shown_source(dir_source))
            # nothing was configured: the embedded default must never stop the app
            _warn_once(f"output_dir:{os.path.abspath(self.output_dir)}",
                       "otelprof: the file exporter (the default when no OTLP endpoint is set) cannot "
                       "write to output_dir=%r (the default): %s; profiles will be dropped. Set "
                       "OTELPROF_OUTPUT_DIR to a writable folder or choose an exporter (OTELPROF_EXPORTER)",
                       self.output_dir, problem)


def _specs() -> dict[str, _Spec]:
    """Option name -> spec, in declaration order (private fields are not options)."""
    return {f.name: f.metadata["spec"] for f in fields(Config) if "spec" in f.metadata}


def _shown_source(source: str) -> str:
    return "" if source in ("keyword argument", DEFAULT_SOURCE) else source


_GRPC_MISSING = ("needs grpcio, which is not installed: pip install 'otelprof-middleware[grpc]' "
                 "(or use protocol http/protobuf)")


def grpc_available() -> bool:
    """True if grpcio can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("grpc") is not None
    except (ImportError, ValueError):
        return False


def _unknown_option_text(name: str) -> str:
    """``unknown option; did you mean 'probability'?`` (or a pointer to the list)."""
    key = str(name).strip().lower()
    if key.startswith(ENV_PREFIX.lower()):
        key = key[len(ENV_PREFIX):]
    matches = difflib.get_close_matches(key, list(_specs()), n=3, cutoff=0.6)
    if matches:  # leave out names a third (of the similarity scale) worse than the best: noise
        best = difflib.SequenceMatcher(None, key, matches[0]).ratio()
        matches = [m for m in matches if difflib.SequenceMatcher(None, key, m).ratio() >= best - 1 / 3]
    if not matches:
        return "unknown option (every option is listed in docs/configuration.md and Config.option_names())"
    quoted = [repr(m) for m in matches]
    return "unknown option; did you mean " + (quoted[0] if len(quoted) == 1
                                              else ", ".join(quoted[:-1]) + " or " + quoted[-1]) + "?"


def _warn_unknown_env(env: Mapping[str, str]) -> None:
    """Log once per variable: an ``OTELPROF_*`` variable that is no option (a typo)."""
    names = _specs()
    for var in env:
        if not var.startswith(ENV_PREFIX) or var in NON_OPTION_ENV_VARS:
            continue
        if var[len(ENV_PREFIX):].lower() in names:
            continue
        close = difflib.get_close_matches(var[len(ENV_PREFIX):].lower(), list(names), n=1, cutoff=0.6)
        hint = f"; did you mean {ENV_PREFIX}{close[0].upper()}?" if close else \
            " (every option is listed in docs/configuration.md)"
        # the value is not shown: it may be a secret
        _warn_once(f"unknown-env:{var}", "otelprof: %s is not an otelprof option and is ignored%s", var, hint)


def _fallback_note(var: str, value: str, what: str) -> None:
    _warn_once(f"fallback:{var}={value}",
               "otelprof: %s=%s: %s. Set OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL (or OTELPROF_PROTOCOL) to choose "
               "the profiles' protocol and silence this", var, value, what)


def _is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host (and a numeric port, if any)."""
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def _warn_port_mismatch(endpoint: str, endpoint_source: str, protocol: str, protocol_source: str) -> None:
    """OTLP/gRPC listens on 4317 and OTLP/HTTP on 4318: the other one is almost always a mistake."""
    try:
        port = urlsplit(endpoint).port
    except ValueError:
        return
    usual = {"grpc": 4317, "http/protobuf": 4318}
    other = {4317: "OTLP/gRPC", 4318: "OTLP/HTTP"}
    if port not in other or port == usual.get(protocol):
        return
    _warn_once(f"port:{endpoint}:{protocol}",
               "otelprof: endpoint %s (from %s) uses port %d, the usual %s port, but protocol is %s (from %s), "
               "which usually listens on %d: profiles may not arrive",
               endpoint, endpoint_source, port, other[port], protocol, protocol_source, usual.get(protocol, 0))


def _output_dir_problem(path: str) -> Optional[str]:
    """Why the file exporter could not write into ``path``, or None."""
    full = os.path.abspath(path)
    if os.path.exists(full):
        if not os.path.isdir(full):
            return "exists and is not a directory"
        if not os.access(full, os.W_OK | os.X_OK):
            return "is a directory that is not writable"
        return None
    if os.path.lexists(full):
        return "is a broken symbolic link"
    parent = os.path.dirname(full)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        return f"cannot be created: {parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: {parent} is not writable"
    return None

def _parse_env_bool(value: str | None) -> bool:
    return bool(value) and value.strip().lower() in _TRUE  # type: ignore[union-attr]


def _endpoint_var(env: Mapping[str, str]) -> Optional[str]:
    """The standard variable that sets the OTLP profiles endpoint, if any."""
    for var in ("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        if env.get(var, "").strip():
            return var
    return None


def _default_endpoint(env: Mapping[str, str], protocol: str) -> tuple[str, str, str]:
    """``(endpoint, source, value as written)`` from the standard variables, else
    the protocol's default."""
    var = _endpoint_var(env)
    if var is not None:
        raw = env[var].strip()
        if var == "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT" or protocol == "grpc":
            return raw, var, raw
        return raw.rstrip("/") + OTLP_PROFILES_PATH, var, raw
    default = DEFAULT_OTLP_GRPC_ENDPOINT if protocol == "grpc" else DEFAULT_OTLP_HTTP_ENDPOINT + OTLP_PROFILES_PATH
    return default, DEFAULT_SOURCE, default


def _url_text(name: str, source: str = "") -> str:
    """What a URL option accepts, with an example that fits the option and its source."""
    if name == "pyroscope_endpoint":
        example = "http://localhost:4040"
    elif source == "OTEL_EXPORTER_OTLP_ENDPOINT":
        example = "http://localhost:4318 (" + OTLP_PROFILES_PATH + " is appended)"
    else:
        example = "http://localhost:4318" + OTLP_PROFILES_PATH + " (gRPC: http://localhost:4317)"
    return "must be an absolute http:// or https:// URL such as " + example


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
    if kind == "patterns":
        try:
            return parse_redact_patterns(raw)
        except ValueError as exc:
            raise fail(f"{exc}; expected regular expressions: a list, a JSON list or a comma-separated string") \
                from None
    if kind == "profile_types":
        try:
            return parse_profile_types(raw, name)
        except ConfigError as exc:
            raise fail(exc.allowed) from None
        except (TypeError, ValueError):
            raise fail(_allowed_text(spec)) from None
    if kind in ("limits", "retention"):
        try:
            return parse_trigger_limits(raw) if kind == "limits" else parse_retention(raw)
        except ConfigError as exc:  # its own, more precise message
            raise fail(exc.allowed) from None
        except (TypeError, ValueError):
            raise fail(_allowed_text(spec)) from None
    v: Any
    try:
        if kind == "bool":
            return _parse_bool(raw)
        if kind == "str":
            if not isinstance(raw, (str, os.PathLike)):
                raise ValueError
            return os.fspath(raw)
        if kind == "dir":
            if not isinstance(raw, (str, os.PathLike)):
                raise ValueError
            v = os.fspath(raw)
            if v and not os.path.isdir(v):
                raise fail("must be an existing folder (or empty for the working directory)")
            return v
        if kind == "url":
            if not isinstance(raw, str):
                raise ValueError
            v = raw.strip()
            if v and not _is_http_url(v):
                raise fail(_url_text(name, source))
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
    except ConfigError:
        raise
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
        return "must be an absolute http:// or https:// URL"
    if kind == "kv":
        return "must be key=value pairs separated by commas, or a mapping"
    if kind == "limits":
        return "must be trigger=N pairs separated by commas, or a mapping"
    if kind == "retention":
        return "must be class=N pairs separated by commas, or a mapping"
    if kind == "urls":
        return "must be comma-separated regular expressions"
    if kind == "dir":
        return "must be a folder"
    if kind == "profile_types":
        return "must be a comma list of " + ", ".join(PROFILE_TYPES)
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
