"""Graceful shutdown through real servers: SIGTERM to uvicorn (ASGI lifespan shutdown)
and to gunicorn (worker exit, atexit) with profiles in flight -- queued behind a long
batch timeout, and one request still running when the signal arrives.  Every
profile must reach the test OTLP receiver before the process exits.

The apps are minimal raw ASGI/WSGI apps that drive ``Profiler.profile()`` directly."""

from __future__ import annotations

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
