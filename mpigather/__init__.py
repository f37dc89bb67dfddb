"""mpigather: one master, many MPI workers, results streamed into files.

Layers, bottom up (importing this package does not start MPI):
- ``scheduler``: a pure state machine (queue, leases, retries, prefetch, stealing, the run's
  end); no I/O, no MPI;
- ``results``, ``table_schema``, ``sinks``, ``journal``, ``tasks``: what a result (or a table
  row) is, where it goes, how it is recorded, where tasks come from;
- ``link`` (the interface), ``transport`` (MPI: the only module that calls mpi4py) and
  ``loopback`` (threads of one process);
- ``master``, ``worker``: the two event loops around the scheduler, each a package of short
  modules (one per concern) behind one class, ``Master`` and ``Worker``;
- ``api``, ``executor_*``, ``cli``: the ways in; ``reader`` (and ``reader_table``), ``status``,
  ``report``: the ways out.
See docs/architecture.md.
"""

from typing import TYPE_CHECKING

from .lazy import lazy_getattr

# Where each public name lives. They are imported on first use (PEP 562), so that importing
# mpigather is quick: ``python -m mpigather`` installs its signal handlers before the heavy
# imports (numpy, h5py, mpi4py), and a wall-time signal in the first second is not fatal.
_WHERE = {
    "run": "api", "__version__": "api",
    "ChecksumError": "errors", "MasterFailed": "errors", "MPIGatherError": "errors",
    "UnsupportedResultError": "errors", "UsageError": "errors",
    "GatherExecutor": "executor_pool", "RemoteTaskError": "executor_calls", "executor": "executor_factory",
    "Results": "reader", "load": "reader", "verify": "reader",
    "NextStep": "steps", "next_step": "steps",
    "INTERRUPTED": "summary", "Summary": "summary",
    "WorkerInfo": "worker", "current_worker": "worker",
}

__all__ = [
    "INTERRUPTED", "ChecksumError", "GatherExecutor", "MPIGatherError", "MasterFailed", "NextStep",
    "RemoteTaskError", "Results", "Summary", "UnsupportedResultError", "UsageError", "WorkerInfo",
    "__version__", "current_worker", "executor", "load", "next_step", "run", "verify",
]


__getattr__ = lazy_getattr(__name__, _WHERE, globals())


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from .api import __version__, run
    from .errors import ChecksumError, MasterFailed, MPIGatherError, UnsupportedResultError, UsageError
    from .executor_calls import RemoteTaskError
    from .executor_factory import executor
    from .executor_pool import GatherExecutor
    from .reader import Results, load, verify
    from .steps import NextStep, next_step
    from .summary import INTERRUPTED, Summary
    from .worker import WorkerInfo, current_worker
