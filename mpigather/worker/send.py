"""Encoding and sending results. Small results (and failures, and notices of steps) wait in
``_pending`` and go as one ``Results`` message, posted without waiting (at most ``POSTED_MAX``
in flight): when the worker has nothing more to run, when a long task ends, when the batch is
large, or when it is old (the helper thread flushes aged ones). A large result goes as its
header, then raw chunks (``send_bufs``), then a ``Trailer`` with its crc32c.
"""

from __future__ import annotations

import time
from typing import Any

from .. import messages as M
from .. import results as R
from .. import steps
from ..errors import UnsupportedResultError
from ..failures import SIGNATURE
from .base import Base
from .queue import _Local
from .rows import _RowsAcc
from .tracebacks import where

FLUSH_BYTES = 1 << 20  # a batch of small results is sent once it holds this many bytes
POSTED_MAX = 4  # batches of results posted to the master and not yet taken, before the worker waits


class SendMixin(Base):
    """Part of ``Worker``: the batch of results waiting to go, and sending it."""

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
                from ..sinks import open_writer

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

    def _note(self, msg: M.Step, duration: float) -> None:
        """That a step finished here rides with the next batch of results: a message of its own
        would cost more than a tiny step. A long step's notice goes at once, and the helper
        thread sends whatever waits longer than the flush age."""
        with self._send_lock:
            self._rows = None
            self._queue_locked(msg, 0)
            if duration > self._flush_age or time.monotonic() - self._pending_since > self._flush_age:
                self._flush_locked()


def _pickled(exc: BaseException) -> bytes | None:
    """The exception itself, for the executor to re-raise on the root (None if it won't pickle)."""
    import pickle

    try:
        data = pickle.dumps(exc)
        pickle.loads(data)
        return data
    except Exception:
        return None
