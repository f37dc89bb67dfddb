"""A process's start, made cheap: the code a master or a worker runs before its first result is
imported while it waits for the other ranks to join (``warming``, whose steps
``transport.MPILink`` runs between tests of the join), with fewer garbage collections
meanwhile (``fewer_collections``). Imports nothing of its own."""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
from collections.abc import Iterable, Iterator

# What each side imports before its first result (in memory, as the executor and a run with
# out=None; an output's own code, h5py or the .npy writer, comes when the output is opened).
# Each name is one step: a few hundred microseconds, after which the join is tested again.
MASTER_CODE = ("mpigather.results", "mpigather.table_schema", "mpigather.sinks.memory", "mpigather.scheduler.types",
               "mpigather.scheduler.core", "mpigather.summary", "mpigather.master.streams", "mpigather.master.core",
               "mpigather.master", "mpigather.api", "mpigather.progress")
WORKER_CODE = ("mpigather.results", "mpigather.table_schema", "mpigather.worker.send", "mpigather.worker")
EXECUTOR_WORKER_CODE = (*WORKER_CODE, "mpi4py.futures")  # (where the stand-in for get_comm_workers() goes)


def warming(modules: Iterable[str]) -> Iterator[str]:
    """Imports ``modules`` one at a time, yielding the name of each: the steps of what a process
    does while it waits anyway. An import that fails is left to the place that needs the module,
    which raises the same error where it is handled (a master that fails to start must first
    have joined, to let the workers go)."""
    with fewer_collections():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:
                pass
            yield name


@contextlib.contextmanager
def fewer_collections(threshold: int = 50_000) -> Iterator[None]:
    """Raise the garbage collector's young-generation threshold meanwhile, then put back what
    was there (left alone if the program turned the collector off or changed the threshold
    meanwhile).

    A process that imports its code allocates tens of thousands of objects the collector tracks
    (functions, classes, dicts), and with numpy loaded each collection that reaches the older
    generations walks all of numpy's too: 1.3 ms of the 14 ms a master spent importing its code,
    and 1.3 of a worker's 6 (measured with ``gc.callbacks``). A busy master is the same: each
    small result allocates a few tracked objects (its meta dict, the message's tuples), and
    Python's default threshold (700) ran a young collection every hundred or so results, 10-15%
    of its time with tiny results (make bench, case 2)."""
    old = gc.get_threshold()
    raise_it = gc.isenabled() and 0 < old[0] < threshold
    if raise_it:
        gc.set_threshold(threshold, *old[1:])
    try:
        yield
    finally:
        if raise_it and gc.get_threshold()[0] == threshold:
            gc.set_threshold(*old)


def import_master(out: str | os.PathLike[str] | None) -> None:
    """Import the code the master's run needs up to its first result (the output's, h5py for an
    HDF5 one, the loop's, the committer's thread pool), ahead of its use: the command line does
    it while the workers start, so that none of it is left between their hello and their first
    task (measured: 0.35 s on a quiet machine for a sweep into HDF5)."""
    import concurrent.futures  # noqa: F401 - the committer's pool

    from . import lock, output, progress  # noqa: F401
    from .master import Master  # noqa: F401

    if out is not None:
        from .sinks import is_hdf5_path

        if is_hdf5_path(out):
            from .sinks import hdf5  # noqa: F401 - h5py, the table's columns
        else:
            from .sinks import npy  # noqa: F401
