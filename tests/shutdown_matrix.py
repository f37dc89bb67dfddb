"""The executor's shutdown matrix, under MPI: ``mpiexec -n N python tests/shutdown_matrix.py``.

Every ``shutdown(wait=, cancel_futures=)`` meets tasks in each of the three places a task can
be: running on a worker, queued at a worker behind the running one (prefetched, so its future
is already running), and still at the master (its future pending). Threads wait on every
future with ``concurrent.futures.wait`` and ``as_completed`` while the shutdown happens, and
with ``wait=False`` the caller waits right after it. Then mpi4py's own shutdown tests, as
they are written there. Rank 0 prints one line per case::

    CASE <name> pass|fail settled=<s> left=<s> <detail>

``settled``: seconds from the shutdown call until every future was done; ``left``: until every
rank had left the executor. No wait here is unbounded: a future still waited on after
``HANG`` seconds fails its case (and the test's subprocess timeout catches the rest).
"""

from __future__ import annotations

import concurrent.futures as cf
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import mpigather

HANG = 20.0  # seconds: a future not done by then is a hang
RUN, QUEUED, AT_MASTER = 0.3, 0.05, 0.05  # seconds each kind of task sleeps


def nap(marker: str, seconds: float, value: Any) -> Any:
    """A task that says it started (its marker file), then sleeps."""
    Path(marker).touch()
    time.sleep(seconds)
    return value


def _until(cond: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.002)
    return True


class Waiter(threading.Thread):
    """Waits on futures from another thread while the caller shuts the executor down."""

    def __init__(self, futures: list[cf.Future], how: str) -> None:
        super().__init__(daemon=True)
        self.futures, self.how = futures, how
        self.done_at: float | None = None
        self.missing = -1

    def run(self) -> None:
        if self.how == "wait":
            _, not_done = cf.wait(self.futures, timeout=HANG)
            self.missing = len(not_done)
        else:
            seen = 0
            try:
                for _ in cf.as_completed(self.futures, timeout=HANG):
                    seen += 1
            except cf.TimeoutError:
                pass
            self.missing = len(self.futures) - seen
        self.done_at = time.monotonic()


def matrix_case(ex: Any, tmp: Path, wait: bool, cancel: bool) -> tuple[str, float, float | None]:
    """Root side of one combination. Returns (problems, settled seconds, the shutdown's end)."""
    nw = ex.num_workers
    ex.bootup()
    marker = (lambda i: str(tmp / f"{i}.started"))  # noqa: E731
    running = [ex.submit(nap, marker(i), RUN, i) for i in range(nw)]
    if not _until(lambda: len(list(tmp.iterdir())) == nw, 10):
        return "setup: the running tasks did not all start", 0.0, None
    queued = [ex.submit(nap, marker(nw + i), QUEUED, nw + i) for i in range(nw)]
    if not _until(lambda: all(f.running() for f in queued), 10):
        return "setup: the queued tasks did not reach the workers", 0.0, None
    at_master = [ex.submit(nap, marker(2 * nw + i), AT_MASTER, 2 * nw + i) for i in range(nw)]
    time.sleep(0.02)
    started = len(list(tmp.iterdir()))
    if started != nw or any(f.done() for f in running + queued) or any(f.running() for f in at_master):
        return (f"setup: not in place before the shutdown ({started} started, running done: "
                f"{[f.done() for f in running]}, at the master running: {[f.running() for f in at_master]})"), 0.0, None
    everything = running + queued + at_master
    waiters = [Waiter(everything, "wait"), Waiter(everything, "as_completed")]
    for w in waiters:
        w.start()
    t0 = time.monotonic()
    ex.shutdown(wait=wait, cancel_futures=cancel)
    returned = time.monotonic()
    problems = []
    if wait and not all(f.done() for f in everything):
        problems.append(f"{sum(not f.done() for f in everything)} futures not done when shutdown(wait=True) returned")
    if not wait and returned - t0 > 0.5:
        problems.append(f"shutdown(wait=False) took {returned - t0:.2f} s")
    if not wait:  # the caller's own thread waits, right after the shutdown
        _, not_done = cf.wait(everything, timeout=HANG)
        if not_done:
            problems.append(f"cf.wait in the caller: {len(not_done)} futures not done after {HANG:g} s")
    for w in waiters:
        w.join(HANG + 5)
        if w.missing:
            problems.append(f"cf.{w.how} in a thread: {w.missing} futures not done after {HANG:g} s")
    settled = max([w.done_at or t0 for w in waiters] + [returned]) - t0
    for kind, fs in (("running", running), ("queued at a worker", queued)):
        got = [f.result(0) if f.done() and not f.cancelled() and f.exception(0) is None else f for f in fs]
        if got != [everything.index(f) for f in fs]:
            problems.append(f"{kind}: not their results: {got}")
    if cancel:
        if not all(f.cancelled() for f in at_master):
            problems.append(f"at the master: {sum(not f.cancelled() for f in at_master)} of {nw} not cancelled")
        ran = sorted(p.name for p in tmp.iterdir() if int(p.name.split(".")[0]) >= 2 * nw)
        if ran:
            problems.append(f"cancelled tasks ran: {ran}")
    elif [f.result(0) if f.done() else None for f in at_master] != list(range(2 * nw, 3 * nw)):
        problems.append("at the master: not their results")
    return "; ".join(problems), settled, t0


def mpi4py_cancel_wait(ex: Any, tmp: Path) -> tuple[str, float, float | None]:
    """mpi4py's test_submit_shutdown_cancel_wait: the wait returns at once, the first task is
    not cancelled, the last two are."""
    ex.bootup()
    nw = ex.num_workers
    fut1 = ex.submit(time.sleep, 0.1)
    for _ in range(nw * 100):
        ex.submit(time.sleep, 0.1)
    fut2, fut3 = ex.submit(time.sleep, 0), ex.submit(time.sleep, 0)
    time.sleep(0.2)
    t0 = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=True)
    _, not_done = cf.wait({fut1, fut2, fut3}, timeout=HANG)
    settled = time.monotonic() - t0
    problems = []
    if not_done:
        problems.append(f"{len(not_done)} of the 3 futures not done after {HANG:g} s")
    if fut1.cancelled():
        problems.append("the first task was cancelled")
    if not (fut2.cancelled() and fut3.cancelled()):
        problems.append("the last two tasks were not cancelled")
    ex.shutdown(wait=True, cancel_futures=True)
    return "; ".join(problems), settled, t0


def mpi4py_cancel(ex: Any, tmp: Path) -> tuple[str, float, float | None]:
    """mpi4py's test_submit_shutdown_cancel: shutdown(wait=False) cancels nothing; a later
    shutdown(wait=True, cancel_futures=True) cancels what still waits, and returns."""
    ex.bootup()
    for _ in range(ex.num_workers * 100):
        ex.submit(time.sleep, 0.1)
    fut = ex.submit(time.sleep, 0)
    t0 = time.monotonic()
    ex.shutdown(wait=False, cancel_futures=False)
    problems = ["shutdown(wait=False) cancelled a task"] if fut.cancelled() else []
    ex.shutdown(wait=True, cancel_futures=True)
    if not fut.cancelled():
        problems.append("shutdown(wait=True, cancel_futures=True) did not cancel the last task")
    return "; ".join(problems), time.monotonic() - t0, t0


CASES: dict[str, Any] = {
    **{f"wait={w},cancel_futures={c}": (lambda ex, tmp, w=w, c=c: matrix_case(ex, tmp, w, c))
       for w in (True, False) for c in (False, True)},
    "mpi4py_submit_shutdown_cancel_wait": mpi4py_cancel_wait,
    "mpi4py_submit_shutdown_cancel": mpi4py_cancel,
}


def main() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    base = Path(comm.bcast(tempfile.mkdtemp(prefix="shutdown-") if comm.Get_rank() == 0 else None))
    for name, case in CASES.items():
        for attempt in range(3):  # a setup that a loaded machine spoiled is done again
            tmp = base / f"{len(list(base.iterdir()))}"
            if comm.Get_rank() == 0:
                tmp.mkdir()
            comm.Barrier()
            outcome: tuple[str, float, float | None] = ("", 0.0, None)
            with mpigather.executor(prefetch=2) as ex:
                if ex is not None:
                    try:
                        outcome = case(ex, tmp)
                    except BaseException as e:  # noqa: BLE001 - reported as the case's failure
                        outcome = (f"raised {type(e).__name__}: {e}", 0.0, None)
            comm.Barrier()
            left = time.monotonic()
            problems, settled, t0 = outcome
            again = comm.bcast(problems.startswith("setup:") and attempt < 2 if comm.Get_rank() == 0 else None)
            if comm.Get_rank() == 0:
                if again:
                    print(f"# {name}: {problems}; again", flush=True)
                else:
                    status = "fail" if problems else "pass"
                    print(f"CASE {name} {status} settled={settled:.3f} left={left - t0 if t0 else -1:.3f} {problems}",
                          flush=True)
            if not again:
                break
    comm.Barrier()
    if comm.Get_rank() == 0:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
