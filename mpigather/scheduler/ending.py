"""The run's end: a drain (a signal: nothing new is handed out, what is not started is taken
back), giving up (no healthy worker left: every unfinished task fails) and abandoning what
still runs when a drain's grace period is over."""

from __future__ import annotations

from collections import deque

from .base import Base
from .decisions import Decision, Ended, Revoke
from .types import W


class EndingMixin(Base):
    """Part of ``Scheduler``: ``drain``, ``give_up`` and ``abandon_running``."""

    def drain(self, now: float = 0.0, grace: float | None = None) -> list[Decision]:
        """Stop handing out work (a signal asked us to stop): revoke everything not yet started.

        Tasks already running may finish within ``grace`` seconds; then ``tick`` abandons
        them. Tasks never started stay not done, for ``--resume``. A healthy worker answers
        the revoke with where it cut (``revoked``): a task it began before the revoke reached
        it runs to its end and is stored.
        """
        if self._draining:
            return []
        self._draining = True
        if grace is not None:
            self._grace_end = now + grace
        out: list[Decision] = []
        for w in self._workers.values():
            if not w.queue:
                continue
            head = w.queue[0]
            cuts = [(head.bid, head.next + 1)] if head.next + 1 < len(head) else []
            cuts += [(b.bid, b.next) for b in list(w.queue)[1:]]
            if not cuts:
                continue
            if w.state is W.OK:
                # the worker may have started more than this master has heard of (a result on
                # its way, the next task begun): it cuts where it is and says where, and until
                # then its leases stand, so what it finishes is stored, not run again on resume
                self._asking(w, True)
                self._stop_cuts.update(cuts)
                out.append(Revoke(w.rank, cuts, expect_ack=True))
                continue
            for b in list(w.queue)[1:]:
                self._leases.pop(b.bid, None)
                self._forget(b)
            if head.next + 1 < len(head):
                self._forget(head.cut(head.next + 1))
            w.queue = deque([head])
            w.held = head.left
            self._queue_changed(w)
        for b in self._requeued:
            self._forget(b)
        self._requeued.clear()
        for rec in [r for r in self._recs.values() if r.block is None]:  # waiting for a step's input or children
            del self._recs[rec.tid]
        self._source = None
        return out

    def give_up(self, reason: str) -> list[Decision]:
        """End every unfinished task as failed (no healthy worker is left to run them)."""
        out: list[Decision] = []
        blocks = [b for w in self._workers.values() for b in w.queue] + list(self._requeued)
        for w in self._workers.values():
            w.queue.clear()
            w.held = 0
            self._queue_changed(w)
        self._leases.clear()
        self._requeued.clear()
        for b in blocks:
            for i in range(b.next, len(b)):
                rec = b.rec(i)
                if rec is not None:
                    out.extend(self._end_rec(rec, b.rank if b.rank is not None else -1, b.attempt, ok=False,
                                             error=reason))
                else:
                    self.n_failed += 1
                    out.append(Ended(b.tids[i], b.attempt, b.rank if b.rank is not None else -1, False, reason,
                                     b.seq0 + i))
        for rec in list(self._recs.values()):
            if not rec.ended:
                out.extend(self._end_rec(rec, -1, rec.attempts, ok=False, error=reason))
        self._source = None
        return out

    def abandon_running(self) -> int:
        """At the end of the grace period: forget the tasks still running (they are not done).
        Returns how many there were."""
        # a worker asked to cut its queue that has not answered runs one task, as far as we know
        left = sum(min(w.held, 1) if w.revoking else w.held for w in self._workers.values())
        left += sum(b.left for b in self._requeued)
        left += sum(1 for r in self._recs.values() if r.block is None)
        for w in self._workers.values():
            w.queue.clear()
            w.held = 0
            self._queue_changed(w)
        self._leases.clear()
        self._recs.clear()
        self._requeued.clear()
        self._draining = True
        self._source = None
        return left
