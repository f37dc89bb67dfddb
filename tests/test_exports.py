"""The public surface is exactly what was meant, and importing it does not start MPI."""

from __future__ import annotations

import subprocess
import sys

import mpigather

PUBLIC = {
    "INTERRUPTED", "ChecksumError", "GatherExecutor", "MPIGatherError", "MasterFailed", "RemoteTaskError",
    "Results", "Summary", "UnsupportedResultError", "UsageError", "WorkerInfo", "__version__", "current_worker",
    "executor", "load", "run", "verify", "NextStep", "next_step",
}


def test_public_names():
    assert set(mpigather.__all__) == PUBLIC == set(mpigather._WHERE)
    for name in PUBLIC:
        assert hasattr(mpigather, name), name


def test_import_does_not_start_mpi():
    code = "import sys, mpigather; print('mpi4py' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_only_the_transport_imports_mpi4py():
    from pathlib import Path

    pkg = Path(mpigather.__file__).parent
    users = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py")
                   if "from mpi4py" in p.read_text() or "import mpi4py" in p.read_text())
    assert users == ["transport.py"], users
