"""Details of the executor beyond mpi4py's contract (tests/executor_details.py), under mpiexec
with 1 and 3 ranks: errors keep their own type, bad arguments fail on every rank, and
``mpi4py.futures.get_comm_workers()`` in a task points to our equivalent."""

from __future__ import annotations

import pytest
from executor_details import CHECKS
from helpers import HERE, mpirun, show

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("ranks", [1, 3])
def test_executor_details(ranks: int) -> None:
    p = mpirun(ranks, [str(HERE / "executor_details.py")], timeout=120)
    lines = {ln.split()[1]: ln for ln in p.stdout.splitlines() if ln.startswith("CHECK ")}
    assert set(lines) == set(CHECKS), f"checks without a result: {sorted(set(CHECKS) - set(lines))}\n{show(p)}"
    failed = [ln for ln in lines.values() if " pass" not in ln]
    assert not failed and p.returncode == 0, "\n".join(failed) + "\n" + show(p)
