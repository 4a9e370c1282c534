"""Flask integration through real servers (gunicorn gthread, werkzeug threaded)."""

from __future__ import annotations

import json
import os
import textwrap
import threading
import time
from typing import Any

import pytest

from helpers.pprof_decode import decode_pprof, stacks_by_function
from helpers.wsgi_servers import gunicorn_argv, start_server, werkzeug_argv, write_otel_setup

FLASK_APP = textwrap.dedent('''
    import os
    import time

    import otel_test_setup
    otel_test_setup.setup()

    from flask import Flask, Response
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    from otelprof_middleware.flask import OtelProf

    app = Flask(__name__)
    app.config["OTELPROF_EXPORTER"] = "file"
    app.config["OTELPROF_OUTPUT_DIR"] = os.environ["PROFILE_DIR"]
    app.config["OTELPROF_PROBABILITY"] = 0
    app.config["OTELPROF_MAX_CONCURRENT_PROFILES"] = 16
    app.config["OTELPROF_BATCH_TIMEOUT"] = "50ms"
    app.config["OTELPROF_HEADER_SECRET"] = "s3cret"

    if os.environ.get("ORDER") == "otelprof_first":
        prof = OtelProf()
        prof.init_app(app)           # factory pattern, before OpenTelemetry's hooks
        FlaskInstrumentor().instrument_app(app)
    else:
        FlaskInstrumentor().instrument_app(app)
        OtelProf(app)


    def burn_cpu(seconds):
        end = time.thread_time() + seconds
        x = 0
        while time.thread_time() < end:
            x += 1
        return x


    def flask_work_alpha():
        return burn_cpu(0.25)


    def flask_work_beta():
        return burn_cpu(0.25)


    def flask_stream_chunk():
        return burn_cpu(0.04)


    def flask_failing_helper():
        burn_cpu(0.05)
        raise ValueError("boom")


    @app.route("/ready")
    def ready():
        return "ok"


    @app.route("/items/<int:item_id>")
    def item(item_id):
        flask_work_alpha()
        return {"item": item_id, "pid": os.getpid()}


    @app.route("/beta")
    def beta():
        flask_work_beta()
        return "beta"


    @app.route("/stream")
    def stream():
        def generate():
            for i in range(5):
                flask_stream_chunk()
                yield b"chunk%d\\n" % i
        return Response(generate(), mimetype="text/plain")


    @app.route("/boom")
    def boom():
        flask_failing_helper()


    @app.route("/_spans")
    def spans():
        return Response(otel_test_setup.spans_json(), mimetype="application/json")
''')

SECRET = "s3cret"  # the header trigger needs it: these apps do not run in debug mode
HEADER = {"X-Enable-Profiling": SECRET}


def read_index(profile_dir: Any, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Index lines of the file exporter, waiting until there are at least ``n``."""
    path = os.path.join(str(profile_dir), "index.jsonl")
    deadline = time.monotonic() + timeout
    lines: list[dict[str, Any]] = []
    while True:
        if os.path.exists(path):
            with open(path) as f:
                lines = [json.loads(line) for line in f if line.strip()]
            if len(lines) >= n:
                return lines
        if time.monotonic() >= deadline:
            return lines
        time.sleep(0.05)


def profile_by_id(profile_dir: Any, profile_id: str, timeout: float = 15.0) -> tuple[dict[str, Any], Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in read_index(profile_dir, 0, timeout=0):
            if line["profile_id"] == profile_id:
                with open(os.path.join(str(profile_dir), line["file"]), "rb") as f:
                    return line, decode_pprof(f.read())
        time.sleep(0.05)
    raise AssertionError(f"profile {profile_id} not exported; index: {read_index(profile_dir, 0, timeout=0)}")


def functions_in(decoded: Any) -> set[str]:
    names: set[str] = set()
    for stack, _values, _labels in stacks_by_function(decoded):
        names.update(n.rsplit(".", 1)[-1] for n in stack)
    return names


@pytest.fixture
def flask_dir(tmp_path: Any) -> Any:
    write_otel_setup(tmp_path)
    (tmp_path / "flask_app.py").write_text(FLASK_APP)
    (tmp_path / "profiles").mkdir()
    return tmp_path


def server_span(spans: list[dict[str, Any]], span_id: str) -> dict[str, Any]:
    found = [s for s in spans if s["span_id"] == span_id]
    assert found, (span_id, spans)
    assert found[0]["kind"] == "SERVER", found
    return found[0]


@pytest.mark.integration
@pytest.mark.parametrize("order", ["otel_first", "otelprof_first"])
def test_flask_gunicorn_header_profile_links_span(flask_dir: Any, order: str) -> None:
    env = {"PROFILE_DIR": str(flask_dir / "profiles"), "ORDER": order}
    with start_server(gunicorn_argv("flask_app:app", worker_class="gthread", threads=4),
                      cwd=flask_dir, env=env) as server:
        status, headers, body = server.get("/items/7", headers=HEADER)
        assert status == 200, body
        pid = headers.get("x-profile-id")
        assert pid and len(pid) == 32
        # without the header: no profile, no header
        status, headers2, _ = server.get("/items/8")
        assert status == 200 and "x-profile-id" not in headers2
        line, decoded = profile_by_id(flask_dir / "profiles", pid)
        assert "flask_work_alpha" in functions_in(decoded)
        assert "burn_cpu" in functions_in(decoded)
        assert line["attributes"]["http.route"] == "/items/<int:item_id>"
        assert line["attributes"]["http.response.status_code"] == 200
        assert line["trigger"] == "header"
        assert line["link_source"] == "span"
        span = server_span(server.get_json("/_spans"), line["span_id"])
        assert span["attributes"].get("pyroscope.profile.id") == span["span_id"]
        assert line["trace_id"] == span["trace_id"]
        # every exported profile was asked for
        assert len(read_index(flask_dir / "profiles", 1)) == 1


@pytest.mark.integration
def test_flask_streamed_body_and_error_under_werkzeug(flask_dir: Any) -> None:
    env = {"PROFILE_DIR": str(flask_dir / "profiles")}
    with start_server(werkzeug_argv("flask_app"), cwd=flask_dir, env=env) as server:
        status, headers, body = server.get("/stream", headers=HEADER)
        assert status == 200 and body == b"".join(b"chunk%d\n" % i for i in range(5))
        stream_id = headers["x-profile-id"]
        status, headers, body = server.get("/boom", headers=HEADER)
        assert status == 500 and b"Internal Server Error" in body  # Flask's normal 500 page
        boom_id = headers["x-profile-id"]

        line, decoded = profile_by_id(flask_dir / "profiles", stream_id)
        names = functions_in(decoded)
        assert {"flask_stream_chunk", "generate"} <= names, names
        # the generator ran after the view returned: the profile lasts until the body ended
        assert line["duration_ms"] >= 150
        line, decoded = profile_by_id(flask_dir / "profiles", boom_id)
        assert line["attributes"]["otelprof.error"] == "ValueError"
        assert line["attributes"]["error.type"] == "ValueError"
        assert line["attributes"]["http.response.status_code"] == 500
        assert "flask_failing_helper" in functions_in(decoded)


@pytest.mark.integration
def test_flask_concurrent_requests_never_mix(flask_dir: Any) -> None:
    env = {"PROFILE_DIR": str(flask_dir / "profiles")}
    with start_server(gunicorn_argv("flask_app:app", worker_class="gthread", threads=8),
                      cwd=flask_dir, env=env) as server:
        results: list[tuple[str, str]] = []
        lock = threading.Lock()

        def call(path: str) -> None:
            status, headers, _ = server.get(path, headers=HEADER)
            assert status == 200
            with lock:
                results.append((path, headers["x-profile-id"]))

        threads = [threading.Thread(target=call, args=(p,)) for p in ["/items/1", "/beta"] * 3]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 6
        for path, pid in results:
            _line, decoded = profile_by_id(flask_dir / "profiles", pid)
            names = functions_in(decoded)
            mine, other = ("flask_work_alpha", "flask_work_beta") if path == "/items/1" else \
                ("flask_work_beta", "flask_work_alpha")
            assert mine in names, (path, names)
            assert other not in names, (path, names)


def test_flask_config_from_app_config(tmp_path: Any) -> None:
    flask = pytest.importorskip("flask")
    from otelprof_middleware.config import ConfigError
    from otelprof_middleware.flask import OtelProf

    app = flask.Flask("cfg")
    app.config.update(OTELPROF_PROBABILITY=0.25, OTELPROF_EXPORTER="none", OTELPROF_SAMPLE_HZ=50)
    prof = OtelProf()
    prof.init_app(app)
    assert prof.profiler is not None
    assert prof.profiler.config.probability == 0.25 and prof.profiler.config.sample_hz == 50
    prof.profiler.shutdown(timeout=1)

    bad = flask.Flask("bad")
    bad.config["OTELPROF_PROBABILITY"] = 2
    with pytest.raises(ConfigError) as info:
        OtelProf(bad)
    assert "app.config" in str(info.value) and "probability" in str(info.value)
