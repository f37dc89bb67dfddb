"""The one module that talks MPI: matched probes, pickled control messages, raw buffer chunks.

Everything above it sees a ``Link`` with non-blocking ``poll`` and a few sends, so the
master and worker loops are testable over a fake link in threads.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from . import messages as M


def comm_world() -> Any:
    from mpi4py import MPI

    return MPI.COMM_WORLD


class Incoming:
    """A matched message, not yet received."""

    __slots__ = ("source", "tag", "count", "_msg")

    def __init__(self, msg: Any, source: int, tag: int, count: int) -> None:
        self._msg, self.source, self.tag, self.count = msg, source, tag, count

    def obj(self) -> Any:
        return self._msg.recv()

    def into(self, buf: Any) -> None:
        from mpi4py import MPI

        self._msg.Recv([buf, MPI.BYTE])


class Link:
    """MPI endpoint of one rank over ``comm``."""

    def __init__(self, comm: Any = None) -> None:
        from mpi4py import MPI

        self._MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.host = socket.gethostname()
        self._status = MPI.Status()
        self._pending: list[Any] = []

    def poll(self, source: int | None = None) -> Incoming | None:
        """A matched probe of the next message from ``source`` (any), or None."""
        MPI = self._MPI
        st = self._status
        msg = self.comm.improbe(MPI.ANY_SOURCE if source is None else source, MPI.ANY_TAG, st)
        if msg is None:
            return None
        return Incoming(msg, st.Get_source(), st.Get_tag(), st.Get_count(MPI.BYTE))

    def send(self, obj: Any, dest: int, tag: int) -> None:
        self.comm.send(obj, dest=dest, tag=tag)

    def post(self, obj: Any, dest: int, tag: int = M.TASK) -> None:
        """Non-blocking pickled send; the request is completed later by ``progress``."""
        self._pending.append(self.comm.isend(obj, dest=dest, tag=tag))
        if len(self._pending) > 64:
            self.progress()

    def progress(self) -> None:
        if self._pending:
            self._pending = [r for r in self._pending if not r.Test()]

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait (politely) for every posted send to complete."""
        end = time.monotonic() + timeout
        back = Backoff()
        while self._pending and time.monotonic() < end:
            self.progress()
            back.sleep()
        return not self._pending

    def send_bufs(self, bufs: Any, dest: int = 0, tag: int = M.DATA, window: int = 2,
                  on_posted: Any = None) -> None:
        """Send raw buffers in order, keeping ``window`` of them in flight.

        The next chunk is already posted when the receiver finishes one, and waiting polls
        with a backoff instead of MPICH's blocking wait, which would spin a core at 100%
        that the master (doing the copy) needs. ``on_posted(buf)`` runs once each buffer is
        posted, overlapping the transfer.
        """
        MPI = self._MPI
        inflight: list[Any] = []
        for buf in bufs:
            inflight.append(self.comm.Isend([buf, MPI.BYTE], dest=dest, tag=tag))
            if on_posted is not None:
                on_posted(buf)
            if len(inflight) >= window:
                self._wait(inflight.pop(0))
        for req in inflight:
            self._wait(req)

    @staticmethod
    def _wait(req: Any) -> None:
        back = Backoff(first=20e-6, cap=1e-3, spins=200)
        while not req.Test():
            back.sleep()

    def abort(self, code: int) -> None:
        self.comm.Abort(code)


class Backoff:
    """Capped exponential sleep between empty polls: low latency while messages flow,
    about 1-2% of a core while idle (MPICH's blocking waits spin at 100%)."""

    def __init__(self, first: float = 50e-6, cap: float = 2e-3, spins: int = 50) -> None:
        self.first, self.cap, self.spins = first, cap, spins
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._delay = self.first

    def sleep(self) -> None:
        self._n += 1
        if self._n <= self.spins:
            return  # a few free polls first: the next message is usually right behind
        time.sleep(self._delay)
        self._delay = min(self.cap, self._delay * 2)
