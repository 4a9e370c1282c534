"""Install paths, for real: each README group marked ``venv`` runs as pasted in a fresh
virtualenv, where the real pip installs exactly what its first snippet says.

* ``fastapi`` (``.[starlette]`` + fastapi + uvicorn), ``django`` (``.[django]``),
  ``flask`` (``.[flask]``): the framework's Quick start, one header-triggered
  request, and its profile in ``./profiles``; the other frameworks are not even
  installed, and importing the integration loads none of them;
* ``zerocode``: ``opentelemetry-instrument`` with the distro; the span printed by the
  console exporter names the profile;
* ``demo``: ``pip install -e ".[demo]"`` is enough for the demo, and pulls no test tool.

The virtualenvs are built in parallel threads (pip's cache is reused: the default
cache folder is kept in the isolated environment), once per session, for the
selected tests only.
"""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import re
import subprocess
import sys
import time
from typing import Any, Optional

import pytest

from helpers import snippets

pytestmark = pytest.mark.integration

GROUPS = {g.name: g for g in snippets.groups() if g.venv and g.doc == "README.md"}

# what each group's integration is, and which frameworks must be absent
INTEGRATION = {
    "fastapi": (("otelprof_middleware.asgi", "otelprof_middleware.integrations.asgi"), ("django", "flask")),
    "zerocode": (("otelprof_middleware.asgi", "otelprof_middleware.integrations.instrumentor"), ("django", "flask")),
    "django": (("otelprof_middleware.django", "otelprof_middleware.integrations.django"),
               ("flask", "starlette", "fastapi")),
    "flask": (("otelprof_middleware.flask", "otelprof_middleware.integrations.flask"),
              ("django", "starlette", "fastapi")),
}
# the demo extra needs none of the test tools
NOT_IN_DEMO = ("pytest", "mypy", "gunicorn", "django", "flask", "grpc")

_IMPORT_CHECK = r'''
import importlib, importlib.util, json, sys
mods, others = sys.argv[1].split(","), sys.argv[2].split(",")
for m in mods:
    importlib.import_module(m)
print(json.dumps({
    "installed": [o for o in others if importlib.util.find_spec(o) is not None],
    "loaded": sorted(n for n in sys.modules if n.split(".")[0] in others),
}))
'''


class DjangoImportsFlask(AssertionError):
    """The Django integration imports the Flask adapter, so a Django-only install fails."""


class Result:
    def __init__(self) -> None:
        self.error: Optional[BaseException] = None
        self.outputs: list[str] = []
        self.logs = ""
        self.folder: Optional[pathlib.Path] = None
        self.venv_bin: Optional[pathlib.Path] = None
        self.timings: dict[str, float] = {}  # seconds per phase (shown with pytest -rP)


def _build_and_run(group: snippets.Group, workdir: pathlib.Path) -> Result:
    result = Result()
    try:
        start = time.monotonic()
        venv = workdir / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        result.venv_bin = venv / "bin"
        result.timings["venv"] = time.monotonic() - start
        with snippets.GroupRun(group, workdir, venv / "bin", pip_checker=False) as run:
            result.folder = run.folder
            try:
                result.outputs = [o.output for o in run.all()]
                # like a user who looks a moment later: the profile named in the response is
                # written (the file exporter batches for up to 5 s) before the server is stopped
                named = _profile_id_in(result.outputs[-1]) if result.outputs else None
                if named:
                    _wait_for_profile(run.folder, named, timeout=60)
            finally:
                result.logs = run.stop_servers()
                result.timings["snippets"] = time.monotonic() - start - result.timings["venv"]
    except BaseException as exc:  # reported by the test of this group
        result.error = exc
    return result


@pytest.fixture(scope="session")
def venv_results(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    wanted = sorted({item.callspec.params["name"] for item in request.session.items
                     if item.module is not None and item.module.__name__ == __name__
                     and hasattr(item, "callspec") and "name" in item.callspec.params})
    # 2 cores: pip is partly network and disk bound, three at a time keeps both cores busy
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=3, thread_name_prefix="fresh-venv")
    futures = {name: pool.submit(_build_and_run, GROUPS[name], tmp_path_factory.mktemp(f"venv-{name}"))
               for name in wanted if name in GROUPS}
    yield futures
    pool.shutdown(wait=True)


def _result(venv_results: Any, name: str) -> Result:
    assert name in GROUPS, f"README.md has no snippet group {name!r} marked venv"
    result: Result = venv_results[name].result(timeout=900)
    print(f"{name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))
    if result.error is not None:
        text = str(result.error) + result.logs
        if name == "django" and ("No module named 'flask'" in text):
            raise DjangoImportsFlask(text[-4000:])
        raise result.error
    return result


def _profile_id_in(output: str) -> Optional[str]:
    match = re.search(r"^x-profile-id:\s*([0-9a-f]{32})\s*$", output, flags=re.I | re.M)
    return match.group(1) if match else None


def _wait_for_profile(folder: pathlib.Path, profile_id: str, timeout: float) -> None:
    index = folder / "profiles" / "index.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if index.exists() and profile_id in index.read_text():
            return
        time.sleep(0.2)


def _profile_ids(folder: pathlib.Path) -> list[str]:
    index = folder / "profiles" / "index.jsonl"
    assert index.exists(), f"no {index}"
    return [json.loads(line)["profile_id"] for line in index.read_text().splitlines() if line.strip()]


def _import_check(result: Result, modules: tuple[str, ...], others: tuple[str, ...]) -> dict[str, Any]:
    assert result.venv_bin is not None
    proc = subprocess.run([str(result.venv_bin / "python"), "-c", _IMPORT_CHECK, ",".join(modules), ",".join(others)],
                          capture_output=True, text=True, timeout=120, cwd=str(result.folder))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ["fastapi", "django", "flask", "zerocode"])
def test_quick_start_in_a_fresh_virtualenv(venv_results: Any, name: str) -> None:
    result = _result(venv_results, name)
    assert result.folder is not None
    # the curl printed the response headers: its X-Profile-Id is in ./profiles
    profile_id = _profile_id_in(result.outputs[-1])
    assert profile_id, result.outputs[-1]
    assert profile_id in _profile_ids(result.folder), (profile_id, result.logs[-3000:])
    # only this framework is installed, and the integration loads no other
    modules, others = INTEGRATION[name]
    check = _import_check(result, modules, others)
    assert check == {"installed": [], "loaded": []}, check
    if name == "zerocode":
        # the span printed by the console exporter is linked to the profile
        assert f'"otelprof.profile_id": "{profile_id}"' in result.logs, result.logs[-4000:]


@pytest.mark.parametrize("name", ["demo"])  # a parameter, so that the session fixture sees it is wanted
def test_demo_in_a_fresh_virtualenv(venv_results: Any, name: str) -> None:
    result = _result(venv_results, name)
    out = result.outputs[-1]
    assert re.search(r"^5 profile\(s\) in ", out, flags=re.M), out
    assert "X-Profile-Id: -" not in out.split("(async CPU work)")[0], out  # the first request was profiled
    assert result.venv_bin is not None
    proc = subprocess.run([str(result.venv_bin / "python"), "-c",
                           "import importlib.util, sys; print([m for m in sys.argv[1:] "
                           "if importlib.util.find_spec(m) is not None])", *NOT_IN_DEMO],
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", f"the demo extra pulled in test tools: {proc.stdout}"
