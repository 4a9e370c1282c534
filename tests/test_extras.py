"""Extras stay independent: each integration serves a profiled request with the other
frameworks absent, and never imports them.

The suite's virtualenv has every framework (the ``test`` extra), so "absent" is made
real in a subprocess: ``sys.modules[name] = None`` makes any ``import name`` fail as
if the package were not installed.  Each case runs one header-triggered request
through the integration (Django's test client, Flask's test client, Starlette's
TestClient, a bare WSGI call) and checks the response carries ``X-Profile-Id`` and
that no other framework module was loaded.  ``tests/test_fresh_venv.py`` does the
same for real, with only one extra installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

FRAMEWORKS = ("django", "flask", "starlette", "fastapi")

_PRELUDE = '''
import json, os, sys
OTHERS = {others!r}
for name in OTHERS:
    sys.modules[name] = None  # "not installed": any import of it raises ImportError
OPTIONS = {{"exporter": "file", "output_dir": {out!r}, "probability": 0, "header_secret": "s3"}}
'''

_EPILOGUE = '''
loaded = sorted(n for n in sys.modules
                if n.split(".")[0] in OTHERS and sys.modules[n] is not None)
print(json.dumps({"status": status, "profile_id": profile_id, "loaded": loaded}))
'''

CASES = {
    "django": '''
import django
from django.conf import settings
settings.configure(
    DEBUG=False, SECRET_KEY="x", ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__,
    MIDDLEWARE=["otelprof_middleware.django.ProfilingMiddleware"], OTELPROF=OPTIONS,
    INSTALLED_APPS=[], DATABASES={}, USE_TZ=True,
)
django.setup()
from django.http import HttpResponse
from django.urls import path
urlpatterns = [path("work", lambda request: HttpResponse(str(sum(range(10000)))))]
from django.test import Client
resp = Client().get("/work", HTTP_X_ENABLE_PROFILING="s3")
status, profile_id = resp.status_code, resp.headers.get("X-Profile-Id")
''',
    "flask": '''
from flask import Flask
from otelprof_middleware.flask import OtelProf
app = Flask(__name__)
app.config.update({"OTELPROF_" + k.upper(): v for k, v in OPTIONS.items()})
OtelProf(app)
app.add_url_rule("/work", "work", lambda: str(sum(range(10000))))
resp = app.test_client().get("/work", headers={"X-Enable-Profiling": "s3"})
status, profile_id = resp.status_code, resp.headers.get("X-Profile-Id")
''',
    "starlette": '''
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from otelprof_middleware.asgi import ProfilingMiddleware
app = Starlette(routes=[Route("/work", lambda request: PlainTextResponse(str(sum(range(10000)))))])
app.add_middleware(ProfilingMiddleware, **OPTIONS)
with TestClient(app) as client:
    resp = client.get("/work", headers={"X-Enable-Profiling": "s3"})
status, profile_id = resp.status_code, resp.headers.get("x-profile-id")
''',
    "wsgi": '''
from wsgiref.util import setup_testing_defaults
from otelprof_middleware.wsgi import ProfilingMiddleware

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(sum(range(10000))).encode()]

environ = {"PATH_INFO": "/work", "HTTP_X_ENABLE_PROFILING": "s3"}
setup_testing_defaults(environ)
seen = {}
def start_response(status, headers, exc_info=None):
    seen["status"], seen["headers"] = status, dict(headers)
b"".join(ProfilingMiddleware(app, **OPTIONS)(environ, start_response))
status = int(seen["status"].split()[0])
profile_id = {k.lower(): v for k, v in seen["headers"].items()}.get("x-profile-id")
''',
}

# what each case may use; everything else is "not installed"
OWN = {"django": {"django"}, "flask": {"flask"}, "starlette": {"starlette"}, "wsgi": set()}


class DjangoImportsFlask(AssertionError):
    """The Django integration imports the Flask adapter (integrations/django.py ->
    integrations/flask.py, which imports flask at module level)."""


def _run(case: str, tmp_path) -> dict:
    others = tuple(f for f in FRAMEWORKS if f not in OWN[case])
    code = (_PRELUDE.format(others=others, out=str(tmp_path / "profiles"))
            + textwrap.dedent(CASES[case]) + _EPILOGUE)
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True,
                          timeout=120)
    output = proc.stdout + proc.stderr
    if case == "django" and ("import of flask halted" in output or "No module named 'flask'" in output):
        raise DjangoImportsFlask(output[-3000:])
    assert proc.returncode == 0, output[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", ["django", "flask", "starlette", "wsgi"])
def test_integration_works_without_the_other_frameworks(case: str, tmp_path) -> None:
    result = _run(case, tmp_path)
    assert result["status"] == 200, result
    assert result["profile_id"] and len(result["profile_id"]) == 32, result
    assert result["loaded"] == [], f"{case} loaded modules of other frameworks: {result['loaded']}"
