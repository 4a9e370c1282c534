"""The snippets of README.md and docs/ that are marked runnable work as pasted.

Markers and what the runner does: ``tests/helpers/snippets.py`` and CONTRIBUTING.md.
Groups marked ``venv`` (the install paths) run in fresh virtualenvs in
``tests/test_fresh_venv.py``; every other group runs here, in the suite's own
virtualenv, each in a new temporary folder with an isolated environment, its
servers started and stopped by the test.  Unmarked blocks are not run.
"""

from __future__ import annotations

import pathlib
import sys

import pytest

from helpers import snippets

pytestmark = pytest.mark.integration

ALL_GROUPS = snippets.groups()
GROUPS = [g for g in ALL_GROUPS if g.runnable and not g.venv]


def test_markers_are_well_formed_and_name_what_they_run() -> None:
    # parsing raised already for a malformed marker; here: the marked snippets exist where promised
    docs = {g.doc for g in ALL_GROUPS}
    assert "README.md" in docs, "README.md has no marked snippets"
    for group in ALL_GROUPS:
        for snip in group.snippets:
            if snip.action == "skip":
                assert snip.reason, snip.where
            if snip.action == "server":
                assert snip.port is not None, snip.where
        files = [s for s in group.snippets if s.action == "file"]
        for snip in files:
            assert not snip.file.startswith("/") and ".." not in snip.file, f"{snip.where}: file= must be relative"


def test_readme_marks_the_quick_start_of_every_framework() -> None:
    readme = {g.name: g for g in ALL_GROUPS if g.doc == "README.md"}
    for name in ("demo", "fastapi", "django", "flask", "zerocode"):
        assert name in readme and readme[name].venv, f"README group {name!r} (fresh virtualenv) is missing"
    # each framework's quick start ends with a header-triggered request that uses the snippet's secret
    for name in ("fastapi", "django", "flask", "zerocode"):
        curl = [s for s in readme[name].snippets if "curl" in s.code]
        assert curl and "X-Enable-Profiling: change-me" in curl[-1].code, name
        assert any("change-me" in s.code for s in readme[name].snippets if s is not curl[-1]), name


def test_every_snippet_that_sets_a_header_secret_shows_a_curl_with_it() -> None:
    # README and docs: a secret in a snippet, then the curl of that group sends it
    for group in ALL_GROUPS:
        secrets = [s for s in group.snippets if "header_secret" in s.code.lower() or "HEADER_SECRET" in s.code]
        if not secrets:
            continue
        curls = [s for s in group.snippets if "curl" in s.code]
        assert curls, f"{secrets[0].where} sets a header secret but its group {group.id} has no curl"
        assert all("X-Enable-Profiling: 1" not in s.code for s in curls), group.id


@pytest.mark.parametrize("group", GROUPS, ids=[g.id for g in GROUPS])
def test_snippet_group_runs_as_pasted(group: snippets.Group, tmp_path: pathlib.Path) -> None:
    with snippets.GroupRun(group, tmp_path, pathlib.Path(sys.executable).parent, pip_checker=True) as run:
        outcomes = run.all()
    skipped = [o.skipped for o in outcomes if o.skipped]
    if skipped:
        ran = len(outcomes) - len(skipped)
        pytest.skip(f"ran {ran} snippet(s) of {group.id}; skipped: " + "; ".join(skipped))
