"""The loop: poll any source, hand each message to its room, keep house between messages,
and wait with a capped backoff when nothing arrives (``_idle``: the one place the master sleeps).

Between messages it commits (``commit``), ticks the scheduler (leases, grace, patience),
dispatches, writes the heartbeat record that ``status`` reads, and reports progress.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import messages as M
from .. import signals
from ..errors import ProtocolError
from ..link import LOST, Backoff, PeerLost
from .base import Base
from .workers import heartbeat

log = logging.getLogger("mpigather")

HOUSEKEEPING_EVERY = 0.005  # seconds between housekeeping passes while messages flow
HEARTBEAT_MAX = 1.0  # seconds between the master's heartbeat records in the journal (status reads them)
HEARTBEAT_SHARE = 0.02  # ... or more, so that writing them takes at most this share of the master's time


# while results come far apart (tasks of 0.1 s and more), a run's master polls at this share of
# the gap between them, at most SLOW_CAP apart: its workers hold their next tasks, so nothing
# waits on it but the commit (an executor's master keeps polling every 2 ms: a caller waits on
# each result)
SLOW_SHARE = 0.05
SLOW_CAP = 0.02


class LoopMixin(Base):
    """Part of ``Master``: the event loop and the dispatch of messages."""

    def _loop(self) -> None:
        slow = self.on_done is None
        back = Backoff(wake=self.wake, warm_cap=1e-4, learn=True, slow_share=SLOW_SHARE if slow else 0.0,
                       slow_cap=SLOW_CAP)
        last_house = 0.0
        while True:
            inc = self.link.poll()
            now = time.monotonic()
            if inc is not None:
                back.reset()
                try:
                    self._on_message(inc, now)
                except PeerLost as e:  # (ULFM) the sender died while its message was being read
                    self._lost.update(e.ranks)
                if self._lost:
                    self._on_lost(sorted(self._lost), now)
                if self.on_done is not None and self.sink.in_memory:
                    self._commit()  # (the executor) a caller waits on these results: deliver them now
                if now - last_house < HOUSEKEEPING_EVERY:
                    if self.sched.hungry():  # a worker ran low: refill it now, not at the next pass
                        self._decide_all(self.sched.dispatch(now), now)
                    continue
            elif not back.woken and now - last_house < HOUSEKEEPING_EVERY:
                # nothing new: finish what the pipeline checked and poll again; the rest of a
                # pass waits for its time (a pass on every empty poll was ~9,000 passes for
                # 1,024 results of 1 MiB, and 10% of a core while two workers computed 0.2 s
                # tasks). A wake (an executor's new tasks) gets its pass at once.
                self._complete_settled(now)
                if self.sched.hungry():
                    self._decide_all(self.sched.dispatch(now), now)
                self._idle(back)
                continue
            self._housekeeping(now)
            if self._lost:
                self._on_lost(sorted(self._lost), now)
            last_house = time.monotonic()  # from the end of the pass: a long pass must not run back to back
            if self.summary.crash is not None:
                self.abort(self.summary.crash)
                return
            if self._interrupt is not None:
                self._stop_now()
                return
            if self.sched.over:
                self._commit(wait=True)
                for rank in self.sched.stuck_workers():  # should it ever come back, it finds its stop
                    self.link.post(M.Stop(), rank, M.TASK)
                return
            if inc is None:
                self._idle(back)

    def _idle(self, back: Backoff) -> None:
        """Nothing arrived: wait with the capped backoff (cut short by ``wake``, an executor's new
        tasks), and count the time waited."""
        t = time.perf_counter()
        # never a sleep while a large result is on its way: its next chunk is posted or about to be
        slept = back.sleep(busy=bool(self._streams))
        self._t["wait"] += time.perf_counter() - t
        if self.trace is not None and slept and self._streams:
            self.trace.event("sleep", nbytes=len(self._streams), seconds=slept)

    def _housekeeping(self, now: float) -> None:
        self._complete_settled(now)
        self._commit()
        if self._signal is None:
            self._signal = signals.stop_requested()
        if self._interrupt is None and signals.sigint_seen():
            self._interrupt = "interrupted (Ctrl-C)"
        if self._signal is not None and not self.sched.draining:
            log.warning("signal %d: no new tasks; running ones get %.0f s to finish", self._signal, self.opts.grace)
            self.summary.interrupted = True
            self._decide_all(self.sched.drain(now, self.opts.grace), now)
        self._decide_all(self.sched.tick(now), now)
        self._decide_all(self.sched.dispatch(now), now)
        if self.journal is not None and now - self._last_hb_write >= self._hb_every:
            self._last_hb_write = now
            t = time.perf_counter()
            self._heartbeat(now)
            # one pass over the workers each: 20 ms at 10,000 of them, so at 100,000 every 10 s
            self._hb_every = max(min(self.opts.heartbeat, HEARTBEAT_MAX), (time.perf_counter() - t) / HEARTBEAT_SHARE)
        self.link.progress()
        if self.progress is not None:
            self.progress.update(self.sched, self.summary, now)

    def _heartbeat(self, now: float) -> None:
        part, running, queued, by_step = heartbeat(self.sched, self._hb_task, self._multistep, now)
        assert self.journal is not None
        self.journal.workers(part, running, queued, self.summary.done, len(self.summary.failed), by_step)

    def _on_message(self, inc: Any, now: float) -> None:
        src = inc.source
        if src in self._dead:  # (ULFM) what a lost worker sent before it died: read and dropped
            if inc.tag == M.DATA:
                inc.into(self._pipe.scratch(inc.count)[0])
            elif inc.tag != LOST:
                inc.obj()
            return
        if inc.tag == M.DATA:
            self._on_chunk(inc, now)
            return
        if inc.tag == LOST:
            self._on_lost(inc.obj(), now)
            return
        if inc.tag != M.CTRL:
            raise ProtocolError(f"unexpected tag {inc.tag} from rank {src}")
        if self._settling:
            self._settle_from(src, now)
        match inc.obj():
            case M.Results(items):
                self._on_results(src, items, now)
            case M.Trailer(tid, crc):
                self._on_trailer(src, tid, crc, now)
            case M.Heartbeat(tid, _seconds):
                self.sched.seen(src, now)
                self._hb_task[src] = tid
            case M.Hello(host, _pid, kinds):
                self._hosts[src] = host
                self._decide_all(self.sched.worker_ready(src, now, kinds), now)
            case M.Revoked(cuts):
                self._decide_all(self.sched.revoked(src, cuts, now), now)
            case M.Log(level, text):
                log.log(level, "[rank %d] %s", src, text)
            case M.Interrupted():
                self.interrupt(f"worker {src} was interrupted (Ctrl-C)")
            case M.Crash(text):
                log.error("%s", text.rstrip())
                self.summary.crash = text.strip().splitlines()[-1] if text.strip() else "a worker failed"
            case M.Bye(stats):
                self._byes.add(src)
                self.summary.add_worker(src, stats)
                self._decide_all(self.sched.worker_stopped(src), now)
            case msg:
                raise ProtocolError(f"unknown message {msg!r} from rank {src}")

    def _on_results(self, src: int, items: list[Any], now: float) -> None:
        """A batch, in the order things happened on the worker: rows (one event for the lot),
        results, failures, and notices of steps that went on there."""
        for item in items:
            match item:
                case M.Rows():
                    self._on_rows(src, item, now)
                case M.Item():
                    self._on_result(src, item, now)
                case M.Failed(bid, i, tid, attempt, text, dt, exc, _step, where, fatal):
                    self._hb_task.pop(src, None)
                    if exc is not None:
                        self._exc[tid] = exc
                    self._task_failed(src, bid, i, tid, attempt, text, now, where, fatal, dt)
                case M.Step(bid, i, tid, attempt, info, duration):
                    self._on_step(src, bid, i, tid, attempt, info, duration, now)
                case _:
                    raise ProtocolError(f"unknown item {item!r} from rank {src}")
