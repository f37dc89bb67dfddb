"""The helper thread (``mpigather-worker-helper``): while the main thread runs tasks it receives
(new tasks into the queue, revokes answered at once, stop and abort), sends heartbeats during
long tasks, and flushes batched results older than the flush age. It polls with a capped
backoff (``_helper``: the one place it waits). Where the MPI library allows no second thread,
the main thread calls ``_receive_all`` between tasks instead.
"""

from __future__ import annotations

import time
from typing import Any

from .. import messages as M
from ..link import LOST, Backoff
from .base import Base
from .queue import _Local


class HelperMixin(Base):
    """Part of ``Worker``: receiving, heartbeats and aged flushes."""

    def _helper(self) -> None:
        """Receive, heartbeat and flush while the main thread runs tasks."""
        back = Backoff(cap=min(1e-3, self._flush_age), warm_cap=1e-4)
        last_hb = time.monotonic()
        try:
            while not self._done.is_set():
                if self._threaded and self._receive_all():
                    back.reset()
                    continue
                now = time.monotonic()
                if self._pending and now - self._pending_since > self._flush_age:
                    with self._send_lock:
                        if self._pending and now - self._pending_since > self._flush_age:
                            self._flush_locked()
                self.link.progress()
                cur = self._current
                if cur is not None and now - last_hb >= self.opts.heartbeat:
                    last_hb = now
                    self._send(M.Heartbeat(cur[0], now - cur[1]))
                back.sleep()
        except BaseException as e:  # the link broke: let the main thread see it
            self._helper_error = e
            with self._cond:
                self.stopping = True
                self._cond.notify()

    def _receive_all(self) -> bool:
        got = False
        while True:
            inc = self.link.poll(0)
            if inc is None:
                return got
            if inc.tag == LOST:  # (ULFM) the master's process died: nobody is left to work for
                self._handle(M.Abort("the master's process died"))
                return True
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
