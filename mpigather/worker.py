"""The worker loop: take tasks from the master, call the function, send back results.

``recv -> call -> send``, with a local FIFO of prefetched tasks so that the next task is
already here when one ends. Small results are batched into one message; large ones go as
a header followed by raw chunks. An exception in the task never escapes: it goes back to
the master with the rank, host and traceback. A helper thread sends heartbeats while a
task runs and flushes batched results that would otherwise wait behind a long task.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

from . import messages as M
from . import results as R
from .config import Options
from .errors import MasterFailed, UnsupportedResultError
from .transport import Backoff

log = logging.getLogger("mpigather")

_FLUSH_BYTES = 1 << 20


class _LogForwarder(logging.Handler):
    """Sends a worker's warnings and errors to the master's log."""

    def __init__(self, send: Callable[[Any], None]) -> None:
        super().__init__(logging.WARNING)
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._send((M.LOG, record.levelno, self.format(record)))
        except Exception:  # never let logging break the worker
            pass


class Worker:
    def __init__(self, link: Any, func: Callable[[Any], Any], opts: Options, out: str | None,
                 allow_object: bool = False) -> None:
        self.link, self.func, self.opts = link, func, opts
        self.allow_object = allow_object
        self.out = out
        self.sink: Any = None  # direct mode: opened at the first result, after the master set up the output
        self.queue: deque[tuple[Any, int, Any]] = deque()
        self.stopping = False
        self.aborted: str | None = None
        self._lock = threading.Lock()
        self._pending: list[tuple] = []
        self._pending_bytes = 0
        self._pending_since = 0.0
        # completed small results wait at most this long, so the master refills the queue in time
        self._flush_age = opts.batch_window / 4
        self._current: tuple[Any, float] | None = None
        self._done = threading.Event()
        self.stats: dict[str, Any] = {"compute": 0.0, "send": 0.0, "idle": 0.0, "tasks": 0, "bytes": 0}
        self._spans: list[tuple[Any, float, float, str]] = []

    # -- sending ------------------------------------------------------------------------

    def _send_ctrl(self, obj: Any) -> None:
        with self._lock:
            self.link.send(obj, 0, M.CTRL)

    def _flush_locked(self) -> None:
        if self._pending:
            items, self._pending, self._pending_bytes = self._pending, [], 0
            self.link.send((M.RESULTS, items), 0, M.CTRL)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _deliver(self, tid: Any, attempt: int, header: R.Header, bufs: list, duration: float) -> None:
        """Queue or send one result; large ones stream their chunks right away."""
        t0 = time.perf_counter()
        path = None
        direct = self.opts.mode == "direct" and self.out is not None
        if direct or header.nbytes <= self.opts.inline_max:
            header = header._replace(crc=R.checksum(bufs))
        if direct:
            from .sinks import open_sink, write_direct

            if self.sink is None:
                self.sink = open_sink(self.out, worker=True)

            meta = {"rank": self.link.rank, "attempt": attempt, "duration": duration,
                    "bytes": header.nbytes, "crc32c": header.crc}
            path = write_direct(self.sink, tid, header, bufs, meta)
        inline = path is None and header.nbytes <= self.opts.inline_max
        # bytearray: unpickled on the master as a writable buffer that its arrays can view
        item = (tid, attempt, header, duration, [bytearray(b) for b in bufs] if inline else None, path)
        with self._lock:
            if not self._pending:
                self._pending_since = time.monotonic()
            self._pending.append(item)
            self._pending_bytes += header.nbytes if inline else 0
            if path is None and not inline:
                self._flush_locked()
                plan = R.chunk_plan(header, self.opts.chunk_size)
                crc = 0

                def checksum_posted(buf: Any) -> None:
                    # while the master copies this chunk (it does the copy), checksum it here
                    nonlocal crc
                    crc = R.crc_update(crc, buf)

                self.link.send_bufs((bufs[part][off : off + n] for part, off, n in plan), on_posted=checksum_posted)
                self.link.send((M.TRAILER, tid, crc), 0, M.CTRL)
            elif (not self.queue or duration > self._flush_age or self._pending_bytes > _FLUSH_BYTES
                  or time.monotonic() - self._pending_since > self._flush_age):
                self._flush_locked()
        self.stats["send"] += time.perf_counter() - t0
        self.stats["bytes"] += header.nbytes

    # -- the helper thread --------------------------------------------------------------

    def _helper(self) -> None:
        last_hb = time.monotonic()
        period = min(self._flush_age, self.opts.heartbeat)
        while not self._done.wait(period):
            now = time.monotonic()
            with self._lock:
                if self._pending and now - self._pending_since > self._flush_age:
                    self._flush_locked()
                cur = self._current
                if cur is not None and now - last_hb >= self.opts.heartbeat:
                    last_hb = now
                    self.link.send((M.HEARTBEAT, cur[0], now - cur[1]), 0, M.CTRL)

    # -- receiving ----------------------------------------------------------------------

    def _handle(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == M.TASKS:
            self.queue.extend(msg[1])
        elif kind == M.REVOKE:
            drop = set(msg[1])
            dropped = [t[0] for t in self.queue if t[0] in drop]
            if dropped:
                self.queue = deque(t for t in self.queue if t[0] not in drop)
            if msg[2]:
                self.flush()  # results first: the master must see them before the ack
                self._send_ctrl((M.REVOKED, dropped))
        elif kind == M.STOP:
            self.stopping = True
        elif kind == M.ABORT:
            self.aborted = msg[1]
            self.queue.clear()
            self.stopping = True

    def _drain(self) -> bool:
        got = False
        while True:
            inc = self.link.poll(0)
            if inc is None:
                return got
            self._handle(inc.obj())
            got = True

    def _wait(self) -> None:
        back = Backoff()
        t0 = time.perf_counter()
        while not self._drain():
            back.sleep()
        self.stats["idle"] += time.perf_counter() - t0

    # -- the loop -----------------------------------------------------------------------

    def _run_one(self, tid: Any, attempt: int, payload: Any) -> None:
        t0 = time.perf_counter()
        self._current = (tid, time.monotonic())
        try:
            value = self.func(payload)
        except (Exception, SystemExit) as exc:  # anything the task raises goes back to the master
            self._current = None
            dt = time.perf_counter() - t0
            self.stats["compute"] += dt
            self._spans.append((tid, t0, dt, "failed"))
            text = format_exc(tid, attempt, self.link.rank, self.link.host, exc)
            self._fail(tid, attempt, text, "error", dt, _pickled(exc) if self.allow_object else None)
            return
        self._current = None
        dt = time.perf_counter() - t0
        self.stats["compute"] += dt
        t1 = time.perf_counter()
        try:
            encode = R.encode_any if self.allow_object else R.encode
            header, bufs = encode(value, with_crc=False)  # a streamed result is checksummed as it goes
        except UnsupportedResultError as exc:
            self.stats["send"] += time.perf_counter() - t1
            self._spans.append((tid, t0, dt, "failed"))
            self._fail(tid, attempt, f"task {tid!r}: {exc}", "unsupported", dt)
            return
        self.stats["send"] += time.perf_counter() - t1
        self._spans.append((tid, t0, dt, "done"))
        self.stats["tasks"] += 1
        self._deliver(tid, attempt, header, bufs, dt)

    def _fail(self, tid: Any, attempt: int, text: str, cause: str, dt: float, exc: bytes | None = None) -> None:
        t0 = time.perf_counter()
        with self._lock:
            self._flush_locked()
            self.link.send((M.FAILED, tid, attempt, text, cause, dt, exc), 0, M.CTRL)
        self.stats["send"] += time.perf_counter() - t0

    def run(self) -> None:
        start = time.perf_counter()
        self._start = start
        self._send_ctrl((M.HELLO, self.link.host, os.getpid()))
        helper = threading.Thread(target=self._helper, name="mpigather-heartbeat", daemon=True)
        helper.start()
        forward = _LogForwarder(self._send_ctrl)
        log.addHandler(forward)
        try:
            while True:
                self._drain()
                if self.queue:
                    self._run_one(*self.queue.popleft())
                    continue
                self.flush()
                if self.stopping:
                    break
                self._wait()
        finally:
            self._done.set()
            helper.join()
            log.removeHandler(forward)
        self.flush()
        wall = time.perf_counter() - start
        self.stats["wall"] = wall
        self.stats["host"] = self.link.host
        self.stats["spans"] = [(str(t), a - start, d, s) for t, a, d, s in self._spans[-5000:]]
        self._send_ctrl((M.BYE, self.stats))
        if self.aborted is not None:
            raise MasterFailed(f"the master aborted the run: {self.aborted}")


def _pickled(exc: BaseException) -> bytes | None:
    """The exception itself, for the executor to re-raise on the root (None if it won't pickle)."""
    import pickle

    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:
        return None


def format_exc(tid: Any, attempt: int, rank: int, host: str, exc: BaseException) -> str:
    """The error text that goes back to the master: where it happened, then the traceback."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f"task {tid!r} failed on rank {rank} (host {host}, pid {os.getpid()}), attempt {attempt}:\n{tb}"


def quiet_signals() -> None:
    """Workers leave SIGTERM/SIGUSR1 to the master, which drains the run in order."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        try:
            signal.signal(sig, lambda *_: None)
        except (ValueError, OSError):  # not the main thread
            pass
