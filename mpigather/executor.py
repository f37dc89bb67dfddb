"""An executor in the style of ``mpi4py.futures.MPICommExecutor``.

    with mpigather.executor() as ex:
        if ex is not None:                      # only on the root
            squares = list(ex.map(pow, range(100), [2] * 100))

Every rank enters it. On the root it yields a ``GatherExecutor`` (``submit``, ``map``,
``starmap``, ``shutdown``...); the workers serve tasks until the root's executor shuts down,
then get ``None``. Each executor works on its own duplicate of the communicator. Values of
any picklable type come back; arrays inside them travel as raw buffers, never pickled. A task
that raises, an argument that cannot be pickled, or a result that cannot be rebuilt fails its
own future only.

The pieces: ``executor_calls`` (what runs on a worker, and a task's exception coming back),
``executor_feeder`` (the chunks of a large ``map``), ``executor_pool`` (``GatherExecutor`` and its
master thread); this module holds the ``executor`` factory that every rank enters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .config import make_options
from .errors import MPIGatherError
from .executor_calls import RemoteTaskError, _call
from .executor_feeder import AUTO_DEPTH, AUTO_SMALL, AUTO_TARGET
from .executor_pool import INTERRUPT_WAIT, INTERRUPTED_ROOT, GatherExecutor

__all__ = ["AUTO_DEPTH", "AUTO_SMALL", "AUTO_TARGET", "INTERRUPTED_ROOT", "INTERRUPT_WAIT", "GatherExecutor",
           "RemoteTaskError", "executor"]


class executor:  # noqa: N801 - a function to its users: ``with mpigather.executor() as ex:``
    """``with mpigather.executor(comm) as ex:``: a ``GatherExecutor`` on ``root``, None on the other
    ranks (after they served tasks until the root's executor shut down). Every rank enters it.

    ``initializer(*initargs)`` runs on each worker before its first task; if it raises, the
    executor is broken: pending and later futures fail with ``BrokenExecutor``. The same object
    may be entered again after it was left; entering it while in use raises RuntimeError.
    """

    def __init__(self, comm: Any = None, root: int = 0, *, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = (), **options: Any) -> None:
        from .transport import intracomm_size

        size = intracomm_size(comm)  # on every rank, before any collective: a bad value fails alike everywhere
        if not 0 <= root < size:
            raise ValueError(f"root must be a rank of the communicator (0 to {size - 1}), not {root}")
        self.comm, self.root = comm, root
        self.initializer, self.initargs = initializer, initargs
        # each future carries its own exception: an executor never stops early on failures
        self.opts = make_options(**{"max_failures": "none", **options})
        self._link: Any = None
        self._ex: GatherExecutor | None = None

    def __enter__(self) -> GatherExecutor | None:
        from .transport import MPILink

        if self._link is not None:
            raise RuntimeError("this executor is already in use: leave it before entering it again")
        link = self._link = MPILink(self.comm, root=self.root)
        wargs = {"send_exceptions": True, "keep_params": False, "initializer": self.initializer,
                 "initargs": self.initargs}
        try:
            if link.rank != 0:
                from .api import run_on
                from .transport import no_comm_workers

                try:
                    with no_comm_workers():
                        run_on(link, _call, None, None, self.opts, worker_args=wargs)
                except Exception:  # the initializer failed here: the root's futures say so (BrokenExecutor)
                    pass
                return None
            if link.size > 1 and not link.threads_ok:
                from .master import release_workers
                from .transport import thread_level_name

                reason = (f"the executor's master runs in a thread, which {thread_level_name(link.thread_level)}"
                          " does not allow: initialize MPI with MPI_THREAD_SERIALIZED or better"
                          " (mpi4py.rc.thread_level = 'serialized' or 'multiple')")
                release_workers(link, reason, set(range(1, link.size)))
                raise MPIGatherError(reason)
            self._ex = GatherExecutor(link, self.opts, wargs)
            return self._ex
        except BaseException:
            self._close()
            raise

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        ex = self._ex
        try:
            if ex is not None:
                if isinstance(exc, KeyboardInterrupt):  # Ctrl-C: leave now, not after the tasks
                    ex._interrupt()
                    return
                try:
                    ex.shutdown(wait=True)
                except KeyboardInterrupt:  # a Ctrl-C while waiting for the tasks
                    ex._interrupt()
                    raise
        finally:
            self._close()

    def _close(self) -> None:
        link, self._link, self._ex = self._link, None, None
        if link is not None:
            link.close()
