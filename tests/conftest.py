"""pytest set-up: the test folder on sys.path, and the ``mpi`` marker applied by module.

Test modules that start MPI processes set ``pytestmark = pytest.mark.mpi``, so
``pytest -m "not mpi"`` runs the in-process tests alone, in seconds.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The table of tests/test_slurm_real.py (job states, exit codes, executions, time), when it ran."""
    from slurm_cluster import TABLE

    rows = config.stash.get(TABLE, None)
    if rows:
        terminalreporter.section("real Slurm: the template's chains")
        for row in rows:
            terminalreporter.write_line(row)
