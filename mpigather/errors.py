"""Exception classes. Each message names the value at fault and, where there is one, the fix."""

from __future__ import annotations


class MPIGatherError(Exception):
    """Base class of every error raised by mpigather."""


class UsageError(MPIGatherError):
    """Bad input or usage: a missing module, an invalid task file, an unwritable output.

    The command line reports it once, on rank 0, and exits with status 2.
    """


class UnsupportedResultError(UsageError):
    """A task function returned a value that mpigather cannot store."""


class ChecksumError(MPIGatherError):
    """A received result does not match the checksum computed by the worker."""


class ProtocolError(MPIGatherError):
    """A message arrived that the scheduler's state does not allow (a bug, not a user error)."""


class MasterFailed(MPIGatherError):
    """Raised on workers when the master aborts the run."""

