"""The configuration reference documents every option, and the README keeps its two commands."""

from __future__ import annotations

import pathlib
import re

from otelprof_middleware.config import Config

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_every_option_is_in_the_configuration_reference() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.M))
    missing = sorted(set(Config.option_names()) - documented)
    assert not missing, f"options missing from docs/configuration.md: {missing}"
    unknown = sorted(documented - set(Config.option_names()))
    assert not unknown, f"docs/configuration.md documents options that do not exist: {unknown}"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in readme
    assert "python -m pytest -q" in ci
    assert "python examples/fastapi_app/demo.py" in readme
    assert (ROOT / "examples" / "fastapi_app" / "demo.py").exists()
