"""pytest set-up: the test folder on sys.path, the ``mpi`` and ``matrix`` markers, the MPI stack.

Test modules that start MPI processes set ``pytestmark = pytest.mark.mpi``, so
``pytest -m "not mpi"`` runs the in-process tests alone, in seconds. Tests marked ``matrix``
(the core gathers and faults) also run under the other MPI stacks: ``MPIGATHER_TEST_MPI``
selects one (see helpers.py). Before any test runs, the stack's python must load the library
the stack names (a wrong venv would otherwise test the wrong MPI and still pass); the header of
a non-quiet run names both.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import library_version, stack  # noqa: E402

_LIBRARY: list[str] = []


def pytest_sessionstart(session):
    s = stack()
    lib = library_version()
    if not lib.startswith(s.library):
        raise pytest.UsageError(f"MPIGATHER_TEST_MPI={s.name} expects {s.library}, but {s.python} loads: "
                                f"{lib.splitlines()[0] if lib else '?'}")
    _LIBRARY.append(lib.splitlines()[0][:80])


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
