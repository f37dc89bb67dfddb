"""The local queue: leased blocks of tasks, run in order (``_next_task``, which waits on the
queue's condition while the helper thread receives, or receives itself where it cannot), and
revokes: the master takes back the tasks of a block that have not started.
"""

from __future__ import annotations

import time
from collections import deque

from .. import messages as M
from ..link import Backoff, crowd
from .base import HELPER_NAP, Base


class _Local:
    """A leased block as the worker holds it: it runs tasks ``[next, end)`` in order."""

    __slots__ = ("bid", "attempt", "tids", "payloads", "calls", "next", "end")

    def __init__(self, blk: M.Block) -> None:
        self.bid, self.attempt, self.tids, self.payloads, self.calls = blk
        self.next, self.end = 0, len(blk.tids)


class QueueMixin(Base):
    """Part of ``Worker``: the queue of leased blocks (under ``_cond``)."""

    def _take(self) -> tuple[_Local, int] | None:
        """(Under the lock.) The next task of the queue, now started."""
        q = self.queue
        while q:
            b = q[0]
            if b.next < b.end:
                i = b.next
                b.next += 1
                self._waiting -= 1
                return b, i
            q.popleft()
        return None

    def _next_task(self) -> tuple[_Local, int] | None:
        """The next task to run, waiting for one; None once stopped and the queue is empty."""
        with self._cond:  # the common case, a task waiting here: no clock, no backoff
            task = self._take()
            if task is not None:
                return task
        if self._threaded and self._receive_all():  # the next tasks are usually here already:
            with self._cond:  # take them without waiting for the helper's next poll
                task = self._take()
                if task is not None:
                    return task
        t0 = time.perf_counter()
        back = Backoff(cap=HELPER_NAP / 2, scale=crowd())
        hungry = False
        try:
            while True:
                with self._cond:
                    task = self._take()
                    if task is not None:
                        return task
                    if self.stopping:
                        return None
                    if self._threaded:
                        if not hungry:  # once per wait: each set restarts the helper's quick polls
                            hungry = True
                            self._hungry_since = time.monotonic()
                            self._hungry.set()
                        self._cond.wait(HELPER_NAP)
                        continue
                if self._pending:
                    self.flush()
                self.link.progress()
                if not self._receive_all():
                    back.sleep()
        finally:
            self._hungry_since = None
            self.stats["idle"] += time.perf_counter() - t0

    def _revoke(self, cuts: list[tuple[int, int]]) -> list[tuple[int, int | None]]:
        """Drop, of each lease, the tasks from that index on that have not started; returns where
        each was cut (None: nothing of it was dropped)."""
        answer: list[tuple[int, int | None]] = []
        with self._cond:
            where = {b.bid: b for b in self.queue}
            for bid, k in cuts:
                b = where.get(bid)
                k = max(k, b.next) if b is not None else k
                if b is None or k >= b.end:
                    answer.append((bid, None))
                    continue
                self._waiting -= b.end - k
                b.end = k
                answer.append((bid, k))
            if any(b.next >= b.end for b in self.queue):
                self.queue = deque(b for b in self.queue if b.next < b.end)
        return answer
