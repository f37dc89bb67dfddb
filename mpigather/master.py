"""The master's event loop: probe any source, receive, feed the scheduler, carry out its decisions.

It never blocks on one worker: each chunk is a separate message, matched by probe from
whichever worker sent it and received straight into that worker's open result. Between
messages it commits (sink fsync, then journal fsync: group commit), expires leases,
dispatches, reports progress, and sleeps with a capped backoff when nothing arrives.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import messages as M
from . import results as R
from .errors import ChecksumError, ProtocolError
from .journal import Journal
from .journal import now as wall_now
from .pipeline import ChunkPipeline
from .scheduler import Ended, Expired, Notice, Revoke, Scheduler, Send, Stop
from .sinks import MemorySink, Sink, Target
from .summary import INTERRUPTED, Summary
from .transport import Backoff

log = logging.getLogger("mpigather")

class _StopRequest:
    """A process-wide record of SIGTERM/SIGUSR1, set by handlers the CLI installs at start-up,
    so that a signal arriving before or after the master's loop is not lost or fatal."""

    signum: int | None = None
    installed = False


STOP = _StopRequest()


def install_stop_handlers(master: bool) -> None:
    """CLI start-up: the master records the signal (its loop then drains); workers ignore it."""
    def handler(signum: int, _frame: Any) -> None:
        if master:
            STOP.signum = signum

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, handler)
    STOP.installed = True


@dataclass
class _Stream:
    tid: Any
    attempt: int
    header: R.Header
    target: Target | None  # None: a late duplicate, received and dropped
    plan: list[tuple[int, int, int]]
    meta: dict[str, Any]
    index: int = 0
    crc: int = 0
    job: Any = None  # the pipeline's last job for this result


class Master:
    def __init__(
        self,
        link: Any,
        scheduler: Scheduler,
        sink: Sink,
        journal: Journal | None,
        opts: Any,
        *,
        progress: Any = None,
        on_done: Callable[[Any, dict[str, Any]], None] | None = None,
        on_failed: Callable[[Any, str, bytes | None], None] | None = None,
    ) -> None:
        self.link, self.sched, self.sink, self.journal, self.opts = link, scheduler, sink, journal, opts
        self.progress = progress
        self.on_done, self.on_failed = on_done, on_failed
        self.summary = Summary()
        self._streams: dict[int, _Stream] = {}
        self._pipe = ChunkPipeline(opts.chunk_size)
        self._settling: list[tuple[int, _Stream]] = []  # received, last chunk still being checksummed
        self._committer: ThreadPoolExecutor | None = None
        self._commit_job: Future | None = None
        self._info: dict[int, tuple[str, int]] = {}
        self._byes: set[int] = set()
        self._signal: int | None = None
        self._t = {"recv": 0.0, "write": 0.0, "wait": 0.0}
        self._last_hb_write = 0.0
        self._hb_task: dict[int, Any] = {}
        self._exc: dict[Any, bytes] = {}  # executor: the pickled exception of a task's last failure

    # -- public -------------------------------------------------------------------------

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop handing out work; let running tasks finish within the grace period."""
        self._signal = signum

    def run(self) -> Summary:
        t0 = time.monotonic()
        cpu0 = time.process_time()
        old = self._install_signals()
        try:
            self._loop()
        finally:
            if self._committer is not None:
                self._committer.shutdown(wait=True)  # a failed run: durable but not journaled, redone on resume
            self._pipe.close()
            self._t["write_thread"] = self._pipe.busy
            self._restore_signals(old)
            self.summary.wall = time.monotonic() - t0
            cpu = time.process_time() - cpu0  # all threads of the master's process
            self.summary.master = dict(self._t, peak_rss_mib=_peak_rss_mib(), cpu=cpu,
                                       cpu_pct=round(100 * cpu / max(self.summary.wall, 1e-9), 1))
        return self.summary

    # -- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        back = Backoff()
        last_house = 0.0
        while True:
            inc = self.link.poll()
            now = time.monotonic()
            if inc is not None:
                back.reset()
                self._on_message(inc, now)
                if now - last_house < 0.005:
                    continue
            self._housekeeping(now)
            last_house = time.monotonic()  # from the end of the pass: a long pass must not run back to back
            if self.summary.usage_error is not None:
                self.abort(self.summary.usage_error)
                return
            if self.sched.over:
                self._commit(wait=True)
                return
            if inc is None:
                t = time.perf_counter()
                back.sleep()
                self._t["wait"] += time.perf_counter() - t

    def _housekeeping(self, now: float) -> None:
        self._complete_settled(now)
        self._commit()
        if self._signal is None and STOP.signum is not None:
            self._signal = STOP.signum
        if self._signal is not None and not self.sched.draining:
            log.warning("signal %d: no new tasks; running ones get %.0f s to finish", self._signal, self.opts.grace)
            self.summary.interrupted = True
            self._decide_all(self.sched.drain(now, self.opts.grace), now)
        self._decide_all(self.sched.tick(now), now)
        self._decide_all(self.sched.dispatch(now), now)
        if self.journal is not None and now - self._last_hb_write >= min(self.opts.heartbeat, 5.0):
            self._last_hb_write = now
            self.journal.write({"ev": "workers", "time": round(wall_now(), 3), "table": self.worker_table(now)})
        self.link.progress()
        if self.progress is not None:
            self.progress.update(self.sched, self.summary, now)

    def _decide_all(self, decisions: list, now: float) -> None:
        for d in decisions:
            self._decide(d, now)

    def _commit(self, wait: bool = False) -> None:
        """Group commit: make the finished results durable, then journal them as done.

        File sinks fsync on a helper thread, so the disk works while the next results arrive;
        the journal lines are written only once that fsync returned. ``wait``: finish everything now.
        """
        t = time.perf_counter()
        job = self._commit_job
        if job is not None:
            if not job.done() and not wait:
                return
            self._commit_job = None
            self._journal_done(job.result())
        batch = self.sink.take_ready()
        if batch is not None:
            if wait or isinstance(self.sink, MemorySink):
                self._journal_done(self.sink.make_durable(batch))
            else:
                if self._committer is None:
                    self._committer = ThreadPoolExecutor(1, thread_name_prefix="mpigather-commit")
                self._commit_job = self._committer.submit(self.sink.make_durable, batch)
        self._t["write"] += time.perf_counter() - t

    def _journal_done(self, ready: list[tuple[Any, dict[str, Any]]]) -> None:
        record_done(ready, self.journal, self.summary, self.on_done)

    def _decide(self, d: Any, now: float) -> None:
        if isinstance(d, Send):
            self.link.post((M.TASKS, d.tasks), d.rank)
            if self.journal is not None:
                self.journal.write({"ev": "dispatch", "rank": d.rank, "ids": [t[0] for t in d.tasks]})
        elif isinstance(d, Revoke):
            self.link.post((M.REVOKE, d.tids, d.expect_ack), d.rank)
        elif isinstance(d, Stop):
            self.link.post((M.STOP,), d.rank)
        elif isinstance(d, Ended):
            if not d.ok:
                self.summary.failed[d.tid] = d.error or "failed"
                if self.journal is not None:
                    self.journal.write({"ev": "failed", "id": d.tid, "att": d.attempt, "rank": d.rank,
                                        "error": d.error, "final": True})
                exc = self._exc.pop(d.tid, None)
                if self.on_failed is not None:
                    self.on_failed(d.tid, d.error or "failed", exc)
            else:
                self._exc.pop(d.tid, None)
        elif isinstance(d, Notice):
            (log.error if d.level == "error" else log.warning)("%s", d.text)
        elif isinstance(d, Expired):
            log.warning("task %r: lease expired on worker %d (attempt %d); %s", d.tid, d.rank, d.attempt,
                        "requeued" if d.requeued else "no retries left")
            if self.journal is not None:
                self.journal.write({"ev": "failed", "id": d.tid, "att": d.attempt, "rank": d.rank,
                                    "error": "lease expired", "final": False})

    # -- messages -----------------------------------------------------------------------

    def _on_message(self, inc: Any, now: float) -> None:
        src = inc.source
        if inc.tag == M.DATA:
            self._on_chunk(inc, now)
            return
        if inc.tag != M.CTRL:
            raise ProtocolError(f"unexpected tag {inc.tag} from rank {src}")
        msg = inc.obj()
        kind = msg[0]
        if kind == M.RESULTS:
            for item in msg[1]:
                self._on_result(src, item, now)
        elif kind == M.FAILED:
            _, tid, attempt, text, cause, _dt, exc = msg
            if cause == "unsupported":
                self.summary.usage_error = text
                return
            if exc is not None:
                self._exc[tid] = exc
            if self.journal is not None:
                self.journal.write({"ev": "failed", "id": tid, "att": attempt, "rank": src, "error": text,
                                    "final": False})
            for d in self.sched.task_failed(src, tid, attempt, text, now):
                self._decide(d, now)
        elif kind == M.TRAILER:
            stream = self._streams.get(src)
            if stream is None or stream.tid != msg[1] or stream.index != len(stream.plan):
                raise ProtocolError(f"rank {src}: trailer of {msg[1]!r} without its complete result")
            stream.header = stream.header._replace(crc=msg[2])
            stream.meta["crc32c"] = msg[2]
            self._end_stream(src, stream, now)
        elif kind == M.HEARTBEAT:
            self.sched.seen(src, now)
            self._hb_task[src] = msg[1]
        elif kind == M.HELLO:
            self._info[src] = (msg[1], msg[2])
            self._decide_all(self.sched.worker_ready(src, now), now)
        elif kind == M.REVOKED:
            self.sched.revoked(src, msg[1], now)
        elif kind == M.LOG:
            log.log(msg[1], "[rank %d] %s", src, msg[2])
        elif kind == M.BYE:
            self._byes.add(src)
            self.summary.workers[src] = msg[1]
            self.sched.worker_stopped(src)
        else:
            raise ProtocolError(f"unknown message {kind!r} from rank {src}")

    def _on_result(self, src: int, item: tuple, now: float) -> None:
        tid, attempt, header, duration, inline, path = item
        self._hb_task.pop(src, None)
        meta = {"rank": src, "attempt": attempt, "duration": duration, "bytes": header.nbytes, "crc32c": header.crc}
        if inline is None and path is None:  # chunks follow
            accept = self.sched.result_begin(src, tid, attempt, now)
            target = self.sink.open(tid, header, meta) if accept else None
            stream = _Stream(tid, attempt, header, target, R.chunk_plan(header, self.opts.chunk_size), meta)
            self._streams[src] = stream
            if not stream.plan:
                self._end_stream(src, stream, now)
            return
        if not self.sched.is_active(tid):  # a late duplicate: the task ended already
            self.sched.discarded(src, tid, now)
            if path is not None:
                _remove_quietly(path)
            return
        if path is not None:
            meta["path"] = path
            self.sink.adopt(tid, header, path, meta)
        else:
            crc = R.checksum(inline)
            if crc != header.crc:
                self._bad_checksum(src, tid, attempt, header.crc, crc, now)
                return
            t = time.perf_counter()
            self.sink.put(tid, header, inline, meta)
            self._t["write"] += time.perf_counter() - t
        for d in self.sched.task_done(src, tid, attempt, now, duration):
            self._decide(d, now)

    def _on_chunk(self, inc: Any, now: float) -> None:
        src = inc.source
        stream = self._streams.get(src)
        if stream is None:
            raise ProtocolError(f"rank {src} sent data with no open result")
        part, off, n = stream.plan[stream.index]
        if inc.count != n:
            raise ProtocolError(f"rank {src}, task {stream.tid!r}: chunk of {inc.count} bytes, expected {n}")
        if stream.target is None:  # a late duplicate: receive and drop
            inc.into(self._pipe.scratch(n)[0])
        else:
            direct = stream.target.buffer(part, off, n)
            slot = None
            if direct is None:
                buf, slot = self._pipe.scratch(n)
            else:
                buf = direct
            t = time.perf_counter()
            inc.into(buf)
            self._t["recv"] += time.perf_counter() - t
            self._pipe.absorb(stream, part, off, buf, slot)
        stream.index += 1
        if stream.index == len(stream.plan):
            self._end_stream(src, stream, now)

    def _end_stream(self, src: int, stream: _Stream, now: float) -> None:
        """All chunks are in; the result is checked once its trailer (the sender's crc) is here too."""
        if stream.header.crc is None:
            return  # wait for the trailer
        del self._streams[src]
        self.sched.transfer_done(src, stream.tid)  # the worker may announce its next result now
        if stream.target is None:
            return
        if stream.job is not None and not stream.job.done():
            # the helper thread still checksums (and writes) the last chunk: finish it at the next
            # pass, and receive the next result meanwhile
            self._settling.append((src, stream))
            return
        self._complete(src, stream, now)

    def _complete_settled(self, now: float) -> None:
        if self._settling:
            waiting = []
            for src, stream in self._settling:
                if stream.job.done():
                    self._complete(src, stream, now)
                else:
                    waiting.append((src, stream))
            self._settling = waiting

    def _complete(self, src: int, stream: _Stream, now: float) -> None:
        """Every byte of the result is checksummed and written: check it and store it."""
        target, want = stream.target, stream.header.crc
        assert target is not None and want is not None
        t = time.perf_counter()
        self._pipe.settle(stream)
        self._t["write"] += time.perf_counter() - t
        if stream.crc != want:
            target.discard()
            self._bad_checksum(src, stream.tid, stream.attempt, want, stream.crc, now)
            return
        target.finish()
        for d in self.sched.task_done(src, stream.tid, stream.attempt, now, stream.meta["duration"]):
            self._decide(d, now)

    def _bad_checksum(self, src: int, tid: Any, attempt: int, want: int, got: int, now: float) -> None:
        err = str(ChecksumError(f"task {tid!r} from rank {src}: checksum {got:#010x} != sent {want:#010x}"))
        log.error(err)
        for d in self.sched.task_failed(src, tid, attempt, err, now):
            self._decide(d, now)

    # -- ending -------------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Release every worker now (they raise MasterFailed) and drop the results in transfer."""
        release_workers(self.link, reason, set(range(1, self.link.size)) - self._byes, self._pipe)
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

    def _install_signals(self) -> dict[int, Any]:
        old: dict[int, Any] = {}
        if STOP.installed or threading.current_thread() is not threading.main_thread():
            return old
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                old[sig] = signal.signal(sig, lambda s, _f: self.request_stop(s))
            except (ValueError, OSError):
                pass
        return old

    @staticmethod
    def _restore_signals(old: dict[int, Any]) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    def worker_table(self, now: float) -> dict[int, dict[str, Any]]:
        """Each worker's state, queue length and last-seen age, for status records."""
        out = {}
        for rank, w in self.sched.workers().items():
            out[rank] = {"state": w.state, "queued": len(w.queue), "seen_ago": round(now - w.last_seen, 3),
                         "task": self._hb_task.get(rank)}
        return out


def record_done(ready: list[tuple[Any, dict[str, Any]]], journal: Journal | None, summary: Summary,
                on_done: Callable[[Any, dict[str, Any]], None] | None) -> None:
    """Results that ``sink.commit`` made durable: journal them as done (one fsync), count them."""
    for tid, meta in ready:
        if journal is not None:
            journal.done(tid, meta["attempt"], meta["rank"], meta["bytes"], meta["crc32c"], meta["duration"],
                         meta.get("path"))
        summary.done += 1
        summary.bytes += meta["bytes"]
        if on_done is not None:
            on_done(tid, meta)
    if journal is not None:
        journal.commit()


def release_workers(link: Any, reason: str, ranks: set[int], pipe: ChunkPipeline | None = None,
                    timeout: float = 30.0) -> bool:
    """Tell these workers to stop at once, and drain whatever they still send until each says
    goodbye, so that no rank is left blocked in a send. False if some did not answer in time."""
    for rank in ranks:
        link.post((M.ABORT, reason), rank)
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
        elif inc.obj()[0] == M.BYE:
            left.discard(inc.source)
    return not left


def _peak_rss_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _remove_quietly(path: str) -> None:
    import os
    import shutil

    try:
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except OSError:
        pass


__all__ = ["INTERRUPTED", "Master", "Summary", "release_workers"]
