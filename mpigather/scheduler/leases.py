"""Leases: the deadline of each worker's running task, and what happens when it passes.

A worker runs its queue in FIFO order, so the head of its queue is the task it runs, and
only the head's lease has a running deadline (a heap of deadlines, stale entries skipped).
A transfer in progress from a worker proves it alive and holds its lease over.
"""

from __future__ import annotations

import heapq
import math

from .base import Base
from .decisions import Decision, Expired, Revoke
from .types import TaskRec, W, WorkerRec

STREAM_RECHECK = 1.0  # a lease that ends during a transfer from its worker is looked at again this much later


class LeasesMixin(Base):
    """Part of ``Scheduler``: deadlines (its state lives in ``Scheduler.__init__``)."""

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

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
