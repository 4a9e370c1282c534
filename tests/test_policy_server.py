"""End to end through real servers: the triggers of the request policy.

1. A raw ASGI app wrapped by a tiny adapter *in this test* that drives the shared
   lifecycle exactly as the middlewares do (begin at entry with the router's answer
   on demand, set_route after routing, set_status, finish at the end), under
   uvicorn in a subprocess.
2. The project's ASGI middleware (uvicorn) and WSGI middleware (gunicorn), when
   present, on the same scenarios (the app's router given as ``route_of``).

Profiles are read back from the file exporter (index.jsonl + the pprof files).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any, Iterator

import httpx
import pytest

from helpers.asgi_server import serve_in_subprocess, wait_http
from helpers.pprof_decode import decode_pprof, stacks_by_function

pytestmark = pytest.mark.integration

APP = textwrap.dedent('''
    import asyncio, json, os, threading, time, types
    from urllib.parse import parse_qs

    from otelprof_middleware import Profiler
    from otelprof_middleware.integrations.lifecycle import RequestProfiling
    from otelprof_middleware.policy import RequestInfo

    profiler = Profiler()  # all options from OTELPROF_* variables
    windows = {}

    def slow_request_marker(seconds):
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            sum(i * i for i in range(300))

    def failing_request_marker(seconds):
        slow_request_marker(seconds)

    def route_of(path):
        if path.startswith("/items/"):
            return "/items/{item_id}"
        return path

    def handle(path, query):
        """The application: returns (status, body)."""
        if not path.startswith(("/admin", "/healthz")):
            slow_request_marker(0.03)  # every request does a little work (a few samples at 200 Hz)
        if path.startswith("/items/"):
            if "slow" in query:
                slow_request_marker(float(query["slow"][0]))
            return 200, b"item"
        if path == "/fail":
            if "ok" not in query:
                failing_request_marker(0.15)
                return 500, b"failed"
            return 200, b"fine now"
        if path == "/boom":
            failing_request_marker(0.1)
            raise RuntimeError("boom")
        if path == "/admin/window":
            w = profiler.enable_window(float(query["seconds"][0]), route=query.get("route", [None])[0])
            windows[query.get("name", ["w"])[0]] = w
            return 200, b"opened"
        if path == "/admin/close":
            windows.pop(query.get("name", ["w"])[0]).close()
            return 200, b"closed"
        if path == "/admin/flush":
            ok = profiler.force_flush(10)
            st = profiler.stats()
            st["policy"] = profiler.policy.state().as_dict()
            return 200, json.dumps(st, default=str).encode()
        return 200, b"ok"

    # ---------------------------------------------------------------- raw ASGI + adapter
    async def raw_app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        query = parse_qs(scope.get("query_string", b"").decode())
        path = scope["path"]
        if path.startswith("/admin/flush"):
            loop = asyncio.get_running_loop()
            status, body = await loop.run_in_executor(None, handle, path, query)
        else:
            scope["route_template"] = route_of(path)  # what a router would leave in the scope
            scope["route"] = types.SimpleNamespace(path=route_of(path), path_format=route_of(path))
            status, body = handle(path, query)
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    rp = RequestProfiling(profiler)

    async def adapter(scope, receive, send):
        """Drives the shared lifecycle like the middlewares do."""
        if scope["type"] != "http":
            return await raw_app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        info = RequestInfo(method=scope["method"], path=scope["path"],
                           url="http://127.0.0.1" + scope["path"], header=headers.get,
                           route_resolver=lambda: route_of(scope["path"]))  # the router, asked on demand
        h = rp.begin(info, traceparent=headers.get("traceparent"))

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                h.set_route(scope.get("route_template"))  # known after routing
                h.set_status(message["status"])
            await send(message)

        try:
            await raw_app(scope, receive, send_wrapper)
        except BaseException as exc:
            h.finish(error=exc)
            raise
        h.finish()

    # ---------------------------------------------------------------- the project's middlewares
    def asgi_middleware_app():
        from otelprof_middleware.asgi import ProfilingMiddleware
        return ProfilingMiddleware(raw_app, profiler=profiler, route_of=lambda scope: route_of(scope["path"]))

    def wsgi_raw(environ, start_response):
        handle_ = environ.get("otelprof.handle")  # a router (Flask, Django) reports its route like this
        if handle_ is not None:
            handle_.set_route(route_of(environ["PATH_INFO"]))
        query = parse_qs(environ.get("QUERY_STRING", ""))
        status, body = handle(environ["PATH_INFO"], query)
        start_response(f"{status} X", [("Content-Type", "text/plain")])
        return [body]

    def wsgi_middleware_app():
        from otelprof_middleware.integrations.wsgi import ProfilingMiddleware
        return ProfilingMiddleware(wsgi_raw, profiler=profiler, route_of=lambda environ: route_of(environ["PATH_INFO"]))

    MODE = os.environ.get("APP_MODE", "adapter")
    if MODE == "adapter":
        app = adapter
    elif MODE == "asgi":
        app = asgi_middleware_app()
    else:
        app = wsgi_middleware_app()
''')


GATES = textwrap.dedent('''
    def gate(info):
        """The custom gate of the end-to-end tests: force one path, veto another."""
        if info.path == "/items/forced":
            return True
        if info.path == "/items/vetoed":
            return False
        return None
''')


def _env(out: str, **options: Any) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELPROF_", "OTEL_"))}
    env.update({"OTELPROF_EXPORTER": "file", "OTELPROF_OUTPUT_DIR": out, "OTELPROF_PROBABILITY": "0",
                "OTELPROF_CPU_TRIGGER": "false", "OTELPROF_MAX_OVERHEAD": "1", "OTELPROF_BATCH_TIMEOUT": "0.05",
                "OTELPROF_SAMPLE_HZ": "200", "OTELPROF_EXCLUDED_URLS": "/healthz,/admin",
                "OTELPROF_HEADER_TRUST": "any",  # a plain app has no debug mode
                "OTELPROF_URL_PATHS": "raw"})  # requests are told apart by their raw url.path here
    for k, v in options.items():
        env["OTELPROF_" + k.upper()] = str(v)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [env.get("PYTHONPATH", "")] if p)
    return env


def _profiles(out: str) -> list[dict[str, Any]]:
    path = os.path.join(out, "index.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _functions(out: str, entry: dict[str, Any]) -> set[str]:
    with open(os.path.join(out, entry["file"]), "rb") as f:
        decoded = decode_pprof(f.read())
    return {n.rsplit(".", 1)[-1] for names, _v, _l in stacks_by_function(decoded) for n in names}


def _flush(c: httpx.Client) -> dict[str, Any]:
    r = c.get("/admin/flush", timeout=20)
    assert r.status_code == 200
    return r.json()


@pytest.fixture
def app_dir(tmp_path: Any) -> str:
    d = tmp_path / "app"
    d.mkdir()
    (d / "policy_app.py").write_text(APP)
    (d / "gates.py").write_text(GATES)
    return str(d)


@pytest.fixture(params=["adapter", "asgi"])
def asgi_mode(request: Any) -> str:
    if request.param == "asgi":
        try:
            from otelprof_middleware.asgi import ProfilingMiddleware  # noqa: F401
        except ImportError:
            pytest.skip("ASGI middleware not available")
    return request.param


def check_tail_triggers(c: httpx.Client, out: str) -> None:
    """Promotion, route arming after slow/failing requests, on-demand, exclusions."""
    for _ in range(3):
        assert c.get("/items/1").status_code == 200
    assert c.get("/healthz", headers={"X-Enable-Profiling": "1"}).status_code == 200
    assert _flush(c)["policy"]["armed_routes"] == {}
    assert _profiles(out) == []  # probability 0: nothing yet

    # a slow request (0.8 s of CPU, threshold 0.5 s) is promoted while it runs
    assert c.get("/items/7", params={"slow": "0.8"}).status_code == 200
    st = _flush(c)
    slow = [p for p in _profiles(out) if p["attributes"].get("url.path") == "/items/7"]
    assert len(slow) == 1, _profiles(out)
    assert slow[0]["trigger"] == "slow"
    assert slow[0]["attributes"]["otelprof.unsampled_head_ms"] >= 500
    assert slow[0]["attributes"]["http.route"] == "/items/{item_id}"
    assert "slow_request_marker" in _functions(out, slow[0])
    assert st["promotions"] == 1
    assert "slow:/items/{item_id}" in st["policy"]["armed_routes"]

    # ... and arms its route: the next (fast) request on that route is profiled
    assert c.get("/items/8").status_code == 200
    _flush(c)
    armed = [p for p in _profiles(out) if p["attributes"].get("url.path") == "/items/8"]
    assert [p["trigger"] for p in armed] == ["slow"]

    # a failing request arms its route for error profiles (error_sample_rate=1)
    assert c.get("/fail").status_code == 500
    assert c.get("/fail", params={"ok": "1"}).status_code == 200
    _flush(c)
    # (on a loaded machine the failing request itself may run past the slow threshold
    # and be promoted too; the follower is what the error arming is about)
    err = [p for p in _profiles(out) if p["name"].endswith("/fail")
           and p["attributes"].get("http.response.status_code") == 200]
    assert len(err) == 1 and "error" in err[0]["trigger"].split(","), _profiles(out)

    # on-demand window for one route, opened and closed by admin tooling
    n = len(_profiles(out))
    c.get("/admin/window", params={"seconds": "600", "route": "/ondemand", "name": "a"})
    c.get("/ondemand")
    c.get("/other")
    c.get("/admin/close", params={"name": "a"})
    c.get("/ondemand")
    _flush(c)
    new = [p for p in _profiles(out)[n:] if "on_demand" in p["trigger"].split(",")]
    assert [p["name"] for p in new] == ["GET /ondemand"], _profiles(out)[n:]

    # excluded URLs are never profiled, whatever asks for it
    assert not [p for p in _profiles(out) if "/healthz" in p["name"] or "/admin" in p["name"]]


def check_flight_recorder(c: httpx.Client, out: str) -> None:
    for _ in range(5):
        assert c.get("/items/1").status_code == 200
    assert c.get("/fail").status_code == 500
    try:
        r = c.get("/boom")
        assert r.status_code == 500
    except httpx.HTTPError:
        pass  # a raw ASGI app that raises may just close the connection
    st = _flush(c)
    profs = _profiles(out)
    assert sorted(p["name"] for p in profs) == ["GET /boom", "GET /fail"], profs
    for p in profs:
        assert p["trigger"] == "error"
        assert p["attributes"]["otelprof.flight_recorder_hz"] == 50
        # the profile covers the whole request, from its first frames
        assert "failing_request_marker" in _functions(out, p)
    assert st["recordings_kept"] == 2
    assert st["profiles_discarded"] >= 5


def test_tail_triggers_through_uvicorn(app_dir: str, tmp_path: Any, asgi_mode: str) -> None:
    out = str(tmp_path / "profiles")
    env = _env(out, slow_threshold="0.5", error_sample_rate="1", slow_profile_duration="600",
               error_profile_duration="600")
    env["APP_MODE"] = asgi_mode
    with serve_in_subprocess("policy_app:app", env=env, app_dir=app_dir, health_path="/healthz") as srv:
        with httpx.Client(base_url=srv.base_url, timeout=20) as c:
            check_tail_triggers(c, out)


def test_flight_recorder_through_uvicorn(app_dir: str, tmp_path: Any, asgi_mode: str) -> None:
    out = str(tmp_path / "profiles")
    env = _env(out, tail_sampling_hz="50", slow_threshold="30", error_profile_duration="0")
    env["APP_MODE"] = asgi_mode
    with serve_in_subprocess("policy_app:app", env=env, app_dir=app_dir, health_path="/healthz") as srv:
        with httpx.Client(base_url=srv.base_url, timeout=20) as c:
            check_flight_recorder(c, out)


def _gunicorn(app_dir: str, env: dict[str, str]) -> Iterator[str]:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "1", "--threads", "4", "-b", f"127.0.0.1:{port}",
         "--chdir", app_dir, "policy_app:app"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


@pytest.fixture
def wsgi_available() -> None:
    try:
        from otelprof_middleware.integrations.wsgi import ProfilingMiddleware  # noqa: F401
    except ImportError:
        pytest.skip("WSGI middleware not available")


@pytest.mark.usefixtures("wsgi_available")
def test_tail_triggers_through_gunicorn_wsgi(app_dir: str, tmp_path: Any) -> None:
    out = str(tmp_path / "profiles")
    env = _env(out, slow_threshold="0.5", error_sample_rate="1", slow_profile_duration="600",
               error_profile_duration="600")
    env["APP_MODE"] = "wsgi"
    for base in _gunicorn(app_dir, env):
        with httpx.Client(base_url=base, timeout=20) as c:
            check_tail_triggers(c, out)


@pytest.mark.usefixtures("wsgi_available")
def test_flight_recorder_through_gunicorn_wsgi(app_dir: str, tmp_path: Any) -> None:
    out = str(tmp_path / "profiles")
    env = _env(out, tail_sampling_hz="50", slow_threshold="30", error_profile_duration="0")
    env["APP_MODE"] = "wsgi"
    for base in _gunicorn(app_dir, env):
        with httpx.Client(base_url=base, timeout=20) as c:
            check_flight_recorder(c, out)


def check_cpu_trigger(c: httpx.Client, out: str) -> None:
    """A CPU burn in the server process fires the high-CPU trigger; requests are then profiled."""
    assert c.get("/items/1").status_code == 200
    st = _flush(c)
    assert not st["policy"]["high_cpu_active"]
    assert _profiles(out) == []  # probability 0, CPU quiet: nothing profiled
    # ~2.5 s of CPU on one core (threshold 0.1 of the cores available, window 1 s)
    assert c.get("/items/9", params={"slow": "2.5"}).status_code == 200
    profiled: list[dict[str, Any]] = []
    for _ in range(40):  # the monitor reads once per second: poll, don't sleep blindly
        assert c.get("/items/2").status_code == 200
        st = _flush(c)
        profiled = [p for p in _profiles(out) if "high_cpu" in p["trigger"].split(",")]
        if profiled:
            break
    assert profiled, (st["policy"], _profiles(out))
    assert st["policy"]["high_cpu_active"]
    assert profiled[0]["attributes"]["http.route"] == "/items/{item_id}"


def _cpu_env(out: str) -> dict[str, str]:
    # 0.1 of the cores: an idle server stays far below it, and a burning one stays above it
    # even when other processes share the machine's cores (the burn then gets less of one)
    env = _env(out, cpu_threshold="0.1", cpu_window="1", cpu_profile_duration="600", cpu_cooldown="600",
               slow_threshold="30")
    env["OTELPROF_CPU_TRIGGER"] = "true"
    return env


def test_cpu_trigger_through_uvicorn(app_dir: str, tmp_path: Any) -> None:
    out = str(tmp_path / "profiles")
    env = _cpu_env(out)
    env["APP_MODE"] = "asgi"
    with serve_in_subprocess("policy_app:app", env=env, app_dir=app_dir, health_path="/healthz") as srv:
        with httpx.Client(base_url=srv.base_url, timeout=20) as c:
            check_cpu_trigger(c, out)


@pytest.mark.usefixtures("wsgi_available")
def test_cpu_trigger_through_gunicorn_wsgi(app_dir: str, tmp_path: Any) -> None:
    out = str(tmp_path / "profiles")
    env = _cpu_env(out)
    env["APP_MODE"] = "wsgi"
    for base in _gunicorn(app_dir, env):
        with httpx.Client(base_url=base, timeout=20) as c:
            check_cpu_trigger(c, out)


def check_custom_gate(c: httpx.Client, out: str) -> None:
    """should_profile (a dotted path from the environment): True forces, False vetoes, None defers."""
    assert c.get("/items/1").status_code == 200
    assert c.get("/items/forced").status_code == 200
    assert c.get("/items/vetoed", headers={"X-Enable-Profiling": "1"}).status_code == 200
    assert c.get("/items/2", headers={"X-Enable-Profiling": "1"}).status_code == 200
    st = _flush(c)
    got = {p["attributes"]["url.path"]: p["trigger"] for p in _profiles(out)}
    assert got == {"/items/forced": "custom", "/items/2": "header"}, got
    assert st["declined"].get("custom") == 1


def test_custom_gate_through_uvicorn(app_dir: str, tmp_path: Any) -> None:
    out = str(tmp_path / "profiles")
    env = _env(out, should_profile="gates:gate", slow_threshold="30")
    env["APP_MODE"] = "asgi"
    with serve_in_subprocess("policy_app:app", env=env, app_dir=app_dir, health_path="/healthz") as srv:
        with httpx.Client(base_url=srv.base_url, timeout=20) as c:
            check_custom_gate(c, out)


@pytest.mark.usefixtures("wsgi_available")
def test_custom_gate_through_gunicorn_wsgi(app_dir: str, tmp_path: Any) -> None:
    out = str(tmp_path / "profiles")
    env = _env(out, should_profile="gates:gate", slow_threshold="30")
    env["APP_MODE"] = "wsgi"
    for base in _gunicorn(app_dir, env):
        with httpx.Client(base_url=base, timeout=20) as c:
            check_custom_gate(c, out)
