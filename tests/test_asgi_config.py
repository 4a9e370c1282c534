"""A configuration mistake fails at start-up, loudly, and never turns requests into
500s (issue 15 item 3, newcomer finding 4), through real servers:

* uvicorn (default ``--lifespan auto``, and ``on``): a bad ``OTELPROF_*`` variable or
  a bad ``add_middleware`` keyword stops the server with the ``ConfigError`` (option,
  value, source), through ``lifespan.startup.failed``; the app's own start-up hook
  does not run on a half-configured app;
* a server without the lifespan protocol (``--lifespan off``) serves every request,
  unprofiled, and logs the error once;
* Django (runserver, gunicorn) and Flask (``flask run``) fail when the app starts.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from helpers.wsgi_servers import free_port, start_server, uvicorn_argv
from test_django import write_django_project

pytestmark = pytest.mark.integration

SAMPLE_HZ = "invalid option sample_hz='abc' (from OTELPROF_SAMPLE_HZ): must be a whole number from 1 to 1000"
TYPO = "invalid option probabilty=0.5 (from keyword arguments): unknown option; did you mean 'probability'?"

ASGI_APP = textwrap.dedent('''
    import os
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from otelprof_middleware.asgi import ProfilingMiddleware


    @asynccontextmanager
    async def lifespan(app):
        print("app startup hook ran", flush=True)
        yield


    app = FastAPI(lifespan=lifespan)
    options = {"probabilty": 0.5} if os.environ.get("BAD_KEYWORD") else {}
    app.add_middleware(ProfilingMiddleware, **options)


    @app.get("/ready")
    def ready():
        return "ok"
''')


def _uvicorn(tmp_path: Any, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "app.py").write_text(ASGI_APP)
    argv = [a.replace("{python}", sys.executable).replace("{port}", str(free_port()))
            for a in uvicorn_argv("app:app", extra)]
    return subprocess.run(argv, cwd=tmp_path, env=_env(env), capture_output=True, text=True, timeout=60)


def _env(extra: dict[str, str]) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTELPROF_", "OTEL_"))}
    env.update(extra, PYTHONUNBUFFERED="1")
    return env


@pytest.mark.parametrize("lifespan", [(), ("--lifespan", "on")], ids=["auto", "on"])
@pytest.mark.parametrize("mistake, message", [({"OTELPROF_SAMPLE_HZ": "abc"}, SAMPLE_HZ),
                                              ({"BAD_KEYWORD": "1"}, TYPO)], ids=["env", "keyword"])
def test_uvicorn_stops_with_the_message(tmp_path: Any, lifespan: tuple[str, ...], mistake: dict[str, str],
                                        message: str) -> None:
    proc = _uvicorn(tmp_path, mistake, *lifespan, "--log-level", "info")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out  # uvicorn's "startup failed" exit code
    assert f"ERROR:    otelprof: {message}\n" in out, out
    assert "ERROR:    Application startup failed. Exiting." in out
    assert "lifespan' protocol appears unsupported" not in out
    assert "app startup hook ran" not in out  # the app did not start half-configured


def test_without_lifespan_requests_pass_through_unprofiled(tmp_path: Any) -> None:
    (tmp_path / "app.py").write_text(ASGI_APP)
    env = {"OTELPROF_SAMPLE_HZ": "abc", "OTELPROF_PROBABILITY": "1"}
    with start_server(uvicorn_argv("app:app", ("--lifespan", "off")), cwd=tmp_path, env=env) as server:
        for _ in range(3):
            status, headers, body = server.get("/ready", headers={"X-Enable-Profiling": "1"})
            assert (status, body) == (200, b'"ok"') and "x-profile-id" not in headers
        out = server.stop()
    line = (f"otelprof: {SAMPLE_HZ}; requests are served unprofiled (the server runs no ASGI lifespan, which "
            "would have stopped the start)")
    assert out.count(line) == 1, out
    assert "Traceback" not in out and "500" not in out


def test_django_runserver_fails_at_start(tmp_path: Any) -> None:
    write_django_project(tmp_path)
    settings = tmp_path / "djproj" / "settings.py"
    settings.write_text(settings.read_text().replace('"probability": 0,', '"probability": 0, "sample_hz": "abc",'))
    env = _env({"PROFILE_DIR": str(tmp_path / "profiles"), "DJANGO_SETTINGS_MODULE": "djproj.settings",
                "PYTHONPATH": str(tmp_path)})
    proc = subprocess.run([sys.executable, "manage.py", "runserver", f"127.0.0.1:{free_port()}", "--noreload"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert ("otelprof_middleware.config.ConfigError: invalid option sample_hz='abc' (from settings.OTELPROF): "
            "must be a whole number from 1 to 1000\n") in out, out


def test_django_under_gunicorn_fails_at_start(tmp_path: Any) -> None:
    write_django_project(tmp_path)
    env = _env({"PROFILE_DIR": str(tmp_path / "profiles"), "DJANGO_SETTINGS_MODULE": "djproj.settings",
                "OTELPROF_SAMPLE_HZ": "abc", "PYTHONPATH": str(tmp_path)})
    settings = tmp_path / "djproj" / "settings.py"  # configured from the environment alone
    settings.write_text(settings.read_text() + "\ndel OTELPROF\n")
    proc = subprocess.run([sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{free_port()}", "djproj.wsgi"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert f"otelprof_middleware.config.ConfigError: {SAMPLE_HZ}\n" in out, out
    assert "Worker failed to boot" in out


def test_flask_run_fails_at_start(tmp_path: Any) -> None:
    (tmp_path / "app.py").write_text(textwrap.dedent('''
        from flask import Flask
        from otelprof_middleware.flask import OtelProf

        app = Flask(__name__)
        app.config["OTELPROF_SAMPLE_HZ"] = "abc"
        OtelProf(app)
    '''))
    proc = subprocess.run([sys.executable, "-m", "flask", "--app", "app", "run", "-p", str(free_port())],
                          cwd=tmp_path, env=_env({}), capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert ("otelprof_middleware.config.ConfigError: invalid option sample_hz='abc' (from app.config): "
            "must be a whole number from 1 to 1000\n") in out, out
