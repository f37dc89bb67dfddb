"""Leaving: the goodbye (``Bye``, with this worker's time accounting and spans), leaving on a
Ctrl-C (finished results first, never a long wait), and a crash outside any task (tell the
master, then wait at most ``ABORT_WAIT`` seconds for it to let this worker go).
"""

from __future__ import annotations

import os
import threading
import time
import traceback

from .. import messages as M
from ..link import Backoff
from .base import Base

ABORT_WAIT = 30.0  # seconds a crashed worker waits for the master to let it go
INTERRUPT_WAIT = 1.0  # seconds a worker stopped by Ctrl-C waits for its last messages to go


class LeaveMixin(Base):
    """Part of ``Worker``: the goodbye, the Ctrl-C and the crash."""

    def _stop_helper(self, helper: threading.Thread | None) -> None:
        self._done.set()
        self._hungry.set()  # ends its nap
        if helper is not None and helper.is_alive():
            helper.join()

    def _bye(self, start: float, timeout: float = 30.0) -> None:
        wall = time.perf_counter() - start
        self.stats["wall"] = wall
        self.stats["host"] = self.link.host
        self.stats.update(self._spans.export(start, self.link.size - 1))  # spans, failed, profile
        self._send(M.Bye(self.stats))
        self.link.flush(timeout)  # what was posted before Bye is complete before MPI goes away

    def _leave_interrupted(self, start: float) -> None:
        """A Ctrl-C here (mpiexec sends it to every rank): the finished results go first, so that
        the master keeps them, then why this worker leaves, then its goodbye; never a long wait."""
        try:
            self.flush()
            self._send(M.Interrupted())
            self._bye(start, INTERRUPT_WAIT)
        except Exception:  # the link is gone too: the KeyboardInterrupt goes up as it is
            pass

    def _crash(self, exc: BaseException) -> None:
        """An error outside any task (the initializer, the link, a bug): tell the master, which
        ends the run, and wait until it lets this worker go, so no rank is left hanging."""
        text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            self._send(M.Crash(f"worker {self.link.rank} (host {self.link.host}, pid {os.getpid()}) failed:\n{text}"))
            if self.stopping:  # told to stop or abort already: the master waits for the goodbye
                self._send(M.Bye(self.stats))
                return
            end = time.monotonic() + ABORT_WAIT
            back = Backoff()
            while time.monotonic() < end:
                inc = self.link.poll(0)
                if inc is None:
                    back.sleep()
                    continue
                msg = inc.obj()
                if isinstance(msg, (M.Abort, M.Stop)):
                    self._send(M.Bye(self.stats))
                    return
        except Exception:  # the link is broken too: the caller's error goes up as it is
            pass
