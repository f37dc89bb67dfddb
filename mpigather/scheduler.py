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

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import ProtocolError

TaskId = Hashable

HELLO_PATIENCE = 10.0  # seconds before the master warns that expected workers have not said hello
LOST_PATIENCE = 30.0  # seconds with no healthy worker before the remaining tasks fail (without --timeout)
STREAM_RECHECK = 1.0  # a lease that ends during a transfer from its worker is looked at again this much later


class _Wait:
    """Yielded by a task source that may grow later (the executor): nothing to hand out now."""

    def __repr__(self) -> str:
        return "WAIT"


WAIT = _Wait()


class WorkerState(str, Enum):
    NEW = "new"  # expected, has not said hello yet
    OK = "ok"  # healthy: may receive tasks
    SUSPECT = "suspect"  # stuck in a task (its lease expired, or another worker's result won)
    STOPPING = "stopping"  # told to stop, goodbye not yet seen
    STOPPED = "stopped"  # said goodbye
    LOST = "lost"  # its process is gone

    def __str__(self) -> str:
        return self.value


W = WorkerState

# (state, event) -> next state. Everything else is a protocol error.
TRANSITIONS: dict[tuple[WorkerState, str], WorkerState] = {
    (W.NEW, "hello"): W.OK,
    (W.OK, "report_in"): W.OK,
    (W.OK, "expire"): W.SUSPECT,
    (W.OK, "superseded"): W.SUSPECT,
    (W.OK, "stop"): W.STOPPING,
    (W.SUSPECT, "report_in"): W.OK,
    (W.SUSPECT, "unstuck"): W.OK,  # the task it expired on was dropped unstarted
    (W.STOPPING, "report_in"): W.STOPPING,  # a task abandoned at the end of a grace period
    (W.LOST, "report_in"): W.LOST,  # a message it sent before it died
    (W.NEW, "bye"): W.STOPPED,
    (W.OK, "bye"): W.STOPPED,
    (W.SUSPECT, "bye"): W.STOPPED,
    (W.STOPPING, "bye"): W.STOPPED,
    (W.LOST, "bye"): W.LOST,
    (W.NEW, "lost"): W.LOST,
    (W.OK, "lost"): W.LOST,
    (W.SUSPECT, "lost"): W.LOST,
    (W.STOPPING, "lost"): W.LOST,
    (W.STOPPED, "lost"): W.STOPPED,  # it had finished already
    (W.LOST, "lost"): W.LOST,
}
RELEASED = frozenset({W.STOPPED, W.LOST, W.SUSPECT})  # the run need not wait for these at its end


@dataclass
class TaskRec:
    """A task that has started but not ended."""

    tid: TaskId
    payload: Any
    timeout: float | None
    seq: int = -1  # position in the task source
    attempts: int = 0  # dispatches so far; the current attempt number
    failures: int = 0  # exceptions and lease expiries
    tried: set[int] = field(default_factory=set)
    last_error: str | None = None
    rank: int | None = None  # holder of the live lease, None while queued
    ended: bool = False
    # multi-step tasks (see steps.py)
    step: int = 0  # the step running, or to run next (0: the task function)
    call: Any = None  # what a worker gets to run ``step`` (a steps.StepCall); None: the task itself
    needs: str | None = None  # the kind of worker ``step`` needs
    waiting: bool = False  # its next step's input is not stored yet: not dispatchable
    input_coming: bool = False  # the input of ``step`` was received and is being stored
    parent: TaskId | None = None  # a child of a fan-out
    children_left: int = 0  # a parent waits for this many children
    child_failed: str | None = None


@dataclass
class WorkerRec:
    rank: int
    queue: OrderedDict[TaskId, None] = field(default_factory=OrderedDict)  # FIFO of leased tasks
    state: WorkerState = W.NEW
    head_since: float = 0.0  # when the head task started running (as far as the master knows)
    last_seen: float = 0.0
    streaming: TaskId | None = None  # task whose result is being received
    revoking: bool = False  # a steal request is on its way
    stuck: TaskId | None = None  # task it was running when its lease expired
    kinds: frozenset[str] = frozenset()  # what the worker said it is (gpu, bigmem...)


# Decisions -----------------------------------------------------------------------------


class Decision:
    """What an event asks the master to do. Every event returns a list of these."""

    __slots__ = ()


@dataclass(frozen=True)
class Send(Decision):
    """Send these (task id, attempt, payload) assignments to the worker."""

    rank: int
    tasks: list[tuple[Any, ...]]  # (id, attempt, payload), or (id, attempt, payload, steps.StepCall)


@dataclass(frozen=True)
class Revoke(Decision):
    """Ask the worker to drop these queued, not yet started tasks (and acknowledge, for a steal)."""

    rank: int
    tids: list[TaskId]
    expect_ack: bool


@dataclass(frozen=True)
class Stop(Decision):
    rank: int


@dataclass(frozen=True)
class Ended(Decision):
    """How a task ended, for the journal and the summary."""

    tid: TaskId
    attempt: int
    rank: int
    ok: bool
    error: str | None = None


@dataclass(frozen=True)
class Expired(Decision):
    """A lease ran out; the worker is now suspect and its tasks went back to the queue."""

    rank: int
    tid: TaskId
    attempt: int
    requeued: bool


@dataclass(frozen=True)
class Halt(Decision):
    """The run cannot go on (every worker is lost): what is left stays for a resume."""

    reason: str


@dataclass(frozen=True)
class Notice(Decision):
    """Something the user should read in the log ("warning" or "error")."""

    level: str
    text: str


class Scheduler:
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

    def task(self, tid: TaskId) -> TaskRec | None:
        return self._active.get(tid)

    def stuck_workers(self) -> dict[int, TaskId]:
        return {w.rank: w.stuck for w in self._workers.values() if w.state is W.SUSPECT and w.stuck is not None}

    def lost_workers(self) -> list[int]:
        return sorted(w.rank for w in self._workers.values() if w.state is W.LOST)

    def healthy_workers(self) -> int:
        return len(self._ok)

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    # -- events -------------------------------------------------------------------------

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

    def seen(self, rank: int, now: float) -> list[Decision]:
        """Any message from a worker (heartbeats included) shows it is alive."""
        w = self._workers.get(rank)
        if w is not None:
            w.last_seen = now
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

    def revoked(self, rank: int, tids: Iterable[TaskId], now: float) -> list[Decision]:
        """The worker acknowledged a revoke: these tasks were dropped unstarted."""
        w = self._worker(rank)
        w.last_seen = now
        w.revoking = False
        for tid in tids:
            if w.state is W.SUSPECT and w.stuck == tid:
                w.stuck = None  # it expired on a task it never started
                self._transition(w, "unstuck")
            self._leave_queue(w, tid, now)
            rec = self._active.get(tid)
            if rec is not None and rec.rank == rank:
                rec.rank = None
                self._requeue(rec)
        return []

    def worker_lost(self, rank: int, now: float) -> list[Decision]:
        """The worker's process is gone: requeue everything it held.

        The task it was running counts one failure (a task that kills its worker every time
        must end); the tasks queued behind it go back as they were.
        """
        w = self._worker(rank)
        if w.state is not W.LOST:
            for k in w.kinds:
                self._kinds[k] -= 1
            self._needs_check = bool(w.kinds)
        self._transition(w, "lost")
        w.streaming = None
        w.revoking = False
        out: list[Decision] = []
        queued = list(w.queue)
        w.queue.clear()
        self._queue_changed(w)
        for tid in reversed(queued):
            rec = self._active[tid]
            head = tid == queued[0]
            rec.rank = None
            if head:
                rec.failures += 1
                rec.last_error = f"worker {rank} was lost"
                if rec.failures > max(self.retries, 1) or self._draining:
                    out.extend(self._end(rec, rank, rec.attempts, ok=False, error=rec.last_error))
                    continue
            self._requeue(rec)
        return out

    def worker_stopped(self, rank: int) -> list[Decision]:
        """The worker said goodbye."""
        self._transition(self._worker(rank), "bye")
        return []

    # -- multi-step tasks ------------------------------------------------------------------

    def step_begin(self, rank: int, tid: TaskId, attempt: int, n: int, now: float, streamed: bool = False) -> bool:
        """A message about step ``n`` of ``tid`` arrived (``streamed``: its output follows in
        chunks). False: drop it, it belongs to a lease that is no longer live."""
        w = self._worker(rank)
        w.last_seen = now
        rec = self._active.get(tid)
        if rec is None or rec.rank != rank or rec.attempts != attempt or rec.step != n:
            if rec is None:
                self._report_in(w, tid, now)
            return False
        if streamed:
            if w.streaming is not None:
                raise ProtocolError(f"worker {rank} began step {n} of {tid!r} while result {w.streaming!r} is open")
            w.streaming = tid  # a transfer in progress suspends the lease of that worker
        return True

    def step_done(self, rank: int, tid: TaskId, n: int, next_step: int, needs: str | None,
                  timeout: float | None, continuing: bool, now: float, stored: bool = True) -> list[Decision]:
        """Step ``n`` finished; step ``next_step`` (n + 1) runs on ``rank`` (``continuing``) or, once
        its input is stored (``step_stored``), on any worker of the kind it ``needs``. ``stored``:
        its input is on its way to storage (else it lives only in the worker's memory)."""
        w = self._worker(rank)
        if w.streaming == tid:
            w.streaming = None
        rec = self._active[tid]
        rec.step, rec.needs, rec.failures = next_step, needs, 0
        rec.input_coming = stored
        rec.tried = {rank} if continuing else set()  # a new step: retries prefer others afresh
        rec.timeout = timeout if timeout is not None else self.timeout
        if continuing:
            if tid in w.queue and next(iter(w.queue)) == tid:
                w.head_since = now
                self._arm(w, rec)  # the step's own lease, from now
            return []
        rec.waiting = True  # the worker left it: it waits for its input to be stored
        self._leave_queue(w, tid, now)
        rec.rank = None
        return []

    def step_stored(self, tid: TaskId, call: Any) -> list[Decision]:
        """The input of step ``call.n`` is durable: a failure from here on re-runs that step."""
        rec = self._active.get(tid)
        if rec is None or (rec.call is not None and rec.call.n >= call.n):
            return []
        rec.call = call
        if rec.step == call.n:
            rec.input_coming = False
            if rec.waiting:
                rec.waiting = False
                self._requeue(rec)
        return []

    def fanout(self, rank: int, tid: TaskId, n: int, children: list[tuple[Any, int, Any, Any]],
               now: float) -> list[Decision]:
        """Step ``n`` of ``tid`` split it into ``children`` (id, step, needs, timeout): each a task of
        its own, run once its input is stored; ``tid`` ends when they all have."""
        w = self._worker(rank)
        if w.streaming == tid:
            w.streaming = None
        rec = self._active[tid]
        self._leave_queue(w, tid, now)
        rec.rank, rec.step, rec.children_left = None, n + 1, len(children)
        if not children:  # (a resumed run: every child was done before)
            return self._end(rec, rank, rec.attempts, ok=True, error=None)
        for cid, step, needs, timeout in children:
            if cid in self._active:
                raise ProtocolError(f"task id {cid!r} of a fan-out of {tid!r} is already a task")
            self._active[cid] = TaskRec(cid, None, timeout if timeout is not None else self.timeout, seq=rec.seq,
                                        step=step, needs=needs, waiting=True, parent=tid)
        return []

    def _child_ended(self, child: TaskRec, ok: bool, error: str | None) -> list[Decision]:
        parent = self._active.get(child.parent)
        if parent is None:
            return []
        parent.children_left -= 1
        if not ok and parent.child_failed is None:
            parent.child_failed = f"child {child.tid!r} failed: {error}"
        if parent.children_left:
            return []
        return self._end(parent, -1, parent.attempts, ok=parent.child_failed is None, error=parent.child_failed)

    def _fail_unrunnable(self) -> list[Decision]:
        """Steps that need a kind of worker none of the workers is: they fail at once, not hang."""
        self._needs_check = False
        out: list[Decision] = []
        for rec in [r for r in self._requeued if r.needs is not None and not self._kinds.get(r.needs)]:
            self._requeued.remove(rec)
            kinds = sorted(k for k, n in self._kinds.items() if n) or ["none"]
            out.extend(self._end(rec, -1, rec.attempts, ok=False,
                                 error=f"step {rec.step} needs a worker of kind {rec.needs!r}, and no worker is"
                                       f" (the workers' kinds: {', '.join(kinds)}; declare them with"
                                       " MPIGATHER_KINDS or --kinds)"))
        return out

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

    def dispatch(self, now: float) -> list[Decision]:
        """Fill every healthy worker up to its target; stop idle workers when no work is left.

        Only workers whose queue shrank since they were last filled are looked at, and the pass
        ends at the first worker left without work, so its cost does not grow with the cluster.
        While expected workers have not said hello yet, each gets one task at a time, so that
        the first to arrive does not take the work of the others.
        """
        out: list[Decision] = []
        target = self.target_outstanding()
        if self._count[W.NEW] and now - self._start < self.hello_patience:
            target = 1
        low = target // 2 if target > 2 else target - 1
        for rank in list(self._hungry):
            w = self._workers[rank]
            if w.state is not W.OK or len(w.queue) > low:
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
                out.append(Send(w.rank, [(r.tid, r.attempts, r.payload) if r.call is None
                                         else (r.tid, r.attempts, r.payload, r.call) for r in batch]))
                self._queue_changed(w)
            if len(w.queue) >= target:
                self._hungry.discard(rank)
            elif not self._requeued and (self._source is None or self._draining or not batch):
                break  # nothing to hand out to anyone now
        if self.finished:
            for rank in list(self._ok):
                w = self._workers[rank]
                self._transition(w, "stop")
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

    def _report_in(self, w: WorkerRec, tid: TaskId, now: float, attempt: int | None = None) -> None:
        """A result or failure from ``w`` for ``tid``: advance its FIFO, clear suspicion. A message
        of an older ``attempt`` leaves alone the newer lease of ``tid`` that ``w`` may hold again
        (an expired task re-sent to the same worker): that one is still in its FIFO."""
        self._transition(w, "report_in")
        w.stuck = None
        rec = self._active.get(tid)
        if rec is not None and rec.rank == w.rank and attempt is not None and attempt < rec.attempts:
            return
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

    def _queue_changed(self, w: WorkerRec) -> None:
        if w.state is W.OK:
            self._hungry.add(w.rank)  # dispatch looks at its real level
            if len(w.queue) > 1:
                self._multi.add(w.rank)
            else:
                self._multi.discard(w.rank)
        else:
            self._hungry.discard(w.rank)
            self._multi.discard(w.rank)

    def _requeue(self, rec: TaskRec, front: bool = True) -> None:
        """Put a task back for another worker; while draining, forget it instead (it is not done).

        A multi-step task goes back to the last step whose input is stored (the task itself
        when none is), so a failure re-runs one step, never a step's successor without its input.
        """
        if self._draining:
            self._active.pop(rec.tid, None)
            return
        if rec.input_coming:  # the failed step's input is being stored: run it again from there
            rec.waiting = True
            return
        rec.step = rec.call.n if rec.call is not None else 0
        rec.needs = rec.call.needs if rec.call is not None else None
        if rec.needs is not None:
            self._needs_check = True
        if front:
            self._requeued.appendleft(rec)
        else:
            self._requeued.append(rec)

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
                if rec.needs is not None and rec.needs not in self._workers[rank].kinds:
                    continue  # a step for another kind of worker
                # prefer a worker that has not tried it, unless every healthy one that could has
                able = len(self._ok) if rec.needs is None else self._kinds.get(rec.needs, 0)
                if rank not in rec.tried or sum(1 for r in rec.tried if r in self._ok) >= able:
                    del self._requeued[i]
                    return rec
            while self._requeued and self._requeued[0].ended:
                self._requeued.popleft()
        if self._source is None:
            self._starved = True
            return None
        try:
            item = next(self._source)
        except StopIteration:
            self._source = None
            self._starved = True
            return None
        if item is WAIT:
            self._starved = True
            return None
        self._starved = False
        pos: list[Any]
        tid, payload, *pos = item  # (id, payload), (id, payload, position) or (..., the step to resume at)
        if tid in self._active:
            raise ProtocolError(f"task id {tid!r} appears twice in the task source")
        timeout = self._timeout_of(payload) if self._timeout_of else None
        seq = pos[0] if pos else self._seq_next
        self._seq_next = seq + 1
        rec = TaskRec(tid, payload, timeout if timeout is not None else self.timeout, seq=seq)
        if len(pos) > 1 and pos[1] is not None:  # a resumed multi-step task: its next step
            rec.call, rec.step, rec.needs = pos[1], pos[1].n, pos[1].needs
            if rec.needs is not None and rec.needs not in self._workers[rank].kinds:
                self._active[tid] = rec
                self._requeue(rec, front=False)  # for a worker of its kind
                return None
        self._active[tid] = rec
        return rec

    def _deadline_of(self, w: WorkerRec, rec: TaskRec) -> float:
        return math.inf if rec.timeout is None else w.head_since + rec.timeout

    def _arm(self, w: WorkerRec, rec: TaskRec) -> None:
        deadline = self._deadline_of(w, rec)
        if deadline != math.inf:
            self._seq += 1
            heapq.heappush(self._deadlines, (deadline, self._seq, w.rank, rec.tid))

    def _expire_leases(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, rank, tid = heapq.heappop(self._deadlines)
            w = self._workers[rank]
            if not w.queue or next(iter(w.queue)) != tid or w.state is not W.OK or tid not in self._active:
                continue  # stale entry
            if w.streaming is not None:  # a transfer in progress proves the worker alive
                self._seq += 1
                heapq.heappush(self._deadlines, (now + STREAM_RECHECK, self._seq, rank, tid))
                continue
            rec = self._active[tid]
            if self._deadline_of(w, rec) > now:
                continue
            out.extend(self._expire(w, rec, now))
        return out

    def _expire(self, w: WorkerRec, rec: TaskRec, now: float) -> list[Decision]:
        """The head task of ``w`` ran past its deadline: take back all of ``w``'s tasks."""
        out: list[Decision] = []
        w.stuck = rec.tid
        rec.failures += 1
        rec.last_error = f"timed out after {rec.timeout:g} s on worker {w.rank}"
        queued = list(w.queue)
        w.queue.clear()
        self._transition(w, "expire")
        for tid in reversed(queued):
            r = self._active[tid]
            r.rank = None
            if r is rec and (rec.failures > max(self.retries, 1) or self._draining):
                out.extend(self._end(rec, w.rank, rec.attempts, ok=False, error=rec.last_error))
                continue
            self._requeue(r)
        out.insert(0, Expired(w.rank, rec.tid, rec.attempts, requeued=not rec.ended))
        if len(queued) > 1:
            out.append(Revoke(w.rank, queued[1:], expect_ack=False))
        return out

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
            out.append(Halt(f"every worker is lost: {len(left)} unfinished task(s) are left for a resume"))
            return out
        if self._no_worker_since is None:
            self._no_worker_since = now
            return out
        if now - self._no_worker_since > self.lost_patience:
            out.append(Notice("error", f"no healthy worker left for {self.lost_patience:.0f} s: ending the"
                                       " remaining tasks as failed"))
            out.extend(self.give_up("no healthy worker left to run it (all stuck or lost)"))
        return out

    def _steal(self, now: float) -> list[Decision]:
        """When there is nothing new to hand out, move queued-but-unstarted tasks to idle workers.

        The donor's helper thread answers while it computes, so this works at any time: at the
        end of a run, between executor submissions, and at start-up when the first worker to
        say hello took more than its share.
        """
        if not self._starved or self._requeued or not self._multi:
            return []
        idle: list[WorkerRec] = []
        for r in self._hungry:  # every idle healthy worker is in there
            w = self._workers[r]
            if w.state is W.OK and not w.queue:
                idle.append(w)
                if len(idle) >= len(self._multi):
                    break
        if not idle:
            return []
        donors = sorted((self._workers[r] for r in self._multi if not self._workers[r].revoking),
                        key=lambda w: -len(w.queue))
        out: list[Decision] = []
        for donor, _ in zip(donors, idle):
            unstarted = list(donor.queue)[1:]
            victims = unstarted[len(unstarted) // 2:]  # the later half, at least one
            donor.revoking = True
            out.append(Revoke(donor.rank, victims, expect_ack=True))
        return out
