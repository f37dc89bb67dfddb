"""The task queue: blocks read lazily from the source, their sizes, requeued work, and stealing.

Sizes come from measured durations: a block holds about ``block_time`` seconds of work (at most
``max_block`` tasks), so a tiny task costs one lease, one message and one event per block, not
per task. Until durations are known a block is one task. A block is never so large that a
worker idles while another holds queued work: where the number of tasks left is known (a
list, a range, a file, the executor's queue), no block takes more than an equal share of it,
so blocks shrink toward the end of the run (to a couple of milliseconds of work, about a
round trip), and idle workers are filled first. Unstarted tasks
of a worker's blocks move to an idle worker when nothing else is left (stealing).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable, Iterator
from typing import Any

from ..errors import ProtocolError
from .base import Base
from .decisions import Decision, Revoke, Send, Stop
from .types import WAIT, Block, Chunk, TaskRec, W, WorkerRec, _Wait

LOOKAHEAD = 32  # requeued blocks looked at for one that suits a worker
STEAL_LOOK = 256  # donors a steal looks at for the busiest, at least (4 per idle worker)
MIN_BLOCK_TIME = 0.002  # seconds of work below which the end of a run shrinks blocks no more
# idle workers kept (not stopped) at the end of a run, for work that comes back: a task that
# failed, hung or lost its worker. The others stop as soon as nothing is left that they could get
SPARE_IDLE = 2


class IterSource:
    """A source over an iterable of ``(id, payload)``, ``(id, payload, position)`` or
    ``(id, payload, position, step call)`` items (``WAIT`` items: nothing now). A chunk ends
    where positions jump (tasks skipped on resume) and a task that resumes at a step comes alone."""

    def __init__(self, items: Iterable[Any]) -> None:
        self._it: Iterator[Any] = iter(items)
        self._held: Any = None  # an item read but not yet handed out
        self._next_seq = 0

    def take(self, n: int) -> Chunk | _Wait | None:
        tids: list[Any] = []
        payloads: list[Any] = []
        seq0 = expect = -1
        while len(tids) < n:
            item = self._held if self._held is not None else next(self._it, None)
            self._held = None
            if item is None:
                break
            if item is WAIT:
                if tids:
                    break
                return WAIT
            tid, payload, *pos = item
            seq = pos[0] if pos else self._next_seq
            call = pos[1] if len(pos) > 1 else None
            if tids and (seq != expect or call is not None):
                self._held = item  # a gap in the positions, or a task resuming at a step: next time
                break
            self._next_seq = seq + 1
            if call is not None:
                return Chunk([tid], [payload], seq, call)
            if not tids:
                seq0 = seq
            tids.append(tid)
            payloads.append(payload)
            expect = seq + 1
        if not tids:
            return None
        return Chunk(tids, payloads, seq0)


def as_source(tasks: Any) -> Any:
    """A source for the scheduler: one with ``take``, or an iterable of items."""
    return tasks if hasattr(tasks, "take") else IterSource(tasks)


class QueueMixin(Base):
    """Part of ``Scheduler``: what goes to which worker (its state lives in ``Scheduler.__init__``)."""

    # -- sizes ------------------------------------------------------------------------------

    def block_size(self) -> int:
        """Tasks in the next block: ``block_time`` of work, and no more than an equal share of
        what is known to be left for the healthy workers."""
        a = self._avg
        if a is None or self.block_time <= 0:
            size = 1
        elif a * self.max_block <= self.block_time:
            size = self.max_block
        else:
            size = max(1, math.ceil(self.block_time / a))
        left = self._known_left()
        if left is not None and size > 1:
            share = math.ceil(left / (2 * max(1, len(self._ok))))
            # ...but at the end of a known task list, not below MIN_BLOCK_TIME of work: a round trip
            # to a worker costs about that (a batch of the executor spreads whatever its size)
            # (capped at ``size`` before rounding: a tiny measured average makes the ratio infinite)
            floor = 1 if a is None or a <= 0 or self.total is None else math.ceil(min(MIN_BLOCK_TIME / a, size))
            size = max(1, min(size, max(share, floor)))
        return size

    def _known_left(self) -> int | None:
        n = sum(b.left for b in itertools.islice(self._requeued, LOOKAHEAD))
        if self.total is not None:
            return n + max(0, self.total - self._pulled)
        available = getattr(self._source, "available", None)
        return None if available is None else n + available()

    def hold_target(self, size: int) -> int:
        """Tasks each worker should hold: ``prefetch``, and two blocks of tiny tasks (the next
        one is there when one ends)."""
        return self.prefetch if size == 1 else max(self.prefetch, 2 * size)

    def target_outstanding(self) -> int:
        return self.hold_target(self.block_size())

    def _observe(self, seconds: float, n: int) -> None:
        """``n`` tasks took ``seconds`` together: update the measured seconds per task."""
        if seconds < 0 or n <= 0:
            return
        per = seconds / n
        a = self._avg
        self._avg = per if a is None else a + (1 - 0.9 ** min(n, 50)) * (per - a)

    # -- handing out --------------------------------------------------------------------------

    def dispatch(self, now: float) -> list[Decision]:
        """Fill every healthy worker up to its target (idle ones first); stop idle workers when no
        work is left; steal for idle workers when nothing new can be handed out.

        Only workers whose queue shrank since they were last filled are looked at, and the pass
        ends at the first worker left without work, so its cost does not grow with the cluster.
        While expected workers have not said hello yet, each gets one task at a time, so that
        the first to arrive does not take the work of the others.
        """
        out: list[Decision] = []
        if self._requeued or (self._source is not None and not self._draining):
            self._fill(now, out)
        # (else nothing can be handed out: no pass over the hungry workers, who may be thousands
        # at the end of a run, each message)
        if self.finished:
            for rank in list(self._ok):
                w = self._workers[rank]
                self._transition(w, "stop")
                out.append(Stop(w.rank))
        else:
            out.extend(self._steal(now))
            if len(self._idle) > SPARE_IDLE and self._source is None and not self._draining:
                self._stop_surplus(out)
        return out

    def _stop_surplus(self, out: list[Decision]) -> None:
        """The source is used up: stop the idle workers that nothing is left for, all but
        ``SPARE_IDLE`` of them. Nothing is left for them while no work is requeued, no worker
        holds an unstarted task (a steal's donor) or is asked for one, and no task may need a
        worker of a kind (steps). At 128 workers on a 2-core node, the idle ones polled for work
        through the whole end of the run, and their goodbyes all came after the last result; now
        each leaves as soon as it runs dry."""
        if self._requeued or self._multi or self._asked or self._kinds:
            return
        for rank in itertools.islice(list(self._idle), len(self._idle) - SPARE_IDLE):
            w = self._workers[rank]
            self._transition(w, "stop")
            out.append(Stop(w.rank))

    def _fill(self, now: float, out: list[Decision]) -> None:
        """Hand out to the hungry workers, idle ones first, until one is left without work."""
        early = bool(self._count[W.NEW]) and now - self._start < self.hello_patience
        size = 1 if early else self.block_size()  # once for the pass: what is left is shared equally
        target = 1 if early else self.hold_target(size)
        low = target // 2 if target > 2 else target - 1
        for rank in self._idle_first():
            w = self._workers[rank]
            if w.state is not W.OK or w.held > low:
                self._hungry.discard(rank)
                continue
            sent: list[Block] = []
            while w.held < target:
                b = self._next_block(w, min(size, target - w.held) if early else size)
                if b is None:
                    break
                self._lease(w, b, now)
                sent.append(b)
            if sent:
                out.append(Send(w.rank, sent))
            if w.held >= target:
                self._hungry.discard(rank)
            elif not self._requeued and (self._source is None or self._draining or not sent):
                break  # nothing to hand out to anyone now

    def _idle_first(self) -> Iterator[int]:
        """The hungry workers, idle ones first (``_idle`` is kept up to date: no sort, no look at
        each worker). Lazy, on copies of the sets (the pass changes them): a pass that ends at the
        first worker left without work reads no worker record beyond it."""
        idle = self._idle
        yield from list(idle)
        for r in list(self._hungry):
            if r not in idle:  # (an idle worker still idle here was looked at above)
                yield r

    def _lease(self, w: WorkerRec, b: Block, now: float) -> None:
        self._next_bid += 1
        b.bid, b.rank = self._next_bid, w.rank
        b.attempt += 1
        if b.recs:
            for rec in b.recs.values():
                rec.attempts = b.attempt
                rec.tried.add(w.rank)
        self._leases[b.bid] = b
        w.queue.append(b)
        w.held += b.left
        if len(w.queue) == 1:
            w.head_since = now
            self._arm(w)
        self._queue_changed(w)

    def _next_block(self, w: WorkerRec, size: int) -> Block | None:
        """The next block for ``w``: requeued work first (what suits it), else new tasks."""
        if self._draining:
            return None
        if self._requeued:
            b = self._pick_requeued(w)
            if b is not None:
                if len(b) > size and not b.recs:
                    self._requeued.appendleft(b.cut(size))
                return b
        while self._source is not None:
            c = self._source.take(size)
            if c is None:
                self._source = None
                break
            if c is WAIT:
                self._starved = True
                return None
            assert isinstance(c, Chunk)
            self._starved = False
            self._pulled += len(c.tids)
            if c.call is None:
                return Block(c.tids, c.payloads, c.seq0, c.hashes)
            rec = self._resumed(c)  # a multi-step task that resumes at a later step
            if rec.needs is None or rec.needs in w.kinds:
                return Block.single(rec)
            self._requeue_rec(rec, front=False)  # for a worker of its kind
        self._starved = True
        return None

    def _resumed(self, c: Chunk) -> TaskRec:
        tid = c.tids[0]
        if tid in self._recs:
            raise ProtocolError(f"task id {tid!r} appears twice in the task source")
        call = c.call
        rec = TaskRec(tid, c.payloads[0], c.seq0, hash=c.hashes[0] if c.hashes else None, call=call,
                      step=call.n, needs=call.needs, timeout=call.timeout if call.timeout is not None else self.timeout)
        self._recs[tid] = rec
        if rec.needs is not None:
            self._needs_check = True
        return rec

    def _pick_requeued(self, w: WorkerRec) -> Block | None:
        """A requeued block ``w`` may run: a step for its kind, and a retry on a worker that has
        not tried it yet (unless every healthy worker that could has)."""
        for i, b in enumerate(self._requeued):
            if i >= LOOKAHEAD:
                break
            rec = b.rec(0) if len(b) == 1 else None
            if rec is not None:
                if rec.needs is not None and rec.needs not in w.kinds:
                    continue
                able = len(self._ok) if rec.needs is None else self._kinds.get(rec.needs, 0)
                if w.rank in rec.tried and sum(1 for r in rec.tried if r in self._ok) < able:
                    continue
            del self._requeued[i]
            return b
        return None

    # -- requeueing -----------------------------------------------------------------------------

    def _requeue_blocks(self, blocks: list[Block]) -> None:
        """Put blocks back at the front of the queue, in their order (forgotten while draining)."""
        for b in reversed(blocks):
            if not b.left:
                continue
            if b.next:
                b = b.cut(b.next)
            if self._draining:
                self._forget(b)
                continue
            self._requeued.appendleft(b)
            if b.recs and any(r.needs is not None for r in b.recs.values()):
                self._needs_check = True  # can anyone run it?

    def _requeue_rec(self, rec: TaskRec, front: bool = True) -> None:
        """Put a task with a history back, alone; while draining, forget it instead (it is not done).

        A multi-step task goes back to the last step whose input is stored (the task itself
        when none is), so a failure re-runs one step, never a step's successor without its input.
        """
        if self._draining:
            self._recs.pop(rec.tid, None)
            return
        if rec.input_coming:  # the failed step's input is being stored: run it again from there
            rec.waiting = True
            return
        rec.step = rec.call.n if rec.call is not None else 0
        rec.needs = rec.call.needs if rec.call is not None else None
        if rec.needs is not None:
            self._needs_check = True
        b = Block.single(rec)
        b.attempt = rec.attempts
        if front:
            self._requeued.appendleft(b)
        else:
            self._requeued.append(b)

    def _forget(self, b: Block) -> None:
        """Tasks that will not run in this run (a drain): not done, left for a resume."""
        if b.recs:
            for rec in b.recs.values():
                self._recs.pop(rec.tid, None)

    def _promote(self, b: Block, i: int) -> TaskRec:
        """Task ``i`` of ``b`` gets a history of its own (it failed, hung, or has steps)."""
        rec = TaskRec(b.tids[i], b.payloads[i], b.seq0 + i, hash=None if b.hashes is None else b.hashes[i],
                      attempts=b.attempt, tried={b.rank} if b.rank is not None else set(), block=b)
        if b.recs is None:
            b.recs = {}
        b.recs[i] = rec
        self._recs[rec.tid] = rec
        return rec

    def _advance(self, w: WorkerRec, b: Block, n: int, now: float) -> None:
        """The ``n`` tasks at the head of ``w``'s running block reported (ended, or left it):
        the next one runs from ``now``; a block with nothing left ends its lease."""
        if not w.queue or w.queue[0] is not b:
            raise ProtocolError(f"worker {w.rank} reported on lease {b.bid} before finishing the one before it")
        b.next += n
        w.held -= n
        if b.next >= len(b):
            w.queue.popleft()
            self._leases.pop(b.bid, None)
        if w.queue:
            w.head_since = now
            self._arm(w)
        self._queue_changed(w)

    # -- stealing -------------------------------------------------------------------------------

    def _steal(self, now: float) -> list[Decision]:
        """When there is nothing new to hand out, move unstarted tasks to idle workers: the later
        half of what the busiest donors hold beyond their running task.

        The donor's helper thread answers while it computes, so this works at any time: at the
        end of a run, between executor submissions, and at start-up when the first worker to
        say hello took more than its share.
        """
        if not self._starved or self._requeued or not self._multi:
            return []
        idle = min(len(self._idle), len(self._multi))  # (kept up to date: no pass over the workers)
        if not idle:
            return []
        # the busiest ``idle`` donors. Most hold the most a worker is given (``top``): the first
        # found will do. Else the busiest of at most ``STEAL_LOOK`` (or 4 x idle) of them: a steal
        # costs O(idle), not a pass over thousands of donors per message (``_multi`` holds no
        # donor already asked, so asked ones are not looked at again and again either)
        top = self.target_outstanding()
        donors: list[WorkerRec] = []
        looked: list[WorkerRec] = []
        for r in itertools.islice(self._multi, max(STEAL_LOOK, 4 * idle)):
            w = self._workers[r]
            looked.append(w)
            if w.held >= top:
                donors.append(w)
                if len(donors) >= idle:
                    break
        if len(donors) < idle:
            donors = heapq.nlargest(idle, looked, key=lambda w: w.held)
        out: list[Decision] = []
        for donor in donors:
            want = max(1, (donor.held - 1) // 2)
            cuts: list[tuple[int, int]] = []
            for i in range(len(donor.queue) - 1, -1, -1):
                b = donor.queue[i]
                first = b.next + 1 if i == 0 else b.next  # the running task stays
                free = len(b) - first
                if free <= 0:
                    break
                take = min(free, want)
                cuts.append((b.bid, len(b) - take))
                want -= take
                if not want:
                    break
            if cuts:
                self._asking(donor, True)
                out.append(Revoke(donor.rank, cuts[::-1], expect_ack=True))
        return out

    def revoked(self, rank: int, cuts: Iterable[tuple[int, int | None]], now: float) -> list[Decision]:
        """The worker acknowledged a steal or a drain: of each lease it dropped the tasks from
        that index on, unstarted (None: it dropped nothing of it). They go to the front of the
        queue, for an idle worker (forgotten while draining: not done, left for a resume)."""
        w = self._worker(rank)
        w.last_seen = now
        self._asking(w, False)
        back: list[Block] = []
        for bid, k in cuts:
            if k is None:
                continue
            if w.state is W.SUSPECT and w.stuck_at is not None and w.stuck_at[0] == bid and w.stuck_at[1] >= k:
                w.stuck = w.stuck_at = None  # it expired on a task it never started
                self._transition(w, "unstuck")
            b = self._leases.get(bid)
            if b is None or b.rank != rank or k >= len(b):
                continue  # that lease ended meanwhile, or nothing was dropped
            k = max(k, b.next)
            tail = b.cut(k)
            tail.attempt -= 1  # the worker says it never started these: moving them is not an attempt
            w.held -= len(tail)
            back.append(tail)
            if b.next >= len(b):  # nothing of it is left to run there
                was_head = w.queue[0] is b
                w.queue.remove(b)
                self._leases.pop(bid, None)
                if was_head and w.queue:
                    w.head_since = now
                    self._arm(w)
        self._queue_changed(w)
        self._requeue_blocks(back)
        return []
