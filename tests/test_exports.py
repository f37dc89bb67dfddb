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


def test_no_module_hides_a_public_name():
    """Importing a module of the package sets it as an attribute of the package: a module named
    like a public name (``executor``) would replace that name once anything imported it."""
    code = ("import mpigather, mpigather.executor_pool, mpigather.executor_factory;"
            " mpigather.GatherExecutor; from mpigather.executor_factory import NOT_FOR_EXECUTOR;"
            " print(type(mpigather.executor).__name__, mpigather.executor.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["type", "mpigather.executor_factory"], out.stderr
    pkg = __import__("pathlib").Path(mpigather.__file__).parent
    modules = {p.stem for p in pkg.glob("*.py")} | {p.name for p in pkg.iterdir() if p.is_dir()}
    assert not modules & set(mpigather.__all__), modules & set(mpigather.__all__)
