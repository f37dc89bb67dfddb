"""mpigather: one master, many MPI workers, results streamed into files.

Layers, bottom up (importing this package does not start MPI):
- ``scheduler``: a pure state machine (queue, leases, retries, prefetch); no I/O, no MPI;
- ``results``, ``sinks``, ``h5sink``, ``journal``: what a result is, where it goes, how it is recorded;
- ``transport``: the only module that calls mpi4py;
- ``master``, ``worker``: the two event loops around the scheduler;
- ``api``, ``executor``, ``cli``: the ways in.
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
from .summary import INTERRUPTED, Summary

__all__ = [
    "INTERRUPTED",
    "ChecksumError",
    "GatherExecutor",
    "MPIGatherError",
    "MasterFailed",
    "RemoteTaskError",
    "Results",
    "Summary",
    "UnsupportedResultError",
    "UsageError",
    "__version__",
    "executor",
    "load",
    "run",
    "verify",
]
