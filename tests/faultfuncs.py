"""Task functions that fail on purpose: raise, hang (in C, holding the GIL), or kill their process.

"Once" functions misbehave on a task's first execution only, remembered by a marker file in
$MPIGATHER_TEST_DIR, so a retry elsewhere succeeds. Every execution is appended to
$MPIGATHER_TEST_DIR/executions.log, so tests can count them.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from taskfuncs import value


def _dir() -> Path:
    return Path(os.environ["MPIGATHER_TEST_DIR"])


def _first_time(tag: str, i: int) -> bool:
    marker = _dir() / f"{tag}.{i}"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def _log(i: int) -> None:
    with open(_dir() / "executions.log", "a") as f:
        f.write(f"{i} {os.getpid()}\n")


def result(i: int):
    return value("large", i) if i % 3 == 0 else value("f64", i)


def ok(i: int):
    _log(i)
    time.sleep(0.05)
    return result(i)


def always_raise(i: int):
    _log(i)
    if i == 2:
        raise RuntimeError(f"task {i} always fails")
    return result(i)


def raise_once(i: int):
    """Task 2 fails the first time, once another worker has begun a task (at most 30 s later), so
    that a worker which has not tried it is there for the retry. (Failing at once on a busy
    machine, it was retried on the same worker before the other had said hello.)"""
    _log(i)
    if i == 2 and _first_time("raise", i):
        _await_another_worker()
        raise RuntimeError(f"task {i} fails the first time")
    return result(i)


def _await_another_worker(patience: float = 30.0) -> None:
    """Until executions.log holds a task begun by another process."""
    me, end = str(os.getpid()), time.monotonic() + patience
    while time.monotonic() < end:
        if any(line.split()[1] != me for line in (_dir() / "executions.log").read_text().splitlines()):
            return
        time.sleep(0.01)


def hang_once(i: int):
    """Task 3's first execution never returns: a regex that backtracks forever in C, holding the GIL."""
    _log(i)
    if i == 3 and _first_time("hang", i):
        re.fullmatch(r"(a+)+$", "a" * 64 + "b")
    time.sleep(0.05)
    return result(i)


def die_once(i: int):
    """Task 4's first execution kills its own process."""
    _log(i)
    if i == 4 and _first_time("die", i):
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)
    return result(i)


def slow(i: int):
    """About 0.1 s per task, a 2.4 MB result every third task."""
    _log(i)
    time.sleep(0.1)
    return result(i)


def slow_big(i: int):
    """Every 4th task returns 200 MB, streamed in many chunks (kill mid-stream)."""
    _log(i)
    time.sleep(0.05)
    if i % 4 == 1:
        return value("large", i).repeat(80)
    return result(i)


def expected(i: int, func: str = "slow"):
    if func == "slow_big" and i % 4 == 1:
        return value("large", i).repeat(80)
    return result(i)


def sabotage_output(i: int):
    """Task 3 removes the run's output directory under the master's feet (a master-side failure):
    renamed away first, so that it is gone at once even while the master writes into it."""
    import shutil

    _log(i)
    time.sleep(0.05)
    if i == 3:
        out = os.environ["MPIGATHER_TEST_OUT"]
        os.rename(out, out + ".gone")
        shutil.rmtree(out + ".gone", ignore_errors=True)
    return result(i)


def abort_at_5(i: int):
    """Task 5 ends the whole job with MPI_Abort, as a crashing library would."""
    _log(i)
    time.sleep(0.05)
    if i == 5:
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(5)
    return result(i)


def stops_at_6_16_26(i: int):
    """0.3 s per task, but the first execution of task 6, 16 or 26 sends the stop signal
    (SIGUSR1) to the master (the pid in the output's lock file) and returns at once: its worker
    goes on to the next task it holds while the signal is on its way."""
    _log(i)
    if i in (6, 16, 26) and _first_time("usr1", i):
        from mpigather.lock import read_holder

        (lock,) = _dir().glob("*.lock")
        os.kill(read_holder(lock)["pid"], signal.SIGUSR1)
        return result(i)
    time.sleep(0.3)
    return result(i)
