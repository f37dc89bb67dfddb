"""The master's event loop: probe any source, receive, feed the scheduler, carry out its decisions.

It never blocks on one worker: each chunk is a separate message, matched by probe from
whichever worker sent it and received straight into that worker's open result. Between
messages it commits (sink fsync on a helper thread, then journal fsync: group commit), ticks
the scheduler (leases, grace, patience), dispatches, reports progress, and sleeps with a
capped backoff when nothing arrives. Every decision comes from the scheduler; this loop only
carries them out.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from . import messages as M
from . import results as R
from . import signals
from . import table as T
from .errors import ChecksumError, ProtocolError
from .failures import SIGNATURE, TEXTS_KEPT, Error, ErrorLog, error_key
from .journal import Journal
from .link import LOST, Backoff, PeerLost
from .master_steps import StepsMixin
from .pipeline import ChunkPipeline
from .scheduler import (
    Decision,
    Done,
    Ended,
    Expired,
    Halt,
    Notice,
    Revoke,
    Scheduler,
    Send,
    Stop,
    StopEarly,
    WorkerState,
)
from .sinks import Meta, Sink, Target
from .sinks.table import RowsDone
from .steps import step_name
from .summary import Summary
from .tasks import block_hash
from .tasks import describe as _describe
from .trace import open_trace

log = logging.getLogger("mpigather")

HOUSEKEEPING_EVERY = 0.005  # seconds between housekeeping passes while messages flow
COMMIT_EVERY = 0.02  # seconds between group commits of a file output (each is an fsync of the output and journal)
HEARTBEAT_MAX = 1.0  # seconds between the master's heartbeat records in the journal (status reads them)
INTERRUPT_WAIT = 1.0  # seconds the master waits, after a Ctrl-C, for the workers' last results and goodbyes


@dataclass
class _Stream:
    bid: int  # the lease, and the task's index in it
    i: int
    tid: Any
    attempt: int
    header: R.Header
    target: Target | None  # None: a late duplicate, received and dropped
    plan: list[tuple[int, int, int]]
    meta: Meta
    step: Any = None  # steps.StepInfo when this is a step's output or a multi-step task's result
    index: int = 0
    crc: int = 0
    job: Any = None  # the pipeline's last job for this result


class Master(StepsMixin):
    def __init__(
        self,
        link: Any,
        scheduler: Scheduler,
        sink: Sink,
        journal: Journal | None,
        opts: Any,
        *,
        progress: Any = None,
        on_done: Callable[[Any, Meta], None] | None = None,
        on_failed: Callable[[Any, str, bytes | BaseException | None], None] | None = None,
        steps_dir: str | None = None,
        done: Any = None,
        describe: Callable[[Any], tuple[str, int]] | None = None,
    ) -> None:
        self.link, self.sched, self.sink, self.journal, self.opts = link, scheduler, sink, journal, opts
        self.progress = progress
        self.on_done, self.on_failed = on_done, on_failed
        self.summary = Summary()
        self._params = journal is not None or not sink.in_memory  # task parameters go with the result
        self.describe = describe or _describe  # a task's parameters as text, and their hash
        self._streams: dict[int, _Stream] = {}
        self._pipe = ChunkPipeline(opts.chunk_size, check=opts.checksum == "both")
        self._settling: list[tuple[int, _Stream]] = []  # received, last chunk still being checksummed
        self._committer: ThreadPoolExecutor | None = None
        self._commit_job: Future | None = None
        self._last_commit = 0.0
        self._byes: set[int] = set()
        self._signal: int | None = None
        self._interrupt: str | None = None  # why the run stops now (a Ctrl-C)
        self.wake = threading.Event()  # set by another thread with new tasks (the executor's submit)
        self.unreleased: set[int] = set()  # workers that did not leave after a Ctrl-C: the job must be aborted
        self._t = {"recv": 0.0, "write": 0.0, "wait": 0.0}
        self._last_hb_write = 0.0
        self._hb_task: dict[int, Any] = {}
        self._exc: dict[Any, bytes | BaseException] = {}  # executor: a task's last exception (pickled if remote)
        # multi-step tasks
        self.steps_dir = steps_dir  # where step outputs are stored (None: in memory)
        self.done = done  # on resume: the tasks an earlier run finished (fan-out children among them)
        self._steps_sink: Sink | None = None
        self._fan: dict[Any, dict[int, Any]] = {}  # fan-out inputs received so far, per parent
        self._parents: set[Any] = set()  # fanned-out tasks waiting for their children
        self._fan_children: dict[Any, tuple[Meta, list[str]]] = {}
        self._early_calls: dict[Any, Any] = {}  # children's stored inputs, before their fan-out is complete
        self._ckpts: dict[Any, list[str]] = {}  # stored step outputs of each unfinished task
        self._multistep = False  # a step message was seen: status shows tasks by step
        self._lost: set[int] = set()  # ranks the MPI library reported dead, not yet handled
        self._dead: set[int] = set()  # ranks handled as lost: their messages are dropped
        self._hosts: dict[int, str] = {}
        self._said_whole = False  # the log said once that rows of another shape are stored whole
        self.errors = ErrorLog()  # each distinct error once, with the tasks it ended
        self._failing: dict[Any, Error] = {}  # tasks whose failure is being decided: their error
        self.trace = open_trace(link.rank)  # MPIGATHER_TRACE: when each chunk was probed and landed (None: off)

    # -- public -------------------------------------------------------------------------

    def request_stop(self, signum: int) -> None:
        """Stop handing out work; let running tasks finish within the grace period."""
        self._signal = signum

    def interrupt(self, reason: str) -> None:
        """A Ctrl-C: stop now. What is finished is kept; running tasks are left for a resume.
        May be called from any thread."""
        if self._interrupt is None:
            self._interrupt = reason

    def run(self) -> Summary:
        t0 = time.monotonic()
        cpu0 = time.process_time()
        try:
            with _fewer_young_collections():
                self._loop()
        finally:
            if self._committer is not None:
                self._committer.shutdown(wait=True)  # a failed run: durable but not journaled, redone on resume
            self._pipe.close()
            self._t["write_thread"] = self._pipe.busy
            self.summary.wall = time.monotonic() - t0
            cpu = time.process_time() - cpu0  # all threads of the master's process
            self.summary.master = dict(self._t, peak_rss_mib=_peak_rss_mib(), cpu=cpu,
                                       cpu_pct=round(100 * cpu / max(self.summary.wall, 1e-9), 1))
            self.summary.stuck = self.sched.stuck_workers()
            self.summary.lost = self.sched.lost_workers()
            self.summary.errors = self.errors.describe()
            if self.trace is not None:
                self.trace.close()
        return self.summary

    # -- the loop -----------------------------------------------------------------------

    def _loop(self) -> None:
        back = Backoff(wake=self.wake, warm_cap=1e-4)
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
        if self.journal is not None and now - self._last_hb_write >= min(self.opts.heartbeat, HEARTBEAT_MAX):
            self._last_hb_write = now
            self._heartbeat(now)
        self.link.progress()
        if self.progress is not None:
            self.progress.update(self.sched, self.summary, now)

    def _heartbeat(self, now: float) -> None:
        table, running, queued, by_step = self.worker_table(now)
        assert self.journal is not None
        self.journal.workers(table, running, queued, self.summary.done, len(self.summary.failed), by_step)

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
            self._record(*job.result())
        steps = self._steps_sink.take_ready() if self._steps_sink is not None else None
        if not (wait or steps is not None or self.sink.in_memory or t - self._last_commit >= COMMIT_EVERY):
            return  # results keep coming: a few milliseconds more make fewer, larger commits
        self._last_commit = t
        batch = self.sink.take_ready()
        if batch is not None or steps is not None:
            if wait or self.sink.in_memory:
                self._record(*self._make_durable(batch, steps))
            else:
                if self._committer is None:
                    self._committer = ThreadPoolExecutor(1, thread_name_prefix="mpigather-commit")
                self._commit_job = self._committer.submit(self._make_durable, batch, steps)
        self._t["write"] += time.perf_counter() - t

    def _make_durable(self, batch: Any, steps: Any) -> tuple[list[tuple[Any, Meta]], list[tuple[Any, Meta]]]:
        """(On the committer thread.) Step outputs first: a result never becomes durable before
        the outputs that led to it."""
        stored = self._steps_sink.make_durable(steps) if steps is not None else []  # type: ignore[union-attr]
        return (self.sink.make_durable(batch) if batch is not None else []), stored

    def _record(self, ready: list[tuple[Any, Meta]], steps: list[tuple[Any, Meta]]) -> None:
        if steps:
            self._steps_stored(steps)
        if ready:
            self._record_done(ready)

    def _record_done(self, ready: list[tuple[Any, Meta]]) -> None:
        record_done(ready, self.journal, self.summary, self.on_done)
        if self._ckpts and not self.opts.keep_steps:
            from .sinks.base import remove_quietly

            for tid, _ in ready:  # done and journaled: its step outputs are no longer needed
                for path in self._ckpts.pop(tid, ()):
                    remove_quietly(path)

    def _post(self, msg: Any, rank: int) -> None:
        try:
            self.link.post(msg, rank, M.TASK)
        except PeerLost as e:  # (ULFM) handled once this batch of decisions is carried out
            self._lost.update(e.ranks)

    def _decide_all(self, decisions: list[Decision], now: float) -> None:
        for d in decisions:
            self._decide(d, now)

    def _decide(self, d: Decision, now: float) -> None:
        match d:
            case Send(rank, blocks):
                self._post(M.Tasks([_wire(b) for b in blocks]), rank)
            case Revoke(rank, cuts, expect_ack):
                self._post(M.Revoke(cuts, expect_ack), rank)
            case Done(_rank, _attempt, tids):
                if self._exc:
                    for tid in tids:
                        self._exc.pop(tid, None)
            case Stop(rank):
                self._post(M.Stop(), rank)
            case Halt(reason):
                log.error("%s", reason)
                self.summary.interrupted = True
            case Ended(tid, attempt, rank, ok, error):
                if ok and tid in self._parents:  # every child is done: the parent's result lists them
                    self._parents.discard(tid)
                    meta, kids = self._fan_children.pop(tid)
                    header, bufs = R.encode(kids)
                    self.sink.put(tid, header, bufs, {**meta, "rank": rank, "attempt": attempt, "duration": 0.0,
                                                      "bytes": header.nbytes, "crc32c": header.crc,
                                                      "kind": header.kind})
                    return
                if ok:
                    self._exc.pop(tid, None)
                    return
                self._parents.discard(tid)
                e = self._failing.pop(tid, None) or self._error(error_key("", error), error or "failed", tid)
                self.errors.ended(e, tid, d.seq)
                # the first failures keep their own text; later ones share their error's (bounded memory)
                self.summary.failed[tid] = (error or "failed") if len(self.summary.failed) < TEXTS_KEPT else e.text
                if self.journal is not None:
                    self.journal.failed(e.k, tid, d.seq, final=True)
                exc = self._exc.pop(tid, None)
                if self.on_failed is not None:
                    self.on_failed(tid, error or "failed", exc)
            case Expired(rank, tid, attempt, requeued):
                log.warning("task %r: lease expired on worker %d (attempt %d); %s", tid, rank, attempt,
                            "requeued" if requeued else "no retries left")
                if self.journal is not None:
                    e = self._error("lease expired", f"task {tid!r}: lease expired on worker {rank}", tid)
                    self.journal.failed(e.k, tid, final=False)
            case StopEarly(reason, failed, done, fatal):
                self._stopped_early(reason, failed, done, fatal)
            case Notice(level, text):
                (log.error if level == "error" else log.warning)("%s", text)
            case _:
                raise ProtocolError(f"unknown decision {d!r}")

    # -- messages -----------------------------------------------------------------------

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

    def _on_rows(self, src: int, rows: M.Rows, now: float) -> None:
        """Results of consecutive tasks of a lease that fit a table row: one slice of each column,
        one scheduler event. Rows past a cut the worker had not seen are not done; rows of a lease
        that is over are looked at one by one (a late result of a task retried alone still wins)."""
        self._hb_task.pop(src, None)
        n = self.sched.accept_rows(src, rows.bid, rows.start, rows.n)
        if n == 0:
            self._late_rows(src, rows, now)
            return
        if T.checksum(rows.cols) != rows.crc:
            for _k in range(n):
                b = self.sched.lease(src, rows.bid)
                if b is None:
                    break
                self._bad_checksum(src, rows.bid, b.next, b.tids[b.next], rows.attempt, rows.crc,
                                   T.checksum(rows.cols), now)
            return
        b = self.sched.lease(src, rows.bid)
        assert b is not None
        start, end = rows.start, rows.start + n
        tids = b.tids[start:end]
        dur = float(rows.durations[:n].sum())
        crc = rows.crc if n == rows.n else T.checksum([c[:n] for c in rows.cols])  # (the rows stored)
        meta: Meta = {"rank": src, "attempt": rows.attempt, "duration": dur, "crc32c": crc,
                      "bytes": T.nbytes(rows.cols) * n // max(rows.n, 1),
                      "hash": block_hash(b.hashes[start:end]) if b.hashes is not None else 0}
        t = time.perf_counter()
        try:
            stored = self.sink.put_rows(b.seq0 + start, tids, rows, meta)
            if not stored:  # another schema than the table's: each result is stored whole
                self._rows_whole(src, b, rows, n)
        finally:
            self._t["write"] += time.perf_counter() - t
        self._decide_all(self.sched.rows_done(src, rows.bid, start, n, now, dur), now)

    def _rows_whole(self, src: int, b: Any, rows: M.Rows, n: int) -> None:
        """Rows that do not fit the table (another key, dtype or shape): each stored whole."""
        if not self._said_whole:
            self._said_whole = True
            log.info("results of another shape than the table's first rows are stored whole, like large ones"
                     " (first: task %r)", rows.tid0)
        for k in range(n):
            i = rows.start + k
            value = T.values(rows.schema, rows.cols, k)
            header, bufs = R.encode(value)
            meta = self._meta(src, b, i, b.tids[i], rows.attempt, header, float(rows.durations[k]))
            self.sink.put(b.tids[i], header, bufs, meta)

    def _late_rows(self, src: int, rows: M.Rows, now: float) -> None:
        tid = rows.tid0
        if not self.sched.accept(src, rows.bid, rows.start, tid):
            self._decide_all(self.sched.discarded(src, now), now)
            return
        rec = self.sched.task(tid)
        assert rec is not None
        value = T.values(rows.schema, rows.cols, 0)
        header, bufs = R.encode(value)
        self.sink.put(tid, header, bufs, self._meta(src, None, rows.start, tid, rows.attempt, header,
                                                    float(rows.durations[0])))
        self._decide_all(self.sched.task_done(src, rows.bid, rows.start, tid, now, None, rows.attempt), now)

    def _on_trailer(self, src: int, tid: Any, crc: int, now: float) -> None:
        """The sender's crc of a streamed result, after its last chunk."""
        stream = self._streams.get(src)
        if stream is None or stream.tid != tid or stream.index != len(stream.plan):
            raise ProtocolError(f"rank {src}: trailer of {tid!r} without its complete result")
        stream.header = stream.header._replace(crc=crc)
        stream.meta["crc32c"] = crc
        self._end_stream(src, stream, now)

    def _task_failed(self, src: int, bid: int, i: int, tid: Any, attempt: int, text: str, now: float,
                     where: str = "", fatal: bool = False, duration: float | None = None) -> None:
        """A task's attempt failed: its error is found (or recorded, once); the scheduler decides
        whether the task is retried or ends failed (then ``Ended`` counts it), or the run stops."""
        b = self.sched.lease(src, bid)
        counted = b is not None or self.sched.task(tid) is not None
        e = self._error(error_key(where, text), text, tid) if counted else None
        if e is not None:
            self._failing[tid] = e
        self._decide_all(self.sched.task_failed(src, bid, i, tid, text, now, attempt, fatal, duration), now)
        if e is not None and self._failing.pop(tid, None) is not None and self.journal is not None:
            self.journal.failed(e.k, tid, b.seq0 + i if b is not None else -1, final=False)  # retried

    def _error(self, key: str, text: str, tid: Any) -> Error:
        """The distinct error with this key; journaled once, at its first failure."""
        e, new = self.errors.error(key, text, tid)
        if new and self.journal is not None:
            self.journal.error(e.k, key, text, tid)
        return e

    def _stopped_early(self, reason: str, failed: int, done: int, fatal: bool) -> None:
        """The scheduler stopped handing out work: say why, once, and how to go on."""
        cli = self.opts.interface == "cli"
        top = max(self.errors.errors, key=lambda x: x.count, default=None)
        if fatal:
            top = next((e for e in self.errors.errors if e.key == SIGNATURE), top)
        last = top.text.strip().splitlines()[-1] if top is not None and top.text.strip() else "?"
        if fatal:
            why = f"{reason} (the error above)"
            log.error("stopping early: %s: %s", reason, last)
        else:
            flag = f"--max-failures {self.sched.max_failures}" if cli else \
                f"max_failures={str(self.sched.max_failures)!r}"
            why = f"{reason} ({flag})"
            log.error("stopping early: %s; the most frequent error, %d time(s): %s; no new tasks, running ones"
                      " get %.0f s to finish", why, top.count if top else 0, last, self.opts.grace)
        self.summary.stopped_early = why
        self.summary.stopped_hint = (f"fix the cause, then run the same command with {self.opts.flag('resume')}:"
                                     " it runs the failed tasks and the ones not run"
                                     + ("" if fatal else
                                        f"; {'--max-failures none' if cli else 'max_failures=' + repr('none')}"
                                        " runs every task whatever fails"))

    def _meta(self, src: int, b: Any, i: int, tid: Any, attempt: int, header: R.Header, duration: float,
              step: Any = None) -> Meta:
        """What is recorded with a result: who ran it, its size, its checksum, its position in the
        task list and its parameters (``b``: its live lease, else a late winner's record)."""
        meta: Meta = {"rank": src, "attempt": attempt, "duration": duration, "bytes": header.nbytes,
                      "crc32c": header.crc, "kind": header.kind}
        if b is not None:
            seq, payload, h = b.seq0 + i, b.payloads[i], (b.hashes[i] if b.hashes is not None else None)
        else:
            rec = self.sched.task(tid)
            seq, payload, h = (rec.seq, rec.payload, rec.hash) if rec is not None else (-1, None, None)
        meta["seq"] = seq
        if self._params and not (step is not None and step.child is not None and payload is None):
            meta["params"], meta["hash"] = self.describe(payload)
            if h is not None:
                meta["hash"] = h
        if step is not None:
            meta["step"], meta["tid"], meta["ran"] = step, tid, step.ran
        return meta

    def _on_result(self, src: int, item: M.Item, now: float) -> None:
        """One result (or step output) of a batch, stored whole."""
        bid, i, tid, attempt, header, duration, inline, path, step = item
        self._hb_task.pop(src, None)
        streamed = inline is None and path is None
        if step is not None and step.n:  # a later step of a multi-step task: its output, or the task's result
            self._multistep = True
            accept = self.sched.step_begin(src, bid, i, tid, step.n, now, streamed=streamed)
        elif step is not None:  # the first step's output
            self._multistep = True
            accept = self.sched.step_begin(src, bid, i, tid, 0, now, streamed=streamed)
        elif streamed:
            accept = self.sched.begin_stream(src, bid, i, tid, now)
        else:
            accept = self.sched.accept(src, bid, i, tid)
        checkpoint = step is not None and step.next is not None
        sink = self._steps() if checkpoint else self.sink
        key = self._ckpt_key(tid, step) if checkpoint else tid
        meta = self._meta(src, self.sched.lease(src, bid), i, tid, attempt, header, duration, step) if accept else {}
        if streamed:  # chunks follow
            target = sink.open(key, header, meta) if accept else None
            stream = _Stream(bid, i, tid, attempt, header, target, R.chunk_plan(header, self.opts.chunk_size), meta,
                             step)
            if self.trace is not None:
                self.trace.event("announce", tid, len(stream.plan), header.nbytes, t=now)
            self._streams[src] = stream
            if not stream.plan:
                self._end_stream(src, stream, now)
            return
        if not accept:  # a late duplicate: the task ended already, or that lease is over
            self._decide_all(self.sched.discarded(src, now), now)
            if path is not None:
                from .sinks.base import remove_quietly

                remove_quietly(path)
            return
        t = time.perf_counter()
        try:
            if path is not None:
                sink.adopt(key, header, path, meta)
            else:
                bufs = inline or []
                crc = R.checksum(bufs)
                if crc != header.crc:
                    self._bad_checksum(src, bid, i, tid, attempt, header.crc or 0, crc, now)
                    return
                sink.put(key, header, bufs, meta)
        except _ValueErrors as e:  # the value cannot be rebuilt here (memory sink): that task fails
            self._rebuild_failed(src, bid, i, tid, attempt, e, now)
            return
        finally:
            self._t["write"] += time.perf_counter() - t
        self._stored(src, bid, i, tid, attempt, duration, step, now)

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
            dt = time.perf_counter() - t
            self._t["recv"] += dt
            if self.trace is not None:
                self.trace.event("probe", stream.tid, stream.index, n, t=now)
                self.trace.event("landed", stream.tid, stream.index, n, dt)
            self._pipe.absorb(stream, part, off, buf, slot)
        stream.index += 1
        if stream.index == len(stream.plan):
            self._end_stream(src, stream, now)

    def _end_stream(self, src: int, stream: _Stream, now: float) -> None:
        """All chunks are in; the result is checked once its trailer (the sender's crc) is here too."""
        if stream.header.crc is None:
            return  # wait for the trailer
        del self._streams[src]
        self.sched.transfer_done(src)  # the worker may announce its next result now
        if stream.target is None:
            return
        if stream.job is not None and not stream.job.done():
            # the helper thread still checksums (and writes) the last chunk: finish it at the next
            # pass, and receive the next result meanwhile
            self._settling.append((src, stream))
            return
        self._complete(src, stream, now)

    def _settle_from(self, src: int, now: float) -> None:
        """Finish ``src``'s results still being checksummed before its next message is handled, so
        that what a worker sends is handled in order (a step's output before the next step's)."""
        mine = [(s, st) for s, st in self._settling if s == src]
        if mine:
            self._settling = [(s, st) for s, st in self._settling if s != src]
            for s, st in mine:
                self._complete(s, st, now)

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
        if self._pipe.check and stream.crc != want:
            target.discard()
            self._bad_checksum(src, stream.bid, stream.i, stream.tid, stream.attempt, want, stream.crc, now)
            return
        try:
            target.finish()
        except _ValueErrors as e:
            target.discard()
            self._rebuild_failed(src, stream.bid, stream.i, stream.tid, stream.attempt, e, now)
            return
        if self.trace is not None:
            self.trace.event("stored", stream.tid, len(stream.plan), stream.header.nbytes)
        self._stored(src, stream.bid, stream.i, stream.tid, stream.attempt, stream.meta["duration"], stream.step, now)

    def _rebuild_failed(self, src: int, bid: int, i: int, tid: Any, attempt: int, e: BaseException,
                        now: float) -> None:
        if self.on_failed is not None:  # the executor hands the error itself to the future, traceback and all
            self._exc[tid] = e
        self._task_failed(src, bid, i, tid, attempt, _value_error(tid, src, e), now)

    def _bad_checksum(self, src: int, bid: int, i: int, tid: Any, attempt: int, want: int, got: int,
                      now: float) -> None:
        err = str(ChecksumError(f"task {tid!r} from rank {src}: checksum {got:#010x} != sent {want:#010x}"))
        log.error(err)
        self._task_failed(src, bid, i, tid, attempt, err, now)

    def _on_lost(self, ranks: list[int], now: float) -> None:
        """The MPI library reports dead processes (ULFM): what they held goes to the others."""
        self._lost.difference_update(ranks)
        for rank in ranks:
            w = self.sched.workers().get(rank)
            if w is None or w.state is WorkerState.LOST:
                continue
            self._dead.add(rank)
            host = self._hosts.get(rank, "?")
            log.error("worker %d (host %s) is lost: its process died; its tasks go to the other workers", rank, host)
            self.summary.workers.setdefault(rank, {"host": host, "lost": True, "tasks": 0})
            stream = self._streams.pop(rank, None)
            if stream is not None and stream.target is not None:
                self._pipe.settle(stream)
                stream.target.discard()
            self._settling = [(s, st) for s, st in self._settling if s != rank]
            self._hb_task.pop(rank, None)
            self._decide_all(self.sched.worker_lost(rank, now), now)

    # -- ending -------------------------------------------------------------------------

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
        gone = lambda: self._byes | set(self.sched.lost_workers())  # noqa: E731
        for rank in set(range(1, self.link.size)) - gone():
            self._post(M.Abort(reason, interrupted=True), rank)
        end = now + INTERRUPT_WAIT
        back = Backoff()
        while set(range(1, self.link.size)) - gone() and time.monotonic() < end:
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
        for src, stream in self._settling:  # checksummed by now, or soon
            self._complete(src, stream, time.monotonic())
        self._settling.clear()
        self._commit(wait=True)
        self.sink_discard_open()
        self.unreleased = set(range(1, self.link.size)) - gone()
        if self.unreleased:
            log.error("worker(s) %s did not leave after the interrupt", sorted(self.unreleased))
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

    def worker_table(self, now: float) -> tuple[dict[int, dict[str, Any]], int, int, dict[str, list[int]]]:
        """Each worker's state, queue length and last-seen age; how many tasks run and wait; and
        for multi-step tasks, how many run and wait at each step ({step: [running, queued]})."""
        out = {}
        running = queued = 0
        by_step: dict[str, list[int]] = {}
        for rank, w in self.sched.workers().items():
            held = w.held
            head = w.queue[0] if w.queue else None
            if held and w.state is WorkerState.OK:
                running += 1
                queued += held - 1
                if self._multistep:
                    for k, b in enumerate(w.queue):
                        for j in range(b.next, len(b)):
                            rec = b.rec(j)
                            name = step_name(rec.call.func) if rec is not None and rec.call is not None else "task"
                            by_step.setdefault(name, [0, 0])[0 if (k == 0 and j == b.next) else 1] += 1
            elif w.state is WorkerState.SUSPECT and w.stuck is not None:
                running += 1
            task = head.tids[head.next] if head is not None and head.next < len(head) else None
            out[rank] = {"state": str(w.state), "queued": max(held - 1, 0), "seen_ago": round(now - w.last_seen, 3),
                         "task": self._hb_task.get(rank, task)}
        return out, running, queued, by_step


_ValueErrors = (Exception,)  # what rebuilding or storing one value may raise without the run failing


def _value_error(tid: Any, src: int, e: BaseException) -> str:
    return (f"task {tid!r} (from rank {src}): its result could not be rebuilt on the master:"
            f" {type(e).__name__}: {e}")


def record_done(ready: list[Any], journal: Journal | None, summary: Summary,
                on_done: Callable[[Any, Meta], None] | None) -> None:
    """Results that the sink made durable (``(id, meta)`` of whole ones, ``RowsDone`` of rows):
    journal them as done (one record of each kind, one fsync), count them."""
    if not ready:
        return
    whole = [x for x in ready if type(x) is not RowsDone]
    rows = [x for x in ready if type(x) is RowsDone] if len(whole) < len(ready) else []
    if journal is not None:
        journal.done(whole)
        journal.rows(rows)
        journal.commit()
    for r in rows:
        summary.done += r.n
        summary.bytes += r.nbytes
    for tid, meta in whole:
        summary.done += 1
        summary.bytes += meta["bytes"]
        if on_done is not None:
            on_done(tid, meta)


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


def _peak_rss_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def _wire(b: Any) -> M.Block:
    """A scheduler block as it goes to the worker: a task resuming at a later step carries its call."""
    calls = None
    if b.recs:
        calls = [r.call if (r := b.recs.get(k)) is not None else None for k in range(len(b.tids))]
        if not any(c is not None for c in calls):
            calls = None
    return M.Block(b.bid, b.attempt, b.tids, b.payloads, calls)


__all__ = ["Master", "record_done", "release_workers"]


@contextlib.contextmanager
def _fewer_young_collections(threshold: int = 50_000) -> Any:
    """Each small result allocates a few objects the garbage collector tracks (its meta dict, the
    message's tuples), so Python's default threshold (700) runs a young collection every hundred
    or so results: 10-15% of a busy master's time with tiny results (make bench, case 2). Raise
    it while the master runs, then put back what was there (left alone if the program turned the
    collector off or changed the threshold meanwhile)."""
    old = gc.get_threshold()
    raise_it = gc.isenabled() and 0 < old[0] < threshold
    if raise_it:
        gc.set_threshold(threshold, *old[1:])
    try:
        yield
    finally:
        if raise_it and gc.get_threshold()[0] == threshold:
            gc.set_threshold(*old)
