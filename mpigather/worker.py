"""The worker loop: take tasks from the master, call the function, send back results.

``recv -> call -> send``, with a local FIFO of leased blocks of tasks, so that the next task
is already here when one ends. Results that fit a table row (numbers, short strings, small
arrays, dicts of these) are gathered into columns, many tasks to one ``Rows`` item; other
small results are batched into the same message; large ones go as a header followed by raw
chunks. An exception in the task (any ``BaseException``) never escapes: it goes back to the
master with the rank, host and traceback.

Two threads share the work. The main thread runs tasks and sends their results. A helper
thread owns receiving: it queues new tasks, answers the master's revokes at once (so a task
queued here moves to an idle worker even while this one computes), sends heartbeats during
long tasks, and flushes batched results that would otherwise wait behind a long task. Where
the MPI library allows no second thread (below ``MPI_THREAD_SERIALIZED``), the main thread
does the receiving between tasks instead, and the worker says what is lost.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import messages as M
from . import results as R
from . import signals, steps
from . import table as T
from .config import Options
from .errors import MasterFailed, UnsupportedResultError
from .failures import SIGNATURE
from .link import LOST, Backoff
from .trace import open_trace
from .workerstats import SpanLog

log = logging.getLogger("mpigather")

FLUSH_BYTES = 1 << 20  # a batch of small results is sent once it holds this many bytes
POSTED_MAX = 4  # batches of results posted to the master and not yet taken, before the worker waits
ABORT_WAIT = 30.0  # seconds a crashed worker waits for the master to let it go
INTERRUPT_WAIT = 1.0  # seconds a worker stopped by Ctrl-C waits for its last messages to go
SPANS_KEPT = 5000  # per-task spans sent to the master for the timeline
FULL_TRACEBACKS = 3  # failures of one error (type and place) sent with their whole traceback, per worker


@dataclass(frozen=True)
class WorkerInfo:
    """Where the current task runs: ``mpigather.current_worker()`` inside a task."""

    rank: int  # in the run's communicator (0 is the master)
    size: int
    host: str
    pid: int
    kinds: tuple[str, ...] = ()


_current: WorkerInfo | None = None


def current_worker() -> WorkerInfo | None:
    """The worker running the current task (None outside a task function)."""
    return _current


class _LogForwarder(logging.Handler):
    """Sends a worker's warnings and errors to the master's log."""

    def __init__(self, send: Callable[[Any], None]) -> None:
        super().__init__(logging.WARNING)
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send(M.Log(record.levelno, self.format(record)))
        except Exception:  # never let logging break the worker
            pass


class _Local:
    """A leased block as the worker holds it: it runs tasks ``[next, end)`` in order."""

    __slots__ = ("bid", "attempt", "tids", "payloads", "calls", "next", "end")

    def __init__(self, blk: M.Block) -> None:
        self.bid, self.attempt, self.tids, self.payloads, self.calls = blk
        self.next, self.end = 0, len(blk.tids)


class _RowsAcc:
    """Consecutive results of one block that fit one table schema (and their parameters one
    schema, or none), gathered until the batch is sent."""

    __slots__ = ("bid", "start", "tid0", "attempt", "rows", "params", "durations", "match", "pmatch", "next")

    def __init__(self, bid: int, start: int, tid0: Any, attempt: int, schema: Any, pschema: Any) -> None:
        self.bid, self.start, self.tid0, self.attempt = bid, start, tid0, attempt
        self.rows = T.RowsBuilder(schema)
        self.params = T.RowsBuilder(pschema) if pschema is not None else None
        self.durations: list[float] = []
        self.match = T.matcher(schema)
        self.pmatch = T.matcher(pschema) if pschema is not None else None
        self.next = start  # the index of the task whose row would come next

    def message(self) -> M.Rows:
        cols = self.rows.columns()
        p = self.params
        return M.Rows(self.bid, self.start, self.rows.n, self.tid0, self.attempt, self.rows.schema, cols,
                      T.checksum(cols), np.array(self.durations, dtype=np.float32),
                      None if p is None else p.schema, None if p is None else p.columns())


def params_of(tid: Any, payload: Any) -> Any:
    """What a task's parameters are, for the table: a dict's keys but its id; another value as
    ``task`` unless it is the id itself (a range)."""
    if type(payload) is dict:
        return {k: v for k, v in payload.items() if k != "id"} if "id" in payload else payload
    return None if payload == tid else {"task": payload}


class Worker:
    def __init__(self, link: Any, func: Callable[[Any], Any], opts: Options, out: str | None, *,
                 send_exceptions: bool = False, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = (), kinds: tuple[str, ...] = (), keep_params: bool = True,
                 decode: str | None = None) -> None:
        self.link, self.func, self.opts = link, func, opts
        self.out = out
        self.send_exceptions = send_exceptions  # the executor re-raises the task's own exception
        self.keep_params = keep_params  # send each row's parameters as columns too
        self.decode = decode  # "json": a payload that is text is a line of a task file, parsed here
        self.initializer, self.initargs = initializer, initargs
        self.kinds = kinds or tuple(k.strip() for k in opts.kinds.split(",") if k.strip())
        self.writer: Any = None  # direct mode: opened at the first result
        self.queue: deque[_Local] = deque()
        self._waiting = 0  # tasks in the queue not started yet
        self.stopping = False
        self.aborted: str | None = None
        self.interrupted = False  # the master stopped the run on a Ctrl-C: leave with KeyboardInterrupt
        self._cond = threading.Condition()  # guards queue (and its blocks' ends), stopping, aborted
        self._send_lock = threading.Lock()  # one sender at a time, so results precede revoke acks
        self._pending: list[Any] = []  # Item, Failed, Step and _RowsAcc, in the order they happened
        self._rows: _RowsAcc | None = None  # the last of them, while rows may still be added to it
        self._pending_bytes = 0
        self._pending_since = 0.0
        # completed small results wait at most this long, so the master refills the queue in time
        self._flush_age = opts.batch_window / 2
        self._current: tuple[Any, float] | None = None
        self._done = threading.Event()
        self._task_name = steps.step_name(steps.func_ref(func)) if _named(func) else "task"
        self._threaded = bool(getattr(link, "threads_ok", True))
        self.stats: dict[str, Any] = {"compute": 0.0, "send": 0.0, "idle": 0.0, "tasks": 0, "bytes": 0}
        self._spans = SpanLog(SPANS_KEPT)  # the last spans, and every one in a profile of busy time
        self._fits: dict[Any, str | None] = {}  # the task function's signature against tasks of each shape
        self._seen: dict[str, tuple[Any, int]] = {}  # errors raised here: the first task, how many times
        self._plain = False  # func(task) was found to fit: later tasks skip the check
        self.trace = open_trace(link.rank)  # MPIGATHER_TRACE: each chunk's post time (None: off)

    # -- sending ------------------------------------------------------------------------

    def _send(self, msg: Any) -> None:
        with self._send_lock:
            self.link.send(msg, 0, M.CTRL)

    def _flush_locked(self) -> None:
        if self._pending:
            if self.writer is not None:
                self.writer.flush()  # direct mode: durable before the master hears of it
            items = [x.message() if type(x) is _RowsAcc else x for x in self._pending]
            self._pending, self._pending_bytes, self._rows = [], 0, None
            # posted, not waited for: the worker goes on computing while the master takes it
            # (MPI keeps messages to one destination in order; a few may be in flight)
            self.link.post(M.Results(items), 0, M.CTRL, limit=POSTED_MAX)

    def flush(self) -> None:
        with self._send_lock:
            self._flush_locked()

    def _queue_locked(self, item: Any, nbytes: int) -> None:
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(item)
        self._pending_bytes += nbytes

    def _maybe_flush_locked(self, duration: float) -> None:
        """Send the batch when the worker has nothing more to run here, when a long task ends (the
        master must not wait for the next one), when it is large, or when it is old."""
        if (self._waiting <= 0 or duration > self._flush_age or self._pending_bytes > FLUSH_BYTES
                or time.monotonic() - self._pending_since > self._flush_age):
            self._flush_locked()

    def _row(self, blk: _Local, i: int, value: Any, dt: float) -> bool:
        """Add a result to the rows of its block, if it fits a table row. False: it does not.
        (Under the send lock: the helper thread may send the rows gathered so far at any time.)"""
        tid = blk.tids[i]
        params = params_of(tid, blk.payloads[i]) if self.keep_params else None
        with self._send_lock:
            acc = self._rows
            if acc is not None and acc.next == i and acc.bid == blk.bid:
                leaves = acc.match(value)
                if acc.pmatch is not None:
                    pleaves = acc.pmatch(params) if params is not None else None
                    fits = pleaves is not None
                else:  # rows without parameter columns take only rows whose parameters cannot be columns
                    pleaves = None
                    fits = params is None or T.schema_of(params) is None
                if leaves is not None and fits:
                    acc.rows.rows.append(leaves)
                    if pleaves is not None:
                        acc.params.rows.append(pleaves)  # type: ignore[union-attr]
                    acc.durations.append(dt)
                    acc.next = i + 1
                    self._pending_bytes += 16 * len(leaves)
                    self._maybe_flush_locked(dt)
                    return True
        schema = T.schema_of(value)
        if schema is None:
            return False
        pschema = T.schema_of(params) if params is not None else None
        acc = _RowsAcc(blk.bid, i, tid, blk.attempt, schema, pschema)
        acc.rows.add(T.leaves_of(value, schema))  # type: ignore[arg-type]
        if acc.params is not None:
            acc.params.add(T.leaves_of(params, pschema))  # type: ignore[arg-type]
        acc.durations.append(dt)
        acc.next = i + 1
        with self._send_lock:
            self._queue_locked(acc, 16 * len(schema[1]))
            self._rows = acc
            self._maybe_flush_locked(dt)
        return True

    def _deliver(self, blk: _Local, i: int, header: R.Header, bufs: list[Any], duration: float,
                 step: Any = None) -> None:
        """Queue or send one result (or a step's output); large ones stream their chunks right away."""
        t0 = time.perf_counter()
        tid, attempt = blk.tids[i], blk.attempt
        path = None
        checkpoint = step is not None and step.next is not None  # goes to the master, whatever the mode
        direct = self.opts.mode == "direct" and self.out is not None and not checkpoint
        if direct or header.nbytes <= self.opts.inline_max:
            header = header._replace(crc=R.checksum(bufs))
        if direct and self.out is not None:
            if self.writer is None:
                from .sinks import open_writer

                self.writer = open_writer(self.out, self.link.rank)
            meta = {"rank": self.link.rank, "attempt": attempt}
            with self._send_lock:  # the helper thread flushes (closes) the writer's file under this lock
                path = self.writer.write(tid, header, bufs, meta)
        inline = path is None and header.nbytes <= self.opts.inline_max
        # bytearray: unpickled on the master as a writable buffer that its arrays can view
        item = M.Item(blk.bid, i, tid, attempt, header, duration,
                      [bytearray(b) for b in bufs] if inline else None, path, step)
        with self._send_lock:
            self._rows = None
            self._queue_locked(item, header.nbytes if inline or path else 0)
            if path is None and not inline:
                self._flush_locked()
                plan = R.chunk_plan(header, self.opts.chunk_size)
                crc = 0
                tr, k = self.trace, 0

                def checksum_posted(buf: Any) -> None:
                    # while the master copies this chunk (it does the copy), checksum it here
                    nonlocal crc, k
                    if tr is not None:
                        tr.event("post", tid, k, len(buf))
                        k += 1
                    crc = R.crc_update(crc, buf)

                self.link.send_bufs((bufs[part][off : off + n] for part, off, n in plan), on_posted=checksum_posted)
                if tr is not None:
                    tr.event("trailer", tid, k)
                self.link.send(M.Trailer(tid, crc), 0, M.CTRL)
            elif checkpoint:
                # a step's output goes at once: the next step may hang holding the GIL, and then
                # no helper thread could send it
                self._flush_locked()
            else:
                self._maybe_flush_locked(duration)
        self.stats["send"] += time.perf_counter() - t0
        self.stats["bytes"] += header.nbytes

    def _fail(self, blk: _Local, i: int, text: str, dt: float, exc: BaseException | None = None,
              step: int = 0, fatal: bool = False, key: str | None = None) -> None:
        t0 = time.perf_counter()
        data = _pickled(exc) if self.send_exceptions and exc is not None else None
        msg = M.Failed(blk.bid, i, blk.tids[i], blk.attempt, text, dt, data, step,
                       SIGNATURE if fatal else (key if key is not None else where(exc)), fatal)
        with self._send_lock:
            self._rows = None
            self._queue_locked(msg, len(text))
            self._maybe_flush_locked(dt)
        self.stats["send"] += time.perf_counter() - t0

    # -- receiving ----------------------------------------------------------------------

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

    _helper_error: BaseException | None = None

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
        t0 = time.perf_counter()
        back = Backoff()
        try:
            while True:
                with self._cond:
                    task = self._take()
                    if task is not None:
                        return task
                    if self.stopping:
                        return None
                    if self._threaded:
                        self._cond.wait(0.05)
                        continue
                if self._pending:
                    self.flush()
                self.link.progress()
                if not self._receive_all():
                    back.sleep()
        finally:
            self.stats["idle"] += time.perf_counter() - t0

    # -- running tasks ------------------------------------------------------------------

    def _run_one(self, blk: _Local, i: int) -> None:
        """Run task ``i`` of a block, or (its ``call``) one of its later steps, and every step after
        it that this worker may run itself; send each step's output as the run's options say."""
        n, func, arg, name = 0, self.func, blk.payloads[i], self._task_name
        call = blk.calls[i] if blk.calls else None
        tid = blk.tids[i]
        if self.decode is not None and type(arg) is str:
            try:
                arg = blk.payloads[i] = json.loads(arg)  # (its parameters' columns are read from it too)
            except ValueError as exc:
                self._task_failed(blk, i, n, name, exc, time.perf_counter(), 0.0)
                return
        if call is None:  # the task itself: call the function as the options say
            try:
                if not self._plain:
                    func, arg = self._entry(tid, arg)
            except _Mismatch as exc:
                self._fail(blk, i, f"task {tid!r} failed on rank {self.link.rank} (host {self.link.host}),"
                                   f" attempt {blk.attempt}:\nTypeError: {exc}", 0.0, TypeError(str(exc)), fatal=True)
                self._spans.append((tid, time.perf_counter(), 0.0, "failed", name))
                return
        else:
            n, name = call.n, steps.step_name(call.func)
            try:
                func = steps.resolve(call.func)
                arg = call.value if call.inline else _load_input(call.path)
            except BaseException as exc:
                self._task_failed(blk, i, n, name, exc, time.perf_counter(), 0.0)
                return
        while True:
            t0 = time.perf_counter()
            self._current = (tid, time.monotonic())
            try:
                value = func(arg)
            except BaseException as exc:  # anything the task raises goes back to the master
                if isinstance(exc, KeyboardInterrupt) and signals.sigint_seen():
                    raise  # a real Ctrl-C: the program stops
                self._current = None
                self._task_failed(blk, i, n, name, exc, t0, time.perf_counter() - t0)
                return
            self._current = None
            dt = time.perf_counter() - t0
            self.stats["compute"] += dt
            tv = type(value)
            if (tv is not steps.NextStep and tv is not list) or not steps.is_next(value):
                self._result(blk, i, n, name, value, t0, dt)
                return
            nxt = self._next(blk, i, n, name, value, t0, dt)
            if nxt is None:
                return
            n, func, arg, name = n + 1, nxt.func, nxt.value, steps.step_name(steps.func_ref(nxt.func))

    def _entry(self, tid: Any, arg: Any) -> tuple[Callable[[Any], Any], Any]:
        """The function and argument of a task's first call: ``func(task)``, or with ``kwargs``
        ``func(**task)`` (its keys but ``id``). Raises ``_Mismatch`` naming what does not fit when
        the function's signature cannot take the task: checked once per shape of task, so a
        function that cannot work stops the run at its first task instead of failing them all."""
        func = self.func
        if self.opts.kwargs:
            if type(arg) is not dict:
                raise _Mismatch(f"{self.opts.flag('kwargs')} passes a task's keys as keyword arguments, but task"
                                f" {tid!r} is a {type(arg).__name__}, not a dict")
            kw = {k: v for k, v in arg.items() if k != "id"} if "id" in arg else arg
            shape: Any = tuple(kw)
            problem = self._fits.get(shape, _UNKNOWN)
            if problem is _UNKNOWN:
                problem = self._fits[shape] = _misfit(func, (), kw)
            if problem is not None:
                raise _Mismatch(f"{problem} (task {tid!r}, keys {', '.join(map(str, kw)) or 'none'};"
                                f" with {self.opts.flag('kwargs')} each key but 'id' is a keyword argument)")
            return _Keywords(func), kw
        problem = self._fits.get(None, _UNKNOWN)
        if problem is _UNKNOWN:
            problem = self._fits[None] = _misfit(func, (arg,), {})
        if problem is None:
            self._plain = True
        else:
            hint = (f"; {self.opts.flag('kwargs')} passes the keys as keyword arguments instead"
                    if type(arg) is dict else "")
            raise _Mismatch(f"{problem} (task {tid!r}: the function gets the task as one argument{hint})")
        return func, arg

    def _task_failed(self, blk: _Local, i: int, n: int, name: str, exc: BaseException, t0: float,
                     dt: float) -> None:
        tid = blk.tids[i]
        self.stats["compute"] += dt
        self._spans.append((tid, t0, dt, "failed", name))
        step = f"step {n + 1} ({name})" if n else None
        key = where(exc)
        first, times = self._seen.get(key, (tid, 0))
        self._seen[key] = (first, times + 1)
        if times < FULL_TRACEBACKS:
            text = format_exc(tid, blk.attempt, self.link.rank, self.link.host, exc, step)
        else:  # the same error again: its traceback went with an earlier task (formatting one costs ~0.1 ms)
            text = format_again(tid, blk.attempt, self.link.rank, self.link.host, exc, first, key, step)
        self._fail(blk, i, text, dt, exc, n, key=key)

    def _encode(self, blk: _Local, i: int, n: int, name: str, value: Any, t0: float,
                dt: float) -> tuple[R.Header, list[Any]] | None:
        t1 = time.perf_counter()
        try:
            return R.encode(value, with_crc=False)  # a streamed result is checksummed as it goes
        except UnsupportedResultError as exc:
            self._spans.append((blk.tids[i], t0, dt, "failed", name))
            self._fail(blk, i, f"task {blk.tids[i]!r} failed on rank {self.link.rank} (host {self.link.host}),"
                               f" attempt {blk.attempt}: {exc}", dt, exc.__cause__ or exc, n)
            return None
        finally:
            self.stats["send"] += time.perf_counter() - t1

    def _result(self, blk: _Local, i: int, n: int, name: str, value: Any, t0: float, dt: float) -> None:
        self.stats["tasks"] += 1
        if n == 0 and self._row(blk, i, value, dt):  # (a multi-step task's result is stored whole)
            self._spans.append((blk.tids[i], t0, dt, "done", name))
            return
        enc = self._encode(blk, i, n, name, value, t0, dt)
        if enc is None:
            self.stats["tasks"] -= 1
            return
        self._spans.append((blk.tids[i], t0, dt, "done", name))
        self._deliver(blk, i, enc[0], enc[1], dt, steps.StepInfo(n, name, None) if n else None)

    def _next(self, blk: _Local, i: int, n: int, name: str, value: Any, t0: float,
              dt: float) -> steps.NextStep | None:
        """A step returned what runs next: send its output (or say it goes on here); the next
        step to run here, or None when it is handed to other workers."""
        self._spans.append((blk.tids[i], t0, dt, "step", name))
        if type(value) is list:  # fan-out: each a child task, run wherever
            for k, child in enumerate(value):
                enc = self._encode(blk, i, n, name, child.value, t0, dt)
                if enc is None:
                    return None
                info = steps.StepInfo(n, name, steps.func_ref(child.func), child.needs, child.timeout, False,
                                      k, len(value))
                self._deliver(blk, i, enc[0], enc[1], dt, info)
            return None
        nxt: steps.NextStep = value
        go_on = self.opts.affinity and (nxt.needs is None or nxt.needs in self.kinds)
        info = steps.StepInfo(n, name, steps.func_ref(nxt.func), nxt.needs, nxt.timeout, go_on)
        if self.opts.checkpoint == "every" or not go_on:
            enc = self._encode(blk, i, n, name, nxt.value, t0, dt)
            if enc is None:
                return None
            self._deliver(blk, i, enc[0], enc[1], dt, info)
        else:
            self._note(M.Step(blk.bid, i, blk.tids[i], blk.attempt, info, dt), dt)
        return nxt if go_on else None

    def _note(self, msg: M.Step, duration: float) -> None:
        """That a step finished here rides with the next batch of results: a message of its own
        would cost more than a tiny step. A long step's notice goes at once, and the helper
        thread sends whatever waits longer than the flush age."""
        with self._send_lock:
            self._rows = None
            self._queue_locked(msg, 0)
            if duration > self._flush_age or time.monotonic() - self._pending_since > self._flush_age:
                self._flush_locked()

    def run(self) -> None:
        """Serve tasks until the master says stop (or abort, which raises MasterFailed)."""
        global _current
        start = time.perf_counter()
        _current = WorkerInfo(self.link.rank, self.link.size, self.link.host, os.getpid(), self.kinds)
        self._send(M.Hello(self.link.host, os.getpid(), self.kinds))
        forward = None if getattr(self.link, "in_process", False) else _LogForwarder(self._send)
        if forward is not None:
            log.addHandler(forward)
        helper = None
        if self._threaded:
            helper = threading.Thread(target=self._helper, name="mpigather-worker-helper", daemon=True)
            helper.start()
        elif self.link.rank == 1:
            from .transport import thread_level_name

            log.warning("the MPI library gives %s: heartbeats, and moving queued tasks to idle workers, happen"
                        " only between tasks", thread_level_name(self.link.thread_level))
        try:
            try:
                if self.initializer is not None:
                    self.initializer(*self.initargs)
                while (task := self._next_task()) is not None:
                    self._run_one(*task)
                if self._helper_error is not None:
                    raise self._helper_error
            except BaseException as e:
                self._stop_helper(helper)
                if isinstance(e, KeyboardInterrupt) and signals.sigint_seen():
                    self._leave_interrupted(start)
                else:
                    self._crash(e)
                raise
        finally:
            self._stop_helper(helper)
            if forward is not None:
                log.removeHandler(forward)
            _current = None
            if self.trace is not None:
                self.trace.close()
        self.flush()
        self._bye(start, INTERRUPT_WAIT if self.interrupted else 30.0)
        if self.interrupted:
            raise KeyboardInterrupt(f"the run was interrupted: {self.aborted}")
        if self.aborted is not None:
            raise MasterFailed(f"the master aborted the run: {self.aborted}")

    def _stop_helper(self, helper: threading.Thread | None) -> None:
        self._done.set()
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


class _Keywords:
    """Calls the task function with a dict's items as keyword arguments (``--kwargs``)."""

    __slots__ = ("func",)

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func

    def __call__(self, kw: dict[str, Any]) -> Any:
        return self.func(**kw)


class _Mismatch(Exception):
    """The task function's signature cannot take a task."""


_UNKNOWN: Any = object()


def _misfit(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Why ``func(*args, **kwargs)`` cannot be called, from its signature alone; None if it can
    (or if its signature cannot be read: then the call itself will tell)."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
        return f"the task function {name}{sig} cannot take the task: {e}"
    return None


def _named(func: Any) -> bool:
    try:
        steps.func_ref(func)
    except ValueError:
        return False
    return True


def _load_input(path: str | None) -> Any:
    """A step's input, stored by the master as a result of its own (a file of the output's steps)."""
    from .reader import load_entry

    if path is None:
        raise ValueError("the step's input was not stored")
    return load_entry(path)


def _pickled(exc: BaseException) -> bytes | None:
    """The exception itself, for the executor to re-raise on the root (None if it won't pickle)."""
    import pickle

    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:
        return None


def where(exc: BaseException | None) -> str:
    """An exception's type and the place it was raised (file:line in function): what makes two
    failures the same error."""
    if exc is None:
        return ""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return type(exc).__qualname__
    code = tb.tb_frame.f_code
    return f"{type(exc).__qualname__} at {code.co_filename}:{tb.tb_lineno} in {code.co_name}"


def format_again(tid: Any, attempt: int, rank: int, host: str, exc: BaseException, first: Any, key: str,
                 step: str | None = None) -> str:
    """The error text of a failure seen before on this worker: the traceback is named, not repeated."""
    where_ = f" in {step}" if step else ""
    only = "".join(traceback.format_exception_only(type(exc), exc))
    return (f"task {tid!r} failed{where_} on rank {rank} (host {host}, pid {os.getpid()}), attempt {attempt}:\n"
            f"(the same error as task {first!r}, whose traceback was reported: {key})\n{only}")


def format_exc(tid: Any, attempt: int, rank: int, host: str, exc: BaseException, step: str | None = None) -> str:
    """The error text that goes back to the master: where it happened, then the traceback."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    where = f" in {step}" if step else ""
    return f"task {tid!r} failed{where} on rank {rank} (host {host}, pid {os.getpid()}), attempt {attempt}:\n{tb}"
