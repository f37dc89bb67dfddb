"""``map`` without ``chunksize`` over many calls: chunks sized from the calls' measured durations."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import BrokenExecutor, Future, TimeoutError
from typing import TYPE_CHECKING, Any

from .executor_calls import _call_timed, _Raised, _remote_exception

if TYPE_CHECKING:
    from .executor_pool import GatherExecutor

AUTO_SMALL = 32  # map without chunksize: up to this many calls per worker, one call per task, all at once
AUTO_TARGET = 0.02  # seconds that a chunk of a larger map lasts, once its calls are measured
AUTO_DEPTH = 3  # chunks per worker kept submitted while a larger map is fed


class _Feeder:
    """``map`` without ``chunksize`` over many calls: chunks are sized from the calls' measured
    durations, so that each lasts about AUTO_TARGET seconds (one call per chunk while a call
    takes longer than that, so per-task timeouts and retries keep meaning one call), and shrink
    toward the end so that the last calls spread over every worker. The first chunks hold one
    call each; each finished chunk submits the next ones (from the master's thread), so that
    about AUTO_DEPTH chunks per worker are always submitted, whatever the consumer does."""

    def __init__(self, ex: GatherExecutor, fn: Callable[..., Any], calls: list[tuple[Any, ...]]) -> None:
        self.ex, self.fn, self.calls = ex, fn, calls
        self.pos = 0  # the next call to submit
        self.spent, self.counted = 0.0, 0  # seconds and calls measured so far
        self.inflight = 0
        self.stopped = False  # cancelled, or a submit failed: nothing more is submitted
        self.futs: deque[Future] = deque()  # chunks not yet taken by the consumer, in call order
        self.changed = threading.Condition(threading.RLock())  # a done-callback may run at once, inside top_up
        self.depth = AUTO_DEPTH * ex.num_workers

    @property
    def feeding(self) -> bool:
        return not self.stopped and self.pos < len(self.calls)

    def size(self) -> int:
        if not self.counted:
            return 1
        per_call = self.spent / self.counted
        size = int(AUTO_TARGET / per_call) if per_call > 0 else len(self.calls)
        left = len(self.calls) - self.pos
        return max(1, min(size, -(-left // (2 * self.ex.num_workers))))

    def top_up(self) -> None:
        with self.changed:
            while self.feeding and self.inflight < self.depth:
                n = self.size()
                chunk, self.pos = self.calls[self.pos:self.pos + n], self.pos + n
                try:
                    fut = self.ex._submit(_call_timed, (self.fn, chunk), {}, feeder=True)
                except BaseException as e:  # shut down (with cancel_futures), interrupted or broken
                    fut = Future()
                    if isinstance(e, RuntimeError) and not isinstance(e, BrokenExecutor):
                        fut.cancel()  # the rest of the map was cancelled, as mpi4py's would be
                    else:
                        fut.set_exception(e)
                    fut.set_running_or_notify_cancel()
                    self.stop()
                self.inflight += 1
                self.futs.append(fut)
                fut.add_done_callback(self._done)
            if not self.feeding:
                self.ex._unfeed(self)
            self.changed.notify_all()

    def _done(self, fut: Future) -> None:
        with self.changed:
            self.inflight -= 1
            if fut.cancelled() or fut.exception() is not None:
                self.stop()  # the map raises when its consumer reaches this chunk: nothing after it is needed
                return
            out, seconds = fut.result()
            self.spent += seconds
            self.counted += len(out)
            self.top_up()

    def stop(self) -> None:
        with self.changed:
            self.stopped = True
            self.ex._unfeed(self)
            self.changed.notify_all()

    def results(self, end: float | None, unordered: bool) -> Iterator[Any]:
        from concurrent.futures import FIRST_COMPLETED, wait

        try:
            while True:
                with self.changed:
                    while not self.futs and self.feeding:
                        if not self.changed.wait(None if end is None else max(0.0, end - time.monotonic())):
                            raise TimeoutError()
                    if not self.futs:
                        return
                    pending = list(self.futs)
                if unordered:
                    ready, _ = wait(pending, timeout=None if end is None else max(0.0, end - time.monotonic()),
                                    return_when=FIRST_COMPLETED)
                    if not ready:
                        raise TimeoutError()
                    fut = next(f for f in pending if f in ready)
                else:
                    fut = pending[0]
                with self.changed:
                    self.futs.remove(fut)
                out, _ = fut.result(None if end is None else max(0.0, end - time.monotonic()))
                for v in out:
                    if isinstance(v, _Raised):
                        raise _remote_exception(v.text, v.exc)
                    yield v
        finally:
            self.stop()
            with self.changed:
                left = list(self.futs)
            for f in left:
                f.cancel()

