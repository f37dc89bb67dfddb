"""pytest set-up: the test folder on sys.path, the ``mpi`` and ``matrix`` markers, the MPI stack.

Test modules that start MPI processes set ``pytestmark = pytest.mark.mpi``, so
``pytest -m "not mpi"`` runs the in-process tests alone, in seconds. Tests marked ``matrix``
(the core gathers and faults) also run under the other MPI stacks: ``MPIGATHER_TEST_MPI``
selects one (see helpers.py). Before any test runs, the stack's python must load the library
the stack names (a wrong venv would otherwise test the wrong MPI and still pass); the header of
a non-quiet run names both.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import TAG, library_version, stack, tagged  # noqa: E402

_LIBRARY: list[str] = []


def pytest_sessionstart(session):
    s = stack()
    lib = library_version()
    if not lib.startswith(s.library):
        raise pytest.UsageError(f"MPIGATHER_TEST_MPI={s.name} expects {s.library}, but {s.python} loads: "
                                f"{lib.splitlines()[0] if lib else '?'}")
    _LIBRARY.append(lib.splitlines()[0][:80])


@pytest.fixture(autouse=True)
def no_process_outlives_its_test(monkeypatch):
    """Every process a test starts (mpiexec, ranks, batch jobs) must be gone a few seconds after
    the test: a rank left behind is a hang the test did not see, and it would eat the CPU of
    the tests after it. Leftovers are killed and the test errors, naming them."""
    tag = uuid.uuid4().hex
    monkeypatch.setenv(TAG, tag)
    yield
    deadline = time.monotonic() + 10
    while (left := tagged(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid, _ in left:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    if left:
        pytest.fail("processes outlived the test (killed now):\n" + "\n".join(f"  {p} {c}" for p, c in left))


def pytest_report_header(config):
    s = stack()
    return [f"MPI stack {s.name}: {s.mpiexec} {s.describe()}".rstrip(),
            f"  python {s.python}; {_LIBRARY[0] if _LIBRARY else '?'}"]

def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The table of tests/test_slurm_real.py (job states, exit codes, executions, time), when it ran."""
    from slurm_cluster import TABLE

    rows = config.stash.get(TABLE, None)
    if rows:
        terminalreporter.section("real Slurm: the template's chains")
        for row in rows:
            terminalreporter.write_line(row)
