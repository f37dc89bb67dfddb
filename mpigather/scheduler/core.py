"""The facade: ``Scheduler``, and the events that end tasks (the run's end: ``ending``).

This package contains no I/O and imports no MPI. Everything that decides which task goes
where, what happens when a task ends, when a worker is suspect, when a drain's grace period
is over, when nobody is left to do the work and when the run is over lives here. The master
feeds it events with the current time passed in (``worker_ready``, ``accept``, ``rows_done``,
``task_done``, ``task_failed``, ``tick``...) and carries out the decisions they return
(``Send``, ``Revoke``, ``Stop``, ``Done``, ``Ended``, ``Expired``, ``Notice``). So leases and
timeouts are tested without sleeping and without MPI.

Its unit of work is a block of consecutive tasks (``types.Block``): one lease, one message each
way, one event per batch of results. Workers report on a task by lease id and index.

Invariants (checked by the tests with random event orders):
- every task ends exactly once, done or failed;
- a task has at most one live lease; a late result of an earlier lease of a task that is
  retried alone (it failed, hung or lost its worker) still wins if it arrives first; any other
  message of a lease that is over, or about a task that ended, is discarded;
- a worker runs its blocks in order and the tasks of a block in order, so the running task is
  the next one of the block at the head of its queue, and only its lease has a running deadline;
- a worker changes state only along ``TRANSITIONS``; any other event raises ``ProtocolError``
  naming the event, the state and the worker, and changes nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ProtocolError
from .decisions import Decision, Done, Ended, Notice, Revoke, StopEarly
from .ending import EndingMixin
from .leases import LeasesMixin
from .limits import FailureLimit
from .queue import QueueMixin, as_source
from .steps import StepsMixin
from .types import Block, TaskId, TaskRec, W, WorkerRec, WorkerState
from .workers import HELLO_PATIENCE, LOST_PATIENCE, WorkersMixin


class Scheduler(WorkersMixin, LeasesMixin, QueueMixin, StepsMixin, EndingMixin):
    """Hands out blocks of tasks from a lazy source to workers, with leases, retries and prefetch.

    ``tasks``: a source with ``take(n)`` (see ``base.Source``), or an iterable of ``(task_id,
    payload)``, ``(task_id, payload, position)`` items, read only as far as needed (the position
    in the whole task list; counted from 0 when not given). ``total``: how many tasks it holds,
    when known (blocks shrink toward the end). ``timeout_of(payload)`` gives a task's own lease
    length, or None for the default. ``expect``: the ranks that will say hello; the run is over
    only once each is released. ``block_time``: seconds of work in a block of tiny tasks.
    ``max_failures`` (see ``limits``): when failed tasks stop the run early, as a drain with
    ``grace`` seconds for the running tasks (default: never).
    """

    def __init__(
        self,
        tasks: Any,
        *,
        expect: Iterable[int] = (),
        prefetch: int = 2,
        retries: int = 0,
        timeout: float | None = None,
        timeout_of: Callable[[Any], float | None] | None = None,
        block_time: float = 0.02,
        max_block: int = 4096,
        total: int | None = None,
        hello_patience: float = HELLO_PATIENCE,
        lost_patience: float | None = None,
        start: float = 0.0,
        max_failures: FailureLimit | str | int = "none",
        grace: float | None = None,
    ) -> None:
        if prefetch < 1:
            raise ValueError(f"prefetch must be at least 1, not {prefetch}")
        if retries < 0:
            raise ValueError(f"retries must be at least 0, not {retries}")
        if max_block < 1:
            raise ValueError(f"max_block must be at least 1, not {max_block}")
        self._source = as_source(tasks)
        self.total = total
        self._pulled = 0
        self.prefetch = prefetch
        self.retries = retries
        self.timeout = timeout
        self._timeout_of = timeout_of
        self.block_time = block_time
        self.max_block = max_block
        self.hello_patience = hello_patience
        self.lost_patience = lost_patience if lost_patience is not None else (timeout or LOST_PATIENCE)
        self._requeued: deque[Block] = deque()
        self._recs: dict[TaskId, TaskRec] = {}
        self._leases: dict[int, Block] = {}
        self._next_bid = 0
        self._workers: dict[int, WorkerRec] = {}
        self._deadlines: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self._draining = False
        self._grace_end = None
        self._starved = False
        self._start = start
        self._hello_warned = False
        self._no_worker_since: float | None = None
        # kept up to date at every state or queue change, so that no pass over all workers is needed
        self._count: dict[WorkerState, int] = dict.fromkeys(WorkerState, 0)
        self._ok: set[int] = set()
        self._hungry: set[int] = set()
        self._multi: set[int] = set()
        self._idle: set[int] = set()
        self._asked: set[int] = set()  # workers asked for tasks (a steal, a drain) that have not answered
        self._stop_cuts: dict[int, int] = {}  # lease -> where a drain cut it (see _task_failed)
        self._avg: float | None = None
        self._kinds: dict[str, int] = {}
        self._needs_check = False
        self.n_done = 0
        self.n_failed = 0
        self.max_failures = FailureLimit.parse(max_failures)
        self.grace = grace
        self.stopped_early: StopEarly | None = None
        for rank in expect:
            self._workers[rank] = WorkerRec(rank, last_seen=start)
            self._count[W.NEW] += 1

    # -- queries ------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """True when no task is left to hand out and none is in flight."""
        if self._leases or self._requeued or self._recs:
            return False
        return self._draining or self._source is None

    @property
    def over(self) -> bool:
        """The end of the run: finished, and no worker left that the master must wait for."""
        return self.finished and self._count[W.NEW] + self._count[W.OK] + self._count[W.STOPPING] == 0

    @property
    def draining(self) -> bool:
        return self._draining

    def in_flight(self) -> int:
        """Tasks leased to workers and not yet reported."""
        return sum(w.held for w in self._workers.values())

    def hungry(self) -> bool:
        """May a dispatch hand out something now? (A worker's queue shrank since the last one.)"""
        return bool(self._hungry) and not self._draining

    def lease(self, rank: int, bid: int) -> Block | None:
        """The live lease ``bid`` of worker ``rank`` (None once it is over)."""
        b = self._leases.get(bid)
        return b if b is not None and b.rank == rank else None

    def task(self, tid: TaskId) -> TaskRec | None:
        """A task with a history of its own (retries, steps), while it has not ended."""
        return self._recs.get(tid)

    # -- results --------------------------------------------------------------------------

    def accept(self, rank: int, bid: int, i: int, tid: TaskId) -> bool:
        """Is a result (or a failure) for task ``i`` of lease ``bid`` to be stored? Yes for the
        running task of a live lease, and for a late result of a task retried alone that has
        not ended yet (the first result wins). No: discard it (and call ``discarded``)."""
        b = self._leases.get(bid)
        if b is not None and b.rank == rank:
            if i != b.next and i < len(b):
                raise ProtocolError(f"worker {rank} reported task {i} of lease {bid}, expected task {b.next}")
            return i < len(b)  # (past a cut it had not seen yet: not done)
        rec = self._recs.get(tid)
        return rec is not None and rec.block is not None and not rec.ended

    def accept_rows(self, rank: int, bid: int, start: int, n: int) -> int:
        """How many of the results of tasks ``[start, start + n)`` of lease ``bid`` are to be
        stored: all, or those before a cut the worker had not seen yet (it ran them anyway; they
        are not done), or none once the lease is over (each may still be a late winner: ``accept``)."""
        b = self._leases.get(bid)
        if b is None or b.rank != rank:
            return 0
        if start != b.next:
            raise ProtocolError(f"worker {rank} reported task {start} of lease {bid}, expected task {b.next}")
        return min(n, len(b) - start)

    def begin_stream(self, rank: int, bid: int, i: int, tid: TaskId, now: float) -> bool:
        """A result's header arrived and its bytes will follow. False: receive and drop them."""
        w = self._worker(rank)
        w.last_seen = now
        if not self.accept(rank, bid, i, tid):
            self._report_in(w)  # a late duplicate: dropped, but the worker is back
            return False
        if w.streaming:
            raise ProtocolError(f"worker {rank} began result {tid!r} while another result is open")
        w.streaming = True  # a transfer in progress suspends the lease of that worker
        return True

    def transfer_done(self, rank: int) -> list[Decision]:
        """Every byte of a result arrived; it is checked and stored before ``task_done``."""
        self._worker(rank).streaming = False
        return []

    def discarded(self, rank: int, now: float) -> list[Decision]:
        """A whole result arrived that ``accept`` refused: dropped, but the worker reported in."""
        w = self._worker(rank)
        w.last_seen = now
        w.streaming = False
        self._report_in(w)
        return []

    def rows_done(self, rank: int, bid: int, start: int, n: int, now: float,
                  duration: float | None = None) -> list[Decision]:
        """Tasks ``[start, start + n)`` of the live lease ``bid`` are stored (``accept`` said yes):
        one event for the lot. ``duration``: their compute time together."""
        w = self._worker(rank)
        w.last_seen = now
        w.streaming = False
        b = self._leases.get(bid)
        if b is None or b.rank != rank or start != b.next or start + n > len(b):
            raise ProtocolError(f"worker {rank}: tasks {start}..{start + n - 1} of lease {bid} are not its next ones")
        self._report_in(w)
        if duration is not None:
            self._observe(duration, n)
        out: list[Decision] = [Done(rank, b.attempt, b.tids[start:start + n])]
        self.n_done += n
        if b.recs:
            for i in range(start, start + n):
                rec = b.recs.pop(i, None)
                if rec is not None:
                    out.extend(self._close_rec(rec, ok=True, error=None))
        self._advance(w, b, n, now)
        return out

    def task_done(self, rank: int, bid: int, i: int, tid: TaskId, now: float,
                  duration: float | None = None, attempt: int | None = None) -> list[Decision]:
        """One task's result is stored (``accept`` said yes): the running task of a live lease,
        or a late winner (of ``attempt``), whose newer copy is taken back from wherever it waits."""
        b = self._leases.get(bid)
        if b is not None and b.rank == rank:
            out = self.rows_done(rank, bid, i, 1, now, duration)
            d = out[0]
            assert isinstance(d, Done)
            out[0] = Ended(tid, d.attempt, rank, True, None)
            return out
        w = self._worker(rank)
        w.last_seen = now
        w.streaming = False
        self._report_in(w)
        rec = self._recs.get(tid)
        if rec is None or rec.ended:
            return []
        out = self._withdraw(rec, rank, now)
        return self._end_rec(rec, rank, attempt if attempt is not None else rec.attempts, ok=True, error=None) + out

    def task_failed(self, rank: int, bid: int, i: int, tid: TaskId, error: str, now: float,
                    attempt: int | None = None, fatal: bool = False, duration: float | None = None,
                    ) -> list[Decision]:
        """The task raised. Retries it alone (elsewhere when possible) or ends it as failed.
        ``duration``: how long it ran, which sizes blocks as a result's does (without it, a run
        whose every task fails would hand them out one round trip at a time).
        ``fatal``: the task function cannot take the tasks at all (its signature does not fit):
        no retry, and the run stops early (running tasks finish within the grace period)."""
        if duration is not None:
            self._observe(duration, 1)
        out = self._task_failed(rank, bid, i, tid, error, now, attempt, fatal)
        if fatal and self.stopped_early is None:
            return out + self._stop_early(now, "the task function cannot take the tasks", fatal=True)
        return out + self._judge(now) if out else out

    def _task_failed(self, rank: int, bid: int, i: int, tid: TaskId, error: str, now: float,
                     attempt: int | None, fatal: bool) -> list[Decision]:
        w = self._worker(rank)
        w.last_seen = now
        w.streaming = False
        b = self._leases.get(bid)
        if b is not None and b.rank == rank:
            if i != b.next:
                raise ProtocolError(f"worker {rank} reported task {i} of lease {bid}, expected task {b.next}")
            self._report_in(w)
            if i >= self._stop_cuts.get(bid, i + 1):
                # begun after a drain's cut, before the worker heard of it: a result is stored,
                # but a failure is not counted (a storm of tiny failing tasks would go on
                # counting until the revoke arrives); not done, left for a resume
                if (rec := b.rec(i)) is not None:
                    del b.recs[i]  # type: ignore[union-attr]
                    self._recs.pop(rec.tid, None)
                self._advance(w, b, 1, now)
                return []
            rec = b.rec(i) or self._promote(b, i)
            b.recs.pop(i)  # type: ignore[union-attr]  # (promoted above)
            rec.block = None
            self._advance(w, b, 1, now)
            rec.failures += 1
            rec.last_error = error
            if rec.failures <= self.retries and not self._draining and not fatal:
                self._requeue_rec(rec, front=False)
                return []
            return self._end_rec(rec, rank, b.attempt, ok=False, error=error)
        # a lease that is over: only a task retried alone, waiting in the queue, counts it
        self._report_in(w)
        late = self._recs.get(tid)
        if late is None or late.ended or late.block is None or late.block.bid:
            return []  # ended, waiting for a step's input, or a newer attempt runs: not counted against it
        late.failures += 1
        late.last_error = error
        if late.failures <= self.retries and not self._draining and not fatal:
            return []
        self._requeued.remove(late.block)
        late.block = None
        return self._end_rec(late, rank, attempt if attempt is not None else late.attempts, ok=False, error=error)

    # -- ending ---------------------------------------------------------------------------

    def _end_rec(self, rec: TaskRec, rank: int, attempt: int, *, ok: bool, error: str | None) -> list[Decision]:
        """The one place where a task with a history ends and is counted."""
        if ok:
            self.n_done += 1
        else:
            self.n_failed += 1
        return [Ended(rec.tid, attempt, rank, ok, error, rec.seq), *self._close_rec(rec, ok, error)]

    def _close_rec(self, rec: TaskRec, ok: bool, error: str | None) -> list[Decision]:
        """A task with a history ended (and was counted): forget it; a fan-out's parent hears."""
        rec.ended = True
        self._recs.pop(rec.tid, None)
        return self._child_ended(rec, ok, error) if rec.parent is not None else []

    def _withdraw(self, rec: TaskRec, sender: int, now: float) -> list[Decision]:
        """A late result of ``rec`` from ``sender`` won: take its newer copy back from wherever
        it is. (On the sender itself it has not started: a worker runs its tasks one at a time.)"""
        b = rec.block
        rec.block = None
        if b is None:
            return []
        if not b.bid:  # it waits in the queue
            self._requeued.remove(b)
            return []
        hw = self._workers[b.rank]  # type: ignore[index]
        if hw.queue and hw.queue[0] is b and hw.rank != sender:
            # it is running there: hold that worker until it reports in, take back the rest
            hw.stuck, hw.stuck_at = rec.tid, (b.bid, b.next)
            self._leases.pop(b.bid, None)
            hw.queue.popleft()
            hw.held -= 1
            self._transition(hw, "superseded")
            rest = list(hw.queue)
            out: list[Decision] = []
            if rest:
                out.append(Revoke(hw.rank, [(x.bid, x.next) for x in rest], expect_ack=False))
            hw.queue.clear()
            hw.held = 0
            for x in rest:
                self._leases.pop(x.bid, None)
                x.bid, x.rank = 0, None
            self._requeue_blocks(rest)
            self._queue_changed(hw)
            return out
        was_head = hw.queue[0] is b
        hw.queue.remove(b)
        hw.held -= b.left
        self._leases.pop(b.bid, None)
        if was_head and hw.queue:  # (on the sender: it runs the next one now)
            hw.head_since = now
            self._arm(hw)
        self._queue_changed(hw)
        return [Revoke(hw.rank, [(b.bid, 0)], expect_ack=False)] if hw.state is W.OK else []

    def _report_in(self, w: WorkerRec) -> None:
        """A result or failure from ``w``: it is not stuck (any more)."""
        self._transition(w, "report_in")
        w.stuck = w.stuck_at = None

    def tick(self, now: float) -> list[Decision]:
        """Time passes: expire leases, end a drain's grace period, notice that nobody is left to work."""
        out = self._expire_leases(now)
        if self._grace_end is not None and now > self._grace_end and (self._leases or self._recs):
            left = self.abandon_running()
            out.append(Notice("warning", f"grace period over: {left} running task(s) left for a resume"))
        out.extend(self._check_workers(now))
        if self._needs_check and not self._count[W.NEW]:
            out.extend(self._fail_unrunnable())
        if self.n_failed:
            out.extend(self._judge(now))
        return out

    # -- stopping early -------------------------------------------------------------------

    def _judge(self, now: float) -> list[Decision]:
        """After a failure: has the run reached its ``max_failures``? O(1)."""
        if self.stopped_early is not None or self._draining:
            return []
        reason = self.max_failures.reached(self.n_done, self.n_failed, self.total)
        return [] if reason is None else self._stop_early(now, reason)

    def _stop_early(self, now: float, reason: str, fatal: bool = False) -> list[Decision]:
        """Stop handing out work, as a drain: running tasks finish within the grace period."""
        if self._draining:
            return []
        self.stopped_early = StopEarly(reason, self.n_failed, self.n_done, fatal)
        return [*self.drain(now, self.grace), self.stopped_early]
