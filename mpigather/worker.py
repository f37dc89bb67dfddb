"""The worker loop: take tasks from the master, call the function, send back results.

``recv -> call -> send``, with a local FIFO of prefetched tasks so that the next task is
already here when one ends. Small results are batched into one message; large ones go as
a header followed by raw chunks. An exception in the task (any ``BaseException``) never
escapes: it goes back to the master with the rank, host and traceback.

Two threads share the work. The main thread runs tasks and sends their results. A helper
thread owns receiving: it queues new tasks, answers the master's revokes at once (so a task
queued here moves to an idle worker even while this one computes), sends heartbeats during
long tasks, and flushes batched results that would otherwise wait behind a long task. Where
the MPI library allows no second thread (below ``MPI_THREAD_SERIALIZED``), the main thread
does the receiving between tasks instead, and the worker says what is lost.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import messages as M
from . import results as R
from . import signals, steps
from .config import Options
from .errors import MasterFailed, UnsupportedResultError
from .link import LOST, Backoff

log = logging.getLogger("mpigather")

FLUSH_BYTES = 1 << 20  # a batch of small results is sent once it holds this many bytes
POSTED_MAX = 4  # batches of results posted to the master and not yet taken, before the worker waits
ABORT_WAIT = 30.0  # seconds a crashed worker waits for the master to let it go
INTERRUPT_WAIT = 1.0  # seconds a worker stopped by Ctrl-C waits for its last messages to go
SPANS_KEPT = 5000  # per-task spans sent to the master for the timeline


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


class Worker:
    def __init__(self, link: Any, func: Callable[[Any], Any], opts: Options, out: str | None, *,
                 send_exceptions: bool = False, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = (), kinds: tuple[str, ...] = ()) -> None:
        self.link, self.func, self.opts = link, func, opts
        self.out = out
        self.send_exceptions = send_exceptions  # the executor re-raises the task's own exception
        self.initializer, self.initargs = initializer, initargs
        self.kinds = kinds or tuple(k.strip() for k in opts.kinds.split(",") if k.strip())
        self.writer: Any = None  # direct mode: opened at the first result
        self.queue: deque[tuple[Any, int, Any]] = deque()
        self.stopping = False
        self.aborted: str | None = None
        self.interrupted = False  # the master stopped the run on a Ctrl-C: leave with KeyboardInterrupt
        self._cond = threading.Condition()  # guards queue, stopping, aborted
        self._send_lock = threading.Lock()  # one sender at a time, so results precede revoke acks
        self._pending: list[M.Item | M.Step] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        # completed small results wait at most this long, so the master refills the queue in time
        self._flush_age = opts.batch_window / 4
        self._current: tuple[Any, float] | None = None
        self._done = threading.Event()
        self._task_name = steps.step_name(steps.func_ref(func)) if _named(func) else "task"
        self._threaded = bool(getattr(link, "threads_ok", True))
        self.stats: dict[str, Any] = {"compute": 0.0, "send": 0.0, "idle": 0.0, "tasks": 0, "bytes": 0}
        self._spans: deque[tuple[Any, float, float, str, str]] = deque(maxlen=SPANS_KEPT)

    # -- sending ------------------------------------------------------------------------

    def _send(self, msg: Any) -> None:
        with self._send_lock:
            self.link.send(msg, 0, M.CTRL)

    def _flush_locked(self) -> None:
        if self._pending:
            if self.writer is not None:
                self.writer.flush()  # direct mode: durable before the master hears of it
            items, self._pending, self._pending_bytes = self._pending, [], 0
            # posted, not waited for: the worker goes on computing while the master takes it
            # (MPI keeps messages to one destination in order; a few may be in flight)
            self.link.post(M.Results(items), 0, M.CTRL, limit=POSTED_MAX)

    def flush(self) -> None:
        with self._send_lock:
            self._flush_locked()

    def _deliver(self, tid: Any, attempt: int, header: R.Header, bufs: list[Any], duration: float,
                 step: Any = None) -> None:
        """Queue or send one result (or a step's output); large ones stream their chunks right away."""
        t0 = time.perf_counter()
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
        item = M.Item(tid, attempt, header, duration, [bytearray(b) for b in bufs] if inline else None, path, step)
        with self._send_lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(item)
            self._pending_bytes += header.nbytes if inline or path else 0
            if path is None and not inline:
                self._flush_locked()
                plan = R.chunk_plan(header, self.opts.chunk_size)
                crc = 0

                def checksum_posted(buf: Any) -> None:
                    # while the master copies this chunk (it does the copy), checksum it here
                    nonlocal crc
                    crc = R.crc_update(crc, buf)

                self.link.send_bufs((bufs[part][off : off + n] for part, off, n in plan), on_posted=checksum_posted)
                self.link.send(M.Trailer(tid, crc), 0, M.CTRL)
            elif (checkpoint or not self.queue or duration > self._flush_age or self._pending_bytes > FLUSH_BYTES
                  or time.monotonic() - self._pending_since > self._flush_age):
                # a step's output goes at once: the next step may hang holding the GIL, and then
                # no helper thread could send it
                self._flush_locked()
        self.stats["send"] += time.perf_counter() - t0
        self.stats["bytes"] += header.nbytes

    def _fail(self, tid: Any, attempt: int, text: str, dt: float, exc: BaseException | None = None,
              step: int = 0) -> None:
        t0 = time.perf_counter()
        data = _pickled(exc) if self.send_exceptions and exc is not None else None
        with self._send_lock:
            self._flush_locked()
            self.link.send(M.Failed(tid, attempt, text, dt, data, step), 0, M.CTRL)
        self.stats["send"] += time.perf_counter() - t0

    # -- receiving ----------------------------------------------------------------------

    def _handle(self, msg: Any) -> None:
        match msg:
            case M.Tasks(tasks):
                with self._cond:
                    self.queue.extend(tasks)
                    self._cond.notify()
            case M.Revoke(tids, ack):
                drop = set(tids)
                with self._cond:
                    dropped = [t[0] for t in self.queue if t[0] in drop]
                    if dropped:
                        self.queue = deque(t for t in self.queue if t[0] not in drop)
                if ack:
                    with self._send_lock:
                        self._flush_locked()  # results first: the master must see them before the ack
                        self.link.send(M.Revoked(dropped), 0, M.CTRL)
            case M.Stop():
                with self._cond:
                    self.stopping = True
                    self._cond.notify()
            case M.Abort(reason, interrupted):
                with self._cond:
                    self.aborted = reason
                    self.interrupted = interrupted
                    self.queue.clear()
                    self.stopping = True
                    self._cond.notify()
            case _:
                raise TypeError(f"unexpected message from the master: {msg!r}")

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
        back = Backoff(cap=min(2e-3, self._flush_age))
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

    def _next_task(self) -> tuple[Any, int, Any] | None:
        """The next task to run, waiting for one; None once stopped and the queue is empty."""
        t0 = time.perf_counter()
        back = Backoff()
        try:
            while True:
                with self._cond:
                    if self.queue:
                        return self.queue.popleft()
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

    def _run_one(self, tid: Any, attempt: int, payload: Any, call: Any = None) -> None:
        """Run a task, or (``call``) one of its later steps, and every step after it that this
        worker may run itself; send each step's output as the run's options say."""
        n, func, arg, name = 0, self.func, payload, self._task_name
        if call is not None:
            n, name = call.n, steps.step_name(call.func)
            try:
                func = steps.resolve(call.func)
                arg = call.value if call.inline else _load_input(call.path)
            except BaseException as exc:
                self._task_failed(tid, attempt, n, name, exc, time.perf_counter(), 0.0)
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
                self._task_failed(tid, attempt, n, name, exc, t0, time.perf_counter() - t0)
                return
            self._current = None
            dt = time.perf_counter() - t0
            self.stats["compute"] += dt
            if not steps.is_next(value):
                self._result(tid, attempt, n, name, value, t0, dt)
                return
            nxt = self._next(tid, attempt, n, name, value, t0, dt)
            if nxt is None:
                return
            n, func, arg, name = n + 1, nxt.func, nxt.value, steps.step_name(steps.func_ref(nxt.func))

    def _task_failed(self, tid: Any, attempt: int, n: int, name: str, exc: BaseException, t0: float,
                     dt: float) -> None:
        self.stats["compute"] += dt
        self._spans.append((tid, t0, dt, "failed", name))
        step = f"step {n + 1} ({name})" if n else None
        self._fail(tid, attempt, format_exc(tid, attempt, self.link.rank, self.link.host, exc, step), dt, exc, n)

    def _encode(self, tid: Any, attempt: int, n: int, name: str, value: Any, t0: float,
                dt: float) -> tuple[R.Header, list[Any]] | None:
        t1 = time.perf_counter()
        try:
            return R.encode(value, with_crc=False)  # a streamed result is checksummed as it goes
        except UnsupportedResultError as exc:
            self._spans.append((tid, t0, dt, "failed", name))
            self._fail(tid, attempt, f"task {tid!r} failed on rank {self.link.rank} (host {self.link.host}),"
                                    f" attempt {attempt}: {exc}", dt, exc.__cause__ or exc, n)
            return None
        finally:
            self.stats["send"] += time.perf_counter() - t1

    def _result(self, tid: Any, attempt: int, n: int, name: str, value: Any, t0: float, dt: float) -> None:
        enc = self._encode(tid, attempt, n, name, value, t0, dt)
        if enc is None:
            return
        self._spans.append((tid, t0, dt, "done", name))
        self.stats["tasks"] += 1
        self._deliver(tid, attempt, enc[0], enc[1], dt, steps.StepInfo(n, name, None) if n else None)

    def _next(self, tid: Any, attempt: int, n: int, name: str, value: Any, t0: float,
              dt: float) -> steps.NextStep | None:
        """A step returned what runs next: send its output (or say it goes on here); the next
        step to run here, or None when it is handed to other workers."""
        self._spans.append((tid, t0, dt, "step", name))
        if type(value) is list:  # fan-out: each a child task, run wherever
            for k, child in enumerate(value):
                enc = self._encode(tid, attempt, n, name, child.value, t0, dt)
                if enc is None:
                    return None
                info = steps.StepInfo(n, name, steps.func_ref(child.func), child.needs, child.timeout, False,
                                      k, len(value))
                self._deliver(tid, attempt, enc[0], enc[1], dt, info)
            return None
        nxt: steps.NextStep = value
        go_on = self.opts.affinity and (nxt.needs is None or nxt.needs in self.kinds)
        info = steps.StepInfo(n, name, steps.func_ref(nxt.func), nxt.needs, nxt.timeout, go_on)
        if self.opts.checkpoint == "every" or not go_on:
            enc = self._encode(tid, attempt, n, name, nxt.value, t0, dt)
            if enc is None:
                return None
            self._deliver(tid, attempt, enc[0], enc[1], dt, info)
        else:
            self._note(M.Step(tid, attempt, info, dt), dt)
        return nxt if go_on else None

    def _note(self, msg: M.Step, duration: float) -> None:
        """That a step finished here rides with the next batch of results: a message of its own
        would cost more than a tiny step. A long step's notice goes at once, and the helper
        thread sends whatever waits longer than the flush age."""
        with self._send_lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(msg)
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
        self.stats["spans"] = [(str(t), a - start, d, s, n) for t, a, d, s, n in self._spans]
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


def format_exc(tid: Any, attempt: int, rank: int, host: str, exc: BaseException, step: str | None = None) -> str:
    """The error text that goes back to the master: where it happened, then the traceback."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    where = f" in {step}" if step else ""
    return f"task {tid!r} failed{where} on rank {rank} (host {host}, pid {os.getpid()}), attempt {attempt}:\n{tb}"
