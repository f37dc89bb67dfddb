"""The task queue: reading the source lazily, requeued tasks, prefetch, batching and stealing."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..errors import ProtocolError
from .base import Base
from .decisions import Decision, Revoke, Send, Stop
from .types import WAIT, TaskId, TaskRec, W, WorkerRec


class QueueMixin(Base):
    """Part of ``Scheduler``: what goes to which worker (its state lives in ``Scheduler.__init__``)."""

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
