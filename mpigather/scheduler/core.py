"""The scheduling state machine: task queue, leases, retries, prefetch, stealing and the run's end.

This module contains no I/O and imports no MPI. Everything that decides which task goes
where, what happens when a task ends, when a worker is suspect, when a drain's grace period
is over, when nobody is left to do the work and when the run is over lives here. The
master feeds it events with the current time passed in (``worker_ready``, ``result_begin``,
``task_done``, ``task_failed``, ``tick``...) and carries out the decisions they return
(``Send``, ``Revoke``, ``Stop``, ``Ended``, ``Expired``, ``Notice``). So leases and timeouts
are tested without sleeping and without MPI.

Invariants (checked by the tests with random event orders):
- every task ends exactly once, done or failed;
- a task has at most one live lease; a late result of an earlier lease still wins if it
  arrives first, and anything arriving after the task ended is discarded;
- a worker runs its queue in FIFO order, so the head of its queue is the task it runs, and
  only the head's lease has a running deadline;
- a worker changes state only along ``TRANSITIONS``; any other event raises ``ProtocolError``
  naming the event, the state and the worker, and changes nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..errors import ProtocolError
from .decisions import Decision, Ended, Notice, Revoke
from .leases import LeasesMixin
from .queue import QueueMixin
from .steps import StepsMixin
from .types import TaskId, TaskRec, W, WorkerRec, WorkerState
from .workers import HELLO_PATIENCE, LOST_PATIENCE, WorkersMixin


class Scheduler(WorkersMixin, LeasesMixin, QueueMixin, StepsMixin):
    """Hands out tasks from a lazy source to workers, with leases, retries and prefetch.

    ``tasks`` yields ``(task_id, payload)`` or ``(task_id, payload, position)`` and is read only
    as far as needed (the position in the whole task list; counted from 0 when not given).
    ``timeout_of(payload)`` gives a task's own lease length, or None for the default.
    ``expect``: the ranks that will say hello; the run is over only once each is released.
    """

    def __init__(
        self,
        tasks: Iterable[tuple[Any, ...]],
        *,
        expect: Iterable[int] = (),
        prefetch: int = 2,
        retries: int = 0,
        timeout: float | None = None,
        timeout_of: Callable[[Any], float | None] | None = None,
        batch_window: float = 0.02,
        max_batch: int = 1024,
        hello_patience: float = HELLO_PATIENCE,
        lost_patience: float | None = None,
        start: float = 0.0,
    ) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        if retries < 0:
            raise ValueError(f"retries must be at least 0, not {retries}")
        self._source: Iterator[tuple[Any, ...]] | None = iter(tasks)
        self._seq_next = 0
        self.prefetch = prefetch
        self.retries = retries
        self.timeout = timeout
        self._timeout_of = timeout_of
        self.batch_window = batch_window
        self.max_batch = max(max_batch, prefetch)
        self.hello_patience = hello_patience
        self.lost_patience = lost_patience if lost_patience is not None else (timeout or LOST_PATIENCE)
        self._requeued: deque[TaskRec] = deque()
        self._active: dict[TaskId, TaskRec] = {}
        self._workers: dict[int, WorkerRec] = {}
        self._deadlines: list[tuple[float, int, int, TaskId]] = []
        self._seq = 0
        self._draining = False
        self._grace_end: float | None = None
        self._starved = False  # the last look at the source found nothing to hand out now
        self._start = start
        self._hello_warned = False
        self._no_worker_since: float | None = None
        # kept up to date at every state or queue change, so that no pass over all workers is needed
        self._count: dict[WorkerState, int] = dict.fromkeys(WorkerState, 0)
        self._ok: set[int] = set()  # healthy workers
        self._hungry: set[int] = set()  # healthy workers whose queue shrank since dispatch last filled it
        self._multi: set[int] = set()  # healthy workers holding more than one task (steal donors)
        self._avg_duration: float | None = None
        self._kinds: dict[str, int] = {}  # live workers of each kind
        self._needs_check = False  # a requeued task needs a kind of worker: can anyone run it?
        self.n_done = 0
        self.n_failed = 0
        for rank in expect:
            self._workers[rank] = WorkerRec(rank, last_seen=start)
            self._count[W.NEW] += 1

    # -- queries ------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True when no task is left to hand out and none is in flight."""
        if self._active:
            return False
        return self._draining or self._source is None

    @property
    def over(self) -> bool:
        """The end of the run: finished, and no worker left that the master must wait for."""
        return self.finished and self._count[W.NEW] + self._count[W.OK] + self._count[W.STOPPING] == 0

    @property
    def draining(self) -> bool:
        return self._draining

    def transfer_done(self, rank: int, tid: TaskId) -> list[Decision]:
        """Every byte of a result arrived; it is checked and stored before ``task_done``."""
        w = self._worker(rank)
        if w.streaming == tid:
            w.streaming = None
        return []

    def discarded(self, rank: int, tid: TaskId, now: float, attempt: int | None = None) -> list[Decision]:
        """A whole result arrived for a task that already ended, or from an attempt whose lease is
        over: dropped, but the worker reported in."""
        self._report_in(self._worker(rank), tid, now, attempt)
        return []

    def result_begin(self, rank: int, tid: TaskId, attempt: int, now: float) -> bool:
        """A result's header arrived and its bytes will follow. False: discard them."""
        w = self._worker(rank)
        w.last_seen = now
        rec = self._active.get(tid)
        if rec is None:
            self._report_in(w, tid, now)  # a late duplicate: dropped, but the worker is back
            return False
        if w.streaming is not None:
            raise ProtocolError(f"worker {rank} began result {tid!r} while result {w.streaming!r} is open")
        w.streaming = tid  # a transfer in progress suspends the lease of that worker
        return True

    def task_done(self, rank: int, tid: TaskId, attempt: int, now: float,
                  duration: float | None = None) -> list[Decision]:
        """A result is stored. Returns decisions (Ended, Revoke) or [] for a discarded late result."""
        w = self._worker(rank)
        w.last_seen = now
        if w.streaming == tid:
            w.streaming = None
        if duration is not None and duration >= 0:
            a = self._avg_duration
            self._avg_duration = duration if a is None else 0.9 * a + 0.1 * duration
        self._report_in(w, tid, now)  # any attempt's result ends the task: no lease of it stays
        rec = self._active.get(tid)
        if rec is None:
            return []
        return self._end(rec, rank, attempt, ok=True, error=None)

    def tasks_done(self, rank: int, items: Iterable[tuple[TaskId, int, float | None]],
                   now: float) -> list[Decision]:
        """A batch of stored results from one worker: ``task_done`` for each, in order."""
        out: list[Decision] = []
        for tid, attempt, duration in items:
            out.extend(self.task_done(rank, tid, attempt, now, duration))
        return out

    def task_failed(self, rank: int, tid: TaskId, attempt: int, error: str, now: float) -> list[Decision]:
        """The task raised. Retries it (elsewhere when possible) or ends it as failed."""
        w = self._worker(rank)
        w.last_seen = now
        if w.streaming == tid:
            w.streaming = None
        self._report_in(w, tid, now, attempt)
        rec = self._active.get(tid)
        if rec is None or (rec.rank is not None and (rec.rank != rank or attempt < rec.attempts)):
            return []  # ended already, or a stale attempt while a newer one is leased (here or elsewhere)
        waiting = rec.rank is None  # its lease had expired: it already waits in the requeue
        rec.failures += 1
        rec.last_error = error
        if rec.failures <= self.retries and not self._draining:
            if not waiting:
                rec.rank = None
                self._requeue(rec, front=False)
            return []
        return self._end(rec, rank, attempt, ok=False, error=error)

    def drain(self, now: float = 0.0, grace: float | None = None) -> list[Decision]:
        """Stop handing out work (a signal asked us to stop): revoke everything not yet started.

        Tasks already running may finish within ``grace`` seconds; then ``tick`` abandons
        them. Tasks never started stay not done, for ``--resume``.
        """
        if self._draining:
            return []
        self._draining = True
        if grace is not None:
            self._grace_end = now + grace
        out: list[Decision] = []
        for w in self._workers.values():
            queued = list(w.queue)[1:]
            if queued and w.state is W.OK:
                out.append(Revoke(w.rank, queued, expect_ack=False))
                for tid in queued:
                    w.queue.pop(tid)
                    self._active.pop(tid).rank = None
                self._queue_changed(w)
        for rec in self._requeued:
            self._active.pop(rec.tid, None)
        self._requeued.clear()
        for rec in [r for r in self._active.values() if r.rank is None]:  # waiting for a step's input or children
            del self._active[rec.tid]
        # a suspect worker's task will never come back in time: forget it, it is not done
        for w in self._workers.values():
            if w.state in (W.SUSPECT, W.LOST):
                for tid in list(w.queue):
                    w.queue.pop(tid)
                    self._active.pop(tid, None)
        self._source = None
        return out

    def give_up(self, reason: str) -> list[Decision]:
        """End every unfinished task as failed (no healthy worker is left to run them)."""
        out: list[Decision] = []
        for w in self._workers.values():
            w.queue.clear()
            self._queue_changed(w)
        for rec in list(self._active.values()):
            out.extend(self._end(rec, rec.rank if rec.rank is not None else -1, rec.attempts, ok=False,
                                 error=reason))
        self._requeued.clear()
        self._source = None
        return out

    def abandon_running(self) -> list[TaskId]:
        """At the end of the grace period: forget the tasks still running (they are not done)."""
        left = list(self._active)
        for w in self._workers.values():
            w.queue.clear()
            self._queue_changed(w)
        self._active.clear()
        self._requeued.clear()
        self._draining = True
        self._source = None
        return left

    def tick(self, now: float) -> list[Decision]:
        """Time passes: expire leases, end a drain's grace period, notice that nobody is left to work."""
        out = self._expire_leases(now)
        if self._grace_end is not None and now > self._grace_end and self._active:
            left = self.abandon_running()
            out.append(Notice("warning", f"grace period over: {len(left)} running task(s) left for a resume"))
        out.extend(self._check_workers(now))
        if self._needs_check and not self._count[W.NEW]:
            out.extend(self._fail_unrunnable())
        return out

    def _end(self, rec: TaskRec, rank: int, attempt: int, *, ok: bool, error: str | None) -> list[Decision]:
        """The one place where a task ends and is counted."""
        out: list[Decision] = [Ended(rec.tid, attempt, rank, ok, error)]
        if ok:
            self.n_done += 1
        else:
            self.n_failed += 1
        rec.ended = True
        del self._active[rec.tid]
        if rec.parent is not None:
            out.extend(self._child_ended(rec, ok, error))
        holder, rec.rank = rec.rank, None
        if holder is not None and holder != rank:
            # another worker holds a newer lease on the task that just ended
            hw = self._workers[holder]
            if rec.tid in hw.queue:
                if next(iter(hw.queue)) == rec.tid:
                    # it is running there: hold the worker until it reports in, take back the rest
                    hw.stuck = rec.tid
                    hw.queue.pop(rec.tid)
                    rest = list(hw.queue)
                    hw.queue.clear()
                    self._transition(hw, "superseded")
                    for tid in reversed(rest):
                        self._active[tid].rank = None
                        self._requeue(self._active[tid])
                    if rest:
                        out.append(Revoke(holder, rest, expect_ack=False))
                else:
                    hw.queue.pop(rec.tid)
                    self._queue_changed(hw)
                    if hw.state is W.OK:
                        out.append(Revoke(holder, [rec.tid], expect_ack=False))
        return out
