"""Credentials go only where they belong and never into a message (security review
M4, L9, L10): each test reproduces the review's experiment.

* M4: the OTLP headers (``OTEL_EXPORTER_OTLP_HEADERS``, often a vendor key) are never
  sent to Pyroscope; Pyroscope has its own ``pyroscope_headers`` and auth options.
* L9: a password in an endpoint URL, header values and secret options appear in no
  log line, exception, ``ConfigError``, ``repr(Config)``, ``stats()`` or exported data.
* L10: gRPC ``insecure`` never turns an ``https://`` endpoint into plaintext.
"""

from __future__ import annotations

import gzip
import logging
import socket
import time
from typing import Any

import pytest

from otelprof_middleware import Config, ConfigError
from otelprof_middleware._redact import Scrubber, redact_url
from otelprof_middleware.export.registry import create_exporter

from helpers.otlp_receiver import OTLPReceiver
from helpers.pyroscope_receiver import PyroscopeReceiver

COLLECTOR_TOKEN = "COLLECTOR-TOKEN-7f3a9"
VENDOR_KEY = "VENDOR-KEY-51c2e8"
PASSWORD = "PASSWORD-d41d8cd9"
HEADER_SECRET = "s3cr3t-value-9e107d"
PYRO_TOKEN = "PYRO-TOKEN-0cc175b9"
SECRETS = (COLLECTOR_TOKEN, VENDOR_KEY, PASSWORD, HEADER_SECRET, PYRO_TOKEN)


def leaked(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def burn(seconds: float) -> int:
    end = time.thread_time() + seconds
    x = 0
    while time.thread_time() < end:
        x += sum(range(200))
    return x


# --------------------------------------------------------------------------- M4


@pytest.mark.parametrize("exporter", ["pyroscope", "otlp,pyroscope"])
def test_otlp_headers_never_reach_pyroscope(profiler_factory: Any, monkeypatch: Any, exporter: str) -> None:
    # the review's experiment: process-wide OTLP headers, exporter=pyroscope
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer {COLLECTOR_TOKEN},x-api-key={VENDOR_KEY}")
    with PyroscopeReceiver() as pyro, OTLPReceiver() as otlp:
        profiler = profiler_factory(exporter=exporter, endpoint=otlp.url, pyroscope_endpoint=pyro.url,
                                    pyroscope_headers="x-pyro-team=blue", min_samples=0, batch_timeout=60)
        with profiler.profile("job"):
            burn(0.02)
        assert profiler.force_flush(20)
        (push,) = pyro.requests
        assert "authorization" not in push.headers and "x-api-key" not in push.headers
        assert not leaked(str(push.headers))
        assert push.headers["x-pyro-team"] == "blue"  # Pyroscope's own headers do go there
        if "otlp" in exporter:  # ... and the OTLP ones still go to the OTLP endpoint
            (rec,) = otlp.requests
            assert rec.header("authorization") == f"Bearer {COLLECTOR_TOKEN}"
            assert rec.header("x-api-key") == VENDOR_KEY
            assert "x-pyro-team" not in {k.lower() for k in rec.headers}


def test_pyroscope_token_is_its_own() -> None:
    config = Config.load(dict(exporter="pyroscope", pyroscope_token=PYRO_TOKEN,
                              headers={"Authorization": f"Bearer {COLLECTOR_TOKEN}"}), env={})
    exporter: Any = create_exporter("pyroscope", config)
    assert exporter.headers["Authorization"] == f"Bearer {PYRO_TOKEN}"
    assert not leaked(str({k: v for k, v in exporter.headers.items() if k != "Authorization"}))


def test_otlp_certificate_from_the_environment_is_not_used_for_pyroscope(tmp_path: Any) -> None:
    ca = tmp_path / "otlp-ca.pem"
    ca.write_text("not used")
    env = {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(ca)}
    otlp: Any = create_exporter("otlp", Config.load(dict(exporter="otlp,pyroscope"), env=env))
    pyro: Any = create_exporter("pyroscope", Config.load(dict(exporter="otlp,pyroscope"), env=env))
    assert otlp.http.certificate == str(ca)
    assert pyro.http.certificate == ""  # the default trust roots
    # our own option is meant for every destination
    mine: Any = create_exporter("pyroscope", Config.load(dict(exporter="pyroscope", certificate=str(ca)), env={}))
    assert mine.http.certificate == str(ca)


# --------------------------------------------------------------------------- L9


def test_repr_of_config_shows_no_credential() -> None:
    config = Config.load(dict(
        header_secret=HEADER_SECRET, headers={"Authorization": f"Bearer {COLLECTOR_TOKEN}"},
        endpoint=f"https://user:{PASSWORD}@collector.example/v1development/profiles",
        pyroscope_endpoint=f"https://u:{PASSWORD}@pyroscope.example", pyroscope_basic_auth=f"user:{PASSWORD}",
        pyroscope_token=PYRO_TOKEN, pyroscope_headers={"x-key": VENDOR_KEY}), env={})
    assert config.header_secret == HEADER_SECRET  # the values themselves are intact
    for text in (repr(config), str(config)):
        assert leaked(text) == [], text
        assert "header_secret='***'" in text and "Authorization" in text  # which options are set still shows
        assert "https://collector.example/v1development/profiles" in text


def test_config_error_masks_the_header_values() -> None:
    # the review's experiment: a malformed OTEL_EXPORTER_OTLP_HEADERS
    env = {"OTEL_EXPORTER_OTLP_HEADERS": f"Authorization=Bearer%20{COLLECTOR_TOKEN},x-team"}
    with pytest.raises(ConfigError) as ei:
        Config.load({}, env=env)
    text = str(ei.value)
    assert leaked(text) == [] and leaked(repr(ei.value.value)) == []
    assert ei.value.option == "headers" and "OTEL_EXPORTER_OTLP_HEADERS" in text
    assert "Authorization=***" in text  # the user still sees which pair is wrong


@pytest.mark.parametrize("option, value", [
    ("pyroscope_basic_auth", 12345678),
    ("pyroscope_token", ["tok", PYRO_TOKEN]),
    ("header_secret", {HEADER_SECRET: 1}),
    ("endpoint", f"user:{PASSWORD}@collector:4318"),  # no scheme
    ("pyroscope_headers", f"x-key={VENDOR_KEY},broken"),
])
def test_config_error_never_shows_a_secret_option(option: str, value: Any) -> None:
    with pytest.raises(ConfigError) as ei:
        Config.load({option: value}, env={})
    assert ei.value.option == option
    assert leaked(str(ei.value)) == [] and "12345678" not in str(ei.value)


def test_failed_export_logs_and_stats_show_no_password(profiler_factory: Any, caplog: Any) -> None:
    # the review's experiment: a password in the endpoint URL, a dead collector
    caplog.set_level(logging.DEBUG, logger="otelprof_middleware")
    url = f"http://user:{PASSWORD}@127.0.0.1:{dead_port()}/v1development/profiles"
    profiler = profiler_factory(exporter="otlp", endpoint=url, headers={"x-api-key": VENDOR_KEY},
                                retry_timeout=0, min_samples=0, batch_size=1)
    with profiler.profile("nowhere"):
        burn(0.01)
    assert profiler.force_flush(30)
    st = profiler.stats()
    assert st["exporters"]["otlp"]["dropped"] == {"export_failed": 1} and st["dropped"] == {}
    deadline = time.monotonic() + 10  # the drop is logged by the worker right after it is counted
    while "ConnectError" not in "\n".join(r.getMessage() for r in caplog.records):
        assert time.monotonic() < deadline, caplog.records
        time.sleep(0.01)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "ConnectError" in text and f"127.0.0.1:{url.rsplit(':', 1)[1].split('/')[0]}" in text
    assert leaked(text) == [] and leaked(str(st)) == []
    assert leaked(repr(profiler.config)) == []


def test_transport_messages_never_quote_a_header_value() -> None:
    # h11 quotes an illegal header value in its exception: b'Bearer ...\n'
    from otelprof_middleware.export._http import HTTPTransport
    from otelprof_middleware.export.retry import Attempt

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    try:
        value = f"Bearer {COLLECTOR_TOKEN}\n"
        transport = HTTPTransport(secrets=[value])
        attempt = transport.post(f"http://127.0.0.1:{server.getsockname()[1]}/x", content=b"x",
                                 headers={"authorization": value}, timeout=2)
        assert isinstance(attempt, Attempt) and not attempt.ok
        assert "Illegal header value" in attempt.message  # the library did try to quote it ...
        assert leaked(attempt.message) == []  # ... and we masked it
        transport.close()
    finally:
        server.close()


def test_exported_profiles_and_stats_carry_no_credential(profiler_factory: Any) -> None:
    starlette = pytest.importorskip("starlette")
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from otelprof_middleware.asgi import ProfilingMiddleware

    assert starlette

    def work(request: Any) -> PlainTextResponse:
        burn(0.02)
        return PlainTextResponse("ok")

    with OTLPReceiver() as rx:
        profiler = profiler_factory(exporter="otlp", endpoint=rx.url, headers={"authorization": COLLECTOR_TOKEN},
                                    header_secret=HEADER_SECRET, probability=0.0, min_samples=0, batch_size=1)
        app = Starlette(routes=[Route("/work", work)])
        app.add_middleware(ProfilingMiddleware, profiler=profiler)
        with TestClient(app) as client:
            r = client.get("/work", headers={"X-Enable-Profiling": HEADER_SECRET})
        assert r.status_code == 200 and r.headers.get("x-profile-id")
        assert profiler.force_flush(10)
        (rec,) = rx.accepted
        body = gzip.decompress(rec.raw_body).decode("latin-1")
        assert r.headers["x-profile-id"] == rec.message.resource_profiles[0].scope_profiles[0].profiles[0] \
            .profile_id.hex()
        assert leaked(body) == []
        assert leaked(str(profiler.stats())) == []


def test_redaction_helpers() -> None:
    assert redact_url(f"https://user:{PASSWORD}@host:4318/v1?api_key={VENDOR_KEY}&x") == \
        "https://host:4318/v1?api_key=***&x"
    assert redact_url(f"user:{PASSWORD}@host:4318") == "host:4318"
    assert redact_url("http://localhost:4318/v1development/profiles") == "http://localhost:4318/v1development/profiles"
    scrub = Scrubber([f"Bearer {COLLECTOR_TOKEN}"])
    assert scrub(f"got b'Bearer {COLLECTOR_TOKEN}\\n' from http://u:{PASSWORD}@h/x") == "got b'***\\n' from http://h/x"
    assert scrub(f"token {COLLECTOR_TOKEN} alone") == "token *** alone"


# --------------------------------------------------------------------------- L10


def test_insecure_never_downgrades_an_https_grpc_endpoint(monkeypatch: Any) -> None:
    pytest.importorskip("grpc")
    from otelprof_middleware.export.otlp_grpc import grpc_target

    # our own option with an https:// endpoint: a contradiction, said at start-up
    with pytest.raises(ConfigError) as ei:
        create_exporter("otlp", Config.load(dict(exporter="otlp", protocol="grpc", insecure=True,
                                                 endpoint=f"https://u:{PASSWORD}@collector.example:4317"), env={}))
    text = str(ei.value)
    assert ei.value.option == "insecure" and "https://collector.example:4317" in text and leaked(text) == []
    with pytest.raises(ConfigError, match="OTELPROF_INSECURE"):
        create_exporter("otlp", Config.load(dict(exporter="otlp", protocol="grpc"),
                                            env={"OTELPROF_INSECURE": "true",
                                                 "OTELPROF_ENDPOINT": "https://collector.example:4317"}))
    # the standard variable, often set process-wide: https wins, as the OTLP spec says
    env = {"OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "https://collector.example:4317",
           "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    exporter: Any = create_exporter("otlp", Config.load({}, env=env))
    assert exporter.tls is True and exporter.target == "collector.example:4317"
    # insecure decides only without a scheme; http:// never uses TLS
    assert grpc_target("collector:4317", insecure=True) == ("collector:4317", False)
    assert grpc_target("collector:4317", insecure=False) == ("collector:4317", True)
    assert grpc_target("http://collector:4317", insecure=False) == ("collector:4317", False)
    assert grpc_target("https://collector:4317", insecure=True) == ("collector:4317", True)
