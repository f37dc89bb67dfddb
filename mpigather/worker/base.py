"""The state every room of the worker shares, declared once (``Worker.__init__`` sets it), and
the few methods that one room calls in another."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import messages as M
from .. import results as R
from ..config import Options

if TYPE_CHECKING:
    from ..link import Wake
    from ..spanlog import SpanLog
    from .queue import _Local
    from .rows import _RowsAcc


HELPER_NAP = 0.05  # the helper thread's nap between tasks and early in one: how late a revoke or an abort is seen
# while a task has run for t seconds, the helper naps up to t x LONG_SHARE (at most LONG_NAP):
# a revoke or an abort is seen that late, which is little against the task's own length, and
# a long task is not woken twenty times a second (each wake of a Python thread costs 0.1-0.2 ms
# of CPU on a crowded node)
LONG_SHARE = 0.2
LONG_NAP = 0.25
# while a task runs and nothing is due sooner, the helper's naps start at this share of the nap
# due, not at the backoff's first sleep: nothing waits for its quick polls then (the main thread
# has its next task or will say when it needs one), and doubling from 50 us to 50 ms woke a
# worker six times in each task of 50 ms
TASK_NAP_START = 0.25
POSTED_NAP = 1e-3  # its longest sleep while posted results are still in flight
# while the main thread waits for a task, for at most HUNGRY_QUICK seconds, the helper polls at
# least every HUNGRY_NAP: a master that starts late (its imports, a slow node) or answers late
# would otherwise find the helper in a nap of HELPER_NAP, and the first task waited up to 50 ms
HUNGRY_NAP = 2e-3
HUNGRY_QUICK = 1.0


class Base:
    # the run
    link: Any
    func: Callable[[Any], Any]
    opts: Options
    out: str | None
    send_exceptions: bool  # the executor re-raises the task's own exception
    keep_params: bool  # send each row's parameters as columns too
    decode: str | None  # "json": a payload that is text is a line of a task file, parsed here
    initializer: Callable[..., Any] | None
    initargs: tuple[Any, ...]
    kinds: tuple[str, ...]
    writer: Any  # direct mode: opened at the first result
    trace: Any
    stats: dict[str, Any]
    _spans: SpanLog  # the last spans, and every one in a profile of busy time
    # the local queue (guarded by _cond, with stopping and aborted)
    queue: deque[_Local]
    _waiting: int  # tasks in the queue not started yet
    stopping: bool
    aborted: str | None
    interrupted: bool  # the master stopped the run on a Ctrl-C: leave with KeyboardInterrupt
    _qlock: threading.RLock
    _cond: threading.Condition
    # results waiting to be sent (guarded by _send_lock)
    _send_lock: threading.Lock
    _pending: list[Any]  # Item, Failed, Step and _RowsAcc, in the order they happened
    _rows: _RowsAcc | None  # the last of them, while rows may still be added to it
    _pending_bytes: int
    _pending_since: float
    _flush_age: float  # completed small results wait at most this long
    # the helper thread
    _threaded: bool  # a second thread may call MPI
    _current: tuple[Any, float] | None  # the running task and when it started (perf_counter; heartbeats)
    _done: threading.Event  # the helper thread stops
    _hungry: Wake  # set by the main thread when it has no task: the helper wakes
    _hungry_since: float | None  # when the main thread began to wait for a task (None: it has one)
    _recv_lock: threading.Lock  # one thread receives at a time
    _helper_error: BaseException | None = None  # what broke the helper thread
    # calling the function
    _task_name: str
    _fits: dict[Any, str | None]  # the task function's signature against tasks of each shape
    _seen: dict[str, tuple[Any, int]]  # errors raised here: the first task, how many times
    _plain: bool  # func(task) was found to fit: later tasks skip the check

    # -- what one room calls in another -------------------------------------------------

    def _send(self, msg: Any) -> None:
        raise NotImplementedError

    def _flush_locked(self) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def _queue_locked(self, item: Any, nbytes: int) -> None:
        raise NotImplementedError

    def _maybe_flush_locked(self, duration: float) -> None:
        raise NotImplementedError

    def _deliver(self, blk: _Local, i: int, header: R.Header, bufs: list[Any], duration: float,
                 step: Any = None) -> None:
        raise NotImplementedError

    def _fail(self, blk: _Local, i: int, text: str, dt: float, exc: BaseException | None = None,
              step: int = 0, fatal: bool = False, key: str | None = None) -> None:
        raise NotImplementedError

    def _note(self, msg: M.Step, duration: float) -> None:
        raise NotImplementedError

    def _encode(self, blk: _Local, i: int, n: int, name: str, value: Any, t0: float,
                dt: float) -> tuple[R.Header, list[Any]] | None:
        raise NotImplementedError

    def _result(self, blk: _Local, i: int, n: int, name: str, value: Any, t0: float, dt: float) -> None:
        raise NotImplementedError

    def _row(self, blk: _Local, i: int, value: Any, dt: float) -> bool:
        raise NotImplementedError

    def _revoke(self, cuts: list[tuple[int, int]]) -> list[tuple[int, int | None]]:
        raise NotImplementedError

    def _next_task(self) -> tuple[_Local, int] | None:
        raise NotImplementedError

    def _receive_all(self) -> bool:
        raise NotImplementedError

    def _helper(self) -> None:
        raise NotImplementedError

    def _run_one(self, blk: _Local, i: int) -> None:
        raise NotImplementedError

    def _task_failed(self, blk: _Local, i: int, n: int, name: str, exc: BaseException, t0: float,
                     dt: float) -> None:
        raise NotImplementedError

    def _next(self, blk: _Local, i: int, n: int, name: str, value: Any, t0: float, dt: float) -> Any:
        raise NotImplementedError

    def _stop_helper(self, helper: threading.Thread | None) -> None:
        raise NotImplementedError

    def _bye(self, start: float, timeout: float = 30.0) -> None:
        raise NotImplementedError

    def _leave_interrupted(self, start: float) -> None:
        raise NotImplementedError

    def _crash(self, exc: BaseException) -> None:
        raise NotImplementedError
