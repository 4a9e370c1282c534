"""Django integration through real servers: gunicorn (WSGI), uvicorn (ASGI), runserver."""

from __future__ import annotations

import textwrap
import threading
from typing import Any

import pytest

from helpers.wsgi_servers import (django_runserver_argv, gunicorn_argv, start_server, uvicorn_argv,
                                  write_otel_setup)
from test_flask import HEADER, functions_in, profile_by_id, read_index, server_span

SETTINGS = textwrap.dedent('''
    import os
    SECRET_KEY = "test-only"
    DEBUG = False
    ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    ROOT_URLCONF = "djproj.urls"
    INSTALLED_APPS = []
    MIDDLEWARE = [
        "otelprof_middleware.django.ProfilingMiddleware",
        "django.middleware.common.CommonMiddleware",
    ]
    DATABASES = {}
    USE_TZ = True
    OTELPROF = {
        "exporter": "file",
        "output_dir": os.environ["PROFILE_DIR"],
        "probability": 0,
        "max_concurrent_profiles": 16,
        "batch_timeout": "50ms",
        "header_secret": "s3cret",
    }
    LOGGING = {"version": 1, "disable_existing_loggers": False}
''')

URLS = textwrap.dedent('''
    from django.urls import path
    from . import views

    urlpatterns = [
        path("ready", views.ready),
        path("items/<int:item_id>", views.item),
        path("beta", views.beta),
        path("async", views.async_view),
        path("await", views.async_wait),
        path("stream", views.stream),
        path("astream", views.astream),
        path("boom", views.boom),
        path("_spans", views.spans),
    ]
''')

VIEWS = textwrap.dedent('''
    import asyncio
    import os
    import time

    from django.http import HttpResponse, JsonResponse, StreamingHttpResponse

    import otel_test_setup


    def burn_cpu(seconds):
        end = time.thread_time() + seconds
        x = 0
        while time.thread_time() < end:
            x += 1
        return x


    def django_work_alpha():
        return burn_cpu(0.25)


    def django_work_beta():
        return burn_cpu(0.25)


    def django_stream_chunk():
        return burn_cpu(0.04)


    def django_failing_helper():
        burn_cpu(0.05)
        raise KeyError("boom")


    def ready(request):
        return HttpResponse("ok")


    def item(request, item_id):
        django_work_alpha()
        return JsonResponse({"item": item_id, "pid": os.getpid()})


    def beta(request):
        django_work_beta()
        return HttpResponse("beta")


    async def async_view(request):
        await asyncio.sleep(0.01)
        django_async_work()
        return HttpResponse("async")


    def django_async_work():
        return burn_cpu(0.2)


    async def async_wait(request):
        await asyncio.sleep(0.15)
        return HttpResponse("waited")


    def stream(request):
        def sync_body():
            for i in range(5):
                django_stream_chunk()
                yield b"chunk%d\\n" % i
        return StreamingHttpResponse(sync_body())


    def astream(request):
        async def async_body():
            for i in range(5):
                django_stream_chunk()
                await asyncio.sleep(0)
                yield b"chunk%d\\n" % i
        return StreamingHttpResponse(async_body())


    def boom(request):
        django_failing_helper()


    def spans(request):
        return HttpResponse(otel_test_setup.spans_json(), content_type="application/json")
''')

ENTRY = textwrap.dedent('''
    import os
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")

    import otel_test_setup
    otel_test_setup.setup()
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    DjangoInstrumentor().instrument()

    from django.core.{kind} import get_{kind}_application
    application = get_{kind}_application()
''')

MANAGE = textwrap.dedent('''
    import os
    import sys

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "djproj.settings")
    import otel_test_setup
    otel_test_setup.setup()
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    DjangoInstrumentor().instrument()

    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
''')


def write_django_project(root: Any) -> None:
    write_otel_setup(root)
    pkg = root / "djproj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "settings.py").write_text(SETTINGS)
    (pkg / "urls.py").write_text(URLS)
    (pkg / "views.py").write_text(VIEWS)
    (pkg / "wsgi.py").write_text(ENTRY.replace("{kind}", "wsgi"))
    (pkg / "asgi.py").write_text(ENTRY.replace("{kind}", "asgi"))
    (root / "manage.py").write_text(MANAGE)
    (root / "profiles").mkdir()


@pytest.fixture
def django_dir(tmp_path: Any) -> Any:
    write_django_project(tmp_path)
    return tmp_path


def _env(root: Any) -> dict[str, str]:
    return {"PROFILE_DIR": str(root / "profiles"), "DJANGO_SETTINGS_MODULE": "djproj.settings"}


def _check_linked(server: Any, line: dict[str, Any]) -> None:
    assert line["link_source"] == "span"
    span = server_span(server.get_json("/_spans"), line["span_id"])
    assert span["attributes"].get("pyroscope.profile.id") == span["span_id"]
    assert span["trace_id"] == line["trace_id"]


@pytest.mark.integration
def test_django_gunicorn_wsgi(django_dir: Any) -> None:
    profiles = django_dir / "profiles"
    with start_server(gunicorn_argv("djproj.wsgi:application", worker_class="gthread", threads=4),
                      cwd=django_dir, env=_env(django_dir)) as server:
        status, headers, body = server.get("/items/3", headers=HEADER)
        assert status == 200, body
        item_id = headers["x-profile-id"]
        status, headers, body = server.get("/stream", headers=HEADER)
        assert status == 200 and body == b"".join(b"chunk%d\n" % i for i in range(5))
        stream_id = headers["x-profile-id"]
        status, headers, body = server.get("/boom", headers=HEADER)
        assert status == 500 and b"Server Error" in body, (headers, body, server.output())  # Django's 500 page
        assert "x-profile-id" in headers, (headers, body, server.output())
        boom_id = headers["x-profile-id"]
        status, headers, _ = server.get("/items/4")
        assert status == 200 and "x-profile-id" not in headers

        line, decoded = profile_by_id(profiles, item_id)
        assert "django_work_alpha" in functions_in(decoded)
        assert line["attributes"]["http.route"] == "items/<int:item_id>"
        assert line["attributes"]["http.response.status_code"] == 200
        _check_linked(server, line)

        line, decoded = profile_by_id(profiles, stream_id)
        assert {"django_stream_chunk", "sync_body"} <= functions_in(decoded)
        assert line["duration_ms"] >= 150  # the body, produced after the view returned, is included

        line, decoded = profile_by_id(profiles, boom_id)
        assert line["attributes"]["otelprof.error"] == "KeyError"
        assert line["attributes"]["http.response.status_code"] == 500
        assert "django_failing_helper" in functions_in(decoded)
        assert len(read_index(profiles, 3)) == 3


@pytest.mark.integration
def test_django_async_views_under_wsgi_show_their_frames(django_dir: Any) -> None:
    """Under WSGI, Django runs an ``async def`` view with ``async_to_sync`` in a helper
    thread's event loop: its task is sampled (frames while it works and while it
    waits), and the request thread blocked meanwhile is not counted twice."""
    from helpers.pprof_decode import stacks_by_function

    profiles = django_dir / "profiles"
    with start_server(gunicorn_argv("djproj.wsgi:application", worker_class="gthread", threads=4),
                      cwd=django_dir, env=_env(django_dir)) as server:
        status, headers, body = server.get("/async", headers=HEADER)
        assert status == 200 and body == b"async", body
        work_id = headers["x-profile-id"]
        status, headers, body = server.get("/await", headers=HEADER)
        assert status == 200 and body == b"waited", body
        wait_id = headers["x-profile-id"]

        _line, decoded = profile_by_id(profiles, work_id)
        assert {"async_view", "django_async_work", "burn_cpu"} <= functions_in(decoded), functions_in(decoded)
        line, decoded = profile_by_id(profiles, wait_id)
        names = functions_in(decoded)
        assert "async_wait" in names, names
        wall = decoded.sample_types.index(("wall", "nanoseconds"))
        stacks = stacks_by_function(decoded)
        total = sum(v[wall] for _n, v, _l in stacks)
        waiting = sum(v[wall] for n, v, _l in stacks if any(x.endswith("async_wait") for x in n))
        assert waiting >= 0.6 * total, (waiting, total)
        assert total <= 1.3 * line["duration_ms"] * 1e6  # one timeline, not two threads' worth


@pytest.mark.integration
def test_django_asgi_uvicorn(django_dir: Any) -> None:
    profiles = django_dir / "profiles"
    with start_server(uvicorn_argv("djproj.asgi:application"), cwd=django_dir, env=_env(django_dir)) as server:
        # a sync view: Django runs it in a thread through sync_to_async
        status, headers, body = server.get("/items/5", headers=HEADER)
        assert status == 200, body
        sync_id = headers["x-profile-id"]
        status, headers, body = server.get("/async", headers=HEADER)
        assert status == 200 and body == b"async"
        async_id = headers["x-profile-id"]
        status, headers, body = server.get("/astream", headers=HEADER)
        assert status == 200 and body == b"".join(b"chunk%d\n" % i for i in range(5))
        astream_id = headers["x-profile-id"]
        status, headers, body = server.get("/boom", headers=HEADER)
        assert status == 500
        boom_id = headers["x-profile-id"]

        line, decoded = profile_by_id(profiles, sync_id)
        assert "django_work_alpha" in functions_in(decoded), functions_in(decoded)
        assert line["cpu_ms"] >= 100  # the thread's CPU time counted for the request
        assert line["attributes"]["http.route"] == "items/<int:item_id>"
        _check_linked(server, line)

        _line, decoded = profile_by_id(profiles, async_id)
        assert "django_async_work" in functions_in(decoded)

        line, decoded = profile_by_id(profiles, astream_id)
        assert {"django_stream_chunk", "async_body"} <= functions_in(decoded)

        line, _decoded = profile_by_id(profiles, boom_id)
        assert line["attributes"]["otelprof.error"] == "KeyError"


@pytest.mark.integration
def test_django_runserver_concurrent_requests_never_mix(django_dir: Any) -> None:
    profiles = django_dir / "profiles"
    with start_server(django_runserver_argv(), cwd=django_dir, env=_env(django_dir)) as server:
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
            _line, decoded = profile_by_id(profiles, pid)
            names = functions_in(decoded)
            mine, other = ("django_work_alpha", "django_work_beta") if path == "/items/1" else \
                ("django_work_beta", "django_work_alpha")
            assert mine in names and other not in names, (path, names)


def test_django_middleware_is_sync_and_async_capable() -> None:
    from otelprof_middleware.django import ProfilingMiddleware

    assert ProfilingMiddleware.sync_capable and ProfilingMiddleware.async_capable
