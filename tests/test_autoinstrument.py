"""Auto-instrumentation: ``opentelemetry-instrument`` with no code change, for Django,
Flask and Starlette (each server in a subprocess); instrument/uninstrument order."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from importlib.metadata import entry_points
from typing import Any

import pytest

from helpers.wsgi_servers import opentelemetry_instrument, start_server, uvicorn_argv, write_otel_setup
from test_django import write_django_project
from test_flask import HEADER, SECRET, functions_in, profile_by_id, server_span

ENTRY_POINTS = {"otelprof_django", "otelprof_flask", "otelprof_starlette"}


def _env(profiles: Any, **extra: str) -> dict[str, str]:
    env = {"OTELPROF_EXPORTER": "file", "OTELPROF_OUTPUT_DIR": str(profiles), "OTELPROF_PROBABILITY": "0",
           "OTELPROF_BATCH_TIMEOUT": "50ms", "OTELPROF_HEADER_SECRET": SECRET}
    env.update(extra)
    return env


def test_entry_points_registered_and_loadable() -> None:
    eps = {ep.name: ep for ep in entry_points(group="opentelemetry_instrumentor") if ep.name in ENTRY_POINTS}
    assert set(eps) == ENTRY_POINTS, "pyproject.toml must declare the opentelemetry_instrumentor entry points"
    from importlib.metadata import distribution

    from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts

    dist = distribution("otelprof-middleware")
    assert any('extra == "instruments-any"' in r for r in dist.requires or []), dist.requires
    assert get_dist_dependency_conflicts(dist) is None  # loads when any one framework is installed
    for ep in eps.values():
        assert ep.load().__name__.startswith("OtelProf")


FLASK_AUTO = textwrap.dedent('''
    import time
    import otel_test_setup
    otel_test_setup.setup()
    from flask import Flask, Response

    app = Flask(__name__)


    def auto_flask_work():
        end = time.thread_time() + 0.1
        while time.thread_time() < end:
            pass


    @app.route("/ready")
    def ready():
        return "ok"


    @app.route("/work")
    @app.route("/excluded")
    def work():
        auto_flask_work()
        return "done"


    @app.route("/_spans")
    def spans():
        return Response(otel_test_setup.spans_json(), mimetype="application/json")
''')


def _flask_argv() -> list[str]:
    return opentelemetry_instrument(["{python}", "-m", "flask", "--app", "flask_auto", "run",
                                     "-h", "127.0.0.1", "-p", "{port}"])


@pytest.mark.integration
def test_opentelemetry_instrument_flask(tmp_path: Any) -> None:
    write_otel_setup(tmp_path)
    (tmp_path / "flask_auto.py").write_text(FLASK_AUTO)
    profiles = tmp_path / "profiles"
    env = _env(profiles, OTELPROF_EXCLUDED_URLS="/excluded")
    with start_server(_flask_argv(), cwd=tmp_path, env=env) as server:
        status, headers, _ = server.get("/work", headers=HEADER)
        assert status == 200 and "x-profile-id" in headers, server.output()
        line, decoded = profile_by_id(profiles, headers["x-profile-id"])
        assert "auto_flask_work" in functions_in(decoded)
        assert line["attributes"]["http.route"] == "/work"
        span = server_span(server.get_json("/_spans"), line["span_id"])
        assert span["attributes"]["pyroscope.profile.id"] == span["span_id"]
        status, headers, _ = server.get("/excluded", headers=HEADER)
        assert status == 200 and "x-profile-id" not in headers  # OTELPROF_EXCLUDED_URLS

    env = _env(profiles, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="otelprof_flask")
    with start_server(_flask_argv(), cwd=tmp_path, env=env) as server:
        status, headers, _ = server.get("/work", headers=HEADER)
        assert status == 200 and "x-profile-id" not in headers


AUTO_SETTINGS = textwrap.dedent('''
    from djproj.settings import *  # noqa
    MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
    del OTELPROF  # configured from the environment alone
''')

AUTO_VIEWS = textwrap.dedent('''
    import json
    from django.conf import settings
    from django.http import HttpResponse


    def middleware(request):
        return HttpResponse(json.dumps(list(settings.MIDDLEWARE)), content_type="application/json")
''')


@pytest.mark.integration
def test_opentelemetry_instrument_django_runserver(tmp_path: Any) -> None:
    write_django_project(tmp_path)
    (tmp_path / "djproj" / "settings_auto.py").write_text(AUTO_SETTINGS)
    (tmp_path / "djproj" / "auto_views.py").write_text(AUTO_VIEWS)
    urls = (tmp_path / "djproj" / "urls.py").read_text()
    urls = urls.replace("from . import views", "from . import views, auto_views")
    urls = urls.replace("urlpatterns = [", 'urlpatterns = [\n    path("_middleware", auto_views.middleware),')
    (tmp_path / "djproj" / "urls.py").write_text(urls)
    (tmp_path / "manage_auto.py").write_text(
        "import sys, otel_test_setup\notel_test_setup.setup()\n"
        "from django.core.management import execute_from_command_line\nexecute_from_command_line(sys.argv)\n")
    profiles = tmp_path / "profiles"
    env = _env(profiles, DJANGO_SETTINGS_MODULE="djproj.settings_auto", PROFILE_DIR=str(profiles))
    argv = opentelemetry_instrument(["{python}", "manage_auto.py", "runserver", "127.0.0.1:{port}", "--noreload"])
    with start_server(argv, cwd=tmp_path, env=env) as server:
        mw = server.get_json("/_middleware")
        otel = "opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"
        assert mw[:2] == [otel, "otelprof_middleware.django.ProfilingMiddleware"], mw
        status, headers, _ = server.get("/items/9", headers=HEADER)
        assert status == 200 and "x-profile-id" in headers, server.output()
        line, decoded = profile_by_id(profiles, headers["x-profile-id"])
        assert "django_work_alpha" in functions_in(decoded)
        span = server_span(server.get_json("/_spans"), line["span_id"])
        assert span["attributes"]["pyroscope.profile.id"] == span["span_id"]


STARLETTE_AUTO = textwrap.dedent('''
    import os
    import time
    import otel_test_setup
    otel_test_setup.setup()
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route


    def auto_starlette_work():
        end = time.thread_time() + 0.1
        while time.thread_time() < end:
            pass


    async def ready(request):
        return PlainTextResponse("ok")


    async def work(request):
        auto_starlette_work()
        return PlainTextResponse("done")


    async def spans(request):
        return Response(otel_test_setup.spans_json(), media_type="application/json")


    routes = [Route("/ready", ready), Route("/work", work), Route("/_spans", spans)]
    if os.environ.get("FRAMEWORK") == "fastapi":
        from fastapi import FastAPI
        app = FastAPI(routes=routes)
    else:
        app = Starlette(routes=routes)
''')


@pytest.mark.integration
@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
def test_opentelemetry_instrument_starlette_uvicorn(tmp_path: Any, framework: str) -> None:
    write_otel_setup(tmp_path)
    (tmp_path / "star_auto.py").write_text(STARLETTE_AUTO)
    profiles = tmp_path / "profiles"
    argv = opentelemetry_instrument(uvicorn_argv("star_auto:app"))
    with start_server(argv, cwd=tmp_path, env=_env(profiles, FRAMEWORK=framework)) as server:
        status, headers, _ = server.get("/work", headers=HEADER)
        assert status == 200 and "x-profile-id" in headers, server.output()
        line, decoded = profile_by_id(profiles, headers["x-profile-id"])
        assert "auto_starlette_work" in functions_in(decoded)
        if framework == "starlette" and not _installed("opentelemetry.instrumentation.starlette"):
            return  # no OpenTelemetry Starlette instrumentation here: no span to link to
        span = server_span(server.get_json("/_spans"), line["span_id"])
        assert span["attributes"]["pyroscope.profile.id"] == span["span_id"]


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


ORDER_SCRIPT = textwrap.dedent('''
    import json, sys
    import django
    from django.conf import settings
    settings.configure(MIDDLEWARE=["django.middleware.common.CommonMiddleware", "django.middleware.security.SecurityMiddleware"], ROOT_URLCONF=[], ALLOWED_HOSTS=["*"])
    django.setup()
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from otelprof_middleware.integrations.instrumentor import (
        OtelProfDjangoInstrumentor, OtelProfFlaskInstrumentor)
    ours, otel = OtelProfDjangoInstrumentor(), DjangoInstrumentor()
    first, second = (ours, otel) if sys.argv[1] == "ours_first" else (otel, ours)
    first.instrument(); second.instrument()
    from django.core.handlers.wsgi import WSGIHandler
    WSGIHandler()  # load_middleware
    out = {"instrumented": list(settings.MIDDLEWARE)}
    ours.uninstrument()
    out["after_uninstrument"] = list(settings.MIDDLEWARE)
    WSGIHandler()
    out["after_reload"] = list(settings.MIDDLEWARE)

    import flask
    fi = OtelProfFlaskInstrumentor()
    fi.instrument()
    app = flask.Flask("x")
    original = app.extensions["otelprof"].original_wsgi_app
    out["flask_has_ext"] = "otelprof" in app.extensions
    fi.uninstrument()
    out["flask_removed"] = "otelprof" not in app.extensions and app.wsgi_app == original
    out["flask_new_app_clean"] = "otelprof" not in flask.Flask("y").extensions
    print(json.dumps(out))
''')


@pytest.mark.parametrize("order", ["ours_first", "otel_first"])
def test_instrument_order_and_uninstrument(order: str) -> None:
    proc = subprocess.run([sys.executable, "-c", ORDER_SCRIPT, order], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    otel = "opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"
    assert out["instrumented"] == [otel, "otelprof_middleware.django.ProfilingMiddleware", "django.middleware.common.CommonMiddleware", "django.middleware.security.SecurityMiddleware"]
    assert out["after_uninstrument"] == [otel, "django.middleware.common.CommonMiddleware", "django.middleware.security.SecurityMiddleware"]
    assert out["after_reload"] == [otel, "django.middleware.common.CommonMiddleware", "django.middleware.security.SecurityMiddleware"]
    assert out["flask_has_ext"] and out["flask_removed"] and out["flask_new_app_clean"]
