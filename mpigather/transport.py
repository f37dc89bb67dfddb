"""The one module that talks MPI: a private communicator, matched probes, pickled control
messages and raw buffer chunks, behind the ``link.Link`` interface.

Every run works on its own duplicate of the communicator it was given, so neither the
user's own messages nor a previous or next run can ever match one of ours. Helper threads
send heartbeats and answer revokes while a task runs, so MPI calls come from two threads of
a worker: under ``MPI_THREAD_MULTIPLE`` they go straight through; under
``MPI_THREAD_SERIALIZED`` a lock serializes them; below that, the helper thread stays away
from MPI (``threads_ok`` is False) and the worker says what it loses.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from .link import LOST, Backoff, wait_until

log = logging.getLogger("mpigather")


class Incoming:
    """A matched message, not yet received."""

    __slots__ = ("source", "tag", "count", "_msg", "_link")

    def __init__(self, link: MPILink, msg: Any, source: int, tag: int, count: int) -> None:
        self._link, self._msg, self.source, self.tag, self.count = link, msg, source, tag, count

    def obj(self) -> Any:
        with self._link._mpi():
            return self._msg.recv()

    def into(self, buf: Any) -> None:
        MPI = self._link._MPI
        with self._link._mpi():
            self._msg.Recv([buf, MPI.BYTE])


class _Lost:
    """Processes that the MPI library reports as failed (ULFM)."""

    __slots__ = ("source", "tag", "count", "ranks")

    def __init__(self, ranks: list[int]) -> None:
        self.source, self.tag, self.count, self.ranks = -1, LOST, 0, ranks

    def obj(self) -> list[int]:
        return self.ranks

    def into(self, buf: Any) -> None:
        raise TypeError("a lost-process report carries no data")


def thread_level_name(level: int) -> str:
    from mpi4py import MPI

    return {MPI.THREAD_SINGLE: "MPI_THREAD_SINGLE", MPI.THREAD_FUNNELED: "MPI_THREAD_FUNNELED",
            MPI.THREAD_SERIALIZED: "MPI_THREAD_SERIALIZED",
            MPI.THREAD_MULTIPLE: "MPI_THREAD_MULTIPLE"}.get(level, str(level))


JOIN_PATIENCE = 10.0  # seconds a rank waits for the others to join a run before it says so


def _idup(base: Any, patience: float) -> Any:
    """``MPI_Comm_idup``, waited for politely: a rank whose partners never call in (only the
    master called ``mpigather.run``, say) says why it waits instead of spinning in silence."""
    comm, req = base.Idup()
    start = time.monotonic()
    back = Backoff()
    warned = False
    while not req.Test():
        if not warned and time.monotonic() - start > patience:
            warned = True
            log.warning("rank %d of %d has waited %.0f s for the other ranks to join: every rank of the"
                        " communicator must call mpigather.run (or enter mpigather.executor) together",
                        base.Get_rank(), base.Get_size(), patience)
        back.sleep()
    return comm


class MPILink:
    """MPI endpoint of one rank, over a private duplicate of ``comm`` (default COMM_WORLD).

    Creating it is collective over ``comm`` (``MPI_Comm_dup``), and so is ``close``. With
    ``root``, that rank of ``comm`` becomes rank 0 of the duplicate.
    """

    def __init__(self, comm: Any = None, *, dup: bool = True, root: int = 0,
                 patience: float = JOIN_PATIENCE) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        base = comm if comm is not None else MPI.COMM_WORLD
        if root:  # the same group, reordered so that ``root`` is rank 0: the master
            self.comm = base.Split(0, 0 if base.Get_rank() == root else base.Get_rank() + 1)
        elif dup:
            self.comm = _idup(base, patience)
        else:
            self.comm = base
        self._owned = dup or bool(root)
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.host = socket.gethostname()
        self._status = MPI.Status()
        self._pending: list[Any] = []
        self.thread_level = MPI.Query_thread()
        self.threads_ok = self.thread_level >= MPI.THREAD_SERIALIZED
        self._lock: Any = (threading.RLock() if self.thread_level < MPI.THREAD_MULTIPLE
                           else contextlib.nullcontext())
        self.survives_failures = False

    def _mpi(self) -> Any:
        return self._lock

    # -- receiving ------------------------------------------------------------------------

    def poll(self, source: int | None = None) -> Incoming | _Lost | None:
        """A matched probe of the next message from ``source`` (any), or None."""
        MPI = self._MPI
        st = self._status
        with self._lock:
            msg = self.comm.improbe(MPI.ANY_SOURCE if source is None else source, MPI.ANY_TAG, st)
        if msg is None:
            return None
        return Incoming(self, msg, st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE))

    # -- sending --------------------------------------------------------------------------

    def send(self, obj: Any, dest: int, tag: int) -> None:
        with self._lock:
            req = self.comm.isend(obj, dest=dest, tag=tag)
        self._wait(req)

    def post(self, obj: Any, dest: int, tag: int) -> None:
        """Non-blocking pickled send; the request is completed later by ``progress``."""
        with self._lock:
            self._pending.append(self.comm.isend(obj, dest=dest, tag=tag))
        if len(self._pending) > 64:
            self.progress()

    def progress(self) -> None:
        if self._pending:
            with self._lock:
                self._pending = [r for r in self._pending if not r.Test()]

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait (politely) for every posted send to complete."""
        end = time.monotonic() + timeout
        back = Backoff()
        while True:
            self.progress()
            if not self._pending or time.monotonic() > end:
                return not self._pending
            back.sleep()

    def send_bufs(self, bufs: Iterable[Any], dest: int = 0, tag: int = 12, window: int = 2,
                  on_posted: Callable[[Any], None] | None = None) -> None:
        """Send raw buffers in order, keeping ``window`` of them in flight.

        The next chunk is already posted when the receiver finishes one, and waiting polls
        with a backoff instead of MPICH's blocking wait, which would spin a core at 100%
        that the master (doing the copy) needs. ``on_posted(buf)`` runs once each buffer is
        posted, overlapping the transfer.
        """
        MPI = self._MPI
        inflight: list[Any] = []
        for buf in bufs:
            with self._lock:
                inflight.append(self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=tag))
            if on_posted is not None:
                on_posted(buf)
            if len(inflight) >= window:
                self._wait(inflight.pop(0))
        for req in inflight:
            self._wait(req)

    def _wait(self, req: Any) -> None:
        def done() -> bool:
            with self._lock:
                return bool(req.Test())

        wait_until(done)

    # -- collectives and the end ----------------------------------------------------------

    def gather(self, obj: Any) -> list[Any] | None:
        with self._lock:
            return self.comm.gather(obj, root=0)  # type: ignore[no-any-return]

    def bcast(self, obj: Any) -> Any:
        with self._lock:
            return self.comm.bcast(obj, root=0)

    def farewell(self, timeout: float = 10.0) -> bool:
        """Wait (politely, at most ``timeout`` s) until every rank got here: a failed run's ranks
        leave together, so the exit status the launcher reports is rank 0's."""
        with self._lock:
            req = self.comm.Ibarrier()
        end = time.monotonic() + timeout

        def done() -> bool:
            with self._lock:
                return bool(req.Test()) or time.monotonic() > end

        wait_until(done)
        return time.monotonic() <= end

    def abort(self, code: int) -> None:
        """End the whole job. On COMM_WORLD, not on our duplicate: MPICH reports an abort on
        another communicator as a kill (exit 9) instead of ``code``."""
        self._MPI.COMM_WORLD.Abort(code)

    def close(self) -> None:
        """Free the private communicator (sends still pending are completed first, politely)."""
        self.flush()
        if self._owned and self.comm != self._MPI.COMM_NULL:
            with self._lock:
                self.comm.Free()


def finalize() -> None:
    """MPI_Finalize now, if MPI is up (before a process leaves with ``os._exit``)."""
    from mpi4py import MPI

    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()


def comm_size(comm: Any = None) -> int:
    """The size of ``comm`` (default COMM_WORLD; starts MPI)."""
    from mpi4py import MPI

    return int((comm if comm is not None else MPI.COMM_WORLD).Get_size())


def world_size_and_rank() -> tuple[int, int]:
    """The size of COMM_WORLD and this process's rank in it (starts MPI)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD.Get_size(), MPI.COMM_WORLD.Get_rank()
