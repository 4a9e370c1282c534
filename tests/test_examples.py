"""The Django and Flask examples work by the commands their READMEs give.

Each example folder is copied to a temporary directory (so its ``profiles/`` folder
lands there), started with the README's server command on a free port, and asked for
profiles with ``X-Enable-Profiling: 1``; the profiles must appear in the copy's
``profiles/index.jsonl`` with the view's route.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
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


def _index(folder: pathlib.Path, want: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    path = folder / "profiles" / "index.jsonl"
    deadline = time.monotonic() + timeout
    entries: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if path.exists():
            entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if len(entries) >= want:
                return entries
        time.sleep(0.1)
    return entries


def _ask(server: Any, path: str) -> str:
    status, headers, _body = server.get(path, headers={"X-Enable-Profiling": "1"}, timeout=30)
    assert status == 200, (path, status)
    profile_id = {k.lower(): v for k, v in headers.items()}.get("x-profile-id")
    assert profile_id, headers
    return profile_id


@pytest.mark.parametrize("argv", [
    ["{python}", "-m", "flask", "--app", "app", "run", "-h", "127.0.0.1", "-p", "{port}"],  # flask run
    gunicorn_argv("app:app", worker_class="gthread", threads=4),
], ids=["flask-run", "gunicorn"])
def test_flask_example(tmp_path: pathlib.Path, argv: list[str]) -> None:
    folder = _copy("flask_app", tmp_path)
    with start_server(argv, cwd=folder, ready_path="/io") as server:
        ids = {_ask(server, "/cpu"), _ask(server, "/items/3")}
        entries = _index(folder, 2)  # written by the export worker while the server runs
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
        ids = {_ask(server, "/cpu"), _ask(server, "/items/3")}
        entries = _index(folder, 2)  # written by the export worker while the server runs
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
