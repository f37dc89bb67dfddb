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
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Open MPI with ULFM (these must be in the environment before MPI_Init):
# - without this, about one run in ten with a dead process hangs in MPI_Finalize, in a fence that
#   waits for the dead;
os.environ.setdefault("OMPI_MCA_async_mpi_finalize", "1")
# - over TCP, a receive cut short by the sender's death stays in ob1's schedule of RDMA puts, and
#   the master's next send crashed in it (half the runs that killed a worker mid-stream); without
#   "put" the TCP transport pipelines plain sends, and 0 of 20 such runs crashed.
if os.environ.get("OMPI_MCA_mpi_ft_enable", "").lower() in ("1", "true", "yes", "on"):
    os.environ.setdefault("OMPI_MCA_btl_tcp_flags", "send,inplace,need-ack,need-csum,hetero-rdma")

from .join import JOIN_PATIENCE, idup, leave_in_flight
from .link import LOST, Backoff, PeerLost, crowd, hostname, wait_until
from .messages import RELEASE

log = logging.getLogger("mpigather")


class Incoming:
    """A matched message, not yet received."""

    __slots__ = ("source", "tag", "count", "_msg", "_link")

    def __init__(self, link: MPILink, msg: Any, source: int, tag: int, count: int) -> None:
        self._link, self._msg, self.source, self.tag, self.count = link, msg, source, tag, count

    def obj(self) -> Any:
        with self._link._mpi(), self._link._failures():
            return self._msg.recv()

    def into(self, buf: Any) -> None:
        MPI = self._link._MPI
        with self._link._mpi(), self._link._failures():
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


FAREWELL_NAP = 0.01  # longest sleep between tests of the last barrier (many ranks wait in it at once)
# a worker stopped before the end of a run (nothing was left for it) waits for the master to close
# the run (``await_release``) with naps of up to FAREWELL_NAP x crowd(), at most RELEASE_NAP
RELEASE_NAP = 0.2
_AS_IS = contextlib.nullcontext()  # (``MPILink._failures`` without ULFM)


class MPILink:
    """MPI endpoint of one rank, over a private duplicate of ``comm`` (default COMM_WORLD).

    Creating it is collective over ``comm`` (``MPI_Comm_dup``), and so is ``close``. With
    ``root``, that rank of ``comm`` becomes rank 0 of the duplicate. ``meanwhile``: steps of
    work that this rank runs once it has called in, before it waits for the others, testing the
    join between them (``startup.warming``: the code it runs next is imported while the other
    ranks arrive and import theirs, and their join completes without waiting for the end of it).
    """

    def __init__(self, comm: Any = None, *, dup: bool = True, root: int = 0,
                 patience: float = JOIN_PATIENCE, cancelled: Callable[[], bool] | None = None,
                 meanwhile: Iterable[Any] = ()) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        base = comm if comm is not None else MPI.COMM_WORLD
        if root:  # the same group, reordered so that ``root`` is rank 0: the master
            for _ in meanwhile:  # (a blocking split: nothing to post first)
                pass
            self.comm = base.Split(0, 0 if base.Get_rank() == root else base.Get_rank() + 1)
        elif dup:
            self.comm = idup(base, patience, cancelled, meanwhile)
        else:
            for _ in meanwhile:
                pass
            self.comm = base
        self._owned = dup or bool(root)
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.host = hostname()
        self._status = MPI.Status()
        self._pending: list[Any] = []  # posted sends not yet complete (they hold their buffers)
        self._pending_lock = threading.Lock()  # a real lock even when MPI needs none: Python's list
        self.thread_level = MPI.Query_thread()
        self.threads_ok = self.thread_level >= MPI.THREAD_SERIALIZED
        self._lock: Any = (threading.RLock() if self.thread_level < MPI.THREAD_MULTIPLE
                           else contextlib.nullcontext())
        # errors come back as exceptions on our communicator, whatever the user's has (an inherited
        # "fatal" handler would end the job with an exit status that reads as ours)
        self.comm.Set_errhandler(MPI.ERRORS_RETURN)
        self.survives_failures = ulfm_enabled()
        self._failed: set[int] = set()  # ranks known dead (ULFM)
        self.released = False  # (a worker) the master's ``release`` came while it still served tasks
        self._releases: list[Any] = []  # (the master) release messages posted (``close`` does not wait for them)

    def _failures(self) -> Any:
        """Turn the MPI library's "a process failed" errors into ``PeerLost`` (ULFM only). Without
        ULFM nothing is translated: a shared empty context, not a generator made per call (the
        loops' empty polls make thousands of calls a second)."""
        return self._translated() if self.survives_failures else _AS_IS

    @contextlib.contextmanager
    def _translated(self) -> Any:
        try:
            yield
        except self._MPI.Exception as e:
            if e.Get_error_class() not in _proc_failed_classes(self._MPI):
                raise
            lost = self._acknowledge()
            raise PeerLost(lost) from None

    def _acknowledge(self) -> list[int]:
        """Acknowledge every failure so far (``ANY_SOURCE`` receives work again); the ranks new to us."""
        with self._lock:
            self.comm.Ack_failed()
            group = self.comm.Get_failed()
            ranks = [r for r in group.Translate_ranks(None, self.comm.Get_group()) if r is not None and r >= 0]
            group.Free()
        new = sorted(set(ranks) - self._failed)
        self._failed.update(new)
        return new

    def _mpi(self) -> Any:
        return self._lock

    def fault_behaviour(self) -> str:
        return fault_behaviour()

    # -- receiving ------------------------------------------------------------------------

    def poll(self, source: int | None = None) -> Incoming | _Lost | None:
        """A matched probe of the next message from ``source`` (any), or None."""
        MPI = self._MPI
        st = self._status
        try:
            with self._lock, self._failures():
                msg = self.comm.improbe(MPI.ANY_SOURCE if source is None else source, MPI.ANY_TAG, st)
        except PeerLost as e:
            return _Lost(e.ranks) if e.ranks else None
        if msg is None:
            return None
        return Incoming(self, msg, st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE))

    # -- sending --------------------------------------------------------------------------

    def send(self, obj: Any, dest: int, tag: int) -> None:
        with self._lock, self._failures():
            req = self.comm.isend(obj, dest=dest, tag=tag)
        self._wait(req)

    def post(self, obj: Any, dest: int, tag: int, limit: int | None = None) -> None:
        """Non-blocking pickled send; the request is completed later by ``progress``, or here
        while more than ``limit`` are incomplete."""
        with self._lock, self._failures():
            req = self.comm.isend(obj, dest=dest, tag=tag)
        with self._pending_lock:
            self._pending.append(req)
        if len(self._pending) > (64 if limit is None else limit):
            self.progress()
            if limit is not None:
                wait_until(lambda: self.progress() < limit + 1)

    def progress(self) -> int:
        """Complete what posted sends can be completed; returns how many are left."""
        if self._pending:
            with self._pending_lock, self._lock:
                self._pending = [r for r in self._pending if not self._test(r)]
        return len(self._pending)

    def _test(self, req: Any) -> bool:
        """Is a posted send complete? One to a dead process (ULFM) is cancelled and dropped."""
        if not self._failed:
            return bool(req.Test())
        try:
            return bool(req.Test())
        except self._MPI.Exception:
            if not self.survives_failures:
                raise
            try:
                req.Cancel()
                req.Test()
            except self._MPI.Exception:
                pass
            return True

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
            with self._lock, self._failures():
                return bool(req.Test())

        wait_until(done)

    # -- collectives and the end ----------------------------------------------------------

    def gather(self, obj: Any) -> list[Any] | None:
        self._arrive()
        with self._lock:
            return self.comm.gather(obj, root=0)  # type: ignore[no-any-return]

    def bcast(self, obj: Any) -> Any:
        self._arrive()
        with self._lock:
            return self.comm.bcast(obj, root=0)

    def _arrive(self) -> None:
        """Wait, sleeping, until every rank has come to the same collective (an ``Ibarrier``):
        MPICH's blocking collectives spin, and at the start of a run the ranks that arrive first
        would take the cores that the last ones need for their imports (measured: the master
        spent 0.2 s of a core waiting in the first ``gather`` while two workers imported numpy
        on the two cores)."""
        with self._lock:
            req = self.comm.Ibarrier()
        self._wait(req)

    def release(self, ranks: Iterable[int]) -> None:
        """(The master, once the run is closed.) Let these ranks go: each stops waiting in
        ``await_release``. Posted, not waited for: the master goes on at once."""
        MPI = self._MPI
        with self._lock:
            self._releases.extend(self.comm.Isend([b"", MPI.BYTE], dest=r, tag=RELEASE) for r in ranks)

    def await_release(self, timeout: float | None = None) -> bool:
        """(A worker released with a stop.) Wait, sleeping, until the master has closed the run
        (``release``), at most ``timeout`` s if given; False if it did not say so by then. The
        master releases every worker it did not lose, whether the run succeeded or not; a worker
        stopped early (nothing was left for it) waits here until the others are done.

        Otherwise the worker would go on into the program's next MPI call (or
        ``MPI_Finalize``), whose waits spin, and with more ranks than cores that starves the
        master while it collects the last goodbyes and closes the output. A message and not a
        barrier: a barrier over N ranks takes log2(N) rounds, each as slow as the sleepiest
        rank's next test, and it held the master too."""
        if self.released:
            return True
        MPI = self._MPI
        end = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            req = self.comm.Irecv([bytearray(1), MPI.BYTE], source=0, tag=RELEASE)

        def done() -> bool:
            with self._lock:
                return bool(req.Test()) or (end is not None and time.monotonic() > end)

        try:
            scale = crowd()
            wait_until(done, cap=min(RELEASE_NAP, FAREWELL_NAP * scale), scale=scale)
            with self._lock:
                if req.Test():
                    return True
                req.Cancel()
                req.Wait()
        except self._MPI.Exception:  # (ULFM) the master died
            pass
        return False

    def farewell(self, timeout: float = 10.0) -> bool:
        """Wait (politely, at most ``timeout`` s) until every rank got here: a failed run's ranks
        leave together, so the exit status the launcher reports is rank 0's."""
        end = time.monotonic() + timeout
        try:
            with self._lock:
                req = self.comm.Ibarrier()

            def done() -> bool:
                with self._lock:
                    return bool(req.Test()) or time.monotonic() > end

            wait_until(done, cap=FAREWELL_NAP, scale=crowd())
        except self._MPI.Exception:  # (ULFM) a process of the job is dead: nobody to wait for
            return False
        return time.monotonic() <= end

    def abort(self, code: int) -> None:
        """End the whole job. On COMM_WORLD, not on our duplicate: MPICH reports an abort on
        another communicator as a kill (exit 9) instead of ``code``."""
        self._MPI.COMM_WORLD.Abort(code)

    def close(self) -> None:
        """Free the private communicator (sends still pending are completed first, politely,
        except release messages: those complete later, at the latest at exit)."""
        self.flush()
        if self._releases:
            leave_in_flight(self._releases, self._MPI.Is_finalized)
            self._releases = []
        if self._owned and self.comm != self._MPI.COMM_NULL:
            with self._lock:
                self.comm.Free()


NO_COMM_WORKERS = ("mpigather.executor() gives its tasks no communicator: they are prefetched and batched, so"
                   " a collective among them could deadlock; mpigather.current_worker() tells a task where it runs")


class _NoCommWorkers:
    """What ``mpi4py.futures.get_comm_workers()`` returns in our tasks: any use raises RuntimeError
    (as the call itself does outside mpi4py's tasks), saying what to use instead."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"mpi4py.futures.get_comm_workers(): {NO_COMM_WORKERS}")

    def __repr__(self) -> str:
        return "<no communicator of workers: mpigather.executor() has none, by design>"


class CommWorkersStandIn:
    """``install``: in the calling thread, mpi4py's ``get_comm_workers()`` gives ``_NoCommWorkers``
    (mpi4py keeps that communicator per thread, so nothing outside this thread changes);
    ``restore``, in the same thread: what was there before comes back."""

    def __init__(self) -> None:
        self._undo: tuple[Any, Any, Any] | None = None

    def install(self) -> None:
        try:
            from mpi4py.futures import _core

            get, put, drop = _core.get_comm_server, _core.set_comm_server, _core.del_comm_server
        except (ImportError, AttributeError):  # another mpi4py: its call keeps its own message
            return
        try:
            before = get()
        except RuntimeError:
            before = None
        stand_in: Any = _NoCommWorkers()
        put(stand_in)
        self._undo = (put, drop, before)

    def restore(self) -> None:
        if self._undo is None:
            return
        put, drop, before = self._undo
        self._undo = None
        if before is not None:
            put(before)
        else:
            with contextlib.suppress(AttributeError):
                drop()


@contextlib.contextmanager
def no_comm_workers() -> Iterator[None]:
    """While this thread serves tasks, mpi4py's ``get_comm_workers()`` gives ``_NoCommWorkers``."""
    stand_in = CommWorkersStandIn()
    stand_in.install()
    try:
        yield
    finally:
        stand_in.restore()


def _proc_failed_classes(MPI: Any) -> tuple[int, ...]:
    return tuple(getattr(MPI, n) for n in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")
                 if hasattr(MPI, n))


def ulfm_enabled() -> bool:
    """Does this MPI survive a lost process (user-level fault mitigation, switched on)? Open MPI
    built with ULFM, started with ``mpiexec --with-ft ulfm`` (which sets OMPI_MCA_mpi_ft_enable)."""
    from mpi4py import MPI

    if os.environ.get("MPIGATHER_ULFM", "auto") == "off":
        return False
    has_ft = getattr(MPI, "ERR_PROC_FAILED", MPI.ERR_UNKNOWN) != MPI.ERR_UNKNOWN and hasattr(MPI.Comm, "Ack_failed")
    return bool(has_ft and os.environ.get("OMPI_MCA_mpi_ft_enable", "").lower() in ("1", "true", "yes", "on"))


def fault_behaviour() -> str:
    """One line for the log: what a lost worker does to this run."""
    from mpi4py import MPI

    lib = " ".join(MPI.Get_library_version().splitlines()[0].split(",")[0].replace("\x00", " ").split())
    if ulfm_enabled():
        return f"{lib}: a lost worker is survived (ULFM): its tasks go to the others"
    return f"{lib}: a lost worker ends the job; --resume continues it"


def finalize() -> None:
    """MPI_Finalize now, if MPI is up (before a process leaves with ``os._exit``)."""
    from mpi4py import MPI

    if MPI.Is_initialized() and not MPI.Is_finalized():
        MPI.Finalize()


def intracomm_size(comm: Any = None) -> int:
    """The size of ``comm`` (default COMM_WORLD; starts MPI); ValueError unless it is an intracommunicator."""
    from mpi4py import MPI

    if comm is None:
        comm = MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py intracommunicator, not {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm must be an intracommunicator, not MPI.COMM_NULL")
    if comm.Is_inter():
        raise ValueError("comm must be an intracommunicator, not an intercommunicator")
    return int(comm.Get_size())


def rank_and_threads(comm: Any = None) -> tuple[int, bool]:
    """This process's rank in ``comm`` (default COMM_WORLD), and whether MPI allows a thread of
    it to make the MPI calls (``MPI_THREAD_SERIALIZED`` or better)."""
    from mpi4py import MPI

    base = comm if comm is not None else MPI.COMM_WORLD
    return int(base.Get_rank()), MPI.Query_thread() >= MPI.THREAD_SERIALIZED


def world_size_and_rank(comm: Any = None) -> tuple[int, int]:
    """The size of ``comm`` (default COMM_WORLD) and this process's rank in it (starts MPI)."""
    from mpi4py import MPI

    base = comm if comm is not None else MPI.COMM_WORLD
    return int(base.Get_size()), int(base.Get_rank())
