"""Ending: a Ctrl-C (``_stop_now``: every worker told to leave at once, their last results kept
for at most ``INTERRUPT_WAIT`` seconds), an abort (``abort``: every worker released, results in
transfer dropped), and ``release_workers``, which drains what workers still send until each
says goodbye, so that no rank is left blocked in a send.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import messages as M
from ..errors import ProtocolError
from ..link import LOST, Backoff, PeerLost
from ..pipeline import ChunkPipeline
from .base import Base

log = logging.getLogger("mpigather")

INTERRUPT_WAIT = 1.0  # seconds the master waits, after a Ctrl-C, for the workers' last results and goodbyes
INTERRUPT_PER_WORKER = 1e-4  # and this much more per worker: 10,000 goodbyes take about 0.5-1 s to read


def ranks_text(ranks: set[int] | list[int], limit: int = 10) -> str:
    """Ranks for a log line: the first ``limit``, then how many more (never ten thousand numbers)."""
    shown = sorted(ranks)
    text = ", ".join(map(str, shown[:limit]))
    return text + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


class ShutdownMixin(Base):
    """Part of ``Master``: Ctrl-C, abort, and the results left open then."""

    def _stop_now(self) -> None:
        """A Ctrl-C (here, or forwarded to a worker): no new work; every worker is told to leave
        at once. What they finished and send on their way out is still stored, for at most
        INTERRUPT_WAIT seconds; then every result received is made durable. Running tasks are
        not done: a resume runs them again. Workers still there then are in ``unreleased``."""
        reason = self._interrupt or "interrupted"
        log.warning("%s: stopping now; finished results are kept", reason)
        self.summary.interrupted = self.summary.ctrl_c = True
        now = time.monotonic()
        self._decide_all(self.sched.drain(now), now)
        # the workers still to say goodbye, kept up to date per message (a set difference per
        # message made 10,000 goodbyes cost seconds, and the wait ran out with none released)
        left = set(range(1, self.link.size)) - self._byes - set(self.sched.lost_workers())
        for rank in left:
            self._post(M.Abort(reason, interrupted=True), rank)
        # the wait counts from the last abort posted (posting 10,000 of them on a busy machine
        # once used up the whole wait, and none of the goodbyes already there was read), and
        # goes on while goodbyes keep coming (INTERRUPT_WAIT after the last), up to 4 times as long
        t0 = time.monotonic()
        wait = INTERRUPT_WAIT + INTERRUPT_PER_WORKER * len(left)
        end, hard = t0 + wait, t0 + 4 * wait
        back = Backoff()
        while left and time.monotonic() < end:
            inc = self.link.poll()
            if inc is None:
                self.link.progress()
                back.sleep()
                continue
            back.reset()
            try:
                self._on_message(inc, time.monotonic())
            except (PeerLost, ProtocolError) as e:  # a half-sent result of a worker that left: dropped
                log.debug("after the interrupt: %s", e)
            if inc.source in self._byes:
                left.discard(inc.source)
                end = min(hard, max(end, time.monotonic() + INTERRUPT_WAIT))
            if inc.tag == LOST:
                left -= set(self.sched.lost_workers())
        for src, stream in self._settling:  # checksummed by now, or soon
            self._complete(src, stream, time.monotonic())
        self._settling.clear()
        self._commit(wait=True)
        self.sink_discard_open()
        self.unreleased = left - self._byes - set(self.sched.lost_workers())
        if self.unreleased:
            log.error("worker(s) %s did not leave after the interrupt", ranks_text(self.unreleased))
        self.link.flush(timeout=0.2)

    def abort(self, reason: str) -> None:
        """Release every worker now (they raise MasterFailed) and drop the results in transfer."""
        release_workers(self.link, reason, set(range(1, self.link.size)) - self._byes
                        - set(self.sched.lost_workers()), self._pipe)
        self.sink_discard_open()

    def sink_discard_open(self) -> None:
        for stream in [*self._streams.values(), *(st for _, st in self._settling)]:
            if stream.target is not None:
                try:
                    self._pipe.settle(stream)
                except Exception:  # the run is being abandoned; the partial result goes anyway
                    pass
                stream.target.discard()
        self._streams.clear()
        self._settling.clear()


def release_workers(link: Any, reason: str, ranks: set[int], pipe: ChunkPipeline | None = None,
                    timeout: float = 30.0) -> bool:
    """Tell these workers to stop at once, and drain whatever they still send until each says
    goodbye, so that no rank is left blocked in a send. False if some did not answer in time."""
    for rank in ranks:
        link.post(M.Abort(reason), rank, M.TASK)
    pipe = pipe or ChunkPipeline(1 << 20)
    left = set(ranks)
    end = time.monotonic() + timeout
    back = Backoff()
    while left and time.monotonic() < end:
        inc = link.poll()
        if inc is None:
            link.progress()
            back.sleep()
            continue
        back.reset()
        if inc.tag == M.DATA:
            inc.into(pipe.scratch(inc.count)[0])
        elif inc.tag == LOST:
            left -= set(inc.obj())
        elif isinstance(inc.obj(), M.Bye):
            left.discard(inc.source)
    link.flush(timeout=max(0.0, end - time.monotonic()))
    return not left
