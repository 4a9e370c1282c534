"""One profiler per process unless asked otherwise (issue 15 item 4, newcomer
finding 6): middleware options configure the process's profiler, ``get_profiler()``
returns the one the integrations use, each integration hands it out, and a second,
different configuration gets its own with one warning naming what differs.  Through
real servers: ``stats()`` and ``enable_window()`` on that profiler see and steer the
middleware's requests (uvicorn + FastAPI, Django's runserver, Flask's dev server).
"""

from __future__ import annotations

import json
import logging
import textwrap
import time
from typing import Any

import pytest

from helpers.wsgi_servers import start_server, uvicorn_argv
from otelprof_middleware import Profiler, get_profiler, set_profiler
from otelprof_middleware.asgi import ProfilingMiddleware as ASGIMiddleware
from otelprof_middleware.wsgi import ProfilingMiddleware as WSGIMiddleware


def asgi_app(scope: Any, receive: Any, send: Any) -> Any:  # never called
    raise AssertionError


def wsgi_app(environ: Any, start_response: Any) -> Any:  # never called
    raise AssertionError


def test_middleware_options_configure_the_process_profiler(caplog: Any) -> None:
    caplog.set_level(logging.WARNING, "otelprof_middleware")
    first = ASGIMiddleware(asgi_app, probability=0.5, exporter="none")
    assert first.profiler is get_profiler() and get_profiler().config.probability == 0.5
    # the same options, from another integration: the same profiler, no warning
    assert WSGIMiddleware(wsgi_app, probability=0.5, exporter="none").profiler is first.profiler
    assert ASGIMiddleware(asgi_app, exporter="none", probability=0.5).profiler is first.profiler
    assert not caplog.records
    # different options: a profiler of its own (its options apply), and one warning naming them
    second = ASGIMiddleware(asgi_app, probability=0.25, exporter="none", header_secret="hunter2")
    again = WSGIMiddleware(wsgi_app, probability=0.25, exporter="none", header_secret="hunter2")
    assert second.profiler is again.profiler and second.profiler is not first.profiler
    assert second.profiler.config.probability == 0.25 and get_profiler() is first.profiler
    assert [r.getMessage() for r in caplog.records] == [
        "otelprof: ProfilingMiddleware(...) configures a profiler different from the process's profiler (made by "
        "ProfilingMiddleware(...)): probability=0.25 (keyword argument) instead of 0.5 (keyword argument), "
        "header_secret='***' (keyword argument) instead of '' (default). It uses a profiler of its own; "
        "get_profiler() returns the first one. To share one profiler, give the same options, or pass profiler="]
    assert "hunter2" not in caplog.text
    second.profiler.shutdown(timeout=1)
    first.profiler.shutdown(timeout=1)


def test_without_options_the_integrations_use_get_profiler(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # (the environment's default: files into ./profiles)
    default = get_profiler()
    assert ASGIMiddleware(asgi_app).profiler is default and WSGIMiddleware(wsgi_app).profiler is default
    own = Profiler(exporter="none")  # asked otherwise: profiler= wins
    assert ASGIMiddleware(asgi_app, profiler=own).profiler is own
    own.shutdown(timeout=1)
    default.shutdown(timeout=1)


def test_a_shut_down_process_profiler_is_replaced() -> None:
    first = ASGIMiddleware(asgi_app, probability=0.5, exporter="none").profiler
    first.shutdown(timeout=1)
    later = ASGIMiddleware(asgi_app, probability=0.5, exporter="none").profiler
    assert later is not first and later is get_profiler() and later.enabled
    later.shutdown(timeout=1)


def test_get_profiler_made_first_then_a_middleware_with_options_warns(caplog: Any, tmp_path: Any,
                                                                     monkeypatch: Any) -> None:
    """A module that calls get_profiler() at import, before Starlette builds its
    middleware: the warning says where the first profiler came from."""
    caplog.set_level(logging.WARNING, "otelprof_middleware")
    monkeypatch.chdir(tmp_path)  # (the environment's default: files into ./profiles)
    early = get_profiler()
    mw = ASGIMiddleware(asgi_app, probability=0.5, exporter="none")
    assert mw.profiler is not early
    assert [r.getMessage() for r in caplog.records] == [
        "otelprof: ProfilingMiddleware(...) configures a profiler different from the process's profiler (made by "
        "get_profiler() (from the environment)): exporter=('none',) (keyword argument) instead of ('file',) "
        "(default), probability=0.5 (keyword argument) instead of 0.01 (default). It uses a profiler of its own; "
        "get_profiler() returns the first one. To share one profiler, give the same options, or pass profiler="]
    mw.profiler.shutdown(timeout=1)
    early.shutdown(timeout=1)


def test_flask_extension_hands_out_the_process_profiler() -> None:
    from flask import Flask

    from otelprof_middleware.flask import OtelProf

    app = Flask(__name__)
    app.config["OTELPROF_EXPORTER"] = "none"
    app.config["OTELPROF_PROBABILITY"] = 0.5
    ext = OtelProf(app)
    assert ext.profiler is get_profiler() and ext.profiler.config.probability == 0.5
    other = Flask("other")
    other.config.update(OTELPROF_EXPORTER="none", OTELPROF_PROBABILITY=0.5)
    assert OtelProf(other).profiler is ext.profiler  # the same configuration: one profiler
    ext.profiler.shutdown(timeout=1)
    set_profiler(None)


def test_an_app_started_again_gets_a_live_process_profiler() -> None:
    """The lifespan shutdown shuts the profiler down (flush, count what is left); an
    app that starts again in the same process (a test client per test) profiles
    with a new process profiler of the same configuration.  One given with
    ``profiler=`` is the caller's: it is not replaced."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    def make(**options: Any) -> Any:
        app = FastAPI()
        app.add_middleware(ASGIMiddleware, **options)
        app.get("/x")(lambda: "ok")
        return app

    app = make(probability=1.0, exporter="none")
    seen = []
    for _ in range(2):
        with TestClient(app) as client:
            client.get("/x")
            seen.append((get_profiler(), get_profiler().stats()["profiles_started"], get_profiler().enabled))
    assert [started for _p, started, _on in seen] == [1, 1] and all(on for _p, _s, on in seen)
    assert seen[0][0] is not seen[1][0] and not seen[0][0].enabled
    assert seen[1][0].config == seen[0][0].config

    own = Profiler(probability=1.0, exporter="none")
    given = make(profiler=own)
    for _ in range(2):
        with TestClient(given) as client:
            client.get("/x")
    assert own.stats()["profiles_started"] == 1 and not own.enabled  # shut down at the first stop, kept
    seen[1][0].shutdown(timeout=1)


# ----------------------------------------------------------------------------- real servers

FASTAPI_APP = textwrap.dedent('''
    import os
    from fastapi import FastAPI
    from otelprof_middleware import get_profiler
    from otelprof_middleware.asgi import ProfilingMiddleware

    app = FastAPI()
    app.add_middleware(ProfilingMiddleware, probability=0, exporter="file", output_dir=os.environ["PROFILE_DIR"],
                       header_secret="s3cret", min_samples=0, batch_timeout="50ms")


    @app.get("/ready")
    def ready():
        return "ok"


    @app.get("/crunch")
    async def crunch():
        return {"total": sum(i * i for i in range(20_000))}


    @app.post("/admin/window")
    def window():
        get_profiler().enable_window(60, route="/crunch")
        return "opened"


    @app.get("/admin/stats")
    def stats():
        profiler = get_profiler()
        profiler.force_flush(10)
        return {"stats": profiler.stats(), "policy": profiler.policy.state().as_dict()}
''')

FLASK_APP = textwrap.dedent('''
    import os
    from flask import Flask
    from otelprof_middleware.flask import OtelProf

    app = Flask(__name__)
    app.config.update(OTELPROF_PROBABILITY=0, OTELPROF_EXPORTER="file", OTELPROF_OUTPUT_DIR=os.environ["PROFILE_DIR"],
                      OTELPROF_HEADER_SECRET="s3cret", OTELPROF_MIN_SAMPLES=0, OTELPROF_BATCH_TIMEOUT="50ms")
    prof = OtelProf(app)


    @app.route("/ready")
    def ready():
        return "ok"


    @app.route("/crunch")
    def crunch():
        return {"total": sum(i * i for i in range(20_000))}


    @app.post("/admin/window")
    def window():
        prof.profiler.enable_window(60, route="/crunch")
        return "opened"


    @app.route("/admin/stats")
    def stats():
        prof.profiler.force_flush(10)
        return {"stats": prof.profiler.stats(), "policy": prof.profiler.policy.state().as_dict()}
''')

DJANGO_SETTINGS = textwrap.dedent('''
    import os
    SECRET_KEY = "test-only"
    DEBUG = False
    ALLOWED_HOSTS = ["127.0.0.1"]
    ROOT_URLCONF = "profproj.urls"
    INSTALLED_APPS = []
    MIDDLEWARE = ["otelprof_middleware.django.ProfilingMiddleware"]
    DATABASES = {}
    OTELPROF = {"probability": 0, "exporter": "file", "output_dir": os.environ["PROFILE_DIR"],
                "header_secret": "s3cret", "min_samples": 0, "batch_timeout": "50ms"}
''')

DJANGO_URLS = textwrap.dedent('''
    from django.http import HttpResponse, JsonResponse
    from django.urls import path
    from django.views.decorators.csrf import csrf_exempt

    from otelprof_middleware.django import get_profiler


    def crunch(request):
        return JsonResponse({"total": sum(i * i for i in range(20_000))})


    @csrf_exempt
    def window(request):
        get_profiler().enable_window(60, route="crunch")
        return HttpResponse("opened")


    def stats(request):
        profiler = get_profiler()
        profiler.force_flush(10)
        return JsonResponse({"stats": profiler.stats(), "policy": profiler.policy.state().as_dict()})


    urlpatterns = [path("ready", lambda r: HttpResponse("ok")), path("crunch", crunch),
                   path("admin/window", window), path("admin/stats", stats)]
''')


def _write(root: Any, framework: str) -> list[str]:
    if framework == "fastapi":
        (root / "app.py").write_text(FASTAPI_APP)
        return uvicorn_argv("app:app")
    if framework == "flask":
        (root / "app.py").write_text(FLASK_APP)
        return ["{python}", "-m", "flask", "--app", "app", "run", "-p", "{port}"]
    pkg = root / "profproj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "settings.py").write_text(DJANGO_SETTINGS)
    (pkg / "urls.py").write_text(DJANGO_URLS)
    return ["{python}", "-m", "django", "runserver", "127.0.0.1:{port}", "--noreload"]


def _stats_when(server: Any, done: Any, timeout: float = 20.0) -> Any:
    """``/admin/stats`` once ``done(stats)`` (or the last answer after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = server.get("/admin/stats")
        assert status == 200, body
        seen = json.loads(body)
        if done(seen["stats"]) or time.monotonic() > deadline:
            return seen
        time.sleep(0.05)


@pytest.mark.integration
@pytest.mark.parametrize("framework", ["fastapi", "django", "flask"])
def test_stats_and_enable_window_reach_the_middlewares_profiler(tmp_path: Any, framework: str) -> None:
    argv = _write(tmp_path, framework)
    env = {"PROFILE_DIR": str(tmp_path / "profiles"), "DJANGO_SETTINGS_MODULE": "profproj.settings"}
    with start_server(argv, cwd=tmp_path, env=env) as server:
        for _ in range(3):  # asked for with the secret
            status, headers, _ = server.get("/crunch", headers={"X-Enable-Profiling": "s3cret"})
            assert status == 200 and headers.get("x-profile-id")
        seen = _stats_when(server, lambda st: st["profiles_collected"] == 3)  # (a body ends after it is sent)
        assert seen["stats"]["profiles_started"] == 3, seen
        assert seen["policy"]["budgets"]["header"] == {"used": 3, "limit": 60}
        # an on-demand window opened through that profiler profiles the route's requests
        assert server.request("POST", "/admin/window")[0] == 200
        for _ in range(2):
            assert server.get("/crunch")[0] == 200
        seen = _stats_when(server, lambda st: st["profiles_collected"] == 5)
    assert seen["stats"]["profiles_started"] == 5, seen
    assert [w["route"] for w in seen["policy"]["windows"]] == ["/crunch" if framework != "django" else "crunch"]
    assert seen["policy"]["budgets"]["total"] == {"used": 2, "limit": 60}
