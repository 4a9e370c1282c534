"""Start real web servers on 127.0.0.1 in subprocesses, for end-to-end tests.

    with start_server(["{python}", "-m", "gunicorn", "-b", "127.0.0.1:{port}", "app:app"],
                      cwd=tmp_path, env={...}) as server:
        status, headers, body = server.get("/cpu", headers={"X-Enable-Profiling": "1"})

Convenience argv builders: :func:`gunicorn_argv`, :func:`uvicorn_argv`,
:func:`werkzeug_argv`, :func:`django_runserver_argv`.  ``{port}`` and
``{python}`` in argv are replaced.  The server is ready once an HTTP request to
``ready_path`` gets any response; a server that exits early or never becomes
ready raises with its output.  ``stop()`` sends SIGTERM (the servers shut down
gracefully, so ``atexit`` handlers such as the profiler's final flush run), then
SIGKILL after a grace period.

Also :data:`OTEL_SETUP_SOURCE`: a module (``otel_test_setup.py``) that test apps
import to install an SDK TracerProvider with an in-memory span exporter, and to
serve the finished spans as JSON.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Mapping, Optional, Sequence

__all__ = [
    "Server", "start_server", "free_port", "gunicorn_argv", "uvicorn_argv", "werkzeug_argv",
    "django_runserver_argv", "opentelemetry_instrument", "OTEL_SETUP_SOURCE", "write_otel_setup",
]

BIN_DIR = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gunicorn_argv(app: str, *, workers: int = 1, worker_class: str = "sync", threads: int = 1,
                  preload: bool = False, extra: Sequence[str] = ()) -> list[str]:
    argv = ["{python}", "-m", "gunicorn", "-b", "127.0.0.1:{port}", "-w", str(workers),
            "-k", worker_class, "--threads", str(threads), "--graceful-timeout", "5", "--log-level", "warning"]
    if preload:
        argv.append("--preload")
    return argv + list(extra) + [app]


def uvicorn_argv(app: str, extra: Sequence[str] = ()) -> list[str]:
    return ["{python}", "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "{port}",
            "--log-level", "warning", *extra]


def werkzeug_argv(module: str, attr: str = "app") -> list[str]:
    code = ("import sys; sys.path.insert(0, '.'); from werkzeug.serving import run_simple; "
            f"from {module} import {attr} as a; run_simple('127.0.0.1', int(sys.argv[1]), a, threaded=True)")
    return ["{python}", "-c", code, "{port}"]


def django_runserver_argv(manage: str = "manage.py") -> list[str]:
    return ["{python}", manage, "runserver", "127.0.0.1:{port}", "--noreload"]


def opentelemetry_instrument(argv: Sequence[str]) -> list[str]:
    """``opentelemetry-instrument <argv>`` with the venv's console script."""
    return [os.path.join(BIN_DIR, "opentelemetry-instrument"), *argv]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: str) -> None:
        self.proc = proc
        self.port = port
        self.host = "127.0.0.1"
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"

    # ------------------------------------------------------------------ requests
    def request(self, method: str, path: str, headers: Optional[Mapping[str, str]] = None,
                body: Optional[bytes] = None, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
        finally:
            conn.close()

    def get(self, path: str, headers: Optional[Mapping[str, str]] = None,
            timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path, headers, timeout=timeout)

    def get_json(self, path: str) -> Any:
        status, _, body = self.get(path)
        assert status == 200, (status, body[:500])
        return json.loads(body)

    # ------------------------------------------------------------------ lifecycle
    def output(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> str:
        """Graceful stop (SIGTERM, then SIGKILL); returns the server's output."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        return self.output()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def start_server(argv: Sequence[str], *, cwd: Any, env: Optional[Mapping[str, str]] = None,
                 ready_path: str = "/ready", ready_timeout: float = 30.0, attempts: int = 3) -> Server:
    """Start ``argv`` (with ``{port}``/``{python}`` filled in) and wait until it answers."""
    last_error = ""
    for _ in range(attempts):
        port = free_port()
        args = [a.replace("{port}", str(port)).replace("{python}", sys.executable) for a in argv]
        full_env = dict(os.environ)
        full_env.pop("OTELPROF_OUTPUT_DIR", None)
        full_env.update(env or {})
        pp = [str(cwd)] + [p for p in full_env.get("PYTHONPATH", "").split(os.pathsep) if p]
        full_env["PYTHONPATH"] = os.pathsep.join(pp)
        full_env["PYTHONUNBUFFERED"] = "1"
        fd, log_path = tempfile.mkstemp(prefix="server-", suffix=".log", dir=str(cwd))
        with os.fdopen(fd, "wb") as log:
            proc = subprocess.Popen(args, cwd=str(cwd), env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        server = Server(proc, port, log_path)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                server.get(ready_path, timeout=2)
                return server
            except (OSError, http.client.HTTPException):
                time.sleep(0.05)
        out = server.stop()
        last_error = f"server {args!r} did not become ready (exit code {proc.returncode}):\n{out[-4000:]}"
        if "Address already in use" not in out:
            break
    raise RuntimeError(last_error)


# ---------------------------------------------------------------------------- OTel in the server

OTEL_SETUP_SOURCE = '''
"""Test-only OpenTelemetry set-up for server subprocesses (in-memory spans, JSON dump)."""
import json
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

EXPORTER = InMemorySpanExporter()
_done = False


def setup():
    global _done
    if _done:
        return
    _done = True
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)


def spans():
    out = []
    for s in EXPORTER.get_finished_spans():
        out.append({
            "name": s.name,
            "kind": s.kind.name,
            "trace_id": format(s.context.trace_id, "032x"),
            "span_id": format(s.context.span_id, "016x"),
            "parent_span_id": format(s.parent.span_id, "016x") if s.parent else None,
            "attributes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in (s.attributes or {}).items()},
            "pid": os.getpid(),
        })
    return out


def spans_json():
    return json.dumps(spans(), default=str).encode()
'''


def write_otel_setup(directory: Any) -> None:
    with open(os.path.join(str(directory), "otel_test_setup.py"), "w") as f:
        f.write(OTEL_SETUP_SOURCE)
