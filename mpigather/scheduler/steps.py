"""Multi-step tasks and kinds of workers: a task moves from step to step, on the worker that ran
the last one or, once the step's input is stored, on any worker of the kind the step needs;
a fan-out's parent ends when all its children have. A step no worker can run fails at once."""

from __future__ import annotations

from typing import Any

from ..errors import ProtocolError
from .base import Base
from .decisions import Decision
from .types import Block, TaskId, TaskRec, WorkerRec


class StepsMixin(Base):
    """Part of ``Scheduler``: steps and kinds (its state lives in ``Scheduler.__init__``)."""

    def step_begin(self, rank: int, bid: int, i: int, tid: TaskId, n: int, now: float,
                   streamed: bool = False) -> bool:
        """A message about step ``n`` of task ``i`` of lease ``bid`` arrived (``streamed``: its
        output follows in chunks). False: drop it, it belongs to a lease that is over."""
        w = self._worker(rank)
        w.last_seen = now
        b = self._leases.get(bid)
        if b is None or b.rank != rank:
            if tid not in self._recs:
                self._report_in(w)
            return False
        if i != b.next:
            raise ProtocolError(f"worker {rank} reported task {i} of lease {bid}, expected task {b.next}")
        rec = b.rec(i)
        if (rec.step if rec is not None else 0) != n:
            return False
        if streamed:
            if w.streaming:
                raise ProtocolError(f"worker {rank} began step {n} of {tid!r} while another result is open")
            w.streaming = True  # a transfer in progress suspends the lease of that worker
        return True

    def step_done(self, rank: int, bid: int, i: int, n: int, next_step: int, needs: str | None,
                  timeout: float | None, continuing: bool, now: float, stored: bool = True) -> list[Decision]:
        """Step ``n`` finished; step ``next_step`` (n + 1) runs on ``rank`` (``continuing``) or, once
        its input is stored (``step_stored``), on any worker of the kind it ``needs``. ``stored``:
        its input is on its way to storage (else it lives only in the worker's memory)."""
        w = self._worker(rank)
        w.streaming = False
        b = self._leases[bid]
        rec = b.rec(i) or self._promote(b, i)
        rec.step, rec.needs, rec.failures = next_step, needs, 0
        rec.input_coming = stored
        rec.tried = {rank} if continuing else set()  # a new step: retries prefer others afresh
        rec.timeout = timeout if timeout is not None else self.timeout
        if continuing:
            if w.queue and w.queue[0] is b and b.next == i:
                w.head_since = now
                self._arm(w)  # the step's own lease, from now
            return []
        rec.waiting = True  # the worker left it: it waits for its input to be stored
        self._leave(w, b, i, rec, now)
        return []

    def step_stored(self, tid: TaskId, call: Any) -> list[Decision]:
        """The input of step ``call.n`` is durable: a failure from here on re-runs that step."""
        rec = self._recs.get(tid)
        if rec is None or (rec.call is not None and rec.call.n >= call.n):
            return []
        rec.call = call
        if rec.step == call.n:
            rec.input_coming = False
            if rec.waiting:
                rec.waiting = False
                self._requeue_rec(rec)
        return []

    def fanout(self, rank: int, bid: int, i: int, n: int, children: list[tuple[Any, int, Any, Any]],
               now: float) -> list[Decision]:
        """Step ``n`` of task ``i`` of lease ``bid`` split it into ``children`` (id, step, needs,
        timeout): each a task of its own, run once its input is stored; the task ends when they
        all have."""
        w = self._worker(rank)
        w.streaming = False
        b = self._leases[bid]
        rec = b.rec(i) or self._promote(b, i)
        self._leave(w, b, i, rec, now)
        rec.step, rec.children_left = n + 1, len(children)
        if not children:  # (a resumed run: every child was done before)
            return self._end_rec(rec, rank, rec.attempts, ok=True, error=None)
        for cid, step, needs, timeout in children:
            if cid in self._recs:
                raise ProtocolError(f"task id {cid!r} of a fan-out of {rec.tid!r} is already a task")
            self._recs[cid] = TaskRec(cid, None, rec.seq, timeout=timeout if timeout is not None else self.timeout,
                                      step=step, needs=needs, waiting=True, parent=rec.tid)
        return []

    def _leave(self, w: WorkerRec, b: Block, i: int, rec: TaskRec, now: float) -> None:
        """The running task ``i`` of ``b`` leaves its block, not ended (its next step runs elsewhere)."""
        self._report_in(w)
        b.recs.pop(i, None)  # type: ignore[union-attr]  # (it has a record)
        rec.block = None
        self._advance(w, b, 1, now)

    def _child_ended(self, child: TaskRec, ok: bool, error: str | None) -> list[Decision]:
        parent = self._recs.get(child.parent)
        if parent is None:
            return []
        parent.children_left -= 1
        if not ok and parent.child_failed is None:
            parent.child_failed = f"child {child.tid!r} failed: {error}"
        if parent.children_left:
            return []
        return self._end_rec(parent, -1, parent.attempts, ok=parent.child_failed is None, error=parent.child_failed)

    def _fail_unrunnable(self) -> list[Decision]:
        """Steps that need a kind of worker none of the workers is: they fail at once, not hang."""
        self._needs_check = False
        out: list[Decision] = []
        for b in list(self._requeued):
            rec = b.rec(0) if len(b) == 1 else None
            if rec is None or rec.needs is None or self._kinds.get(rec.needs):
                continue
            self._requeued.remove(b)
            rec.block = None
            kinds = sorted(k for k, n in self._kinds.items() if n) or ["none"]
            out.extend(self._end_rec(rec, -1, rec.attempts, ok=False,
                                     error=f"step {rec.step} needs a worker of kind {rec.needs!r}, and no worker is"
                                           f" (the workers' kinds: {', '.join(kinds)}; declare them with"
                                           " MPIGATHER_KINDS or --kinds)"))
        return out
