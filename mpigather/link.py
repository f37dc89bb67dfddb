"""The I/O boundary: what the master and worker loops need from a connection, and no more.

Two implementations: ``transport.MPILink`` (the only module that calls mpi4py) and
``loopback.LoopbackLink``, which joins ranks that are threads of one process. The loops
cannot tell them apart, so the real master and real workers run together in one process in
tests, and a one-rank run drives the same code as an MPI one.
"""

from __future__ import annotations

import _thread
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

_HAS_YIELD = hasattr(os, "sched_yield")

LOST = -1  # the tag of an ``Incoming`` that reports lost processes instead of a message


class PeerLost(Exception):
    """Raised by a link that survives failures (ULFM) when a receive or send involves a dead
    process; ``ranks`` are the processes newly known dead."""

    def __init__(self, ranks: list[int]) -> None:
        super().__init__(f"rank(s) {', '.join(map(str, ranks))} died")
        self.ranks = ranks


class Incoming(Protocol):
    """A matched message, not yet received: read it with ``obj()`` or ``into(buffer)``."""

    source: int
    tag: int
    count: int  # bytes, for a raw chunk

    def obj(self) -> Any: ...

    def into(self, buf: Any) -> None: ...


class Link(Protocol):
    """One rank's end of a run's private connection.

    ``send``, ``send_bufs`` and ``post`` may be called from two threads of a worker (the one
    running tasks and its helper); the link serializes what its library needs serialized.
    """

    rank: int
    size: int
    host: str
    survives_failures: bool  # a lost rank shows up as an Incoming with tag LOST instead of ending the job

    def poll(self, source: int | None = None) -> Incoming | None:
        """The next message from ``source`` (None: any), or None at once if there is none."""
        ...

    def send(self, obj: Any, dest: int, tag: int) -> None:
        """Send a pickled object and wait (politely, without spinning) until the buffer is free."""
        ...

    def post(self, obj: Any, dest: int, tag: int, limit: int | None = None) -> None:
        """Send a pickled object without waiting; ``progress`` completes it. ``limit``: wait
        (politely) while more than that many posted sends are incomplete."""
        ...

    def progress(self) -> int:
        """Complete what posted sends can be completed; returns how many are left."""
        ...

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every posted send completed; False if some did not within ``timeout``."""
        ...

    def send_bufs(self, bufs: Iterable[Any], dest: int = 0, tag: int = 12, window: int = 2,
                  on_posted: Callable[[Any], None] | None = None) -> None:
        """Send raw buffers in order, ``window`` in flight; ``on_posted(buf)`` overlaps each transfer."""
        ...

    def gather(self, obj: Any) -> list[Any] | None:
        """Collective: every rank's ``obj`` on rank 0 (None elsewhere)."""
        ...

    def bcast(self, obj: Any) -> Any:
        """Collective: rank 0's ``obj`` on every rank."""
        ...

    def abort(self, code: int) -> None:
        """End every process of the job now."""
        ...

    def close(self) -> None:
        """Release the connection (collective where the library needs it)."""
        ...


_LOCAL_RANKS_VARS = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "PALS_LOCAL_SIZE", "SLURM_STEP_TASKS_PER_NODE",
                     "PBS_NUM_PPN")


def crowding(env: Mapping[str, str] | None = None, cores: int | None = None) -> float:
    """How crowded this node is: the launcher's count of ranks on the node (MPICH's hydra, Open
    MPI, Cray PALS, Slurm's ``srun``, PBS) over its cores, less one, and 1 at least. A rank that
    waits polls this much less often, so that the polls of all the ranks on a node together cost
    about what one rank per core would: polls every 2 ms from each of 128 ranks took both cores
    of a 2-core node and starved the ranks with work. Up to two ranks per core it is 1 (the polls
    are as quick as ever: spacing them at 3 ranks on 2 cores made an executor's map of 16 tiny
    tasks take 5.4 ms instead of 2.9), and 1 where the launcher does not say."""
    env = os.environ if env is None else env
    local = 0
    for var in _LOCAL_RANKS_VARS:
        text = env.get(var, "")
        digits = text.split("(")[0].split(",")[0].strip()  # Slurm: "4(x2),3", the first node's count
        if digits.isdigit():
            local = int(digits)
            break
    if cores is None:
        cores = _cores()
    return max(1.0, local / max(1, cores) - 1)


def _cores() -> int:
    """The node's cores, or fewer where a cgroup quota limits the job. (Not the affinity mask:
    a launcher that binds each rank to a core of its own gives every rank a mask of one core.)"""
    n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, round(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


_crowd: float | None = None


def crowd() -> float:
    """``crowding()`` of this process, worked out once."""
    global _crowd
    if _crowd is None:
        _crowd = crowding()
    return _crowd


LEARN_GAPS = 4  # (Backoff, learn) messages further apart than this many warm phases: no quick polls
LEARN_WEIGHT = 0.25  # the weight of the newest gap in their average


class Wake:
    """A wake-up call from another thread: ``set()`` ends the waiter's current or next
    ``wait(timeout)`` at once. The same use as ``threading.Event``'s set, wait and clear, at a
    fraction of the cost per wait: one lock acquired with a timeout, where ``Event.wait`` makes
    a new lock and runs a ``Condition``'s Python code each time. A waiter that naps thousands of
    times a second (the master's loop while tasks run, a worker's helper) paid for it in CPU
    taken from the tasks. One waiter; any number of setters."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()  # held while not set

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # already set
            pass

    def is_set(self) -> bool:
        return not self._lock.locked()

    def clear(self) -> None:
        self._lock.acquire(False)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True (and cleared again) if it was set."""
        return self._lock.acquire(True, max(timeout, 0.0))


class Backoff:
    """Capped exponential sleep between empty polls: low latency while messages flow,
    about 1-2% of a core while idle (MPICH's blocking waits spin at 100%).

    For ``warm`` seconds after the last message the sleeps stay under ``warm_cap``: an answer
    usually comes within a millisecond or two of a request (a task's result, the next tasks),
    and a 2 ms sleep would add as much again to every round trip. Past that the sleeps grow
    to ``cap``.

    ``sleep(busy=True)`` never sleeps: it only yields the core. The master passes it while a
    large result is being streamed to it: the next chunk is already posted or about to be, and
    a sleep then would leave a 64 MiB transfer (about 6 ms of copying) waiting.

    ``scale``: with more ranks than cores (``crowd()``), the first sleeps and the warm ones are
    that many times longer (up to ``cap``) and the quick polls that many times fewer.

    ``learn``: ``reset`` means that a message came, and the gaps between messages are averaged.
    While they are long (over ``LEARN_GAPS`` times ``warm``: tasks of 0.1 s and more), the quick
    polls and the warm phase are skipped, since no answer is expected that soon: the master's
    polls after each message cost 13% of a core while two workers computed 0.2 s tasks, CPU
    taken from the workers where the cores are all busy. ``slow_share``: then the sleeps also
    grow to that share of the gap (at most ``slow_cap``), from an eighth of it: a poll every
    2 ms still cost 7% of a core where 0.1 s passed between messages. Only for a loop whose
    answers can wait that long (the master of a run, whose workers hold their next tasks)."""

    def __init__(self, first: float = 50e-6, cap: float = 2e-3, spins: int = 50, warm: float = 0.02,
                 warm_cap: float = 2.5e-4, wake: Wake | threading.Event | None = None, scale: float = 1.0,
                 learn: bool = False, slow_share: float = 0.0, slow_cap: float = 0.0) -> None:
        self.first, self.cap, self.spins = min(first * scale, cap), cap, int(spins / scale)
        self.warm, self.warm_cap = warm, min(warm_cap * scale, cap)
        self.wake = wake  # set by another thread (a submit): the sleep ends at once
        self._sleep = time.sleep  # (tests replace it)
        self.learn = learn
        self.gap: float | None = None  # (learn) the average seconds between messages
        self._last: float | None = None
        self._quick = True  # quick polls and a warm phase after this message
        self.slow_share, self.slow_cap = slow_share, slow_cap
        self._cap = cap  # the cap now: ``cap``, or longer while messages come far apart (``slow_share``)
        self.woken = False  # the last sleep was ended by ``wake``
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._delay = self.first
        self._since: float | None = None
        if self.learn:
            now = time.monotonic()
            if self._last is not None:
                g = now - self._last
                self.gap = g if self.gap is None else self.gap + LEARN_WEIGHT * (g - self.gap)
                self._quick = self.gap <= LEARN_GAPS * self.warm
                if self.slow_share:
                    self._cap = self.cap if self._quick else \
                        max(self.cap, min(self.slow_cap, self.gap * self.slow_share))
                    if self._cap > self.cap:
                        self._delay = self._cap / 8
            self._last = now

    def at_least(self, delay: float) -> None:
        """Make the next sleep at least ``delay`` (within the cap): nothing needs quick polls now."""
        if self._delay < delay:
            self._delay = min(delay, self._cap)

    def sleep(self, busy: bool = False, limit: float | None = None) -> float:
        """Wait a little before the next poll; the seconds asked of ``time.sleep`` (0: none).
        ``limit``: sleep no longer than that (something is due then: a flush, a heartbeat)."""
        self.woken = False
        if busy:
            if _HAS_YIELD:
                os.sched_yield()
            return 0.0
        self._n += 1
        if self._n <= self.spins and self._quick:
            # a few quick polls first: the next message is usually right behind. Each one lets
            # another thread run (a caller waiting on a result this loop just delivered), which
            # would otherwise wait for the GIL until the loop sleeps
            time.sleep(0)
            return 0.0
        now = time.monotonic()
        if self._since is None:
            self._since = now
        delay = self._delay if limit is None else max(0.0, min(self._delay, limit))
        if self.wake is None:
            self._sleep(delay)
        elif self.wake.wait(delay):
            self.wake.clear()
            self.reset()
            self.woken = True
            return delay
        limit = self.warm_cap if self._quick and now - self._since < self.warm else self._cap
        self._delay = min(limit, self._delay * 2)
        return delay


def hostname() -> str:
    """This machine's name, as ``socket.gethostname()`` gives it on POSIX, without importing
    ``socket`` (and ``selectors``): a few ms of every process's start."""
    try:
        return os.uname().nodename
    except AttributeError:  # not POSIX
        import socket

        return socket.gethostname()


def wait_until(done: Callable[[], bool], first: float = 20e-6, cap: float = 1e-3, spins: int = 200,
               scale: float = 1.0) -> None:
    """Poll ``done()`` with a backoff until it is true (the polite form of a blocking wait)."""
    back = Backoff(first=first, cap=cap, spins=spins, scale=scale)
    while not done():
        back.sleep()
