"""mpigather.run and mpigather.executor from a user's MPI program, with 1-3 ranks."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import mpirun, show

pytestmark = [pytest.mark.mpi, pytest.mark.matrix]

SCRIPT = str(Path(__file__).with_name("lib_run.py"))


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_run_in_memory(ranks):
    p = mpirun(ranks, [SCRIPT, "memory"], timeout=90)
    assert p.returncode == 0, show(p)
    assert p.stdout.count("RESULT OK") == 1, show(p)
    assert p.stdout.count("WORKER released") == ranks - 1, show(p)


@pytest.mark.parametrize("ranks", [1, 3])
def test_run_reports_failures(ranks):
    p = mpirun(ranks, [SCRIPT, "failures"], timeout=90)
    assert p.returncode == 0, show(p)
    assert "RESULT OK" in p.stdout, show(p)


@pytest.mark.parametrize("ranks", [1, 2, 3])
def test_executor(ranks):
    p = mpirun(ranks, [SCRIPT, "executor"], timeout=90)
    assert p.returncode == 0, show(p)
    assert p.stdout.count("RESULT OK") == 1, show(p)
    assert p.stdout.count("left the executor") == ranks, show(p)


def test_bad_output_releases_workers():
    p = mpirun(3, [SCRIPT, "bad_output"], timeout=60)
    assert p.returncode == 0, show(p)
    assert p.stdout.count("USAGE") == 1 and p.stdout.count("RELEASED") == 2, show(p)
