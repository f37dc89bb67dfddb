"""The facade: ``Worker``, built from one mixin per room (see the package's docstring), its state
set in one place (declared in ``base.Base``), and ``run``, which serves tasks until the master
says stop; ``current_worker()`` for task functions."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import messages as M
from .. import signals, steps
from ..config import Options
from ..errors import MasterFailed
from ..link import Wake
from ..spanlog import SpanLog
from ..trace import open_trace
from .call import CallMixin
from .helper import HelperMixin
from .leave import INTERRUPT_WAIT, LeaveMixin
from .queue import QueueMixin, _Local
from .rows import RowsMixin, _RowsAcc
from .send import SendMixin
from .steps import StepsMixin

log = logging.getLogger("mpigather")

SPANS_KEPT = 5000  # per-task spans sent to the master for the timeline


class WorkerInfo:
    """Where the current task runs: ``mpigather.current_worker()`` inside a task."""

    # (immutable, with its fields written out: a frozen dataclass costs half a millisecond to
    # define, at every worker's start)
    __slots__ = ("rank", "size", "host", "pid", "kinds")
    rank: int  # in the run's communicator (0 is the master)
    size: int
    host: str
    pid: int
    kinds: tuple[str, ...]

    def __init__(self, rank: int, size: int, host: str, pid: int, kinds: tuple[str, ...] = ()) -> None:
        for name, value in zip(self.__slots__, (rank, size, host, pid, kinds)):
            object.__setattr__(self, name, value)

    def _values(self) -> tuple[Any, ...]:
        return (self.rank, self.size, self.host, self.pid, self.kinds)

    def __eq__(self, other: object) -> bool:
        return self._values() == other._values() if type(other) is WorkerInfo else NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return "WorkerInfo(" + ", ".join(f"{k}={v!r}" for k, v in zip(self.__slots__, self._values())) + ")"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:  # (its __setattr__ refuses the default way back)
        return WorkerInfo, self._values()


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


class Worker(CallMixin, StepsMixin, SendMixin, RowsMixin, QueueMixin, HelperMixin, LeaveMixin):
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
        self._qlock = threading.RLock()  # (the condition's lock: taken alone, it is quicker)
        self._cond = threading.Condition(self._qlock)  # guards queue (and its blocks' ends), stopping, aborted
        self._send_lock = threading.Lock()  # one sender at a time, so results precede revoke acks
        self._pending: list[Any] = []  # Item, Failed, Step and _RowsAcc, in the order they happened
        self._rows: _RowsAcc | None = None  # the last of them, while rows may still be added to it
        self._pending_bytes = 0
        self._pending_since = 0.0
        # completed small results wait at most this long, so the master refills the queue in time
        self._flush_age = opts.batch_window / 2
        self._current: tuple[Any, float] | None = None
        self._done = threading.Event()
        self._hungry = Wake()
        self._hungry_since: float | None = None
        self._recv_lock = threading.Lock()
        self._task_name = steps.step_name(steps.func_ref(func)) if _named(func) else "task"
        self._threaded = bool(getattr(link, "threads_ok", True))
        self.stats: dict[str, Any] = {"compute": 0.0, "send": 0.0, "idle": 0.0, "tasks": 0, "bytes": 0}
        self._spans = SpanLog(SPANS_KEPT)  # the last spans, and every one in a profile of busy time
        self._fits: dict[Any, str | None] = {}  # the task function's signature against tasks of each shape
        self._seen: dict[str, tuple[Any, int]] = {}  # errors raised here: the first task, how many times
        self._plain = False  # func(task) was found to fit: later tasks skip the check
        self.trace = open_trace(link.rank)  # MPIGATHER_TRACE: each chunk's post time (None: off)

    def run(self) -> None:
        """Serve tasks until the master says stop (or abort, which raises MasterFailed)."""
        global _current
        start = time.perf_counter()
        self._spans.origin = start  # every worker's profile starts at 0: the master sums them bin by bin
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
            from ..transport import thread_level_name

            log.warning("the MPI library gives %s: heartbeats, and moving queued tasks to idle workers, happen"
                        " only between tasks", thread_level_name(self.link.thread_level))
        try:
            try:
                if self.initializer is not None:
                    self.initializer(*self.initargs)
                while (task := self._next_task()) is not None:
                    self._run_one(*task)
                    self._run_rows(task[0])  # the tasks after it, while they are tiny rows
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


def serve(link: Any, func: Any, opts: Options, out: str | None, **worker_args: Any) -> None:
    """A worker rank's whole part in a run or an executor: serve tasks until the master says
    goodbye. SIGTERM and SIGUSR1 are left to the master meanwhile."""
    old = signals.install(master=False)
    try:
        Worker(link, func, opts, out, **worker_args).run()
    finally:
        signals.restore(old)


def _named(func: Any) -> bool:
    try:
        steps.func_ref(func)
    except ValueError:
        return False
    return True
