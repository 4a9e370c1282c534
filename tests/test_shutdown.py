"""Graceful shutdown through real servers: SIGTERM to uvicorn (ASGI lifespan shutdown)
and to gunicorn (worker exit, atexit).

* With a healthy collector, profiles in flight -- queued behind a long batch
  timeout, and one request still running when the signal arrives -- all reach the
  test OTLP receiver before the process exits.  These apps are minimal raw
  ASGI/WSGI apps that drive ``Profiler.profile()`` directly.
* With a collector that hangs or answers slowly, the process exits within
  ``shutdown_timeout`` + 1 s, and everything left is counted as dropped
  ``shutdown`` -- in the final ``stats()`` (read from a file the app writes after
  the profiler's shutdown) and in the log line -- while what the collector
  acknowledged is exactly what was counted as exported.  These apps use the real
  middlewares (``otelprof_middleware.asgi`` / ``.wsgi``) with the default profiler."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from typing import Any

import pytest

from helpers.otlp_receiver import OTLPReceiver
from helpers.wsgi_servers import gunicorn_argv, start_server, uvicorn_argv

ASGI_APP = '''
import asyncio, os, pathlib
from otelprof_middleware import Profiler

profiler = Profiler()  # configured by OTELPROF_* variables

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                ok = profiler.shutdown()
                pathlib.Path(os.environ["MARK_DIR"], "shutdown-" + str(ok)).touch()
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path != "/ready":
        with profiler.profile(path.strip("/")):
            if path == "/slow":
                pathlib.Path(os.environ["MARK_DIR"], "slow-started").touch()
                await asyncio.sleep(1.0)
            sum(range(10000))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})
'''

WSGI_APP = '''
import os, pathlib, time
from otelprof_middleware import Profiler

profiler = Profiler()  # flushed by the atexit hook when the worker exits

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path != "/ready":
        with profiler.profile(path.strip("/")):
            if path == "/slow":
                pathlib.Path(os.environ["MARK_DIR"], "slow-started").touch()
                time.sleep(1.0)
            sum(range(10000))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


def _names(rx: OTLPReceiver) -> list[str]:
    out = []
    for m in rx.messages:
        strings = m.dictionary.string_table
        for rp in m.resource_profiles:
            for sp in rp.scope_profiles:
                for prof in sp.profiles[::2]:  # CPU + wall per profile
                    for i in prof.attribute_indices:
                        kv = m.dictionary.attribute_table[i]
                        if strings[kv.key_strindex] == "otelprof.name":
                            out.append(kv.value.string_value)
    return sorted(out)


def _run(tmp_path: Any, argv: list[str], source: str, module: str) -> tuple[OTLPReceiver, str]:
    (tmp_path / f"{module}.py").write_text(source)
    marks = tmp_path / "marks"
    marks.mkdir()
    rx = OTLPReceiver().start()
    env = {"OTELPROF_EXPORTER": "otlp", "OTELPROF_ENDPOINT": rx.url, "OTELPROF_BATCH_TIMEOUT": "60",
           "OTELPROF_BATCH_SIZE": "100", "OTELPROF_MIN_SAMPLES": "0", "OTELPROF_SHUTDOWN_TIMEOUT": "10",
           "MARK_DIR": str(marks)}
    server = start_server(argv, cwd=tmp_path, env=env)
    try:
        for i in range(3):
            status, _, body = server.get(f"/job{i}")
            assert status == 200 and body == b"ok"
        assert rx.requests == []  # queued behind the 60 s batch timeout: in flight
        slow: list[Any] = []
        t = threading.Thread(target=lambda: slow.append(server.get("/slow")), daemon=True)
        t.start()
        deadline = time.monotonic() + 20
        while not (marks / "slow-started").exists():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        output = server.stop(timeout=30)  # SIGTERM while /slow runs
        t.join(10)
        assert slow and slow[0][0] == 200, output  # the running request completed
        # (uvicorn re-raises SIGTERM after its graceful shutdown, so it exits -15 and no
        # atexit handler runs there: the ASGI lifespan shutdown is what flushes)
        assert server.proc.returncode in (0, -15), output
        return rx, output
    finally:
        server.stop()
        rx.stop()


@pytest.mark.integration
def test_sigterm_to_uvicorn_flushes_profiles_in_flight(tmp_path):
    rx, output = _run(tmp_path, uvicorn_argv("asgiapp:app", extra=["--lifespan", "on"]), ASGI_APP, "asgiapp")
    assert _names(rx) == ["job0", "job1", "job2", "slow"], output
    assert (tmp_path / "marks" / "shutdown-True").exists(), output


@pytest.mark.integration
def test_sigterm_to_gunicorn_flushes_profiles_in_flight(tmp_path):
    rx, output = _run(tmp_path, gunicorn_argv("wsgiapp:app", workers=1), WSGI_APP, "wsgiapp")
    assert _names(rx) == ["job0", "job1", "job2", "slow"], output


# ----------------------------------------------------------------------------- a collector that does not keep up

MIDDLEWARE_ASGI_APP = '''
import json, os, pathlib, time
from otelprof_middleware import get_profiler
from otelprof_middleware.asgi import ProfilingMiddleware


async def inner(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    sum(range(20000))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


profiled = ProfilingMiddleware(inner)  # the default profiler, configured by OTELPROF_* variables


async def app(scope, receive, send):
    if scope["type"] != "lifespan":
        return await profiled(scope, receive, send)

    async def send_after_shutdown(msg):
        # the middleware shut the profiler down before it lets this message through;
        # uvicorn then re-raises SIGTERM, so nothing after this point would run
        if msg["type"] == "lifespan.shutdown.complete":
            st = dict(get_profiler().stats(), written_at=time.time())
            pathlib.Path(os.environ["STATS_FILE"]).write_text(json.dumps(st))
        await send(msg)

    return await profiled(scope, receive, send_after_shutdown)
'''

MIDDLEWARE_WSGI_APP = '''
import atexit, json, os, pathlib, time

def _write_stats():  # registered first, so it runs after the profiler's own exit flush
    from otelprof_middleware import get_profiler
    st = dict(get_profiler().stats(), written_at=time.time())
    pathlib.Path(os.environ["STATS_FILE"]).write_text(json.dumps(st))

atexit.register(_write_stats)

from otelprof_middleware.wsgi import ProfilingMiddleware


def inner(environ, start_response):
    sum(range(20000))
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


app = ProfilingMiddleware(inner)
'''

SHUTDOWN_TIMEOUT = 3.0
BATCH_SIZE = 5
#: after the profiler's shutdown, the server's own exit: gunicorn's arbiter reaps its
#: worker every 0.1 s, then both interpreters tear down (0.3-0.7 s on a quiet 2-core
#: machine, up to 1.8 s seen with other test suites running)
SERVER_EXIT_ALLOWANCE = 3.0
SHUTDOWN_LINE = re.compile(r"otelprof: shutdown: ([\d,]+) profile\(s\) not delivered within 3 s are dropped")


def _sigterm_with_a_lagging_collector(tmp_path: Any, argv: list[str], source: str, module: str,
                                      rx: OTLPReceiver, requests: int = 40) -> tuple[dict, str, float]:
    (tmp_path / f"{module}.py").write_text(source)
    stats_file = tmp_path / "final-stats.json"
    env = {"OTELPROF_EXPORTER": "otlp", "OTELPROF_ENDPOINT": rx.url, "OTELPROF_PROBABILITY": "1",
           "OTELPROF_MIN_SAMPLES": "0", "OTELPROF_MAX_PROFILES_PER_MINUTE": "100000",
           "OTELPROF_EXCLUDED_URLS": "/ready", "OTELPROF_BATCH_SIZE": str(BATCH_SIZE), "OTELPROF_BATCH_TIMEOUT": "0.05",
           "OTELPROF_EXPORT_TIMEOUT": "60", "OTELPROF_SHUTDOWN_TIMEOUT": str(SHUTDOWN_TIMEOUT),
           "STATS_FILE": str(stats_file)}
    server = start_server(argv, cwd=tmp_path, env=env)
    try:
        for i in range(requests):
            status, _, body = server.get(f"/job{i}")
            assert (status, body) == (200, b"ok")
        assert rx.wait_for(1, timeout=20)  # the exporter is now waiting on the collector
        sent_at = time.time()
        os.killpg(server.proc.pid, signal.SIGTERM)
        t0 = time.monotonic()
        server.proc.wait(30)
        exited = time.monotonic() - t0
        output = server.output()
    finally:
        server.stop()
    assert stats_file.exists(), output
    st = json.loads(stats_file.read_text())
    flushed = st.pop("written_at") - sent_at  # SIGTERM -> the profiler's shutdown done, stats written
    assert flushed <= SHUTDOWN_TIMEOUT + 1.0, (flushed, output)
    assert exited <= SHUTDOWN_TIMEOUT + 1.0 + SERVER_EXIT_ALLOWANCE, (exited, output)
    return st, output, exited


def _check_everything_left_is_counted(st: dict, output: str, rx: OTLPReceiver, took: float) -> int:
    otlp = st["exporters"]["otlp"]
    # nothing is pending any more: what was left at the deadline is all counted as shutdown
    assert st["queue_pending"] == 0 and otlp["queued"] == 0 and otlp["in_flight"] == 0, st
    assert st["active_sessions"] == 0 and st["profiles_pending"] == 0, st
    assert set(otlp["dropped"]) <= {"shutdown"} and set(st["dropped"]) <= {"shutdown"}, st
    left = otlp["dropped"].get("shutdown", 0) + st["dropped"].get("shutdown", 0)
    assert st["profiles_started"] == st["profiles_collected"] + st["dropped"].get("shutdown", 0), st
    assert st["profiles_collected"] == otlp["exported"] + otlp["dropped"].get("shutdown", 0), st
    # what we counted as exported is what the collector acknowledged -- but for the batch
    # in flight at the deadline: its answer may have been on its way as the attempt was
    # cut (it counts as shutdown: not confirmed in time)
    acked = rx.acked_ids()
    assert len(acked) == len(set(acked)), acked
    assert otlp["exported"] <= len(acked) <= otlp["exported"] + BATCH_SIZE, (otlp, len(acked))
    # and the log says the same number
    (line,) = SHUTDOWN_LINE.findall(output)
    assert int(line.replace(",", "")) == left > 0, output
    return left


@pytest.mark.integration
@pytest.mark.parametrize("collector", ["hang", "slow"])
def test_sigterm_to_uvicorn_with_a_lagging_collector_exits_in_time_and_counts_what_is_left(tmp_path, collector):
    rx = OTLPReceiver(fault="hang") if collector == "hang" else OTLPReceiver(delay=1.0)
    with rx:
        st, output, took = _sigterm_with_a_lagging_collector(
            tmp_path, uvicorn_argv("asgiapp:app", extra=["--lifespan", "on"]), MIDDLEWARE_ASGI_APP, "asgiapp", rx)
        _check_everything_left_is_counted(st, output, rx, took)
        if collector == "hang":
            assert st["exporters"]["otlp"]["exported"] == 0
            assert st["exporters"]["otlp"]["dropped"]["shutdown"] == st["profiles_collected"] == 40
        else:  # a slow collector (1 s per request) got some batches in the 3 s budget
            assert 0 < st["exporters"]["otlp"]["exported"] < 40


@pytest.mark.integration
@pytest.mark.parametrize("collector", ["hang", "slow"])
def test_sigterm_to_gunicorn_with_a_lagging_collector_exits_in_time_and_counts_what_is_left(tmp_path, collector):
    rx = OTLPReceiver(fault="hang") if collector == "hang" else OTLPReceiver(delay=1.0)
    with rx:
        # gunicorn's graceful timeout (5 s here) must exceed shutdown_timeout (3 s)
        st, output, took = _sigterm_with_a_lagging_collector(
            tmp_path, gunicorn_argv("wsgiapp:app", workers=1), MIDDLEWARE_WSGI_APP, "wsgiapp", rx)
        _check_everything_left_is_counted(st, output, rx, took)
        if collector == "hang":
            assert st["exporters"]["otlp"]["exported"] == 0
            assert st["exporters"]["otlp"]["dropped"]["shutdown"] == st["profiles_collected"] == 40
        else:
            assert 0 < st["exporters"]["otlp"]["exported"] < 40
