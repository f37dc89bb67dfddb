"""Leases: the deadline of each worker's running task, and what happens when a lease ends early.

A worker runs its blocks in order, and the tasks of a block in order, so the task at ``next``
of the block at the head of its queue is the one it runs: only that task has a running
deadline (a heap of deadlines; stale entries are skipped). The master hears of a worker's
progress with each batch of results, so a task's deadline counts from the batch that ended
the task before it: never earlier than the truth. A transfer in progress from a worker
proves it alive and holds its lease over.

A lease that ends early (its deadline passed, or the worker was lost) gives everything back:
the running task counts one failure and comes back alone, with its history; the tasks behind
it go back to the front of the queue as they were, to be handed out in blocks of the current
size, so they spread over idle workers.
"""

from __future__ import annotations

import heapq

from .base import Base
from .decisions import Decision, Expired, Revoke
from .types import Block, TaskRec, W, WorkerRec

STREAM_RECHECK = 1.0  # a lease that ends during a transfer from its worker is looked at again this much later


class LeasesMixin(Base):
    """Part of ``Scheduler``: deadlines (its state lives in ``Scheduler.__init__``)."""

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def _timeout_at(self, b: Block, i: int) -> float | None:
        """The lease of task ``i`` of ``b``: its step's, else the task's own, else the run's."""
        rec = b.rec(i)
        if rec is not None and rec.step > 0:
            return rec.timeout
        t = self._timeout_of(b.payloads[i]) if self._timeout_of is not None else None
        return t if t is not None else self.timeout

    def _arm(self, w: WorkerRec) -> None:
        """The task at the head of ``w``'s queue runs from ``w.head_since``: watch its deadline."""
        b = w.queue[0]
        timeout = self._timeout_at(b, b.next)
        if timeout is not None:
            self._seq += 1
            heapq.heappush(self._deadlines, (w.head_since + timeout, self._seq, w.rank, b.bid, b.next))

    def _expire_leases(self, now: float) -> list[Decision]:
        out: list[Decision] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, rank, bid, i = heapq.heappop(self._deadlines)
            w = self._workers[rank]
            if w.state is not W.OK or not w.queue or w.queue[0].bid != bid or w.queue[0].next != i:
                continue  # stale: that task ended, or the worker's lease ended otherwise
            if w.streaming:  # a transfer in progress proves the worker alive
                self._seq += 1
                heapq.heappush(self._deadlines, (now + STREAM_RECHECK, self._seq, rank, bid, i))
                continue
            out.extend(self._expire(w, now))
        return out

    def _expire(self, w: WorkerRec, now: float) -> list[Decision]:
        """The running task of ``w`` ran past its deadline: take back everything ``w`` holds."""
        b = w.queue[0]
        tid, attempt, timeout = b.tids[b.next], b.attempt, self._timeout_at(b, b.next)
        w.stuck, w.stuck_at = tid, (b.bid, b.next)
        self._transition(w, "expire")
        out, rec = self._take_back(w, f"timed out after {timeout:g} s on worker {w.rank}")
        out.insert(0, Expired(w.rank, tid, attempt, requeued=rec is not None and not rec.ended))
        return out

    def _take_back(self, w: WorkerRec, error: str) -> tuple[list[Decision], TaskRec | None]:
        """End every lease ``w`` holds: its running task counts a failure (``error``) and is
        retried alone, or ends failed; the rest go back to the front of the queue. Returns the
        decisions (a Revoke of what ``w`` has not started, when it is alive) and the running task."""
        blocks = list(w.queue)
        w.queue.clear()
        w.held = 0
        self._queue_changed(w)
        if not blocks:
            return [], None
        head = blocks[0]
        i = head.next
        rec = head.rec(i) or self._promote(head, i)
        cuts = [(head.bid, i + 1)] if i + 1 < len(head) else []
        cuts += [(b.bid, b.next) for b in blocks[1:]]
        for b in blocks:
            self._leases.pop(b.bid, None)
            b.bid, b.rank = 0, None
        rest = blocks[1:]
        if i + 1 < len(head):
            rest.insert(0, head.cut(i + 1))
        head.recs.pop(i)  # type: ignore[union-attr]  # (it was promoted above)
        rec.block = None
        rec.failures += 1
        rec.last_error = error
        out: list[Decision] = []
        self._requeue_blocks(rest)  # at the front, in their order
        if rec.failures > max(self.retries, 1) or self._draining:
            out.extend(self._end_rec(rec, w.rank, head.attempt, ok=False, error=error))
        else:
            self._requeue_rec(rec)  # in front of them: it was running
        if cuts and w.state is not W.LOST:
            out.append(Revoke(w.rank, cuts, expect_ack=False))
        return out, rec
