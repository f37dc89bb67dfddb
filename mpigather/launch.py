"""Catch a launch that went wrong before it does harm: one MPI process that the launcher
started as one of several.

With Slurm's default ``MpiDefault=none``, ``srun`` without ``--mpi=pmi2`` (or ``pmix``) starts
every rank as its own one-rank MPI job: each would be a master and run every task into the
same output. The launcher's own variables say how many processes it started; if MPI sees
one while the launcher started more, the run is refused with the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .errors import UsageError

FIX = ("start it with `srun --mpi=pmi2` (MPICH; `--mpi=pmix` for Open MPI; `srun --mpi=list` shows what"
       " this Slurm offers), or with the MPI library's own mpiexec; set MPIGATHER_CHECK_LAUNCH=0 to skip this check")


def promised_size(environ: Mapping[str, str] | None = None) -> tuple[int, str] | None:
    """How many processes the launcher says it started, and which variable says so."""
    env = os.environ if environ is None else environ
    names = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS"]
    if "SLURM_STEP_ID" in env or "SLURM_STEPID" in env:
        names.append("SLURM_NTASKS")  # inside an srun step (a batch script's own SLURM_NTASKS is not)
    for name in names:
        try:
            n = int(env.get(name, ""))
        except ValueError:
            continue
        if n > 1:
            return n, name
    return None


def check(size: int, environ: Mapping[str, str] | None = None) -> None:
    """Raise UsageError if this is a one-rank MPI job that the launcher started as several."""
    env = os.environ if environ is None else environ
    if size != 1 or env.get("MPIGATHER_CHECK_LAUNCH", "1") == "0":
        return
    promised = promised_size(env)
    if promised is not None:
        n, name = promised
        raise UsageError(f"MPI sees 1 process, but the launcher started {n} ({name}={n}): every process would"
                         f" run the whole job alone, on the same output. The launcher and the MPI library are"
                         f" not connected; {FIX}")
