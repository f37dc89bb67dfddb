"""Calling the user's function: a task's first call (``func(task)``, or ``func(**task)`` with
``kwargs``), checked against the function's signature once per shape of task (``_misfit``), then
each step it runs here; anything it raises goes back as a failure with its traceback.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Any

from .. import signals, steps
from .base import Base
from .queue import _Local
from .rows import params_of
from .send import FLUSH_BYTES
from .steps import _load_input
from .tracebacks import format_again, format_exc, where

FULL_TRACEBACKS = 3  # failures of one error (type and place) sent with their whole traceback, per worker
_SCAN: Callable[[str, int], tuple[Any, int]] | None = None  # json's scanner, once a line is read


def parse_line(text: str) -> Any:
    """A task file's line, as ``json.loads`` reads it: its scanner called straight, half the cost
    of a sweep's line (1 µs a task); anything it does not take whole (leading or trailing
    characters, bad JSON) goes through ``json.loads``, which gives the same value or its error.
    (json is imported at the first line: a run of other tasks does not pay for it.)"""
    scan = _SCAN or _scanner()
    try:
        value, end = scan(text, 0)
    except StopIteration:
        end = -1
    if end == len(text):
        return value
    import json

    return json.loads(text)


def _scanner() -> Callable[[str, int], tuple[Any, int]]:
    global _SCAN
    import json

    _SCAN = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # (json.loads uses it)
    return _SCAN


class CallMixin(Base):
    """Part of ``Worker``: running one task and the steps after it."""

    def _run_one(self, blk: _Local, i: int) -> None:
        """Run task ``i`` of a block, or (its ``call``) one of its later steps, and every step after
        it that this worker may run itself; send each step's output as the run's options say."""
        n, func, arg, name = 0, self.func, blk.payloads[i], self._task_name
        call = blk.calls[i] if blk.calls else None
        tid = blk.tids[i]
        if self.decode is not None and type(arg) is str:  # a line of a task file
            try:
                arg = blk.payloads[i] = parse_line(arg)  # (its parameters' columns are read from it too)
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
        self._run_steps(blk, i, n, func, arg, name)

    def _run_steps(self, blk: _Local, i: int, n: int, func: Callable[[Any], Any], arg: Any, name: str) -> None:
        """Run step ``n`` of task ``i`` of ``blk``, ``func(arg)``, and the steps after it that run here."""
        tid = blk.tids[i]
        while True:
            t0 = time.perf_counter()
            self._current = (tid, t0)
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
            nxt = self._returned(blk, i, n, name, value, t0, dt)
            if nxt is None:
                return
            n, func, arg, name = n + 1, nxt.func, nxt.value, steps.step_name(steps.func_ref(nxt.func))

    def _returned(self, blk: _Local, i: int, n: int, name: str, value: Any, t0: float,
                  dt: float) -> steps.NextStep | None:
        """Step ``n`` of a task returned ``value``: store it as its result, or hand on its next
        step; the next step to run here, if any."""
        self.stats["compute"] += dt
        tv = type(value)
        if (tv is not steps.NextStep and tv is not list) or not steps.is_next(value):
            self._result(blk, i, n, name, value, t0, dt)
            return None
        return self._next(blk, i, n, name, value, t0, dt)

    def _run_rows(self, blk: _Local) -> None:
        """The next tasks of ``blk``, in one loop, while each is a plain call whose result joins the
        rows gathered for the block: what ``_next_task``, ``_run_one``, ``_result`` and ``_row``
        do for such a task, inline (tiny tasks spent more time in those calls than in their own).
        Each task is still taken under the queue's lock (a revoke cuts the block between two), and
        keeps its span, its duration, the heartbeat's view and the rules of the batch's flush;
        anything else (a failure, another kind of result, a later step) goes the general way."""
        if blk.calls is not None or self.decode is not None or not self._plain:
            return
        func, name, keep, q, qlock, send_lock = (self.func, self._task_name, self.keep_params, self.queue,
                                                 self._qlock, self._send_lock)
        tids, payloads, bid, flush_age = blk.tids, blk.payloads, blk.bid, self._flush_age
        perf, mono = time.perf_counter, time.monotonic
        spans: list[Any] = []
        compute, done = 0.0, 0
        try:
            while True:
                with qlock:
                    if not q or q[0] is not blk or blk.next >= blk.end:
                        return
                    i = blk.next
                    blk.next = i + 1
                    self._waiting -= 1
                tid = tids[i]
                arg = payloads[i]
                params = params_of(tid, arg) if keep else None
                t0 = perf()
                self._current = (tid, t0)
                try:
                    value = func(arg)
                except BaseException as exc:  # anything the task raises goes back to the master
                    if isinstance(exc, KeyboardInterrupt) and signals.sigint_seen():
                        raise  # a real Ctrl-C: the program stops
                    self._current = None
                    self._spans.extend(spans)
                    spans.clear()
                    self._task_failed(blk, i, 0, name, exc, t0, perf() - t0)
                    continue
                self._current = None
                dt = perf() - t0
                with send_lock:
                    acc = self._rows  # (None once the helper thread sent the rows gathered so far)
                    if acc is not None and acc.next == i and acc.bid == bid:
                        leaves = acc.match(value)
                        pmatch = acc.pmatch
                        pleaves = pmatch(params) if pmatch is not None and params is not None else None
                        if leaves is not None and (pleaves is not None if pmatch is not None else params is None):
                            acc.rows.rows.append(leaves)
                            if pleaves is not None:
                                acc.params.rows.append(pleaves)  # type: ignore[union-attr]
                            acc.durations.append(dt)
                            acc.next = i + 1
                            self._pending_bytes += 16 * len(leaves)
                            if (self._waiting <= 0 or dt > flush_age or self._pending_bytes > FLUSH_BYTES
                                    or mono() - self._pending_since > flush_age):
                                self._flush_locked()
                            spans.append((tid, t0, dt, "done", name))
                            compute += dt
                            done += 1
                            continue
                self._spans.extend(spans)  # (in the order the tasks ran)
                spans.clear()
                nxt = self._returned(blk, i, 0, name, value, t0, dt)
                if nxt is not None:  # a multi-step task goes on here
                    self._run_steps(blk, i, 1, nxt.func, nxt.value, steps.step_name(steps.func_ref(nxt.func)))
        finally:
            self._spans.extend(spans)
            self.stats["compute"] += compute
            self.stats["tasks"] += done

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
