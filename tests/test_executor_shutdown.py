"""The executor's shutdown matrix (tests/shutdown_matrix.py) under mpiexec, with 1 and 3 ranks.

Every ``shutdown(wait=, cancel_futures=)`` with tasks running, queued at a worker and still at
the master, and mpi4py's own shutdown tests: each case ends, every waiter returns, and each
kind of task ends as it should. A hang fails its case after ``shutdown_matrix.HANG`` seconds,
and the whole job is killed at the subprocess timeout.
"""

from __future__ import annotations

import re

import pytest
from helpers import HERE, mpirun, show
from shutdown_matrix import CASES

pytestmark = pytest.mark.mpi

TARGET = 1.0  # seconds from the shutdown call until every future is done and every rank has left
LOADED = 3.0  # what the assertion allows: other test suites share the 2 cores; a hang takes far longer

LINE = re.compile(r"^CASE (\S+) (pass|fail) settled=(\S+) left=(\S+) ?(.*)$")


@pytest.mark.parametrize("ranks", [1, 3])
def test_every_shutdown_ends_promptly(ranks: int) -> None:
    p = mpirun(ranks, [str(HERE / "shutdown_matrix.py")], timeout=240)
    assert p.returncode == 0, show(p)
    got = {m[1]: m for m in map(LINE.match, p.stdout.splitlines()) if m}
    assert set(got) == set(CASES), f"cases without a result: {sorted(set(CASES) - set(got))}\n{show(p)}"
    for name, m in got.items():
        assert m[2] == "pass", f"{name} with {ranks} rank(s): {m[5]}\n{show(p)}"
        settled, left = float(m[3]), float(m[4])
        assert max(settled, left) < LOADED, (
            f"{name} with {ranks} rank(s): futures done after {settled:.2f} s, every rank out after {left:.2f} s"
            f" (target {TARGET} s)")
