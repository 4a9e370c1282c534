"""Each extra works alone: the Django, Flask and Starlette integrations import and
serve a request in a process where the other frameworks cannot be imported
(``sys.modules[name] = None`` makes ``import name`` fail, as if it were not
installed).  The fresh-virtualenv smoke tests of CI check the same with real
installs; this one runs everywhere, in seconds."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

FRAMEWORKS = ("django", "flask", "werkzeug", "starlette", "fastapi")

PRELUDE = '''
import json, sys
ALLOWED = {allowed!r}
for name in {frameworks!r}:
    if name not in ALLOWED:
        sys.modules[name] = None  # "not installed"
'''

DJANGO = '''
import django
from django.conf import settings
from django.http import HttpResponse
from django.urls import path

def hello(request):
    return HttpResponse("hello")

urlpatterns = [path("hello", hello)]
settings.configure(DEBUG=False, SECRET_KEY="x", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, DATABASES={},
                   INSTALLED_APPS=[], MIDDLEWARE=["otelprof_middleware.django.ProfilingMiddleware"],
                   OTELPROF={"exporter": "none", "probability": 0, "excluded_urls": "/never"})
django.setup()
from django.test import Client
r = Client().get("/hello", HTTP_X_ENABLE_PROFILING="1")
print(json.dumps({"status": r.status_code, "profile_id": r.headers.get("X-Profile-Id")}))
'''

FLASK = '''
from flask import Flask
from otelprof_middleware.flask import OtelProf

app = Flask("alone")
app.config.update(OTELPROF_EXPORTER="none", OTELPROF_PROBABILITY=0)

@app.route("/hello")
def hello():
    return "hello"

OtelProf(app)
r = app.test_client().get("/hello", headers={"X-Enable-Profiling": "1"})
print(json.dumps({"status": r.status_code, "profile_id": r.headers.get("X-Profile-Id")}))
'''

STARLETTE = '''
import asyncio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from otelprof_middleware.asgi import ProfilingMiddleware

async def hello(request):
    return PlainTextResponse("hello")

app = Starlette(routes=[Route("/hello", hello)])
app.add_middleware(ProfilingMiddleware, exporter="none", probability=0)
sent = []

async def main():
    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/hello", "headers": [(b"x-enable-profiling", b"1")],
             "query_string": b"", "scheme": "http", "server": ("x", 80), "root_path": ""}
    await app(scope, receive, send)

asyncio.run(main())
headers = dict(sent[0]["headers"])
print(json.dumps({"status": sent[0]["status"], "profile_id": headers.get(b"x-profile-id", b"").decode() or None}))
'''

CASES = {
    "django": (("django",), DJANGO),
    "flask": (("flask", "werkzeug"), FLASK),
    "starlette": (("starlette",), STARLETTE),
}


@pytest.mark.parametrize("extra", sorted(CASES))
def test_an_integration_serves_with_only_its_own_framework(extra: str) -> None:
    allowed, script = CASES[extra]
    code = PRELUDE.format(allowed=set(allowed), frameworks=FRAMEWORKS) + textwrap.dedent(script) + textwrap.dedent('''
        imported = sorted(n for n in {frameworks!r} if sys.modules.get(n) is not None)
        print(json.dumps({{"imported": imported}}))
    ''').format(frameworks=FRAMEWORKS)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    result, imported = lines[0], lines[1]["imported"]
    assert result["status"] == 200 and result["profile_id"] and len(result["profile_id"]) == 32
    assert set(imported) <= set(allowed), imported


@pytest.mark.parametrize("module", ["otelprof_middleware.asgi", "otelprof_middleware.wsgi",
                                    "otelprof_middleware.django", "otelprof_middleware.flask",
                                    "otelprof_middleware.integrations.instrumentor"])
def test_importing_an_integration_imports_no_other_framework(module: str) -> None:
    own = {"otelprof_middleware.django": {"django"}, "otelprof_middleware.flask": {"flask", "werkzeug"}}.get(module,
                                                                                                         set())
    code = PRELUDE.format(allowed=own, frameworks=FRAMEWORKS) + textwrap.dedent(f'''
        import {module}
        print(json.dumps(sorted(n for n in {FRAMEWORKS!r} if sys.modules.get(n) is not None)))
    ''')
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert set(json.loads(proc.stdout.strip().splitlines()[-1])) <= own
