"""mpigather: one master, many MPI workers, results streamed into files.

Layers, bottom up (importing this package does not start MPI):
- ``scheduler``: a pure state machine (queue, leases, retries, prefetch, stealing, the run's
  end); no I/O, no MPI;
- ``results``, ``sinks``, ``journal``, ``tasks``: what a result is, where it goes, how it is
  recorded, where tasks come from;
- ``link`` (the interface), ``transport`` (MPI: the only module that calls mpi4py) and
  ``loopback`` (threads of one process);
- ``master``, ``worker``: the two event loops around the scheduler;
- ``api``, ``executor``, ``cli``: the ways in; ``reader``, ``status``, ``report``: the ways out.
See docs/architecture.md.
"""

from .api import __version__, run
from .errors import (
    ChecksumError,
    MasterFailed,
    MPIGatherError,
    UnsupportedResultError,
    UsageError,
)
from .executor import GatherExecutor, RemoteTaskError, executor
from .reader import Results, load, verify
from .steps import NextStep, next_step
from .summary import INTERRUPTED, Summary
from .worker import WorkerInfo, current_worker

__all__ = [
    "INTERRUPTED",
    "ChecksumError",
    "GatherExecutor",
    "MPIGatherError",
    "MasterFailed",
    "NextStep",
    "RemoteTaskError",
    "Results",
    "Summary",
    "UnsupportedResultError",
    "UsageError",
    "WorkerInfo",
    "__version__",
    "current_worker",
    "executor",
    "load",
    "next_step",
    "run",
    "verify",
]
