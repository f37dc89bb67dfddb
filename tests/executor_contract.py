"""The executor contract: what ``mpi4py.futures.MPICommExecutor`` does, checked on either backend.

Under MPI (every rank runs this file, every rank enters each executor)::

    mpiexec -n N python tests/executor_contract.py mpi4py|mpigather [CONTRACT ...]

Rank 0 prints ``CONTRACT-START <name>`` before each contract and ``CONTRACT <name>
pass|fail|error|hang <detail>`` after it, then one ``CONTRACT-SUMMARY`` line.

Without MPI, as a driver that runs both backends and prints a comparison table::

    python tests/executor_contract.py --table [-n 1,2,3] [CONTRACT ...]
    python tests/executor_contract.py --list

Backends: ``mpi4py`` is ``MPICommExecutor(comm, root=0)``; ``mpigather`` is
``mpigather.executor(comm)``. The contracts are our own, written from the behaviour that
mpi4py 4.1.2 documents and tests (``demo/futures/test_futures.py``: the executor, wait,
as_completed, shutdown and pickling groups and ``MPICommExecutorTest``). Where mpi4py's
behaviour is not specified by ``concurrent.futures`` we assert what mpi4py does and say so in
the contract's docstring. A behaviour mpigather leaves out on purpose belongs in the README's
"Coming from mpi4py.futures" section.

Each contract runs in a fresh executor context on ``COMM_WORLD`` (so every contract also
re-enters the executor on the same communicator). Hangs are caught at three levels: waits on
futures have a timeout (status ``hang``); a per-contract watchdog on every rank reports the
contract and ends the job with ``MPI_Abort`` when a rank does not come back (the driver then
starts the job again with the contracts left); ``faulthandler`` dumps every thread's stack.
"""

from __future__ import annotations

import concurrent.futures as cf
import faulthandler
import itertools
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCRIPT = str(Path(__file__).resolve())
BACKENDS = ("mpi4py", "mpigather")
STATUSES = ("pass", "fail", "error", "hang")
WAIT = float(os.environ.get("CONTRACT_WAIT", "8"))  # longest wait for one future, seconds
BUDGET = float(os.environ.get("CONTRACT_BUDGET", "30"))  # default per-contract watchdog, seconds
EXIT_GRACE = 10.0  # once the root's checks are done, leaving the executor gets this long


# ---------------------------------------------------------------------------------------
# Tasks. Module level, so that every rank (all run this file as __main__) can unpickle them.
# ---------------------------------------------------------------------------------------


class ContractError(Exception):
    """A task's own exception type: it must come back as itself, args and all."""


def mul(x: Any, y: Any) -> Any:
    return x * y


def weigh(a: int, b: int = 0, *, c: int = 0, fn: int = 0) -> int:
    return a + 10 * b + 100 * c + 1000 * fn


def nap(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def nap_then_raise(seconds: float) -> None:
    time.sleep(seconds)
    raise ContractError("failed after a nap", seconds)


def raise_contract_error(*args: Any) -> None:
    raise ContractError(*args)


def raise_base(kind: str) -> None:
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt("task interrupted")
    raise SystemExit(3)


def raise_unpicklable_exception() -> None:
    raise ValueError("holds a lock", threading.Lock())


def whoami(pause: float = 0.0) -> tuple[int, int]:
    """(rank in COMM_WORLD, pid) of the process that runs the task."""
    from mpi4py import MPI

    time.sleep(pause)
    return MPI.COMM_WORLD.Get_rank(), os.getpid()


def rank_of(_item: Any, pause: float = 0.0) -> int:
    return whoami(pause)[0]


def touch(path: str, pause: float = 0.0) -> str:
    """Leaves a marker file: proof that the task ran."""
    time.sleep(pause)
    Path(path).write_text("ran")
    return path


def identity(x: Any) -> Any:
    return x


def make_lock() -> Any:
    return threading.Lock()


def _refuse_to_load(why: str) -> Any:
    raise ContractError(why)


class Unloadable:
    """Pickles fine; unpickling it raises ContractError (on whichever side loads it)."""

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return _refuse_to_load, ("this object refuses to be unpickled",)


def make_unloadable() -> Unloadable:
    return Unloadable()


class Unpicklable:
    """Pickling it raises ZeroDivisionError (mpi4py's BadPickle)."""

    def __reduce__(self) -> Any:
        return 1 / 0


def big_array(nbytes: int) -> np.ndarray:
    return np.full(nbytes // 8, 7.0)


def array_stats(a: np.ndarray) -> tuple[float, int]:
    return float(a.sum()), int(a.nbytes)


_INITIALIZED: dict[str, Any] = {}


def initialize(value: Any) -> None:
    _INITIALIZED["value"] = value


def initialized_value(pause: float = 0.0) -> Any:
    time.sleep(pause)
    return _INITIALIZED.get("value")


def failing_initializer() -> None:
    raise ContractError("the initializer refuses")


# ---------------------------------------------------------------------------------------
# Checking helpers
# ---------------------------------------------------------------------------------------


class Hang(Exception):
    """Something that should have finished did not, in the time allowed."""


def expect(cond: Any, what: str) -> None:
    if not cond:
        raise AssertionError(what)


def result(fut: cf.Future, timeout: float | None = None) -> Any:
    """``fut.result()``, but a future that never finishes is a hang, not a wait forever."""
    try:
        return fut.result(WAIT if timeout is None else timeout)
    except cf.TimeoutError:
        if not fut.done():
            raise Hang(f"a future was not done after {WAIT if timeout is None else timeout:g} s") from None
        raise


def exception_of(fut: cf.Future, timeout: float | None = None) -> BaseException | None:
    try:
        return fut.exception(WAIT if timeout is None else timeout)
    except cf.TimeoutError:
        raise Hang(f"a future was not done after {WAIT if timeout is None else timeout:g} s") from None


def goes_on(ex: Any, after: str, fut: cf.Future | None = None, want: Any = None) -> None:
    """The executor still works after ``after``: ``fut`` (already submitted) gives ``want``,
    and a new task gives 42. An exception here is a finding, not an error of the check."""
    todo = [(fut, want, "a task submitted right after it")] if fut is not None else []
    try:
        todo.append((ex.submit(mul, 6, 7), 42, "a new task"))
    except Hang:
        raise
    except Exception as e:
        raise AssertionError(f"after {after}, submit raised {type(e).__name__}: {e}") from None
    for f, value, what in todo:
        try:
            got = result(f)
        except Hang:
            raise
        except BaseException as e:  # noqa: BLE001 - the broken executor is the finding
            raise AssertionError(f"after {after}, {what} failed: {type(e).__name__}: {e}") from None
        expect(got == value, f"after {after}, {what} gave {got!r}, not {value!r}")


def drain(it: Iterable[Any]) -> list[Any]:
    """All results of a map iterator, turning a stall into a hang."""
    out = []
    try:
        for x in it:
            out.append(x)
    except cf.TimeoutError:
        raise Hang(f"map stopped after {len(out)} results (TimeoutError)") from None
    return out


def raises(kind: type[BaseException] | tuple[type[BaseException], ...], fn: Callable[..., Any], *args: Any,
           what: str = "", **kwargs: Any) -> BaseException:
    """Call ``fn``; it must raise ``kind``. Returns the exception."""
    label = what or getattr(fn, "__name__", repr(fn))
    names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    try:
        fn(*args, **kwargs)
    except kind as e:
        return e
    except Hang:
        raise
    except BaseException as e:  # noqa: BLE001 - the wrong exception is the finding
        raise AssertionError(f"{label}: raised {type(e).__name__}: {e}, not {names}") from None
    raise AssertionError(f"{label}: raised nothing, expected {names}")


def eventually(cond: Callable[[], Any], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(what)
        time.sleep(0.01)


def markers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------------------
# The registry and the per-rank context
# ---------------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a contract sees on one rank."""

    backend: str
    comm: Any  # COMM_WORLD: every executor of the run is made on it
    rank: int
    size: int
    tmp: Path  # a folder of this contract, shared by all ranks

    @property
    def nw(self) -> int:
        """How many workers an executor over ``comm`` has (mpi4py: a thread with one rank)."""
        return max(1, self.size - 1)

    def executor(self, comm: Any = None, root: int | None = None, **kwargs: Any) -> Any:
        """The backend's context manager. ``root`` is left out when not given."""
        comm = self.comm if comm is None else comm
        extra = {} if root is None else {"root": root}
        if self.backend == "mpi4py":
            from mpi4py.futures import MPICommExecutor

            return MPICommExecutor(comm, **extra, **kwargs)
        import mpigather

        return mpigather.executor(comm, **extra, **kwargs)


@dataclass
class Contract:
    name: str
    run: Callable[[Ctx], None]  # called on every rank; raises on a finding
    budget: float
    doc: str


CONTRACTS: dict[str, Contract] = {}


class _State:
    """What the watchdog knows about the contract in progress on this rank."""

    name: str | None = None
    index = -1
    phase = "starting"
    outcome: tuple[str, str] | None = None  # the root's checks, once they are done
    reported = False


STATE = _State()


def classify(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, AssertionError):
        return "fail", str(exc) or "assertion failed"
    if isinstance(exc, Hang):
        return "hang", str(exc)
    return "error", f"{type(exc).__name__}: {exc}"


def on_root(budget: float = BUDGET, **executor_kwargs: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A contract checked on the root: ``body(ex, ctx)``. Every rank enters the executor
    (``with ... as ex: if ex is not None:``); the other ranks must get None and come back."""

    def deco(body: Callable[..., None]) -> Callable[..., None]:
        def run(ctx: Ctx) -> None:
            STATE.phase = "entering the executor"
            with ctx.executor(**executor_kwargs) as ex:
                if ex is not None:
                    STATE.phase = "checks on the root"
                    try:
                        body(ex, ctx)
                        STATE.outcome = ("pass", "")
                    except BaseException as e:  # noqa: BLE001 - every outcome is reported
                        STATE.outcome = classify(e)
                        if STATE.outcome[0] == "error":
                            sys.stderr.write(f"[{STATE.name}] {traceback.format_exc()}")
                    WATCHDOG.shorten(EXIT_GRACE)
                    expect(ctx.rank == 0, f"rank {ctx.rank} got an executor; only root 0 should")
                else:
                    expect(ctx.rank != 0, "the root got None instead of an executor")
                STATE.phase = "leaving the executor"
            if ctx.rank == 0 and STATE.outcome is not None and STATE.outcome[0] != "pass":
                raise _Reported()

        CONTRACTS[body.__name__] = Contract(body.__name__, run, budget, (body.__doc__ or "").strip())
        return body

    return deco


def on_every_rank(budget: float = BUDGET) -> Callable[[Callable[[Ctx], None]], Callable[[Ctx], None]]:
    """A contract that runs on every rank and enters executors itself."""

    def deco(fn: Callable[[Ctx], None]) -> Callable[[Ctx], None]:
        CONTRACTS[fn.__name__] = Contract(fn.__name__, fn, budget, (fn.__doc__ or "").strip())
        return fn

    return deco


class _Reported(Exception):
    """The root's checks found something (in STATE.outcome); the executor was left cleanly."""


# ---------------------------------------------------------------------------------------
# The contracts. Docstrings say what is checked and, where it matters, why.
# ---------------------------------------------------------------------------------------

# -- submit and results -------------------------------------------------------------------


@on_root()
def submit_result(ex: Any, ctx: Ctx) -> None:
    """submit returns a concurrent.futures.Future whose result is the task's return value."""
    f = ex.submit(pow, 2, 10)
    expect(isinstance(f, cf.Future), f"submit returned {type(f).__name__}, not a concurrent.futures.Future")
    expect(result(f) == 1024, f"pow(2, 10) gave {f.result()!r}")
    expect(f.done() and not f.cancelled() and f.exception() is None, "a finished future is not in the done state")
    expect(result(ex.submit(nap, 0.0, "x")) == "x", "a second submit gave the wrong value")


@on_root()
def submit_args_kwargs(ex: Any, ctx: Ctx) -> None:
    """Positional and keyword arguments reach the task, even a keyword named ``fn``."""
    expect(result(ex.submit(weigh, 1, 2)) == 21, "positional arguments")
    expect(result(ex.submit(weigh, 1, b=2, c=3)) == 321, "keyword arguments")
    expect(result(ex.submit(weigh, a=1, b=2, c=3)) == 321, "keyword-only call")
    expect(result(ex.submit(weigh, 1, fn=4)) == 4001, "a keyword argument named fn (submit's fn is positional-only)")


@on_root()
def exception_type(ex: Any, ctx: Ctx) -> None:
    """A task's exception comes back as its own type with its args; with workers in other
    processes, the worker's traceback travels as ``__cause__`` (mpi4py: RemoteTraceback)."""
    f = ex.submit(raise_contract_error, "boom", 7)
    e = exception_of(f)
    expect(type(e) is ContractError, f"got {type(e).__name__}: {e}, not ContractError")
    expect(e.args == ("boom", 7), f"args {e.args!r}, not ('boom', 7)")
    raises(ContractError, f.result, 0, what="future.result()")
    expect(type(exception_of(ex.submit(divmod, 1, 0))) is ZeroDivisionError, "a builtin exception changed type")
    if ctx.size > 1:
        expect(e.__cause__ is not None, "no __cause__ with the worker's traceback")
        expect("raise_contract_error" in str(e.__cause__), f"the cause does not show the remote traceback: "
               f"{str(e.__cause__)[:200]!r}")


@on_root()
def exception_unpicklable(ex: Any, ctx: Ctx) -> None:
    """A task raising an exception that cannot be pickled fails that future only (mpi4py:
    with workers, the TypeError of pickling it); the executor goes on."""
    e = exception_of(ex.submit(raise_unpicklable_exception))
    expect(isinstance(e, Exception), f"the future did not fail: {e!r}")
    goes_on(ex, "a task raising an unpicklable exception")


@on_root()
def bad_call(ex: Any, ctx: Ctx) -> None:
    """A bad argument (not callable, wrong arity) fails that future only with TypeError."""
    expect(isinstance(exception_of(ex.submit(42)), TypeError), "submit(42) did not fail with TypeError")
    expect(isinstance(exception_of(ex.submit(mul, 1)), TypeError), "a missing argument did not fail with TypeError")
    goes_on(ex, "bad calls")


@on_root()
def keyboard_interrupt_in_task(ex: Any, ctx: Ctx) -> None:
    """A task raising KeyboardInterrupt fails that future only, with KeyboardInterrupt (mpi4py
    catches BaseException in the worker, and in its one-rank thread); the executor goes on."""
    e = exception_of(ex.submit(raise_base, "KeyboardInterrupt"))
    expect(isinstance(e, KeyboardInterrupt), f"got {e!r}, not KeyboardInterrupt")
    goes_on(ex, "a task raising KeyboardInterrupt")


@on_root()
def system_exit_in_task(ex: Any, ctx: Ctx) -> None:
    """A task calling sys.exit(3) fails that future only, with SystemExit(3); no rank exits."""
    e = exception_of(ex.submit(raise_base, "SystemExit"))
    expect(isinstance(e, SystemExit) and e.code == 3, f"got {e!r}, not SystemExit(3)")
    goes_on(ex, "a task raising SystemExit")


@on_root()
def many_tasks(ex: Any, ctx: Ctx) -> None:
    """A thousand small submits and a thousand-item map all come back right."""
    fs = [ex.submit(abs, -i) for i in range(1000)]
    expect([result(f) for f in fs] == list(range(1000)), "wrong results")
    expect(drain(ex.map(abs, range(-999, 1), timeout=4 * WAIT)) == list(range(999, -1, -1)), "wrong map results")


@on_root()
def submit_from_threads(ex: Any, ctx: Ctx) -> None:
    """submit may be called from several threads at once."""
    out: dict[int, list[cf.Future]] = {}

    def client(k: int) -> None:
        out[k] = [ex.submit(mul, k, i) for i in range(50)]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    expect(len(out) == 4, "a submitting thread did not finish")
    for k, fs in out.items():
        expect([result(f) for f in fs] == [k * i for i in range(50)], f"thread {k}: wrong results")


# -- map and starmap ----------------------------------------------------------------------


@on_root()
def map_ordered(ex: Any, ctx: Ctx) -> None:
    """map gives results in input order, from lists and from one-shot generators."""
    want = list(map(pow, range(20), range(20)))
    expect(drain(ex.map(pow, range(20), range(20))) == want, "map over ranges")
    expect(drain(ex.map(pow, (i for i in range(20)), iter(range(20)))) == want, "map over generators")
    it = ex.map(nap, [0.2, 0.0, 0.1], ["a", "b", "c"])
    expect(isinstance(it, Iterator), "map did not return an iterator")
    expect(drain(it) == ["a", "b", "c"], "results out of input order")


@on_root()
def map_exception(ex: Any, ctx: Ctx) -> None:
    """A failing item raises its exception when the iterator reaches it, after the earlier results."""
    it = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    expect(next(it) == (0, 1) and next(it) == (0, 1), "the results before the failure")
    raises(ZeroDivisionError, next, it, what="the third item")
    # a map large enough to be cut into chunks (no chunksize) fails at the same place; so does
    # ours with an explicit chunksize, the failing call in the middle of its chunk (mpi4py's
    # loses the results of the chunk before it)
    n = 40 * ctx.nw
    for kw in ({}, {"chunksize": 7}) if ctx.backend == "mpigather" else ({},):
        it = ex.map(divmod, [1] * n, [0 if i == n - 9 else 2 for i in range(n)], **kw)
        got = [next(it) for _ in range(n - 9)]
        expect(got == [(0, 1)] * (n - 9), f"the results before the failure ({kw})")
        raises(ZeroDivisionError, next, it, what=f"item {n - 9} of {n} ({kw})")


@on_root()
def map_timeout(ex: Any, ctx: Ctx) -> None:
    """map(timeout=) raises TimeoutError when a result is late, after yielding the ready ones,
    without waiting for the slow task."""
    got: list[Any] = []
    t0 = time.monotonic()

    def consume() -> None:
        for x in ex.map(nap, [0, 0, 1.5], timeout=0.5):
            got.append(x)

    raises(cf.TimeoutError, consume, what="map(nap, [0, 0, 1.5], timeout=0.5)")
    dt = time.monotonic() - t0
    expect(got == [None, None], f"yielded {got!r} before the timeout, not [None, None]")
    expect(dt < 1.3, f"the TimeoutError came after {dt:.2f} s: it waited for the slow task")
    expect(drain(ex.map(nap, [0, 0, 0], timeout=WAIT)) == [None] * 3, "a timeout long enough must not raise")


@on_root()
def map_timeout_is_total(ex: Any, ctx: Ctx) -> None:
    """mpi4py (like concurrent.futures) counts map's timeout from the map call for the whole
    iteration, not per result: 8 tasks of 0.25 s with timeout=0.6 cannot all finish in time
    on two or fewer workers."""
    got: list[Any] = []

    def consume() -> None:
        for x in ex.map(nap, [0.25] * 8, range(8), timeout=0.6):
            got.append(x)

    if ctx.nw > 2:
        return
    raises(cf.TimeoutError, consume, what="map(nap, [0.25]*8, timeout=0.6)")
    expect(len(got) < 8, f"all {len(got)} results came before the TimeoutError")


@on_root()
def map_chunksize(ex: Any, ctx: Ctx) -> None:
    """chunksize (any value >= 1) gives the same results for map, starmap and unordered map;
    chunksize < 1 raises ValueError."""
    want = list(map(pow, range(40), range(40)))
    for k in (1, 3, 7, 40, 100):
        expect(drain(ex.map(pow, range(40), range(40), chunksize=k, timeout=WAIT)) == want, f"map chunksize={k}")
        got = drain(ex.map(pow, range(40), range(40), chunksize=k, unordered=True, timeout=WAIT))
        expect(sorted(got) == sorted(want), f"unordered map chunksize={k}")
    for bad in (0, -1):
        raises(ValueError, lambda bad=bad: list(ex.map(pow, range(4), range(4), chunksize=bad)),
               what=f"map chunksize={bad}")


@on_root()
def map_chunksize_groups(ex: Any, ctx: Ctx) -> None:
    """mpi4py sends each chunk of ``chunksize`` consecutive items to one worker as one task
    (its documented meaning). Items of one chunk therefore run on the same rank."""
    ranks = drain(ex.map(rank_of, range(12), [0.05] * 12, chunksize=4, timeout=WAIT))
    chunks = [set(ranks[i:i + 4]) for i in range(0, 12, 4)]
    expect(all(len(c) == 1 for c in chunks), f"the items of a chunk ran on different ranks: {ranks}")


@on_root()
def map_unordered(ex: Any, ctx: Ctx) -> None:
    """map(unordered=True) yields every result once, in completion order: with two or more
    workers a slow first item does not hold back the others."""
    got = drain(ex.map(pow, range(10), range(10), unordered=True, timeout=WAIT))
    expect(sorted(got) == sorted(map(pow, range(10), range(10))), f"wrong results {got}")
    if ctx.nw >= 2:
        got = drain(ex.map(nap, [1.0, 0.0, 0.0], ["slow", "a", "b"], unordered=True, timeout=WAIT))
        expect(sorted(got) == ["a", "b", "slow"], f"wrong results {got}")
        expect(got[-1] == "slow", f"the slow item was not last: {got}")


@on_root()
def map_unordered_timeout(ex: Any, ctx: Ctx) -> None:
    """Unordered map with a timeout yields the results of the free workers, then raises
    TimeoutError for the slow one (as mpi4py's test: one slow task, one fast task per other worker)."""
    got: list[Any] = []

    def consume() -> None:
        for x in ex.map(nap, [1.0] + [0.0] * (ctx.nw - 1), unordered=True, timeout=0.5):
            got.append(x)

    raises(cf.TimeoutError, consume, what="unordered map with a slow task")
    expect(got == [None] * (ctx.nw - 1), f"yielded {len(got)} results before the timeout, not {ctx.nw - 1}")


@on_root()
def map_buffersize(ex: Any, ctx: Ctx) -> None:
    """map(buffersize=n) reads its input lazily: it keeps at most n tasks ahead of the results
    taken, so an infinite iterator works (here guarded: reading 500 items is a failure)."""
    pulled: list[int] = []

    def source() -> Iterator[int]:
        for i in itertools.count():
            if i >= 500:
                raise ContractError("map read 500 items of an infinite iterator")
            pulled.append(i)
            yield i

    it = ex.map(mul, source(), itertools.repeat(2), buffersize=3, timeout=WAIT)
    got = [next(it) for _ in range(6)]
    expect(got == [0, 2, 4, 6, 8, 10], f"wrong results {got}")
    expect(len(pulled) <= 6 + 3 + 1, f"read {len(pulled)} items ahead to give 6 results with buffersize=3")
    it.close()
    want = [2 * i for i in range(20)]
    expect(drain(ex.map(mul, range(20), itertools.repeat(2), chunksize=3, buffersize=2, timeout=WAIT)) == want,
           "buffersize with chunksize")
    expect(drain(ex.map(abs, iter([]), buffersize=2)) == [], "map over [] with buffersize")


@on_root()
def map_buffersize_arguments(ex: Any, ctx: Ctx) -> None:
    """buffersize must be an int >= 1 (TypeError, ValueError) and cannot go with unordered (ValueError)."""
    raises(ValueError, lambda: list(ex.map(abs, range(3), buffersize=0)), what="buffersize=0")
    raises(ValueError, lambda: list(ex.map(abs, range(3), buffersize=-1)), what="buffersize=-1")
    raises(TypeError, lambda: list(ex.map(abs, range(3), buffersize=2.0)), what="buffersize=2.0")
    raises(ValueError, lambda: list(ex.map(abs, range(3), buffersize=2, unordered=True)),
           what="buffersize with unordered")


@on_root()
def map_close_cancels(ex: Any, ctx: Ctx) -> None:
    """Closing a map iterator early cancels the tasks that have not started (mpi4py and
    concurrent.futures do): far fewer than all of them leave their marker."""
    n = 4 * ctx.nw + 6
    it = ex.map(touch, [str(ctx.tmp / f"m{i}") for i in range(n)], [0.3] * n)
    result_first = next(it)
    expect(result_first.endswith("m0"), f"first result {result_first!r}")
    it.close()
    ex.shutdown(wait=True)
    ran = markers(ctx.tmp)
    expect(len(ran) < n, f"all {n} tasks ran after the iterator was closed at the first result")


@on_root()
def map_empty(ex: Any, ctx: Ctx) -> None:
    """map over empty input (and map with no iterables) gives nothing (starmap and buffersize:
    in their own contracts)."""
    expect(drain(ex.map(abs, [])) == [], "map over []")
    expect(drain(ex.map(abs)) == [], "map with no iterables")
    expect(drain(ex.map(abs, [], chunksize=3)) == [], "map over [] with chunksize")
    expect(drain(ex.map(abs, [], unordered=True)) == [], "unordered map over []")


@on_root()
def map_unequal_lengths(ex: Any, ctx: Ctx) -> None:
    """Like map(), the shortest iterable ends the map (an infinite one is fine beside a finite one)."""
    expect(drain(ex.map(pow, range(10), [2, 2, 2])) == [0, 1, 4], "range(10) with 3 exponents")
    expect(drain(ex.map(pow, [1, 2, 3], itertools.count())) == [1, 2, 9], "a finite list with count()")


@on_root()
def starmap(ex: Any, ctx: Ctx) -> None:
    """starmap(fn, iterable of argument tuples), from a list or an iterator, with chunksize,
    unordered and timeout, and over empty input."""
    seq = [(a, a) for a in range(12)]
    want = [a**a for a in range(12)]
    expect(drain(ex.starmap(pow, seq)) == want, "starmap over a list")
    expect(drain(ex.starmap(pow, iter(seq))) == want, "starmap over an iterator")
    expect(drain(ex.starmap(pow, seq, chunksize=5)) == want, "starmap with chunksize")
    expect(sorted(drain(ex.starmap(pow, seq, unordered=True))) == sorted(want), "unordered starmap")
    expect(drain(ex.starmap(pow, seq, timeout=WAIT)) == want, "starmap with a timeout")
    raises(ValueError, lambda: list(ex.starmap(pow, seq, chunksize=0)), what="starmap chunksize=0")
    expect(drain(ex.starmap(pow, [])) == [], "starmap over []")


# -- futures in concurrent.futures' functions ---------------------------------------------


@on_root()
def as_completed(ex: Any, ctx: Ctx) -> None:
    """as_completed yields each future once (duplicates too) and raises TimeoutError after
    the ready ones when a future is late."""
    fs = [ex.submit(nap, 0.3, "slow"), ex.submit(nap, 0.0, "quick"), ex.submit(mul, 2, 3)]
    seen = list(cf.as_completed(fs + [fs[0]], timeout=WAIT))
    expect(len(seen) == 3 and set(seen) == set(fs), f"as_completed yielded {len(seen)} futures for 3")
    fast = ex.submit(mul, 1, 1)
    slow = ex.submit(nap, 1.5)
    got: list[cf.Future] = []

    def consume() -> None:
        for f in cf.as_completed([slow, fast], timeout=0.6):
            got.append(f)

    raises(cf.TimeoutError, consume, what="as_completed with a late future")
    expect(got == [fast], f"yielded {len(got)} futures before the timeout, not just the fast one")


@on_root()
def wait_first_completed(ex: Any, ctx: Ctx) -> None:
    """wait(FIRST_COMPLETED) returns as soon as the quick task is done; the slow one is not."""
    quick = ex.submit(mul, 21, 2)
    slow = ex.submit(nap, 1.0)
    done, not_done = cf.wait([slow, quick], timeout=WAIT, return_when=cf.FIRST_COMPLETED)
    expect(done == {quick} and not_done == {slow}, f"done={len(done)} not_done={len(not_done)}: "
           f"the slow task counted as done={slow in done}")


@on_root()
def wait_first_exception(ex: Any, ctx: Ctx) -> None:
    """wait(FIRST_EXCEPTION) returns when a task fails; later tasks are not done."""
    ok = ex.submit(mul, 2, 21)
    bad = ex.submit(nap_then_raise, 0.1)
    slow = ex.submit(nap, 1.0)
    done, not_done = cf.wait([ok, bad, slow], timeout=WAIT, return_when=cf.FIRST_EXCEPTION)
    expect(done == {ok, bad} and not_done == {slow}, f"done={len(done)} not_done={len(not_done)}")


@on_root()
def wait_all_completed(ex: Any, ctx: Ctx) -> None:
    """wait(ALL_COMPLETED) returns every future, failed ones included; a short timeout leaves
    the slow one out."""
    fs = [ex.submit(divmod, 2, 0), ex.submit(mul, 2, 21), ex.submit(nap, 0.2)]
    done, not_done = cf.wait(fs, timeout=WAIT, return_when=cf.ALL_COMPLETED)
    expect(done == set(fs) and not not_done, f"done={len(done)} of 3")
    quick, slow = ex.submit(mul, 6, 7), ex.submit(nap, 1.0)
    done, not_done = cf.wait([quick, slow], timeout=0.4)
    expect(done == {quick} and not_done == {slow}, f"with timeout=0.4: done={len(done)} not_done={len(not_done)}")


@on_root()
def done_callbacks(ex: Any, ctx: Ctx) -> None:
    """add_done_callback: called once with the future, also for a failed task; added after
    completion it is called at once. A callback that raises does not break the executor."""
    calls: list[cf.Future] = []
    f = ex.submit(nap, 0.2, 5)
    f.add_done_callback(calls.append)
    expect(result(f) == 5, "wrong result")
    eventually(lambda: calls, WAIT, "the callback was not called")
    late: list[cf.Future] = []
    f.add_done_callback(late.append)
    expect(late == [f], "a callback added after completion was not called at once")
    g = ex.submit(raise_contract_error, "x")
    g.add_done_callback(calls.append)
    exception_of(g)
    eventually(lambda: len(calls) == 2, WAIT, "the callback of a failed task was not called")
    h = ex.submit(mul, 2, 2)
    h.add_done_callback(lambda _f: 1 / 0)
    expect(result(h) == 4, "the future with a raising callback")
    time.sleep(0.2)
    expect(calls == [f, g], f"callbacks called {len(calls)} times for 2 futures")
    goes_on(ex, "a raising callback")


@on_root()
def callback_submits(ex: Any, ctx: Ctx) -> None:
    """A done-callback may submit more work (chaining)."""
    chained: list[cf.Future] = []
    f = ex.submit(nap, 0.2, 6)
    f.add_done_callback(lambda fut: chained.append(ex.submit(mul, fut.result(), 7)))
    eventually(lambda: chained, WAIT, "the callback did not run")
    expect(result(chained[0]) == 42, "the chained task")


# -- cancel and future states -------------------------------------------------------------


def _occupy(ex: Any, ctx: Ctx, seconds: float) -> list[cf.Future]:
    """Keep every worker busy for a while (mpi4py hands a worker one task at a time)."""
    return [ex.submit(nap, seconds, "blocker") for _ in range(ctx.nw)]


@on_root()
def cancel_pending(ex: Any, ctx: Ctx) -> None:
    """cancel() of a task still waiting for a worker returns True; it is then cancelled()
    and result() raises CancelledError; the tasks before it still complete."""
    blockers = _occupy(ex, ctx, 0.8)
    targets = [ex.submit(touch, str(ctx.tmp / f"t{i}")) for i in range(4)]
    ok = [t.cancel() for t in targets]
    expect(all(ok), f"cancel() of pending tasks returned {ok}")
    expect(all(t.cancelled() and t.done() for t in targets), "cancelled futures are not cancelled()/done()")
    raises(cf.CancelledError, targets[0].result, 0, what="result() of a cancelled future")
    expect([result(b) for b in blockers] == ["blocker"] * ctx.nw, "the tasks before the cancelled ones")
    time.sleep(0.2)
    goes_on(ex, "cancelling pending tasks")


@on_root()
def cancelled_never_runs(ex: Any, ctx: Ctx) -> None:
    """A task whose cancel() returned True never runs (no marker appears), and its would-be
    result never breaks the executor: later tasks and shutdown work."""
    blockers = _occupy(ex, ctx, 0.8)
    targets = [ex.submit(touch, str(ctx.tmp / f"t{i}")) for i in range(4)]
    cancelled = [t for t in targets if t.cancel()]
    for b in blockers:
        result(b)
    goes_on(ex, "cancelling pending tasks")
    time.sleep(0.3)
    goes_on(ex, "cancelling pending tasks (later)")
    ran = [n for n in markers(ctx.tmp) if int(n[1:]) in {targets.index(t) for t in cancelled}]
    expect(not ran, f"{len(ran)} of {len(cancelled)} cancelled tasks ran anyway: {ran}")


@on_root()
def cancel_running(ex: Any, ctx: Ctx) -> None:
    """cancel() of a running task returns False, and its result still arrives (mpi4py marks a
    task RUNNING when it sends it to a worker)."""
    f = ex.submit(nap, 1.0, "kept")
    time.sleep(0.4)
    expect(f.cancel() is False, "cancel() of a running task returned True")
    expect(not f.cancelled(), "a running task reports cancelled()")
    goes_on(ex, "cancel() of a running task", f, "kept")


@on_root()
def future_states(ex: Any, ctx: Ctx) -> None:
    """A future is running() while its task runs, then done(); cancel() of a finished one is False."""
    f = ex.submit(nap, 1.0, "x")
    eventually(f.running, 0.7, "running() never became True while the task ran")
    expect(not f.done(), "done() while running")
    expect(result(f) == "x", "the result")
    expect(f.done() and not f.running() and not f.cancelled(), "states after completion")
    expect(f.cancel() is False and not f.cancelled(), "cancel() of a finished task")


# -- shutdown -----------------------------------------------------------------------------


@on_root()
def shutdown_waits(ex: Any, ctx: Ctx) -> None:
    """shutdown(wait=True) returns once every submitted task is done (none is dropped)."""
    fs = [ex.submit(nap, 0.02, i) for i in range(30)]
    ex.shutdown(wait=True)
    expect(all(f.done() for f in fs), f"{sum(not f.done() for f in fs)} futures not done after shutdown(wait=True)")
    expect([f.result() for f in fs] == list(range(30)), "wrong results")


@on_root()
def shutdown_nowait(ex: Any, ctx: Ctx) -> None:
    """shutdown(wait=False) returns at once; the task already submitted still completes."""
    f = ex.submit(nap, 0.8, "late")
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    dt = time.monotonic() - t0
    expect(dt < 0.5, f"shutdown(wait=False) took {dt:.2f} s")
    expect(result(f) == "late", "the task submitted before shutdown")


@on_root()
def shutdown_twice(ex: Any, ctx: Ctx) -> None:
    """shutdown may be called again, with any arguments."""
    result(ex.submit(mul, 1, 2))
    ex.shutdown()
    ex.shutdown()
    ex.shutdown(wait=False)
    ex.shutdown(wait=True, cancel_futures=True)


@on_root()
def submit_after_shutdown(ex: Any, ctx: Ctx) -> None:
    """After shutdown, submit and map raise RuntimeError."""
    ex.shutdown()
    raises(RuntimeError, ex.submit, pow, 2, 5, what="submit after shutdown")
    raises(RuntimeError, lambda: list(ex.map(abs, [1, 2])), what="map after shutdown")


@on_root()
def shutdown_cancel_futures(ex: Any, ctx: Ctx) -> None:
    """shutdown(cancel_futures=True) cancels the tasks still waiting; running ones finish."""
    blockers = _occupy(ex, ctx, 1.0)
    time.sleep(0.3)  # the blockers are on the workers now: they run, they are not waiting
    waiting = [ex.submit(touch, str(ctx.tmp / f"w{i}")) for i in range(5)]
    ex.shutdown(wait=True, cancel_futures=True)
    expect(all(w.cancelled() for w in waiting), f"{sum(not w.cancelled() for w in waiting)} of 5 waiting tasks "
           "not cancelled")
    expect([result(b) for b in blockers] == ["blocker"] * ctx.nw, "the running tasks")
    expect(not markers(ctx.tmp), f"cancelled tasks ran: {markers(ctx.tmp)}")


@on_root()
def shutdown_cancel_wait(ex: Any, ctx: Ctx) -> None:
    """mpi4py's own test: with a long queue behind busy workers, shutdown(wait=False,
    cancel_futures=True), then concurrent.futures.wait() on the first task and the last two,
    returns at once: the first is done, the last two are cancelled. (wait() counts a cancelled
    future as done only once the executor has told its waiters.)"""
    ex.bootup()
    first = ex.submit(nap, 0.1)
    for _ in range(100 * ctx.nw):
        ex.submit(nap, 0.1)
    last = [ex.submit(nap, 0.0), ex.submit(nap, 0.0)]
    time.sleep(0.2)
    ex.shutdown(wait=False, cancel_futures=True)
    _, not_done = cf.wait([first, *last], timeout=WAIT)
    if not_done:
        raise Hang(f"concurrent.futures.wait: {len(not_done)} of 3 futures not done after {WAIT:g} s")
    expect(not first.cancelled(), "the first task, running for 0.2 s, was cancelled")
    expect(all(f.cancelled() for f in last), "the last two tasks were not cancelled")


@on_every_rank()
def leaving_waits(ctx: Ctx) -> None:
    """Leaving the with block waits for the tasks still running (shutdown(wait=True))."""
    fs: list[cf.Future] = []
    with ctx.executor() as ex:
        if ex is not None:
            fs = [ex.submit(nap, 0.3, i) for i in range(2 * ctx.nw)]
    if ctx.rank == 0:
        expect(all(f.done() for f in fs), "futures not done after leaving the with block")
        expect([f.result() for f in fs] == list(range(2 * ctx.nw)), "wrong results")


@on_every_rank()
def body_exception(ctx: Ctx) -> None:
    """An exception in the root's with block propagates on the root, and the workers still
    leave the executor (nobody hangs)."""
    try:
        with ctx.executor() as ex:
            if ex is not None:
                result(ex.submit(mul, 1, 1))
                raise ContractError("raised in the with block")
    except ContractError:
        expect(ctx.rank == 0, f"rank {ctx.rank} saw the root's exception")
        return
    expect(ctx.rank != 0, "the exception raised in the with block did not propagate")


# -- the executor object ------------------------------------------------------------------


@on_root()
def num_workers(ex: Any, ctx: Ctx) -> None:
    """num_workers is the number of worker processes (comm size - 1; 1 with a single rank)."""
    expect(ex.num_workers == ctx.nw, f"num_workers={ex.num_workers}, not {ctx.nw}")


@on_root()
def bootup(ex: Any, ctx: Ctx) -> None:
    """bootup() (wait=True or False) returns the executor itself; after shutdown it raises RuntimeError."""
    expect(ex.bootup() is ex, "bootup() did not return the executor")
    expect(ex.bootup(wait=False) is ex, "bootup(wait=False) did not return the executor")
    expect(result(ex.submit(mul, 2, 3)) == 6, "submit after bootup")
    ex.shutdown()
    raises(RuntimeError, ex.bootup, what="bootup after shutdown")


@on_root()
def is_executor(ex: Any, ctx: Ctx) -> None:
    """The root's object is a concurrent.futures.Executor (so generic code, and ``with ex:``
    shutting it down, work as with MPIPoolExecutor)."""
    expect(isinstance(ex, cf.Executor), f"{type(ex).__name__} is not a concurrent.futures.Executor")
    with ex as same:
        expect(same is ex, "with ex: did not give the executor")
        expect(result(same.submit(mul, 2, 3)) == 6, "submit inside with ex:")
    raises(RuntimeError, ex.submit, abs, 1, what="submit after with ex: (which shuts it down)")


# -- initializer, worker identity ---------------------------------------------------------


@on_root(initializer=initialize, initargs=("ready",))
def initializer(ex: Any, ctx: Ctx) -> None:
    """initializer(*initargs) runs in every worker before its tasks."""
    got = [result(f) for f in [ex.submit(initialized_value, 0.05) for _ in range(4 * ctx.nw)]]
    expect(got == ["ready"] * len(got), f"tasks saw {sorted(set(map(repr, got)))}")


@on_root(initializer=failing_initializer)
def initializer_fails(ex: Any, ctx: Ctx) -> None:
    """An initializer that raises breaks the executor: futures fail with BrokenExecutor (or
    submit raises it); nothing hangs and every rank leaves the executor."""

    def outcome() -> BaseException | None:
        try:
            return exception_of(ex.submit(mul, 2, 3))
        except cf.BrokenExecutor as e:
            return e

    first = outcome()
    expect(isinstance(first, cf.BrokenExecutor), f"the first task gave {first!r}, not BrokenExecutor")
    again = outcome()
    expect(isinstance(again, cf.BrokenExecutor), f"a later task gave {again!r}, not BrokenExecutor")


@on_root()
def task_knows_worker(ex: Any, ctx: Ctx) -> None:
    """A task learns where it runs from MPI itself: MPI.COMM_WORLD.Get_rank() inside the task
    is its worker's rank (never the root's when there are workers), and every worker gets
    tasks. With one rank, tasks run in the root process (mpi4py: a thread)."""
    got = [result(f) for f in [ex.submit(whoami, 0.15) for _ in range(4 * ctx.nw)]]
    ranks = {r for r, _ in got}
    if ctx.size == 1:
        expect(ranks == {0}, f"ranks {ranks}")
        return
    expect(ranks == set(range(1, ctx.size)), f"tasks ran on ranks {sorted(ranks)}, not on each of "
           f"{list(range(1, ctx.size))}")
    expect(os.getpid() not in {p for _, p in got}, "a task ran in the root's process")


# -- entering, re-entering, root and communicator ------------------------------------------


@on_every_rank()
def reuse_back_to_back(ctx: Ctx) -> None:
    """Three executors in a row on the same communicator each work."""
    for round_ in range(3):
        with ctx.executor() as ex:
            if ex is not None:
                expect(result(ex.submit(mul, round_, 2)) == 2 * round_, f"executor #{round_ + 1}")
                expect(drain(ex.map(abs, [-1, -2])) == [1, 2], f"map in executor #{round_ + 1}")


@on_every_rank()
def reuse_same_object(ctx: Ctx) -> None:
    """The same executor context manager object can be entered again after it was left
    (mpi4py's MPICommExecutor allows it)."""
    cm = ctx.executor()
    for round_ in range(2):
        with cm as ex:
            if ex is not None:
                expect(result(ex.submit(mul, round_, 3)) == 3 * round_, f"use #{round_ + 1} of the same object")


@on_every_rank()
def bad_root(ctx: Ctx) -> None:
    """A root outside the communicator (-1, -size, size) raises ValueError on every rank as the
    executor is made, before any rank waits for another."""
    for root in (-1, -ctx.size, ctx.size):
        raises(ValueError, ctx.executor, root=root, what=f"executor(root={root})")


@on_every_rank()
def bad_comm(ctx: Ctx) -> None:
    """An intercommunicator raises ValueError on every rank as the executor is made."""
    if ctx.size == 1:
        return
    leader = ctx.rank == 0
    local = ctx.comm.Split(int(leader), 0)
    inter = local.Create_intercomm(0, ctx.comm, 1 if leader else 0)
    try:
        raises(ValueError, ctx.executor, inter, what="an executor on an intercommunicator")
    finally:
        inter.Free()
        local.Free()


@on_every_rank()
def nested_enter_raises(ctx: Ctx) -> None:
    """Entering a context manager object that is already in use raises RuntimeError (a clear
    error, not something else). Checked on COMM_SELF, on every rank."""
    from mpi4py import MPI

    cm = ctx.executor(MPI.COMM_SELF)
    with cm as ex:
        expect(ex is not None, "no executor on COMM_SELF")

        def again() -> None:
            with cm:
                pass

        raises(RuntimeError, again, what="entering the same executor object twice")


@on_every_rank()
def comm_self(ctx: Ctx) -> None:
    """On COMM_SELF every rank is its own root: submit works and tasks run concurrently with
    the caller (mpi4py runs them in a thread), so map's timeout still applies."""
    from mpi4py import MPI

    with ctx.executor(MPI.COMM_SELF) as ex:
        expect(ex is not None, "no executor on COMM_SELF")
        expect(result(ex.submit(whoami))[0] == ctx.rank, "the task ran on another rank")
        raises(cf.TimeoutError, lambda: list(ex.map(nap, [1.0, 0.0], timeout=0.2)),
               what="map(nap, [1.0, 0.0], timeout=0.2) on COMM_SELF")


@on_every_rank()
def root_last_rank(ctx: Ctx) -> None:
    """Any rank can be the root (here the last one): it gets the executor and the others,
    rank 0 included, serve tasks and get None."""
    root = ctx.size - 1
    with ctx.executor(root=root) as ex:
        if ctx.rank == root:
            expect(ex is not None, f"root {root} got None")
            ranks = {result(f)[0] for f in [ex.submit(whoami, 0.1) for _ in range(2 * ctx.nw)]}
            if ctx.size > 1:
                expect(root not in ranks, f"a task ran on the root {root}")
        else:
            expect(ex is None, f"rank {ctx.rank} (not the root) got an executor")


@on_every_rank()
def root_out_of_range(ctx: Ctx) -> None:
    """root=-1 and root=size raise ValueError on every rank (no rank waits for the others)."""
    for bad in (-1, ctx.size):
        def enter(bad: int = bad) -> None:
            with ctx.executor(root=bad):
                pass

        raises(ValueError, enter, what=f"root={bad}")


# -- pickling -----------------------------------------------------------------------------


@on_root()
def unpicklable_argument(ex: Any, ctx: Ctx) -> None:
    """A function or argument that cannot be pickled (a lambda, a lock) fails that future only
    (mpi4py: the pickling error); later tasks work. With one rank nothing is pickled and the
    call may succeed."""
    fs = [ex.submit(identity, threading.Lock()), ex.submit(lambda x: x + 1, 1)]
    after = ex.submit(abs, -5)
    for f, what in zip(fs, ("a lock argument", "a lambda")):
        e = exception_of(f)
        if ctx.size > 1:
            expect(isinstance(e, (TypeError, pickle.PicklingError, AttributeError)),
                   f"{what}: the future gave {e!r}, not a pickling error")
    goes_on(ex, "unpicklable submits", after, 5)


@on_root()
def argument_pickle_error(ex: Any, ctx: Ctx) -> None:
    """An argument whose pickling raises fails that future with that very exception (mpi4py:
    ZeroDivisionError, no __cause__), and the executor goes on. With one rank nothing is pickled."""
    e = exception_of(ex.submit(identity, Unpicklable()))
    if ctx.size > 1:
        expect(type(e) is ZeroDivisionError, f"the future gave {e!r}, not the ZeroDivisionError of pickling")
        expect(e.__cause__ is None, f"a __cause__ was added: {e.__cause__!r}")
    goes_on(ex, "an argument whose pickling raised")


@on_root()
def unpicklable_result(ex: Any, ctx: Ctx) -> None:
    """A result that cannot be pickled fails that future only (mpi4py: TypeError from the
    worker); the worker and the executor go on."""
    f = ex.submit(make_lock)
    e = exception_of(f)
    if ctx.size > 1:
        expect(isinstance(e, (TypeError, pickle.PicklingError)), f"the future gave {e!r}, not a pickling error")
    for _ in range(ctx.nw):  # every worker goes on
        goes_on(ex, "an unpicklable result")


@on_root()
def result_unpickle_fails(ex: Any, ctx: Ctx) -> None:
    """A result whose unpickling raises on the root fails that future only, with the error
    raised while unpickling (mpi4py); the executor goes on."""
    e = exception_of(ex.submit(make_unloadable))
    if ctx.size > 1:
        expect(isinstance(e, ContractError), f"the future gave {e!r}, not the unpickling ContractError")
    goes_on(ex, "a result that failed to unpickle")


@on_root()
def argument_unpickle_fails(ex: Any, ctx: Ctx) -> None:
    """An argument whose unpickling raises on the worker fails that future only, with that
    error (mpi4py); the worker goes on."""
    e = exception_of(ex.submit(identity, Unloadable()))
    if ctx.size > 1:
        expect(isinstance(e, ContractError), f"the future gave {e!r}, not the unpickling ContractError")
    for _ in range(ctx.nw):  # every worker goes on
        goes_on(ex, "an argument that failed to unpickle")


@on_root(budget=120.0)
def large_values(ex: Any, ctx: Ctx) -> None:
    """A 100 MiB numpy result and a 100 MiB numpy argument round-trip intact."""
    nbytes = 100 << 20
    a = result(ex.submit(big_array, nbytes), 60)
    expect(isinstance(a, np.ndarray) and a.nbytes == nbytes, f"got {type(a).__name__} of {getattr(a, 'nbytes', 0)} B")
    expect(float(a.sum()) == 7.0 * (nbytes // 8) and a[0] == 7.0 and a[-1] == 7.0, "the result's values")
    del a
    arg = np.arange(nbytes // 8, dtype=np.float64)
    total, size = result(ex.submit(array_stats, arg), 60)
    expect(size == nbytes and total == float(arg.sum()), "the argument arrived changed")


# ---------------------------------------------------------------------------------------
# Running under MPI
# ---------------------------------------------------------------------------------------


class Watchdog:
    """One per rank. If a contract outlives its deadline: rank 0 reports it as a hang; then
    every thread's stack goes to stderr and MPI_Abort ends the job (the driver restarts it
    with the contracts left)."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._deadline: float | None = None
        self.on_fire: Callable[[], None] = lambda: None
        threading.Thread(target=self._loop, name="contract-watchdog", daemon=True).start()

    def arm(self, seconds: float) -> None:
        with self._cv:
            self._deadline = time.monotonic() + seconds
            self._cv.notify()

    def shorten(self, seconds: float) -> None:
        with self._cv:
            if self._deadline is not None:
                self._deadline = min(self._deadline, time.monotonic() + seconds)
                self._cv.notify()

    def disarm(self) -> None:
        with self._cv:
            self._deadline = None

    def _loop(self) -> None:
        with self._cv:
            while True:
                if self._deadline is None:
                    self._cv.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cv.wait(left)
                    continue
                break
        self.on_fire()


WATCHDOG: Watchdog = None  # type: ignore[assignment]  # started by main_mpi
_PRINT = threading.Lock()
_STATUS_TAG = 71


def _one_line(text: str, limit: int = 400) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def report(name: str, status: str, detail: str) -> bool:
    """Print the contract's line once (the watchdog and the main thread may race)."""
    with _PRINT:
        if STATE.reported:
            return False
        STATE.reported = True
        print(f"CONTRACT {name} {status} {_one_line(detail)}".rstrip(), flush=True)
        return True


def main_mpi(backend: str, names: list[str]) -> int:
    global WATCHDOG
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    ctl = world.Dup()  # control messages of this script never mix with an executor's
    rank, size = world.Get_rank(), world.Get_size()
    WATCHDOG = Watchdog()
    total = sum(CONTRACTS[n].budget for n in names) + 120
    faulthandler.dump_traceback_later(total, exit=True)
    base = Path(ctl.bcast(tempfile.mkdtemp(prefix="contract-") if rank == 0 else None, root=0))
    counts = dict.fromkeys(STATUSES, 0)
    reports: dict[int, tuple[str, str]] = {}

    def collect(index: int, block_until: float | None) -> None:
        """Gather the other ranks' outcomes of contract ``index`` (rank 0)."""
        st = MPI.Status()
        while len(reports) < size - 1:
            msg = ctl.improbe(MPI.ANY_SOURCE, _STATUS_TAG, st)
            if msg is None:
                if block_until is None or time.monotonic() > block_until:
                    return
                time.sleep(0.005)
                continue
            src = st.Get_source()
            i, outcome = msg.recv()
            if i == index:
                reports[src] = outcome

    def fire() -> None:
        name = STATE.name or "?"
        if rank == 0:
            collect(STATE.index, None)
            missing = sorted(set(range(1, size)) - set(reports))
            parts = [f"no progress within the contract's time while {STATE.phase}"]
            if STATE.outcome is not None:
                parts.append(f"the root's checks: {STATE.outcome[0]} {STATE.outcome[1]}".rstrip())
            if missing:
                parts.append(f"rank(s) {missing} did not come back")
            parts += [f"rank {r}: {s} {d}" for r, (s, d) in sorted(reports.items()) if s != "pass"]
            report(name, "hang", "; ".join(parts))
        else:
            time.sleep(20)  # let rank 0 report first
        sys.stderr.write(f"\n=== contract {name}: watchdog on rank {rank}, stacks of every thread ===\n")
        faulthandler.dump_traceback(sys.stderr, all_threads=True)
        sys.stderr.flush()
        sys.stdout.flush()
        time.sleep(0.5)
        world.Abort(2)

    WATCHDOG.on_fire = fire
    for index, name in enumerate(names):
        c = CONTRACTS[name]
        STATE.name, STATE.index, STATE.phase, STATE.outcome, STATE.reported = name, index, "starting", None, False
        reports.clear()
        tmp = base / name
        if rank == 0:
            tmp.mkdir()
            print(f"CONTRACT-START {name}", flush=True)
        WATCHDOG.arm(c.budget if rank == 0 else c.budget + 30)
        ctl.Barrier()
        ctx = Ctx(backend, world, rank, size, tmp)
        STATE.phase = "running the contract"
        t0 = time.monotonic()
        try:
            c.run(ctx)
            mine = ("pass", "")
        except _Reported:
            assert STATE.outcome is not None
            mine = STATE.outcome
        except BaseException as e:  # noqa: BLE001 - every outcome is reported
            mine = classify(e)
            if mine[0] != "fail":
                sys.stderr.write(f"[{name} rank {rank}] {traceback.format_exc()}")
            if STATE.phase not in ("running the contract", "checks on the root"):
                mine = (mine[0], f"{STATE.phase}: {mine[1]}")
            if STATE.outcome is not None and STATE.outcome[0] != "pass":
                mine = (STATE.outcome[0], f"{STATE.outcome[1]}; then {mine[0]} {mine[1]}")
        dt = time.monotonic() - t0
        STATE.phase = "reporting"
        if rank != 0:
            ctl.send((index, mine), dest=0, tag=_STATUS_TAG)
            WATCHDOG.disarm()
            continue
        STATE.phase = "waiting for the other ranks to leave the executor"
        collect(index, float("inf"))
        WATCHDOG.disarm()
        status, detail = mine
        if status == "pass":
            for r in sorted(reports):
                if reports[r][0] != "pass":
                    status, detail = reports[r][0], f"rank {r}: {reports[r][1]}"
                    break
        if report(name, status, f"{detail} [{dt:.1f} s]" if status != "pass" else f"[{dt:.1f} s]"):
            counts[status] += 1
    ctl.Barrier()
    faulthandler.cancel_dump_traceback_later()
    if rank == 0:
        shutil.rmtree(base, ignore_errors=True)
        summary = " ".join(f"{s}={n}" for s, n in counts.items())
        print(f"CONTRACT-SUMMARY backend={backend} ranks={size} {summary}", flush=True)
    ctl.Free()
    return 0


# ---------------------------------------------------------------------------------------
# Driving it from outside MPI: restart after a hang, parse, compare
# ---------------------------------------------------------------------------------------

_LINE = re.compile(r"^CONTRACT (\S+) (pass|fail|error|hang)\b ?(.*)$")
_START = re.compile(r"^CONTRACT-START (\S+)$")

Outcome = tuple[str, str]


def _run_plain(n: int, args: list[str], *, timeout: float) -> subprocess.CompletedProcess[str]:
    """``mpiexec -n N python ARGS`` with a timeout; a timeout comes back as exit 124."""
    from helpers import env, mpiexec_path

    cmd = [mpiexec_path(), "-n", str(n), sys.executable, *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        return subprocess.CompletedProcess(cmd, 124, out, err)


def drive(backend: str, ranks: int, names: Iterable[str] | None = None,
          run: Callable[..., subprocess.CompletedProcess[str]] = _run_plain,
          log: Callable[[str], None] | None = None) -> dict[str, Outcome]:
    """Run the contracts under ``mpiexec -n ranks``; after a job ends early (a hang aborted it),
    start another with the contracts left. Returns {contract: (status, detail)}."""
    todo = list(names) if names is not None else list(CONTRACTS)
    unknown = [n for n in todo if n not in CONTRACTS]
    if unknown:
        raise ValueError(f"unknown contract(s): {unknown}")
    results: dict[str, Outcome] = {}
    while todo:
        timeout = sum(CONTRACTS[n].budget for n in todo) + 180
        p = run(ranks, [SCRIPT, backend, *todo], timeout=timeout)
        started = None
        for line in p.stdout.splitlines():
            m = _LINE.match(line)
            if m and m.group(1) in CONTRACTS:
                results[m.group(1)] = (m.group(2), m.group(3))
                continue
            m = _START.match(line)
            if m:
                started = m.group(1)
        if log is not None:
            log(f"{backend} n={ranks}: job exit {p.returncode}, {sum(n in results for n in todo)}/{len(todo)} reported")
        left = [n for n in todo if n not in results]
        if not left:
            break
        tail = _one_line(p.stderr[-600:], 300)
        if started is None or started not in todo:  # the job never got to a contract
            for n in left:
                results[n] = ("error", f"the job ended before this contract ran (exit {p.returncode}): {tail}")
            break
        if started in left:
            status = "hang" if p.returncode == 124 else "error"
            results[started] = (status, f"the job ended during this contract (exit {p.returncode}): {tail}")
        todo = [n for n in todo[todo.index(started) + 1:] if n not in results]
        # contracts before the one in progress that have no line were skipped by a crash
        for n in left:
            if n not in results and n not in todo:
                results[n] = ("error", "no result line")
    return {n: results[n] for n in (names if names is not None else CONTRACTS) if n in results}


def table(res: dict[tuple[str, int], dict[str, Outcome]], layouts: list[int]) -> str:
    """Markdown: contract | MPICommExecutor | mpigather.executor() | mpigather's reason."""
    def cell(backend: str, name: str) -> str:
        return "/".join(res[(backend, n)].get(name, ("-", ""))[0] for n in layouts)

    ranks = "/".join(str(n) for n in layouts)
    lines = [f"| contract | MPICommExecutor ({ranks} ranks) | mpigather.executor() ({ranks} ranks) | "
             "mpigather: first failure |", "|---|---|---|---|"]
    for name in CONTRACTS:
        why = ""
        for n in layouts:
            s, d = res[("mpigather", n)].get(name, ("-", ""))
            if s not in ("pass", "-"):
                why = f"n={n}: {_one_line(d, 160)}".replace("|", "\\|")
                break
        if all(name not in res[(b, n)] for b in BACKENDS for n in layouts):
            continue
        lines.append(f"| {name} | {cell('mpi4py', name)} | {cell('mpigather', name)} | {why} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--list"]:
        for c in CONTRACTS.values():
            print(f"{c.name}: {_one_line(c.doc, 10_000)}")
        return 0
    if argv[:1] == ["--table"]:
        args = argv[1:]
        layouts = [1, 2, 3]
        if args[:1] == ["-n"]:
            layouts = [int(x) for x in args[1].split(",")]
            args = args[2:]
        names = args or None
        res = {}
        for backend in BACKENDS:
            for n in layouts:
                res[(backend, n)] = drive(backend, n, names, log=lambda s: print(s, file=sys.stderr, flush=True))
        print(table(res, layouts))
        for backend in BACKENDS:
            for n in layouts:
                for name, (s, d) in res[(backend, n)].items():
                    if s != "pass":
                        print(f"{backend} n={n} {name}: {s} {d}")
        return 0
    if not argv or argv[0] not in BACKENDS:
        print(__doc__, file=sys.stderr)
        return 2
    names = argv[1:] or list(CONTRACTS)
    unknown = [n for n in names if n not in CONTRACTS]
    if unknown:
        print(f"unknown contract(s): {unknown}", file=sys.stderr)
        return 2
    return main_mpi(argv[0], names)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
