"""pytest set-up: the test folder on sys.path, the ``mpi`` and ``matrix`` markers, the MPI stack.

Test modules that start MPI processes set ``pytestmark = pytest.mark.mpi``, so
``pytest -m "not mpi"`` runs the in-process tests alone, in seconds. Tests marked ``matrix``
(the core gathers and faults) also run under the other MPI stacks: ``MPIGATHER_TEST_MPI``
selects one (see helpers.py). Before any test runs, the stack's python must load the library
the stack names (a wrong venv would otherwise test the wrong MPI and still pass); the header of
a non-quiet run names both. ``--results-file FILE`` writes what the run's last line counts, test
by test, with each skip's reason, for ``scripts/test_summary.py`` (one summary over every pytest
run of ``make test``).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import TAG, library_version, stack, tagged  # noqa: E402

_LIBRARY: list[str] = []
_STARTED: list[float] = []


def pytest_addoption(parser):
    parser.addoption("--results-file", metavar="FILE",
                     help="write the outcome of every test (JSON) for scripts/test_summary.py")


def pytest_sessionstart(session):
    _STARTED.append(time.time())
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
    """The table of tests/test_slurm_real.py (job states, exit codes, executions, time), when it ran;
    the results file."""
    from slurm_cluster import TABLE

    rows = config.stash.get(TABLE, None)
    if rows:
        terminalreporter.section("real Slurm: the template's chains")
        for row in rows:
            terminalreporter.write_line(row)
    if path := config.getoption("results_file"):
        write_results(Path(path), terminalreporter.stats, int(exitstatus), config.rootpath)


def write_results(path: Path, stats: dict, exitstatus: int, root: Path) -> None:
    """The reports that the run's last line counts, by outcome (passed, failed, error, skipped, ...):
    node ids, and for a skip where it was decided and why."""
    results: dict[str, list] = {}
    for outcome, reports in stats.items():
        if not outcome or outcome in ("deselected", "warnings"):
            continue  # setup and teardown reports that passed; not tests
        for r in reports:
            if not getattr(r, "count_towards_summary", True):
                continue
            entry: dict[str, object] = {"id": r.nodeid or str(getattr(r, "fspath", "?"))}
            if outcome == "skipped" and isinstance(r.longrepr, tuple) and len(r.longrepr) == 3:
                where, line, reason = r.longrepr
                where = os.path.relpath(where, root) if os.path.isabs(where) else where
                entry |= {"where": f"{where}:{line}", "reason": reason.removeprefix("Skipped: ")}
            results.setdefault(outcome, []).append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stack": stack().name, "exitstatus": exitstatus, "results": results,
                                "seconds": time.time() - _STARTED[0] if _STARTED else None}, indent=1))
