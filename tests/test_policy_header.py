"""The header trigger is closed to anonymous production traffic by default (issue 12
item 1, security review M1), through real servers:

* without ``header_secret``, ``X-Enable-Profiling: 1`` is honoured only while the
  framework runs in debug mode (FastAPI ``app.debug`` under uvicorn, Django
  ``DEBUG`` under runserver, Flask ``app.debug`` under ``flask run``); a plain WSGI
  app (gunicorn) has no debug mode, so there it never is;
* ``header_trust="any"`` opens it to anyone, ``"off"`` closes it for good;
* with a secret, anyone presenting it (and nobody else: the secret is never logged);
* an ignored header is logged once per reason, naming the option that opens it, and
  the response is the same as without the header.
"""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from helpers.wsgi_servers import gunicorn_argv, start_server, uvicorn_argv

pytestmark = pytest.mark.integration

OPENS = ("to profile such requests, set header_secret (OTELPROF_HEADER_SECRET) and send it as the header's value, "
         "or header_trust='any' (OTELPROF_HEADER_TRUST=any) to honour the header from anyone")
NOT_DEBUG = "otelprof: ignored the X-Enable-Profiling header: no header_secret is set and the app is not in debug mode"

FASTAPI_APP = textwrap.dedent('''
    import os
    from fastapi import FastAPI
    from otelprof_middleware.asgi import ProfilingMiddleware

    app = FastAPI(debug=os.environ.get("APP_DEBUG") == "1")
    app.add_middleware(ProfilingMiddleware, exporter="file", output_dir=os.environ["PROFILE_DIR"], probability=0)


    @app.get("/ready")
    def ready():
        return "ok"


    @app.get("/work")
    def work():
        return {"done": sum(range(1000))}
''')

FLASK_APP = textwrap.dedent('''
    import os
    from flask import Flask
    from otelprof_middleware.flask import OtelProf

    app = Flask(__name__)
    app.config["OTELPROF_EXPORTER"] = "file"
    app.config["OTELPROF_OUTPUT_DIR"] = os.environ["PROFILE_DIR"]
    app.config["OTELPROF_PROBABILITY"] = 0
    OtelProf(app)


    @app.route("/ready")
    def ready():
        return "ok"


    @app.route("/work")
    def work():
        return {"done": sum(range(1000))}
''')

DJANGO_SETTINGS = textwrap.dedent('''
    import os
    SECRET_KEY = "test-only"
    DEBUG = os.environ.get("APP_DEBUG") == "1"
    ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
    ROOT_URLCONF = "hdrproj.urls"
    INSTALLED_APPS = []
    MIDDLEWARE = ["otelprof_middleware.django.ProfilingMiddleware"]
    DATABASES = {}
    OTELPROF = {"exporter": "file", "output_dir": os.environ["PROFILE_DIR"], "probability": 0}
''')

DJANGO_URLS = textwrap.dedent('''
    from django.http import HttpResponse, JsonResponse
    from django.urls import path

    urlpatterns = [
        path("ready", lambda request: HttpResponse("ok")),
        path("work", lambda request: JsonResponse({"done": sum(range(1000))})),
    ]
''')

WSGI_APP = textwrap.dedent('''
    import json
    import os
    from otelprof_middleware.wsgi import ProfilingMiddleware


    def app(environ, start_response):
        body = json.dumps({"done": sum(range(1000))}).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


    application = ProfilingMiddleware(app, exporter="file", output_dir=os.environ["PROFILE_DIR"], probability=0)
''')


def _write(root: Any, framework: str) -> None:
    if framework == "fastapi":
        (root / "app.py").write_text(FASTAPI_APP)
    elif framework == "flask":
        (root / "app.py").write_text(FLASK_APP)
    elif framework == "django":
        pkg = root / "hdrproj"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "settings.py").write_text(DJANGO_SETTINGS)
        (pkg / "urls.py").write_text(DJANGO_URLS)
    else:
        (root / "app.py").write_text(WSGI_APP)


def _argv(framework: str, debug: bool) -> list[str]:
    if framework == "fastapi":
        return uvicorn_argv("app:app")
    if framework == "flask":
        return ["{python}", "-m", "flask", "--app", "app", "run", "-p", "{port}", "--no-reload"] + (
            ["--debug"] if debug else [])
    if framework == "django":
        return ["{python}", "-m", "django", "runserver", "127.0.0.1:{port}", "--noreload"]
    return gunicorn_argv("app:application")


def _serve(tmp_path: Any, framework: str, debug: bool = False, **env: str) -> Any:
    _write(tmp_path, framework)
    full = {"PROFILE_DIR": str(tmp_path / "profiles"), "APP_DEBUG": "1" if debug else "0",
            "DJANGO_SETTINGS_MODULE": "hdrproj.settings", **env}
    return start_server(_argv(framework, debug), cwd=tmp_path, env=full)


def _ask(server: Any, value: str = "1") -> tuple[int, dict[str, str], bytes]:
    status, headers, body = server.get("/work", headers={"X-Enable-Profiling": value})
    assert status == 200 and b'"done"' in body.replace(b" ", b""), (status, body)
    return status, headers, body


FLAGS = {"fastapi": "(FastAPI app.debug is False)", "flask": "(Flask app.debug is False)",
         "django": "(Django settings.DEBUG is False)"}


@pytest.mark.parametrize("framework", ["fastapi", "django", "flask"])
def test_without_a_secret_the_header_needs_debug_mode(tmp_path: Any, framework: str) -> None:
    with _serve(_dir(tmp_path, "prod"), framework) as server:
        for _ in range(3):
            _status, headers, body = _ask(server)
            assert "x-profile-id" not in headers
        plain = server.get("/work")
        assert plain[2] == body  # the same response as without the header
        out = server.stop()
    line = f"{NOT_DEBUG} {FLAGS[framework]}; {OPENS}"
    assert out.count(line) == 1, out  # logged once, with what opens it

    with _serve(_dir(tmp_path, "debug"), framework, debug=True) as server:
        _status, headers, _body = _ask(server)
        assert len(headers.get("x-profile-id", "")) == 32, server.output()
        out = server.stop()
    assert "ignored the X-Enable-Profiling header" not in out


@pytest.mark.parametrize("framework", ["fastapi", "wsgi"])
def test_header_trust_any_opens_it_and_off_closes_it(tmp_path: Any, framework: str) -> None:
    with _serve(_dir(tmp_path, "any"), framework, OTELPROF_HEADER_TRUST="any") as server:
        _status, headers, _body = _ask(server, "yes")
        assert len(headers.get("x-profile-id", "")) == 32, server.output()
    with _serve(_dir(tmp_path, "off"), framework, debug=True, OTELPROF_HEADER_TRUST="off",
                OTELPROF_HEADER_SECRET="s3cret-value") as server:
        for value in ("1", "s3cret-value"):
            _status, headers, _body = _ask(server, value)
            assert "x-profile-id" not in headers
        out = server.stop()
    assert out.count("otelprof: ignored the X-Enable-Profiling header: header_trust='off'; to profile such "
                     "requests, set header_trust to 'debug' or 'any'") == 1, out
    assert "s3cret-value" not in out


def test_a_plain_wsgi_app_has_no_debug_mode(tmp_path: Any) -> None:
    with _serve(tmp_path, "wsgi") as server:
        _status, headers, _body = _ask(server)
        assert "x-profile-id" not in headers
        out = server.stop()
    assert out.count("otelprof: ignored the X-Enable-Profiling header: no header_secret is set and this app has no "
                     f"debug mode (a plain WSGI/ASGI app); {OPENS}") == 1, out


@pytest.mark.parametrize("framework", ["wsgi", "django"])
def test_with_a_secret_anyone_presenting_it(tmp_path: Any, framework: str) -> None:
    with _serve(tmp_path, framework, debug=True, OTELPROF_HEADER_SECRET="s3cret-value") as server:
        for wrong in ("1", "s3cret-valu", "S3CRET-VALUE", "s3cret-value-and-more"):
            _status, headers, _body = _ask(server, wrong)
            assert "x-profile-id" not in headers  # debug mode does not open it either: the secret decides
        _status, headers, _body = _ask(server, "s3cret-value")
        assert len(headers.get("x-profile-id", "")) == 32
        out = server.stop()
    assert out.count("otelprof: ignored the X-Enable-Profiling header: its value is not the header_secret (the "
                     "value is not shown); to profile such requests, send the header_secret as the header's "
                     "value") == 1, out
    assert "s3cret-value" not in out


def _dir(tmp_path: Any, name: str) -> Any:
    path = tmp_path / name
    path.mkdir()
    return path
