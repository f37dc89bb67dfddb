"""pytest set-up: the test folder on sys.path, the ``mpi`` and ``matrix`` markers, the MPI stack.

Test modules that start MPI processes set ``pytestmark = pytest.mark.mpi``, so
``pytest -m "not mpi"`` runs the in-process tests alone, in seconds. Tests marked ``matrix``
(the core gathers and faults) also run under the other MPI stacks: ``MPIGATHER_TEST_MPI``
selects one (see helpers.py); the header of the run names it and the library it loaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from helpers import stack  # noqa: E402


def pytest_report_header(config):
    s = stack()
    from helpers import library_version

    lib = library_version()
    if not lib.startswith(s.library):
        import pytest

        raise pytest.UsageError(f"MPIGATHER_TEST_MPI={s.name} expects {s.library}, but {s.python} loads: "
                                f"{lib.splitlines()[0] if lib else '?'}")
    return [f"MPI stack {s.name}: {s.mpiexec} {s.describe()}".rstrip(),
            f"  python {s.python}; {lib.splitlines()[0][:80]}"]
