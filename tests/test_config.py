"""Config: precedence, environment variables, parsing and error messages."""

from __future__ import annotations

import os
import sys

import pytest

from otelprof_middleware import Config, ConfigError, Profiler
from otelprof_middleware import config as config_mod
from otelprof_middleware.config import parse_duration


def load(kwargs=None, *, settings=None, env=None, **kw):
    return Config.load(kwargs, settings=settings, env=env if env is not None else {}, **kw)


@pytest.fixture
def warnings_once(monkeypatch, caplog):
    """Configuration warnings are logged once per process; give this test a fresh
    log-once and return the otelprof warnings logged so far (call it)."""
    config_mod.reset_warnings()
    caplog.set_level("WARNING", logger="otelprof_middleware")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "otelprof_middleware"]


@pytest.fixture
def no_grpcio(monkeypatch):
    """grpcio is not installed (as in a plain install without the [grpc] extra)."""
    monkeypatch.setitem(sys.modules, "grpc", None)
    assert not config_mod.grpc_available()


# --------------------------------------------------------------------------- defaults


def test_defaults_without_environment():
    c = load()
    assert c.enabled is True
    assert c.sample_hz == 100
    assert c.exporter == ("file",)
    assert c.service_name == "unknown_service:python"
    assert c.endpoint == "http://localhost:4318/v1development/profiles"
    assert c.probability == 0.01


def test_default_exporter_is_otlp_when_an_endpoint_is_configured():
    assert load(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}).exporter == ("otlp",)
    assert load(env={"OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT": "http://c:4318/p"}).exporter == ("otlp",)
    assert load(env={"OTELPROF_ENDPOINT": "http://c:4318/p"}).exporter == ("otlp",)
    assert load({"endpoint": "http://c:4318/p"}).exporter == ("otlp",)
    assert load(settings={"endpoint": "http://c:4318/p"}).exporter == ("otlp",)
    # an explicit exporter always wins
    assert load({"exporter": "file"}, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}).exporter == ("file",)


def test_exporter_list_parsing():
    assert load({"exporter": "file, otlp"}).exporter == ("file", "otlp")
    assert load({"exporter": ["console", "file", "console"]}).exporter == ("console", "file")
    with pytest.raises(ConfigError) as ei:
        load({"exporter": "file,jaeger"})
    assert ei.value.option == "exporter"
    assert "file" in str(ei.value) and "otlp" in str(ei.value)


# --------------------------------------------------------------------------- precedence


def test_precedence_kwargs_settings_env_standard_env():
    env = {"OTELPROF_SERVICE_NAME": "from-otelprof-env", "OTEL_SERVICE_NAME": "from-otel-env"}
    assert load(env={"OTEL_SERVICE_NAME": "from-otel-env"}).service_name == "from-otel-env"
    assert load(env=env).service_name == "from-otelprof-env"
    assert load(settings={"service_name": "from-settings"}, env=env).service_name == "from-settings"
    assert load({"service_name": "from-kwargs"}, settings={"service_name": "from-settings"},
                env=env).service_name == "from-kwargs"


def test_otelprof_env_variables_are_parsed():
    c = load(env={
        "OTELPROF_SAMPLE_HZ": "250",
        "OTELPROF_PROBABILITY": "0.5",
        "OTELPROF_MAX_PROFILE_DURATION": "250ms",
        "OTELPROF_SLOW_PROMOTION": "no",
        "OTELPROF_MAX_BYTES": "4MiB",
        "OTELPROF_EXPORTER": "console,file",
        "OTELPROF_EXCLUDED_URLS": "/health, /metrics$",
    })
    assert c.sample_hz == 250
    assert c.probability == 0.5
    assert c.max_profile_duration == pytest.approx(0.25)
    assert c.slow_promotion is False
    assert c.max_bytes == 4 * 1024 * 1024
    assert c.exporter == ("console", "file")
    assert c.excluded_urls == ("/health", "/metrics$")


def test_kwargs_beat_otelprof_env():
    c = load({"sample_hz": 50}, env={"OTELPROF_SAMPLE_HZ": "250"})
    assert c.sample_hz == 50


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("OTELPROF_SAMPLE_HZ", "77")
    assert Config.load().sample_hz == 77
    assert Profiler(exporter="none").config.sample_hz == 77


# --------------------------------------------------------------------------- standard OTel variables


def test_service_name_and_resource_attributes():
    env = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,team=a%20b,service.name=from-res"}
    c = load(env=env)
    assert c.resource_attributes == {"deployment.environment": "prod", "team": "a b", "service.name": "from-res"}
    assert c.service_name == "from-res"  # OTEL_SERVICE_NAME absent: the resource's service.name
    c = load(env={**env, "OTEL_SERVICE_NAME": "checkout"})
    assert c.service_name == "checkout"  # OTEL_SERVICE_NAME wins over the resource attribute


def test_otlp_endpoint_gets_the_profiles_path_appended():
    c = load(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"})
    assert c.endpoint == "http://collector:4318/v1development/profiles"
    c = load(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otlp.example.com:443/prefix"})
    assert c.endpoint == "https://otlp.example.com:443/prefix/v1development/profiles"


def test_profiles_endpoint_is_used_as_a_full_url():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://generic:4318",
           "OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT": "http://profiles:9999/custom/path"}
    assert load(env=env).endpoint == "http://profiles:9999/custom/path"
    # our own option beats both
    assert load(env={**env, "OTELPROF_ENDPOINT": "http://mine:1/x"}).endpoint == "http://mine:1/x"
    assert load({"endpoint": "http://kw:2/y"}, env=env).endpoint == "http://kw:2/y"


def test_otlp_headers_and_signal_specific_headers():
    c = load(env={"OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cr%3Dt,x-tenant=acme"})
    assert c.headers == {"api-key": "s3cr=t", "x-tenant": "acme"}
    c = load(env={"OTEL_EXPORTER_OTLP_HEADERS": "a=1", "OTEL_EXPORTER_OTLP_PROFILES_HEADERS": "b=2"})
    assert c.headers == {"b": "2"}
    with pytest.raises(ConfigError) as ei:
        load(env={"OTEL_EXPORTER_OTLP_HEADERS": "no-equals-sign"})
    assert ei.value.option == "headers"
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(ei.value)


def test_otlp_timeout_is_milliseconds():
    assert load(env={"OTEL_EXPORTER_OTLP_TIMEOUT": "2500"}).export_timeout == pytest.approx(2.5)
    assert load(env={"OTEL_EXPORTER_OTLP_PROFILES_TIMEOUT": "100",
                     "OTEL_EXPORTER_OTLP_TIMEOUT": "2500"}).export_timeout == pytest.approx(0.1)


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", " on "])
def test_otel_sdk_disabled_turns_profiling_off(value):
    assert load(env={"OTEL_SDK_DISABLED": value}).enabled is False


def test_otel_sdk_disabled_false_or_overridden():
    assert load(env={"OTEL_SDK_DISABLED": "false"}).enabled is True
    assert load(env={"OTEL_SDK_DISABLED": ""}).enabled is True
    assert load({"enabled": True}, env={"OTEL_SDK_DISABLED": "true"}).enabled is True


def test_disabled_profiler_profiles_nothing(profiler_factory, profile_collector):
    p = profiler_factory(enabled=False)
    with p.profile("x") as session:
        assert session is None
    assert p.stats().get("profiles_started", 0) == 0


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize("raw, seconds", [
    ("250ms", 0.25), ("5s", 5.0), ("5m", 300.0), ("1h", 3600.0), ("1.5", 1.5), (" 2 s ", 2.0),
    ("500us", 0.0005), (3, 3.0), (0.75, 0.75),
])
def test_parse_duration(raw, seconds):
    assert parse_duration(raw) == pytest.approx(seconds)


@pytest.mark.parametrize("raw", ["", "5x", "-1s", "ms", True, None, float("inf")])
def test_parse_duration_rejects(raw):
    with pytest.raises(ValueError):
        parse_duration(raw)


def test_duration_options_accept_units():
    c = load({"max_profile_duration": "250ms", "slow_threshold": "5s", "cpu_cooldown": "5m"})
    assert c.max_profile_duration == pytest.approx(0.25)
    assert c.slow_threshold == pytest.approx(5.0)
    assert c.cpu_cooldown == pytest.approx(300.0)


# --------------------------------------------------------------------------- errors


def test_error_names_option_value_and_range():
    with pytest.raises(ConfigError) as ei:
        load({"probability": 1.5})
    err = ei.value
    assert (err.option, err.value) == ("probability", 1.5)
    msg = str(err)
    assert "probability" in msg and "1.5" in msg
    assert "from 0 to 1" in msg


def test_error_from_env_names_the_variable():
    with pytest.raises(ConfigError) as ei:
        load(env={"OTELPROF_SAMPLE_HZ": "fast"})
    msg = str(ei.value)
    assert "sample_hz" in msg and "'fast'" in msg and "OTELPROF_SAMPLE_HZ" in msg
    assert "from 1 to 1000" in msg


@pytest.mark.parametrize("kwargs, option", [
    ({"sample_hz": 0}, "sample_hz"),
    ({"sample_hz": 1001}, "sample_hz"),
    ({"sample_hz": 2.5}, "sample_hz"),
    ({"sample_hz": True}, "sample_hz"),
    ({"max_profile_duration": "2h"}, "max_profile_duration"),
    ({"max_profile_duration": "soon"}, "max_profile_duration"),
    ({"max_stack_depth": 4}, "max_stack_depth"),
    ({"probability": -0.1}, "probability"),
    ({"probability": float("nan")}, "probability"),
    ({"compression": "brotli"}, "compression"),
    ({"enabled": "maybe"}, "enabled"),
    ({"endpoint": "localhost:4318"}, "endpoint"),
    ({"excluded_urls": "(unclosed"}, "excluded_urls"),
    ({"should_profile": "no_such_module_xyz:func"}, "should_profile"),
])
def test_invalid_values_raise_config_error(kwargs, option):
    with pytest.raises(ConfigError) as ei:
        load(kwargs)
    assert ei.value.option == option
    assert option in str(ei.value)
    assert isinstance(ei.value, ValueError)  # catchable as ValueError too


def test_unknown_option_is_rejected_and_named():
    with pytest.raises(ConfigError) as ei:
        load({"sample_rate": 5})
    assert ei.value.option == "sample_rate"
    assert "unknown option" in str(ei.value)
    assert "sample_hz" in str(ei.value)  # lists what is allowed
    with pytest.raises(ConfigError) as ei:
        load(settings={"bogus": 1}, env={})
    assert "bogus" in str(ei.value) and "settings" in str(ei.value)
    with pytest.raises(ConfigError):
        Profiler(sample_rate=5)


def test_unknown_otelprof_env_variables_are_ignored(warnings_once):
    assert load(env={"OTELPROF_NOT_AN_OPTION": "1"}).sample_hz == 100


def test_replace_validates():
    c = load()
    assert c.replace(sample_hz=10).sample_hz == 10
    assert c.sample_hz == 100  # immutable original
    with pytest.raises(ConfigError):
        c.replace(sample_hz=0)
    with pytest.raises(ConfigError):
        c.replace(nope=1)


def test_config_is_immutable():
    c = load()
    with pytest.raises(Exception):
        c.sample_hz = 5  # type: ignore[misc]


def test_profiler_accepts_config_plus_overrides():
    base = load({"sample_hz": 10, "exporter": "none"})
    p = Profiler(base, sample_hz=20)
    try:
        assert p.config.sample_hz == 20
        assert p.config.exporter == ("none",)
    finally:
        p.shutdown(timeout=1)


# --------------------------------------------------------------------------- mistakes, at load time
# Each test pins the exact text a user sees: the option, the value, where it came from.


def _error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as ei:
        load(*args, **kwargs)
    return str(ei.value)


def test_unknown_keyword_suggests_the_nearest_option():
    assert _error({"probabilty": 0.5}) == (
        "invalid option probabilty=0.5 (from keyword arguments): unknown option; did you mean 'probability'?")
    # several close names: all of them, best first
    assert _error({"max_profiles": 5}) == (
        "invalid option max_profiles=5 (from keyword arguments): unknown option; "
        "did you mean 'max_files', 'max_samples' or 'max_profile_duration'?")
    # nothing close: where the list is, not the list itself
    msg = _error({"zzz": 1})
    assert msg == ("invalid option zzz=1 (from keyword arguments): unknown option "
                   "(every option is listed in docs/configuration.md and Config.option_names())")
    assert "sample_hz" not in msg


def test_unknown_settings_key_suggests_the_nearest_option():
    # Django: OTELPROF = {"PROBABILITY": 0.5} (upper case, as settings usually are)
    assert _error(settings={"PROBABILITY": 0.5}, settings_name="settings.OTELPROF") == (
        "invalid option PROBABILITY=0.5 (from settings.OTELPROF): unknown option; did you mean 'probability'?")
    # Flask: app.config["OTELPROF_PROBABILTY"] reaches the loader without its prefix
    assert _error(settings={"probabilty": 0.5}, settings_name="app.config") == (
        "invalid option probabilty=0.5 (from app.config): unknown option; did you mean 'probability'?")


def test_unknown_keyword_through_profiler_and_replace():
    with pytest.raises(ConfigError, match=r"did you mean 'sample_hz' or 'tail_sampling_hz'\?"):
        Profiler(sample_hz_=5)
    with pytest.raises(ConfigError) as ei:
        load().replace(probabilty=0.5)
    assert str(ei.value) == ("invalid option probabilty=0.5 (from keyword arguments): unknown option; "
                             "did you mean 'probability'?")


def test_unknown_otelprof_variable_warns_once_with_the_nearest_option(warnings_once):
    env = {"OTELPROF_PROBABILTY": "0.5", "OTELPROF_SAMPLE_HZ": "50"}
    c = load(env=env)
    assert c.probability == 0.01  # ignored: the default
    assert c.sample_hz == 50
    load(env=env)  # a second middleware, the default profiler...: no second line
    assert warnings_once() == [
        "otelprof: OTELPROF_PROBABILTY is not an otelprof option and is ignored; did you mean OTELPROF_PROBABILITY?"]


def test_unknown_otelprof_variable_without_a_close_name_and_never_its_value(warnings_once):
    load(env={"OTELPROF_XYZZY": "s3cret-value"})
    assert warnings_once() == [
        "otelprof: OTELPROF_XYZZY is not an otelprof option and is ignored (every option is listed in "
        "docs/configuration.md)"]
    assert not any("s3cret" in m for m in warnings_once())


def test_known_variables_do_not_warn(warnings_once):
    load(env={f"OTELPROF_{name.upper()}": "" for name in ("header_secret", "service_name")})
    assert warnings_once() == []


@pytest.mark.parametrize("var, value, expected", [
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318",
     "invalid option endpoint='localhost:4318' (from OTEL_EXPORTER_OTLP_ENDPOINT): must be an absolute http:// "
     "or https:// URL such as http://localhost:4318 (/v1development/profiles is appended)"),
    ("OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT", "collector:4318/v1development/profiles",
     "invalid option endpoint='collector:4318/v1development/profiles' (from OTEL_EXPORTER_OTLP_PROFILES_ENDPOINT): "
     "must be an absolute http:// or https:// URL such as http://localhost:4318/v1development/profiles "
     "(gRPC: http://localhost:4317)"),
    ("OTELPROF_ENDPOINT", "localhost:4318/v1development/profiles",
     "invalid option endpoint='localhost:4318/v1development/profiles' (from OTELPROF_ENDPOINT): must be an "
     "absolute http:// or https:// URL such as http://localhost:4318/v1development/profiles "
     "(gRPC: http://localhost:4317)"),
    ("OTELPROF_ENDPOINT", "ftp://collector/x",
     "invalid option endpoint='ftp://collector/x' (from OTELPROF_ENDPOINT): must be an absolute http:// or "
     "https:// URL such as http://localhost:4318/v1development/profiles (gRPC: http://localhost:4317)"),
    ("OTELPROF_PYROSCOPE_ENDPOINT", "pyroscope:4040",
     "invalid option pyroscope_endpoint='pyroscope:4040' (from OTELPROF_PYROSCOPE_ENDPOINT): must be an "
     "absolute http:// or https:// URL such as http://localhost:4040"),
])
def test_endpoint_without_a_scheme_fails_at_load_from_every_source(var, value, expected):
    assert _error(env={var: value}) == expected


def test_standard_endpoint_variables_are_not_ours_to_judge_when_otlp_is_not_used():
    # the tracing SDK reads the same variable; with profiles going to files it is none of our business
    c = load({"exporter": "file"}, env={"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"})
    assert c.exporter == ("file",)


def test_explicit_grpc_without_grpcio_is_a_config_error(no_grpcio):
    expected = ("invalid option protocol='grpc' (from {}): needs grpcio, which is not installed: "
                "pip install 'otelprof-middleware[grpc]' (or use protocol http/protobuf)")
    assert _error(env={"OTELPROF_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}) == \
        expected.format("OTELPROF_PROTOCOL")
    assert _error(env={"OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL": "grpc",
                       "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}) == \
        expected.format("OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL")
    assert _error({"protocol": "grpc", "exporter": "otlp"}) == (
        "invalid option protocol='grpc': needs grpcio, which is not installed: "
        "pip install 'otelprof-middleware[grpc]' (or use protocol http/protobuf)")
    with pytest.raises(ConfigError, match="needs grpcio"):
        load({"exporter": "otlp"}).replace(protocol="grpc")
    # not used (files): nothing to complain about
    assert load({"protocol": "grpc", "exporter": "file"}).protocol == "grpc"


def test_distro_default_grpc_without_grpcio_falls_back_to_http_and_says_so(no_grpcio, warnings_once):
    # opentelemetry-distro: os.environ.setdefault("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"}
    c = load(env=env)
    assert (c.exporter, c.protocol, c.endpoint) == (("otlp",), "http/protobuf",
                                                   "http://localhost:4318/v1development/profiles")
    assert c.source_of("protocol") == "OTEL_EXPORTER_OTLP_PROTOCOL"
    load(env=env)
    assert warnings_once() == [
        "otelprof: OTEL_EXPORTER_OTLP_PROTOCOL=grpc: opentelemetry-distro sets this by default, but grpcio is not "
        "installed, so profiles use http/protobuf; pip install 'otelprof-middleware[grpc]' for gRPC. Set "
        "OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL (or OTELPROF_PROTOCOL) to choose the profiles' protocol and "
        "silence this"]
    # the default endpoint follows the protocol actually used
    assert load({"exporter": "otlp"}, env={"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).endpoint == \
        "http://localhost:4318/v1development/profiles"
    # a profiles-specific variable decides, and silences the generic one
    c = load(env={**env, "OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL": "http/protobuf"})
    assert c.protocol == "http/protobuf" and c.source_of("protocol") == "OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL"


def test_distro_default_grpc_with_grpcio_is_followed(warnings_once):
    pytest.importorskip("grpc")
    c = load(env={"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert (c.protocol, c.endpoint) == ("grpc", "http://collector:4317")
    assert warnings_once() == []


def test_generic_http_json_means_http_protobuf_for_profiles(warnings_once):
    c = load(env={"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"})
    assert c.protocol == "http/protobuf"
    assert warnings_once() == [
        "otelprof: OTEL_EXPORTER_OTLP_PROTOCOL=http/json: profiles use http/protobuf (they have no JSON "
        "transport). Set OTEL_EXPORTER_OTLP_PROFILES_PROTOCOL (or OTELPROF_PROTOCOL) to choose the profiles' "
        "protocol and silence this"]
    # asked for explicitly, it is an error like any unsupported value
    assert _error(env={"OTELPROF_PROTOCOL": "http/json"}) == (
        "invalid option protocol='http/json' (from OTELPROF_PROTOCOL): must be one of http/protobuf, grpc")


def test_port_of_the_other_protocol_warns_once(warnings_once):
    pytest.importorskip("grpc")
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"}
    assert load(env=env).protocol == "grpc"  # a warning, not an error: ports can be remapped
    load(env=env)
    load({"endpoint": "http://c:4317/v1development/profiles"})
    assert warnings_once() == [
        "otelprof: endpoint http://localhost:4318 (from OTEL_EXPORTER_OTLP_ENDPOINT) uses port 4318, the usual "
        "OTLP/HTTP port, but protocol is grpc (from OTEL_EXPORTER_OTLP_PROTOCOL), which usually listens on 4317: "
        "profiles may not arrive",
        "otelprof: endpoint http://c:4317/v1development/profiles (from keyword argument) uses port 4317, the usual "
        "OTLP/gRPC port, but protocol is http/protobuf (from default), which usually listens on 4318: "
        "profiles may not arrive"]


def test_output_dir_that_is_a_file_fails_at_load(tmp_path):
    afile = tmp_path / "afile.txt"
    afile.write_text("")
    assert _error(env={"OTELPROF_OUTPUT_DIR": str(afile)}) == (
        f"invalid option output_dir={str(afile)!r} (from OTELPROF_OUTPUT_DIR): exists and is not a directory")
    assert _error({"output_dir": str(afile / "sub")}) == (
        f"invalid option output_dir={str(afile / 'sub')!r}: cannot be created: {afile} is not a directory")
    assert _error(settings={"output_dir": str(afile)}, settings_name="settings.OTELPROF") == (
        f"invalid option output_dir={str(afile)!r} (from settings.OTELPROF): exists and is not a directory")
    # the folder is only checked when the file exporter uses it
    assert load({"exporter": "console", "output_dir": str(afile)}).output_dir == str(afile)
    # a folder that does not exist yet is fine: the exporter creates it
    assert load({"output_dir": str(tmp_path / "a" / "b")}).output_dir == str(tmp_path / "a" / "b")


def test_default_output_dir_that_cannot_be_written_only_warns(tmp_path, monkeypatch, warnings_once):
    # nothing configured, on a host whose working directory has a file named "profiles":
    # the profiler must not stop the app, but it says why no profile will be written
    (tmp_path / "profiles").write_text("")
    monkeypatch.chdir(tmp_path)
    c = load()
    assert (c.exporter, c.output_dir) == (("file",), "profiles")
    assert warnings_once() == [
        "otelprof: the file exporter (the default when no OTLP endpoint is set) cannot write to "
        "output_dir='profiles' (the default): exists and is not a directory; profiles will be dropped. Set "
        "OTELPROF_OUTPUT_DIR to a writable folder or choose an exporter (OTELPROF_EXPORTER)"]
    # as soon as the user chose the exporter or the folder, it is an error
    assert _error({"exporter": "file"}) == (
        "invalid option output_dir='profiles': exists and is not a directory")


def test_output_dir_that_is_not_writable_fails_at_load(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o555)
    if os.geteuid() == 0:
        # root may write anywhere; answer as the kernel would for anyone else (mode bits)
        real_access = os.access

        def access(path, mode, **kw):
            if mode & os.W_OK and not os.stat(path).st_mode & 0o200:
                return False
            return real_access(path, mode, **kw)

        monkeypatch.setattr(os, "access", access)
    try:
        assert _error({"output_dir": str(ro)}) == (
            f"invalid option output_dir={str(ro)!r}: is a directory that is not writable")
        assert _error(env={"OTELPROF_OUTPUT_DIR": str(ro / "new" / "deeper")}) == (
            f"invalid option output_dir={str(ro / 'new' / 'deeper')!r} (from OTELPROF_OUTPUT_DIR): "
            f"cannot be created: {ro} is not writable")
    finally:
        os.chmod(ro, 0o755)


def test_source_of_names_where_each_value_came_from():
    c = load({"sample_hz": 50}, settings={"probability": 0.5}, settings_name="settings.OTELPROF",
             env={"OTELPROF_MAX_FILES": "3", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SERVICE_NAME": "s"})
    assert c.source_of("sample_hz") == "keyword argument"
    assert c.source_of("probability") == "settings.OTELPROF"
    assert c.source_of("max_files") == "OTELPROF_MAX_FILES"
    assert c.source_of("endpoint") == "OTEL_EXPORTER_OTLP_ENDPOINT"
    assert c.source_of("service_name") == "OTEL_SERVICE_NAME"
    assert c.source_of("exporter") == "default, as OTEL_EXPORTER_OTLP_ENDPOINT is set"
    assert c.source_of("output_dir") == "default"
    assert c.replace(max_files=4).source_of("max_files") == "keyword argument"
    assert load().source_of("endpoint") == "default"
    with pytest.raises(ConfigError, match="did you mean 'sample_hz'"):
        c.source_of("sample_hx")
    assert "_sources" not in Config.option_names()


def test_messages_in_the_configuration_reference_are_the_real_ones(tmp_path, monkeypatch, no_grpcio,
                                                                    warnings_once):
    import pathlib
    import re

    doc = (pathlib.Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    blocks = re.findall(r"```text\n(.*?)```", doc, flags=re.S)
    documented = [line for block in blocks for line in block.splitlines() if line.strip()]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile.txt").write_text("")
    produced = [
        "otelprof_middleware.config.ConfigError: " + _error({"probability": 1.5}),
        _error(env={"OTELPROF_SLOW_THRESHOLD": "fast"}),
        _error({"probabilty": 0.5}),
        _error(env={"OTEL_EXPORTER_OTLP_ENDPOINT": "localhost:4318"}),
        _error(env={"OTELPROF_OUTPUT_DIR": "afile.txt"}),
        _error(env={"OTELPROF_PROTOCOL": "grpc", "OTELPROF_EXPORTER": "otlp"}),
    ]
    load(env={"OTELPROF_PROBABILTY": "0.5"})
    load(env={"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://localhost:4318"})
    unknown_variable, distro = warnings_once()
    assert documented == produced + [distro]
    # the unknown-variable warning is quoted inline
    assert f"`{unknown_variable}`" in doc


# ---------------------------------------------------------------- profile types (issue 14)


def test_profile_types_default_and_parsing():
    c = Config.load({}, env={})
    assert c.profile_types == ("cpu", "wall")
    assert c.alloc_sample_interval == 512 * 1024
    assert c.lock_sample_rate == 1.0
    c = Config.load({"profile_types": "gc, LOCK", "alloc_sample_interval": "1MiB"}, env={})
    assert c.profile_types == ("cpu", "wall", "lock", "gc")
    assert c.alloc_sample_interval == 1024 * 1024
    # heap is computed from the allocation samples: it implies alloc
    assert Config.load({"profile_types": ["heap"]}, env={}).profile_types == ("cpu", "wall", "alloc", "heap")
    assert Config.load({}, env={"OTELPROF_PROFILE_TYPES": "alloc"}).source_of("profile_types") == \
        "OTELPROF_PROFILE_TYPES"


@pytest.mark.parametrize("kwargs, env, needle", [
    ({"profile_types": "cpu,lok"}, {}, "did you mean 'lock'?"),
    ({}, {"OTELPROF_PROFILE_TYPES": "allocs"},
     "(from OTELPROF_PROFILE_TYPES): unknown type 'allocs'; did you mean 'alloc'?"),
    ({"profile_types": ""}, {}, "needs at least one of"),
    ({"profile_types": 3}, {}, "must be a comma list of"),
    ({}, {"OTELPROF_LOCK_SAMPLE_RATE": "2"}, "lock_sample_rate='2' (from OTELPROF_LOCK_SAMPLE_RATE)"),
    ({"alloc_sample_interval": "0"}, {}, "alloc_sample_interval='0'"),
])
def test_profile_types_errors_name_option_value_and_source(kwargs, env, needle):
    with pytest.raises(ConfigError) as info:
        Config.load(kwargs, env=env)
    assert needle in str(info.value)
