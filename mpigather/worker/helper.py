"""The helper thread (``mpigather-worker-helper``): while the main thread runs tasks it receives
(new tasks into the queue, revokes answered at once, stop and abort), sends heartbeats during
long tasks, and flushes batched results older than the flush age. It polls with a capped
backoff (``_helper``: the one place it waits), napping up to ``HELPER_NAP`` unless the main
thread runs out of tasks. Where the MPI library allows no second thread,
the main thread calls ``_receive_all`` between tasks instead.
"""

from __future__ import annotations

import time
from typing import Any

from .. import messages as M
from ..link import LOST, Backoff, crowd
from .base import HELPER_NAP, HUNGRY_NAP, HUNGRY_QUICK, LONG_NAP, LONG_SHARE, POSTED_NAP, TASK_NAP_START, Base
from .queue import _Local


class HelperMixin(Base):
    """Part of ``Worker``: receiving, heartbeats and aged flushes."""

    def _helper(self) -> None:
        """Receive, heartbeat and flush while the main thread runs tasks.

        It sleeps as long as nothing needs it: up to ``HELPER_NAP`` (a revoke or an abort is seen
        within it), and while a task has run for t seconds up to t x ``LONG_SHARE`` (at most
        ``LONG_NAP``: a worker whose task sleeps 3 s woke 60 times in it), less when something
        is due sooner (an aged batch of results, a heartbeat, a posted send still in flight).
        When the main thread runs out of tasks it sets ``_hungry``, which ends the nap at once:
        the next tasks are received with the low latency of quick polls, and the polls stay at
        most ``HUNGRY_NAP`` (times the square root of ``crowd()``) apart while it waits (for
        ``HUNGRY_QUICK`` at most: idle workers at the end of a run then nap again).
        (Polling every millisecond cost 7% of a core per worker whose task sleeps, and 128 such
        workers starved a 2-core node.)"""
        # with more ranks than cores, the quick polls after a wake are ``crowd()`` times fewer:
        # the polls of all the ranks on a node then cost what one rank per core would. A hungry
        # worker's polls are spaced by its square root only, since the next task (or the stop at
        # a run's end) waits for them: at 128 ranks on 2 cores, 16 ms apart
        scale = crowd()
        back = Backoff(cap=LONG_NAP, spins=5, wake=self._hungry, scale=scale)
        hungry_nap = min(HELPER_NAP, HUNGRY_NAP * scale ** 0.5)
        last_hb = time.monotonic()
        beat = self.opts.heartbeat
        try:
            while not self._done.is_set():
                if self._threaded and self._receive_all():
                    continue  # (no quicker polls for it: the main thread says when it needs them)
                now = time.monotonic()
                due = HELPER_NAP
                if self._pending:
                    age = now - self._pending_since
                    if age > self._flush_age:
                        with self._send_lock:
                            if self._pending and now - self._pending_since > self._flush_age:
                                self._flush_locked()
                    else:
                        due = self._flush_age - age
                if self.link.progress():
                    due = min(due, POSTED_NAP)
                hungry = self._hungry_since
                if hungry is not None and now - hungry < HUNGRY_QUICK:
                    due = min(due, hungry_nap)  # the main thread waits for its next task
                cur = self._current
                if cur is not None:
                    if due == HELPER_NAP:  # nothing else is due: a long task, long naps
                        due = min(LONG_NAP, max(HELPER_NAP, (now - cur[1]) * LONG_SHARE))
                        back.at_least(due * TASK_NAP_START)
                    if now - last_hb >= beat:
                        last_hb = now
                        self._send(M.Heartbeat(cur[0], time.perf_counter() - cur[1]))
                    due = min(due, last_hb + beat - now)
                back.sleep(limit=due)
        except BaseException as e:  # the link broke: let the main thread see it
            self._helper_error = e
            with self._cond:
                self.stopping = True
                self._cond.notify()

    def _receive_all(self) -> bool:
        """Receive and handle every message waiting; True if there was one. Either thread may
        call it: one at a time, so that messages are handled in the order they were sent."""
        got = False
        with self._recv_lock:
            while True:
                inc = self.link.poll(0)
                if inc is None:
                    return got
                if inc.tag == LOST:  # (ULFM) the master's process died: nobody is left to work for
                    self._handle(M.Abort("the master's process died"))
                    return True
                if inc.tag == M.RELEASE:  # the master closed the run while this worker was stuck in a task
                    inc.into(bytearray(1))
                    self.link.released = True
                    continue
                self._handle(inc.obj())
                got = True

    def _handle(self, msg: Any) -> None:
        match msg:
            case M.Tasks(blocks):
                with self._cond:
                    self.queue.extend(_Local(b) for b in blocks)
                    self._waiting += sum(len(b.tids) for b in blocks)
                    self._cond.notify()
            case M.Revoke(cuts, ack):
                answer = self._revoke(cuts)
                if ack:
                    with self._send_lock:
                        self._flush_locked()  # results first: the master must see them before the ack
                        self.link.send(M.Revoked(answer), 0, M.CTRL)
            case M.Stop():
                with self._cond:
                    self.stopping = True
                    self._cond.notify()
            case M.Abort(reason, interrupted):
                with self._cond:
                    self.aborted = reason
                    self.interrupted = interrupted
                    self.queue.clear()
                    self._waiting = 0
                    self.stopping = True
                    self._cond.notify()
            case _:
                raise TypeError(f"unexpected message from the master: {msg!r}")
