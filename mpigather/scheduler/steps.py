"""Multi-step tasks and kinds of workers: a task moves from step to step, on the worker that ran
the last one or, once the step's input is stored, on any worker of the kind the step needs;
a fan-out's parent ends when all its children have. A step no worker can run fails at once."""

from __future__ import annotations

from typing import Any

from ..errors import ProtocolError
from .base import Base
from .decisions import Decision
from .types import TaskId, TaskRec


class StepsMixin(Base):
    """Part of ``Scheduler``: steps and kinds (its state lives in ``Scheduler.__init__``)."""

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
