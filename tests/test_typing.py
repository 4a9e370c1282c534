"""The package is typed (``py.typed``): keep it passing mypy."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_package_passes_mypy(tmp_path: pathlib.Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (it is in the test extra)")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--cache-dir", str(tmp_path / "cache"),
         str(ROOT / "src" / "otelprof_middleware")],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (ROOT / "src" / "otelprof_middleware" / "py.typed").exists()
