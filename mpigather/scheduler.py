"""The scheduling state machine: task queue, leases, retries, prefetch and batching.

This module contains no I/O and imports no MPI. Everything that decides which task goes
where, and what happens when a task ends, lives here. The master feeds it events with the
current time passed in (``worker_ready``, ``result_begin``, ``task_done``, ``task_failed``,
``tick``...) and carries out the decisions it returns (``Send``, ``Revoke``, ``Stop``). So
leases and timeouts are tested without sleeping and without MPI.

Invariants (checked by the tests with random event orders):
- every task ends exactly once, done or failed;
- a task has at most one live lease; a late result of an earlier lease still wins if it
  arrives first, and anything arriving after the task ended is discarded;
- a worker runs its queue in FIFO order, so the head of its queue is the task it runs, and
  only the head's lease has a running deadline.
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import ProtocolError

TaskId = Hashable


class _Wait:
    """Yielded by a task source that may grow later (the executor): nothing to hand out now."""

    def __repr__(self) -> str:
        return "WAIT"


WAIT = _Wait()


@dataclass
class TaskRec:
    """A task that has started but not ended."""

    tid: TaskId
    payload: Any
    timeout: float | None
    attempts: int = 0  # dispatches so far; the current attempt number
    failures: int = 0  # exceptions and lease expiries
    tried: set[int] = field(default_factory=set)
    last_error: str | None = None
    rank: int | None = None  # holder of the live lease, None while queued
    ended: bool = False


@dataclass
class WorkerRec:
    rank: int
    queue: OrderedDict[TaskId, None] = field(default_factory=OrderedDict)  # FIFO of leased tasks
    state: str = "new"  # new | ok | suspect | stopping | stopped | lost
    head_since: float = 0.0  # when the head task started running (as far as the master knows)
    last_seen: float = 0.0
    streaming: TaskId | None = None  # task whose result is being received
    revoking: bool = False  # a steal request is on its way
    stuck: TaskId | None = None  # task it was running when its lease expired


# Decisions -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send these (task id, attempt, payload) assignments to the worker."""

    rank: int
    tasks: list[tuple[TaskId, int, Any]]


@dataclass(frozen=True)
class Revoke:
    """Ask the worker to drop these queued, not yet started tasks and acknowledge."""

    rank: int
    tids: list[TaskId]
    expect_ack: bool


@dataclass(frozen=True)
class Stop:
    rank: int


@dataclass(frozen=True)
class Ended:
    """How a task ended, for the journal and the summary."""

    tid: TaskId
    attempt: int
    rank: int
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class Expired:
    """A lease ran out; the worker is now suspect and its tasks went back to the queue."""

    rank: int
    tid: TaskId
    attempt: int
    requeued: bool


class Scheduler:
    """Hands out tasks from a lazy source to workers, with leases, retries and prefetch.

    ``tasks`` yields ``(task_id, payload)`` and is read only as far as needed.
    ``timeout_of(payload)`` gives a task's own lease length, or None for the default.
    """

    def __init__(
        self,
        tasks: Iterable[tuple[TaskId, Any]],
        *,
        prefetch: int = 2,
        retries: int = 0,
        timeout: float | None = None,
        timeout_of: Callable[[Any], float | None] | None = None,
        batch_window: float = 0.02,
        max_batch: int = 1024,
    ) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        if retries < 0:
            raise ValueError(f"retries must be at least 0, not {retries}")
        self._source: Iterator[tuple[TaskId, Any]] | None = iter(tasks)
        self.prefetch = prefetch
        self.retries = retries
        self.timeout = timeout
        self._timeout_of = timeout_of
        self.batch_window = batch_window
        self.max_batch = max(max_batch, prefetch)
        self._requeued: deque[TaskRec] = deque()
        self._active: dict[TaskId, TaskRec] = {}
        self._workers: dict[int, WorkerRec] = {}
        self._deadlines: list[tuple[float, int, int, TaskId]] = []
        self._seq = 0
        self._draining = False
        # kept up to date at every state or queue change, so that no pass over all workers is needed
        self._ok: set[int] = set()  # healthy workers
        self._hungry: set[int] = set()  # healthy workers whose queue shrank since dispatch last filled it
        self._multi: set[int] = set()  # healthy workers holding more than one task (steal donors)
        self._avg_duration: float | None = None
        self.n_done = 0
        self.n_failed = 0
        self.n_pending_known = 0  # requeued tasks waiting

    # -- queries ------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True when no task is left to hand out and none is in flight."""
        if self._active:
            return False
        return self._draining or self._source is None

    @property
    def draining(self) -> bool:
        return self._draining

    def workers(self) -> dict[int, WorkerRec]:
        return self._workers

    def in_flight(self) -> int:
        return sum(1 for r in self._active.values() if r.rank is not None)

    def target_outstanding(self) -> int:
        """How many tasks each worker should hold: at least ``prefetch``, more for tiny tasks."""
        if self._avg_duration is None or self._avg_duration <= 0:
            return self.prefetch
        if self._avg_duration < 1e-9:
            return self.max_batch
        want = math.ceil(self.batch_window / self._avg_duration)
        return max(self.prefetch, min(self.max_batch, want))

    def is_active(self, tid: TaskId) -> bool:
        """True while the task has not ended: a result for it would be accepted."""
        return tid in self._active

    def stuck_workers(self) -> dict[int, TaskId]:
        return {w.rank: w.stuck for w in self._workers.values() if w.state == "suspect" and w.stuck is not None}

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    # -- events -------------------------------------------------------------------------

    def worker_ready(self, rank: int, now: float) -> None:
        """A worker said hello; it may receive tasks from the next ``dispatch``."""
        w = self._workers.get(rank)
        if w is not None:
            raise ProtocolError(f"worker {rank} said hello twice (state {w.state})")
        w = self._workers[rank] = WorkerRec(rank, last_seen=now, head_since=now)
        self._set_state(w, "ok")

    def transfer_done(self, rank: int, tid: TaskId) -> None:
        """Every byte of a result arrived; it is checked and stored before ``task_done``."""
        w = self._worker(rank)
        if w.streaming == tid:
            w.streaming = None

    def discarded(self, rank: int, tid: TaskId, now: float) -> None:
        """A whole result arrived for a task that already ended: dropped, but the worker reported in."""
        self._report_in(self._worker(rank), tid, now)

    def seen(self, rank: int, now: float) -> None:
        """Any message from a worker (heartbeats included) shows it is alive."""
        w = self._workers.get(rank)
        if w is not None:
            w.last_seen = now

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

    def task_done(self, rank: int, tid: TaskId, attempt: int, now: float, duration: float | None = None) -> list:
        """A result is stored. Returns decisions (Ended, Revoke) or [] for a discarded late result."""
        w = self._worker(rank)
        w.last_seen = now
        if w.streaming == tid:
            w.streaming = None
        if duration is not None and duration >= 0:
            a = self._avg_duration
            self._avg_duration = duration if a is None else 0.9 * a + 0.1 * duration
        out: list = []
        self._report_in(w, tid, now)
        rec = self._active.get(tid)
        if rec is None:
            return out
        out.extend(self._end(rec, rank, attempt, ok=True, error=None))
        self.n_done += 1
        return out

    def task_failed(self, rank: int, tid: TaskId, attempt: int, error: str, now: float) -> list:
        """The task raised. Retries it (elsewhere when possible) or ends it as failed."""
        w = self._worker(rank)
        w.last_seen = now
        if w.streaming == tid:
            w.streaming = None
        self._report_in(w, tid, now)
        rec = self._active.get(tid)
        if rec is None or (rec.rank is not None and rec.rank != rank):
            return []  # ended already, or a stale attempt while a newer one runs elsewhere
        waiting = rec.rank is None  # its lease had expired: it already waits in the requeue
        rec.failures += 1
        rec.last_error = error
        if rec.failures <= self.retries and not self._draining:
            if not waiting:
                rec.rank = None
                self._requeue(rec, front=False)
            return []
        out = self._end(rec, rank, attempt, ok=False, error=error)
        self.n_failed += 1
        return out

    def revoked(self, rank: int, tids: Iterable[TaskId], now: float) -> None:
        """The worker acknowledged a revoke: these tasks were dropped unstarted."""
        w = self._worker(rank)
        w.last_seen = now
        w.revoking = False
        for tid in tids:
            if w.state == "suspect" and w.stuck == tid:
                w.stuck = None  # it expired on a task it never started
                self._set_state(w, "ok")
            self._leave_queue(w, tid, now)
            rec = self._active.get(tid)
            if rec is not None and rec.rank == rank:
                rec.rank = None
                self._requeue(rec)

    def worker_lost(self, rank: int, now: float) -> list:
        """The worker's process is gone: requeue everything it held."""
        w = self._worker(rank)
        self._set_state(w, "lost")
        w.streaming = None
        out: list = []
        queued = list(w.queue)
        w.queue.clear()
        for tid in reversed(queued):
            rec = self._active[tid]
            head = tid == queued[0]
            rec.rank = None
            if head:
                rec.failures += 1
                rec.last_error = f"worker {rank} was lost"
                if rec.failures > max(self.retries, 1) or self._draining:
                    out.extend(self._end(rec, rank, rec.attempts, ok=False, error=rec.last_error))
                    self.n_failed += 1
                    continue
            self._requeue(rec)
        return out

    def worker_stopped(self, rank: int) -> None:
        w = self._worker(rank)
        if w.state != "lost":
            self._set_state(w, "stopped")

    def drain(self) -> list:
        """Stop handing out work (a signal asked us to stop): revoke everything not yet started.

        Tasks already running may finish. Tasks never started stay not done, for ``--resume``.
        """
        self._draining = True
        out: list = []
        for w in self._workers.values():
            queued = list(w.queue)[1:]
            if queued and w.state == "ok":
                out.append(Revoke(w.rank, queued, expect_ack=False))
                for tid in queued:
                    w.queue.pop(tid)
                    self._active.pop(tid).rank = None
                self._queue_changed(w)
        for rec in self._requeued:
            self._active.pop(rec.tid, None)
        self._requeued.clear()
        # a suspect worker's task will never come back in time: forget it, it is not done
        for w in self._workers.values():
            if w.state in ("suspect", "lost"):
                for tid in list(w.queue):
                    w.queue.pop(tid)
                    self._active.pop(tid, None)
        self._source = None
        return out

    def give_up(self, reason: str) -> list:
        """End every unfinished task as failed (no healthy worker is left to run them)."""
        out: list = []
        for w in self._workers.values():
            w.queue.clear()
            self._queue_changed(w)
        for rec in list(self._active.values()):
            out.extend(self._end(rec, rec.rank if rec.rank is not None else -1, rec.attempts, ok=False, error=reason))
            self.n_failed += 1
        self._requeued.clear()
        self._source = None
        return out

    def healthy_workers(self) -> int:
        return len(self._ok)

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

    def tick(self, now: float) -> list:
        """Expire leases whose deadline has passed. Returns Expired and Revoke decisions."""
        out: list = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, rank, tid = heapq.heappop(self._deadlines)
            w = self._workers[rank]
            if not w.queue or next(iter(w.queue)) != tid or w.state != "ok" or tid not in self._active:
                continue  # stale entry
            if w.streaming is not None:  # a transfer in progress proves the worker alive
                self._seq += 1
                heapq.heappush(self._deadlines, (now + 1.0, self._seq, rank, tid))
                continue
            rec = self._active[tid]
            if self._deadline_of(w, rec) > now:
                continue
            out.extend(self._expire(w, rec, now))
        return out

    def dispatch(self, now: float) -> list[Send | Stop]:
        """Fill every healthy worker up to its target; stop idle workers when no work is left.

        Only workers whose queue shrank since they were last filled are looked at, and the pass
        ends at the first worker left without work, so its cost does not grow with the cluster.
        """
        out: list[Send | Stop] = []
        target = self.target_outstanding()
        low = target // 2 if target > 2 else target - 1
        for rank in list(self._hungry):
            w = self._workers[rank]
            if w.state != "ok" or len(w.queue) > low:
                self._hungry.discard(rank)
                continue
            batch: list[TaskRec] = []
            while len(w.queue) + len(batch) < target:
                rec = self._next_for(w.rank)
                if rec is None:
                    break
                rec.attempts += 1
                rec.rank = w.rank
                rec.tried.add(w.rank)
                batch.append(rec)
            if batch:
                was_idle = not w.queue
                for rec in batch:
                    w.queue[rec.tid] = None
                if was_idle:
                    w.head_since = now
                    self._arm(w, self._active[batch[0].tid])
                out.append(Send(w.rank, [(r.tid, r.attempts, r.payload) for r in batch]))
                self._queue_changed(w)
            if len(w.queue) >= target:
                self._hungry.discard(rank)
            elif not self._requeued and (self._source is None or self._draining or not batch):
                break  # nothing to hand out to anyone now
        if self.finished:
            for rank in list(self._ok):
                w = self._workers[rank]
                self._set_state(w, "stopping")
                out.append(Stop(w.rank))
        else:
            out.extend(self._steal(now))
        return out

    # -- internals ----------------------------------------------------------------------

    def _worker(self, rank: int) -> WorkerRec:
        try:
            return self._workers[rank]
        except KeyError:
            raise ProtocolError(f"message from unknown worker {rank}") from None

    def _report_in(self, w: WorkerRec, tid: TaskId, now: float) -> None:
        """A result or failure from ``w`` for ``tid``: advance its FIFO, clear suspicion."""
        if w.state == "suspect":
            self._set_state(w, "ok")
            w.stuck = None
        self._leave_queue(w, tid, now)

    def _leave_queue(self, w: WorkerRec, tid: TaskId, now: float) -> None:
        """Remove ``tid`` from a worker's FIFO; if it was the head, the next one runs from ``now``."""
        if tid not in w.queue:
            return
        head = next(iter(w.queue)) == tid
        w.queue.pop(tid)
        self._queue_changed(w)
        if head and w.queue:
            w.head_since = now
            self._arm(w, self._active[next(iter(w.queue))])

    def _set_state(self, w: WorkerRec, state: str) -> None:
        if w.state == "ok":
            self._ok.discard(w.rank)
        w.state = state
        if state == "ok":
            self._ok.add(w.rank)
        self._queue_changed(w)

    def _queue_changed(self, w: WorkerRec) -> None:
        if w.state == "ok":
            self._hungry.add(w.rank)  # dispatch looks at its real level
            if len(w.queue) > 1:
                self._multi.add(w.rank)
            else:
                self._multi.discard(w.rank)
        else:
            self._hungry.discard(w.rank)
            self._multi.discard(w.rank)

    def _requeue(self, rec: TaskRec, front: bool = True) -> None:
        """Put a task back for another worker; while draining, forget it instead (it is not done)."""
        if self._draining:
            self._active.pop(rec.tid, None)
        elif front:
            self._requeued.appendleft(rec)
        else:
            self._requeued.append(rec)

    def _end(self, rec: TaskRec, rank: int, attempt: int, *, ok: bool, error: str | None) -> list:
        out: list = [Ended(rec.tid, attempt, rank, ok, error)]
        rec.ended = True
        del self._active[rec.tid]
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
                    self._set_state(hw, "suspect")
                    for tid in reversed(rest):
                        self._active[tid].rank = None
                        self._requeue(self._active[tid])
                    if rest:
                        out.append(Revoke(holder, rest, expect_ack=False))
                else:
                    hw.queue.pop(rec.tid)
                    self._queue_changed(hw)
                    if hw.state == "ok":
                        out.append(Revoke(holder, [rec.tid], expect_ack=False))
        return out

    def _next_for(self, rank: int) -> TaskRec | None:
        """The next task for ``rank``: a requeued one (preferring tasks it has not tried), else a new one."""
        if self._draining:
            return None
        if self._requeued:
            for i, rec in enumerate(self._requeued):
                if i >= 32:
                    break
                if rec.ended:
                    continue
                # prefer a worker that has not tried it, unless every healthy one has
                if rank not in rec.tried or sum(1 for r in rec.tried if r in self._ok) >= len(self._ok):
                    del self._requeued[i]
                    return rec
            while self._requeued and self._requeued[0].ended:
                self._requeued.popleft()
        if self._source is None or self._draining:
            return None
        try:
            item = next(self._source)
        except StopIteration:
            self._source = None
            return None
        if item is WAIT:
            return None
        tid, payload = item
        if tid in self._active:
            raise ProtocolError(f"task id {tid!r} appears twice in the task source")
        timeout = self._timeout_of(payload) if self._timeout_of else None
        rec = TaskRec(tid, payload, timeout if timeout is not None else self.timeout)
        self._active[tid] = rec
        return rec

    def _deadline_of(self, w: WorkerRec, rec: TaskRec) -> float:
        return math.inf if rec.timeout is None else w.head_since + rec.timeout

    def _arm(self, w: WorkerRec, rec: TaskRec) -> None:
        deadline = self._deadline_of(w, rec)
        if deadline != math.inf:
            self._seq += 1
            heapq.heappush(self._deadlines, (deadline, self._seq, w.rank, rec.tid))

    def _expire(self, w: WorkerRec, rec: TaskRec, now: float) -> list:
        """The head task of ``w`` ran past its deadline: take back all of ``w``'s tasks."""
        out: list = []
        w.stuck = rec.tid
        rec.failures += 1
        rec.last_error = f"timed out after {rec.timeout:g} s on worker {w.rank}"
        queued = list(w.queue)
        w.queue.clear()
        self._set_state(w, "suspect")
        for tid in reversed(queued):
            r = self._active[tid]
            r.rank = None
            if r is rec and (rec.failures > max(self.retries, 1) or self._draining):
                out.extend(self._end(rec, w.rank, rec.attempts, ok=False, error=rec.last_error))
                self.n_failed += 1
                continue
            self._requeue(r)
        out.insert(0, Expired(w.rank, rec.tid, rec.attempts, requeued=not rec.ended))
        if len(queued) > 1:
            out.append(Revoke(w.rank, queued[1:], expect_ack=False))
        return out

    def _steal(self, now: float) -> list:
        """When new work has run out, move queued-but-unstarted tasks to idle workers."""
        if self._source is not None or self._requeued or not self._multi:
            return []
        donors = sorted((self._workers[r] for r in self._multi if not self._workers[r].revoking),
                        key=lambda w: -len(w.queue))
        idle: list[WorkerRec] = []
        for r in self._hungry:  # every idle healthy worker is in there
            w = self._workers[r]
            if w.state == "ok" and not w.queue:
                idle.append(w)
                if len(idle) == len(donors):
                    break
        if not idle:
            return []
        out = []
        for donor, _ in zip(donors, idle):
            victim = list(donor.queue)[-1]
            donor.revoking = True
            out.append(Revoke(donor.rank, [victim], expect_ack=True))
        return out
