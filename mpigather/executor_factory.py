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
master thread); this module holds ``executor``, which every rank enters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from .config import OPTION_NAMES, make_options
from .errors import MPIGatherError
from .executor_calls import RemoteTaskError, _call
from .executor_feeder import AUTO_DEPTH, AUTO_SMALL, AUTO_TARGET
from .executor_pool import INTERRUPT_WAIT, INTERRUPTED_ROOT, GatherExecutor
from .startup import EXECUTOR_WORKER_CODE, MASTER_CODE, warming

__all__ = ["AUTO_DEPTH", "AUTO_SMALL", "AUTO_TARGET", "INTERRUPTED_ROOT", "INTERRUPT_WAIT", "GatherExecutor",
           "NOT_FOR_EXECUTOR", "RemoteTaskError", "executor"]


# Options of ``mpigather.run`` that the executor does not take, and why (tests/test_api.py checks
# that these, and only these, are missing from its signature)
NOT_FOR_EXECUTOR = {
    "mode": "its values come back to futures: there is no file for workers to write",
    "resume": "it has no output to resume",
    "overwrite": "it has no output to replace",
    "lock": "it has no output to lock",
    "keep_steps": "it has no output to keep the steps in",
    "kwargs": "a call gets its keyword arguments from submit(fn, *args, **kwargs)",
    "table": "its values come back to futures, not into a table",
}


class executor:  # noqa: N801 - a function to its users: ``with mpigather.executor() as ex:``
    """A ``concurrent.futures`` executor over the ranks of ``comm``, as a context manager.

    Every rank enters it. On ``root`` it yields a ``GatherExecutor`` (``submit``, ``map``,
    ``starmap``, ``shutdown``); the other ranks serve its tasks and get None once the root's
    executor has shut down. Each option left at None takes the value of the environment variable
    ``MPIGATHER_<NAME>`` when it is set, else the default given below (``max_failures`` excepted).

    Parameters
    ----------
    comm : mpi4py.MPI.Intracomm, optional
        The communicator whose ranks share the work; default ``MPI.COMM_WORLD``. The executor
        uses a private duplicate of it.
    root : int, optional
        The rank that gets the executor. Default 0.
    initializer : callable, optional
        Runs on each worker before its first task, as ``initializer(*initargs)``. If it raises,
        the executor is broken: pending and later futures fail with ``BrokenExecutor``.
    initargs : tuple, optional
        The arguments of ``initializer``. Default ``()``.
    timeout : float, optional
        Seconds a task may run before it is given to another worker; set it when a task can
        hang. Default: no limit.
    retries : int, optional
        How many times a task that raised runs again; raise it for flaky tasks. Default 0.
    max_failures : int or str, optional
        When failing tasks stop the executor from handing out work: ``N``, ``"N%"``, ``"auto"``
        or ``"none"``. Default ``"none"``: each future carries its own exception (the
        environment variable does not apply).
    chunk_size : int or str, optional
        Bytes per message of a large result (``"16MiB"`` or an int, at most 1GiB); lower it when
        the master's memory is tight. Default ``"64MiB"``.
    prefetch : int, optional
        Tasks queued at each worker beyond the one it runs; use 1 for tasks of minutes.
        Default 2.
    batch_window : float, optional
        Seconds of measured work handed to a worker at once when tasks are tiny. Default 0.02.
    inline_max : int, optional
        Bytes up to which a result travels inside its header message instead of as a stream.
        Default 262144 (256 KiB).
    checksum : {"both", "sender"}, optional
        ``"both"``: the master checks each large result's crc32c against the worker's;
        ``"sender"``: it only records the worker's (a master without a core to spare).
        Default ``"both"``.
    heartbeat : float, optional
        Seconds between a busy worker's heartbeats. Default 5.0.
    grace : float, optional
        Seconds running tasks get to finish after SIGTERM/SIGUSR1 or an early stop. Default 60.0.
    hello_patience : float, optional
        Seconds before the master warns that workers have not joined. Default 10.0.
    progress : {"auto", "bar", "log", "off"}, optional
        Progress display: a bar on a terminal, log lines in a batch log (``"auto"``), or none.
        Default ``"auto"``.
    checkpoint : {"every", "none"}, optional
        Multi-step tasks: store each step's output before the step counts as done (``"every"``),
        or keep it in the worker's memory (``"none"``: faster; a failure restarts the task).
        Default ``"every"``.
    affinity : bool, optional
        Multi-step tasks: the worker that finished a step runs the next one itself when it can.
        Turn off to hand every step to the scheduler. Default True.
    kinds : str, optional
        What this process's workers are, comma-separated (``"gpu,bigmem"``); steps with
        ``needs=`` run only on workers of that kind. Default ``""``.

    Returns
    -------
    executor
        A context manager; entering it gives a ``GatherExecutor`` on ``root`` and None on the
        other ranks. It may be entered again after it was left.

    Raises
    ------
    ValueError
        ``root`` is not a rank of ``comm``.
    UsageError
        A bad option value.
    RuntimeError
        Entering it while it is in use.
    MPIGatherError
        More than one rank, and MPI was initialized below ``MPI_THREAD_SERIALIZED``.

    Examples
    --------
    ::

        import mpigather

        with mpigather.executor() as ex:
            if ex is not None:  # only on the root
                assert list(ex.map(pow, range(4), [2] * 4)) == [0, 1, 4, 9]
    """

    def __init__(
        self,
        comm: Any = None,
        root: int = 0,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        timeout: float | None = None,
        retries: int | None = None,
        max_failures: int | str | None = None,
        chunk_size: int | str | None = None,
        prefetch: int | None = None,
        batch_window: float | None = None,
        inline_max: int | None = None,
        checksum: Literal["both", "sender"] | None = None,
        heartbeat: float | None = None,
        grace: float | None = None,
        hello_patience: float | None = None,
        progress: Literal["auto", "bar", "log", "off"] | None = None,
        checkpoint: Literal["every", "none"] | None = None,
        affinity: bool | None = None,
        kinds: str | None = None,
    ) -> None:
        options = {k: v for k, v in locals().items() if k in OPTION_NAMES}
        # each future carries its own exception: an executor never stops early on failures
        if options["max_failures"] is None:
            options["max_failures"] = "none"
        self.opts = make_options(**options)  # (before MPI starts)
        from .transport import intracomm_size

        size = intracomm_size(comm)  # on every rank, before any collective: a bad value fails alike everywhere
        if not 0 <= root < size:
            raise ValueError(f"root must be a rank of the communicator (0 to {size - 1}), not {root}")
        self.comm, self.root = comm, root
        self.initializer, self.initargs = initializer, initargs
        self._link: Any = None
        self._ex: GatherExecutor | None = None

    def __enter__(self) -> GatherExecutor | None:
        from .transport import MPILink, intracomm_size, rank_and_threads

        if self._link is not None or self._ex is not None:
            raise RuntimeError("this executor is already in use: leave it before entering it again")
        wargs = {"send_exceptions": True, "keep_params": False, "initializer": self.initializer,
                 "initargs": self.initargs}
        size = intracomm_size(self.comm)
        rank, threads_ok = rank_and_threads(self.comm)
        if rank == self.root and (size == 1 or threads_ok):
            # the root returns at once: its master thread makes the link (which waits for every
            # rank to enter, importing the master's code meanwhile), while the caller submits its tasks
            comm, root = self.comm, self.root
            self._ex = GatherExecutor(lambda cancelled: MPILink(comm, root=root, cancelled=cancelled,
                                                                meanwhile=warming(MASTER_CODE)),
                                      self.opts, wargs, size=size)
            return self._ex
        # a worker imports its loop while the others join (not the master's code: no output, journal,
        # scheduler), and mpi4py.futures, where its stand-in for get_comm_workers() goes
        link = self._link = MPILink(self.comm, root=self.root,
                                    meanwhile=() if rank == self.root else warming(EXECUTOR_WORKER_CODE))
        try:
            if link.rank != 0:
                from .transport import CommWorkersStandIn
                from .worker import serve

                stand_in = CommWorkersStandIn()
                stand_in.install()
                try:
                    serve(link, _call, self.opts, None, **wargs)
                except Exception:  # the initializer failed here: the root's futures say so (BrokenExecutor)
                    pass
                finally:
                    stand_in.restore()
                return None
            if not link.threads_ok:  # (more than one rank: checked above)
                from .master import release_workers
                from .transport import thread_level_name

                reason = (f"the executor's master runs in a thread, which {thread_level_name(link.thread_level)}"
                          " does not allow: initialize MPI with MPI_THREAD_SERIALIZED or better"
                          " (mpi4py.rc.thread_level = 'serialized' or 'multiple')")
                release_workers(link, reason, set(range(1, link.size)))
                raise MPIGatherError(reason)
            raise AssertionError("the root's executor is made above")
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
