"""``ruff check`` and ``mypy`` pass on the package (and ruff on tests and scripts), so that
``make test`` fails, and its summary counts a failure, when either reports an error.

mypy keeps its cache in .mypy_cache at the project root: a run after a small change takes
seconds, a first run about a minute.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from helpers import ROOT, env


def _tool(*cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env=env())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout:.0f} s:\n{e.stdout or ''}{e.stderr or ''}")


def _have(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[dev]')")


def test_ruff():
    _have("ruff")
    p = _tool("ruff", "check", "mpigather", "tests", "scripts", timeout=300)
    assert p.returncode == 0, f"ruff check mpigather tests scripts:\n{p.stdout}{p.stderr}"


def test_mypy():
    _have("mypy")
    p = _tool("mypy", "mpigather", timeout=600)
    assert p.returncode == 0, f"mypy mpigather:\n{p.stdout}{p.stderr}"
