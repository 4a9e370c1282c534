"""Config: precedence, environment variables, parsing and error messages."""

from __future__ import annotations

import pytest

from otelprof_middleware import Config, ConfigError, Profiler
from otelprof_middleware.config import parse_duration


def load(kwargs=None, *, settings=None, env=None):
    return Config.load(kwargs, settings=settings, env=env if env is not None else {})


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


def test_unknown_otelprof_env_variables_are_ignored():
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
