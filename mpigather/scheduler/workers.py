"""Workers: their states, and the one table of transitions between them.

A worker changes state only along ``TRANSITIONS``; any other event raises ``ProtocolError``
naming the event, the state and the worker, and changes nothing. The counts of workers in
each state and the sets of healthy, hungry and steal-donor workers are kept up to date here,
at every change, so that no decision needs a pass over all workers.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ProtocolError
from .base import Base
from .decisions import Decision, Halt, Notice
from .types import TRANSITIONS, TaskId, W, WorkerRec

HELLO_PATIENCE = 10.0  # seconds before the master warns that expected workers have not said hello
LOST_PATIENCE = 30.0  # seconds with no healthy worker before the remaining tasks fail (without --timeout)


class WorkersMixin(Base):
    """Part of ``Scheduler``: worker bookkeeping (its state lives in ``Scheduler.__init__``)."""

    def workers(self) -> dict[int, WorkerRec]:
        return self._workers

    def stuck_workers(self) -> dict[int, TaskId]:
        return {w.rank: w.stuck for w in self._workers.values() if w.state is W.SUSPECT and w.stuck is not None}

    def lost_workers(self) -> list[int]:
        return sorted(w.rank for w in self._workers.values() if w.state is W.LOST)

    def healthy_workers(self) -> int:
        return len(self._ok)

    def worker_ready(self, rank: int, now: float, kinds: Iterable[str] = ()) -> list[Decision]:
        """A worker said hello; it may receive tasks from the next ``dispatch``."""
        w = self._workers.get(rank)
        if w is None:
            w = self._workers[rank] = WorkerRec(rank)
            self._count[W.NEW] += 1
        self._transition(w, "hello")
        w.last_seen = w.head_since = now
        w.kinds = frozenset(kinds)
        for k in w.kinds:
            self._kinds[k] = self._kinds.get(k, 0) + 1
        return []

    def seen(self, rank: int, now: float) -> list[Decision]:
        """Any message from a worker (heartbeats included) shows it is alive."""
        w = self._workers.get(rank)
        if w is not None:
            w.last_seen = now
        return []

    def worker_lost(self, rank: int, now: float) -> list[Decision]:
        """The worker's process is gone: everything it held goes back to the queue.

        The task it was running counts one failure (a task that kills its worker every time
        must end); the tasks queued behind it go back as they were.
        """
        w = self._worker(rank)
        if w.state is not W.LOST:
            for k in w.kinds:
                self._kinds[k] -= 1
            if w.kinds:
                self._needs_check = True  # steps that need its kind: can anyone else run them?
        self._transition(w, "lost")
        w.streaming = False
        self._asking(w, False)
        out, _ = self._take_back(w, f"worker {rank} was lost")
        return out

    def worker_stopped(self, rank: int) -> list[Decision]:
        """The worker said goodbye."""
        self._transition(self._worker(rank), "bye")
        return []

    def _worker(self, rank: int) -> WorkerRec:
        try:
            return self._workers[rank]
        except KeyError:
            raise ProtocolError(f"message from unknown worker {rank}") from None

    def _transition(self, w: WorkerRec, event: str) -> None:
        """The one place where a worker changes state."""
        new = TRANSITIONS.get((w.state, event))
        if new is None:
            raise ProtocolError(f"event {event!r} is not allowed for worker {w.rank} in state {w.state}")
        if new is w.state:
            return
        self._count[w.state] -= 1
        self._count[new] += 1
        if w.state is W.OK:
            self._ok.discard(w.rank)
        w.state = new
        if new is W.OK:
            self._ok.add(w.rank)
            self._no_worker_since = None
        self._queue_changed(w)

    def _asking(self, w: WorkerRec, on: bool) -> None:
        """A revoke that wants an answer (a steal, or a drain's) is on its way to ``w`` (or
        answered, or moot): its flag, and the set of such workers (while it is not empty, no idle
        worker is stopped early)."""
        w.revoking = on
        if on:
            self._asked.add(w.rank)
            self._multi.discard(w.rank)  # not a donor again until it answers
        else:
            self._asked.discard(w.rank)

    def _queue_changed(self, w: WorkerRec) -> None:
        if w.state is W.OK:
            self._hungry.add(w.rank)  # dispatch looks at its real level
            if w.held > 1 and not w.revoking:  # a donor a steal may ask (not one already asked)
                self._multi.add(w.rank)
            else:
                self._multi.discard(w.rank)
            if w.held:
                self._idle.discard(w.rank)
            else:
                self._idle.add(w.rank)
        else:
            self._hungry.discard(w.rank)
            self._multi.discard(w.rank)
            self._idle.discard(w.rank)

    def _check_workers(self, now: float) -> list[Decision]:
        """Warn about workers that never said hello; give up when no healthy worker is left."""
        out: list[Decision] = []
        n_new = self._count[W.NEW]
        if n_new and not self._hello_warned and now - self._start > self.hello_patience:
            self._hello_warned = True
            missing = sorted(w.rank for w in self._workers.values() if w.state is W.NEW)
            shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
            out.append(Notice("warning", f"{len(missing)} worker(s) have not checked in after"
                                         f" {self.hello_patience:.0f} s (ranks {shown}): every rank of the"
                                         " communicator must call mpigather.run (or enter the executor)"))
        if self.finished or self._ok or n_new or self._count[W.STOPPING] or not self._workers:
            self._no_worker_since = None
            return out
        if self._count[W.LOST] == len(self._workers):  # nobody is left at all, not even a stuck worker
            left = self.abandon_running()
            out.append(Halt(f"every worker is lost: {left} unfinished task(s) are left for a resume"))
            return out
        if self._no_worker_since is None:
            self._no_worker_since = now
            return out
        if now - self._no_worker_since > self.lost_patience:
            out.append(Notice("error", f"no healthy worker left for {self.lost_patience:.0f} s: ending the"
                                       " remaining tasks as failed"))
            out.extend(self.give_up("no healthy worker left to run it (all stuck or lost)"))
        return out
