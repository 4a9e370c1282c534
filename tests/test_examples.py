"""The FastAPI, Django and Flask examples work by the commands their READMEs give.

Each example folder is copied to a temporary directory (so its ``profiles/`` folder
lands there) and started with the README's server command on a free port.  Each
prints one ``curl`` line that asks for a profile, with the header secret it uses:
that line is run as printed (a real ``curl``), and its header asks for more
profiles; they must appear in the copy's ``profiles/index.jsonl`` with the view's
route.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import time
from typing import Any

import pytest

from helpers.wsgi_servers import gunicorn_argv, start_server, uvicorn_argv

pytestmark = pytest.mark.integration

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def _copy(name: str, tmp_path: pathlib.Path) -> pathlib.Path:
    dst = tmp_path / name
    shutil.copytree(EXAMPLES / name, dst, ignore=shutil.ignore_patterns("profiles", "__pycache__", "*.log"))
    return dst


def _index(folder: pathlib.Path, ids: set[str], timeout: float = 20.0) -> list[dict[str, Any]]:
    """The local store's index once it lists every profile in ``ids`` (or at the
    timeout).  It may list others too: a readiness probe of a slow endpoint can be
    profiled by chance or as slow, so a count of entries says nothing."""
    path = folder / "profiles" / "index.jsonl"
    deadline = time.monotonic() + timeout
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if ids <= {e["profile_id"] for e in entries}:
                return entries
        time.sleep(0.1)
    return entries


def _printed_curl(server: Any) -> list[str]:
    """The one ``curl`` line the example printed, as argv; it names this server's port."""
    lines = [line.strip() for line in server.output().splitlines() if line.strip().startswith("curl ")]
    assert len(lines) == 1, server.output()
    argv = shlex.split(lines[0])
    assert argv[-1] == f"http://127.0.0.1:{server.port}/cpu", lines[0]
    return argv


def _run_curl(argv: list[str]) -> str:
    """Run the printed line as it is; the profile id it got."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    assert re.search(r"^HTTP/\S+ 200", out, flags=re.M), out
    found = re.search(r"^x-profile-id: *(\w+)", out, flags=re.M | re.I)
    assert found, out
    return found.group(1)


def _ask(server: Any, path: str, curl: list[str]) -> str:
    """Ask for a profile of ``path`` with the header the printed line sends."""
    name, _, value = curl[curl.index("-H") + 1].partition(": ")
    status, headers, _body = server.get(path, headers={name: value}, timeout=30)
    assert status == 200, (path, status)
    profile_id = {k.lower(): v for k, v in headers.items()}.get("x-profile-id")
    assert profile_id, headers
    return profile_id


@pytest.mark.parametrize("secret", [None, "from-the-env"])
def test_fastapi_example(tmp_path: pathlib.Path, secret: Any) -> None:
    folder = _copy("fastapi_app", tmp_path)
    env = {"OTELPROF_OUTPUT_DIR": str(folder / "profiles")}
    if secret:
        env["OTELPROF_HEADER_SECRET"] = secret
    with start_server(uvicorn_argv("app:app"), cwd=folder, env=env, ready_path="/health") as server:
        curl = _printed_curl(server)
        assert f"X-Enable-Profiling: {secret or 'change-me'}" in curl
        ids = {_run_curl(curl), _ask(server, "/io?ms=10", curl)}
        status, headers, _ = server.get("/cpu", headers={"X-Enable-Profiling": "1"})  # not the secret
        assert status == 200 and "x-profile-id" not in headers
        entries = _index(folder, ids)
    by_id = {e["profile_id"]: e for e in entries}
    assert ids <= set(by_id), entries
    assert {by_id[i]["attributes"].get("http.route") for i in ids} == {"/cpu", "/io"}


@pytest.mark.parametrize("argv", [
    ["{python}", "-m", "flask", "--app", "app", "run", "-h", "127.0.0.1", "-p", "{port}"],  # flask run
    gunicorn_argv("app:app", worker_class="gthread", threads=4),
], ids=["flask-run", "gunicorn"])
def test_flask_example(tmp_path: pathlib.Path, argv: list[str]) -> None:
    folder = _copy("flask_app", tmp_path)
    with start_server(argv, cwd=folder, ready_path="/io") as server:
        curl = _printed_curl(server)
        assert "X-Enable-Profiling: change-me" in curl
        ids = {_run_curl(curl), _ask(server, "/items/3", curl)}
        entries = _index(folder, ids)  # written by the export worker while the server runs
    by_id = {e["profile_id"]: e for e in entries}
    assert ids <= set(by_id), entries
    routes = {by_id[i]["attributes"].get("http.route") for i in ids}
    assert routes == {"/cpu", "/items/<int:item_id>"}


@pytest.mark.parametrize("argv", [
    ["{python}", "manage.py", "runserver", "127.0.0.1:{port}", "--noreload"],
    uvicorn_argv("mysite.asgi:application"),
], ids=["runserver", "uvicorn"])
def test_django_example(tmp_path: pathlib.Path, argv: list[str]) -> None:
    folder = _copy("django_app", tmp_path)
    env = {"DJANGO_SETTINGS_MODULE": "mysite.settings"}
    with start_server(argv, cwd=folder, env=env, ready_path="/io") as server:
        curl = _printed_curl(server)
        assert "X-Enable-Profiling: change-me" in curl
        ids = {_run_curl(curl), _ask(server, "/items/3", curl)}
        entries = _index(folder, ids)  # written by the export worker while the server runs
    by_id = {e["profile_id"]: e for e in entries}
    assert ids <= set(by_id), entries
    routes = {by_id[i]["attributes"].get("http.route") for i in ids}
    assert routes == {"cpu", "items/<int:item_id>"}
    cpu = [by_id[i] for i in ids if by_id[i]["attributes"].get("http.route") == "cpu"][0]
    assert cpu["samples"] > 0 and cpu["cpu_ms"] > 0


def test_examples_keep_their_profiles_out_of_git() -> None:
    ignored = (EXAMPLES.parent / ".gitignore").read_text()
    assert "examples/*/profiles/" in ignored
    assert not any(os.path.exists(EXAMPLES / n / "profiles" / "index.jsonl.tmp") for n in ("flask_app", "django_app"))
