"""Task functions for the batch-script tests: slow enough that a run can be stopped partway,
and pure functions of the task, so stored results can be recomputed and compared bit for bit.

With $MPIGATHER_TEST_DIR set, every execution is appended to $MPIGATHER_TEST_DIR/executions.log
(one line: the task id), so tests can count them. $MPIGATHER_TEST_STUCK="0,1" makes the first
execution of those tasks last $MPIGATHER_TEST_STUCK_S seconds (300): tasks still running when the
job is killed, which run normally when the run resumes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def slow(i: int):
    """About 0.3 s (MPIGATHER_TEST_TASK_S overrides), then an array, or a dict of arrays for odd i."""
    seconds = float(os.environ.get("MPIGATHER_TEST_TASK_S", "0.3"))
    test_dir = os.environ.get("MPIGATHER_TEST_DIR")
    if test_dir:
        with open(Path(test_dir) / "executions.log", "a") as f:
            f.write(f"{i}\n")
        stuck = os.environ.get("MPIGATHER_TEST_STUCK", "")
        if str(i) in stuck.split(",") and _first_time(Path(test_dir) / f"stuck.{i}"):
            seconds = float(os.environ.get("MPIGATHER_TEST_STUCK_S", "300"))
    time.sleep(seconds)
    return value(i)


def _first_time(marker: Path) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def value(i: int):
    rng = np.random.default_rng(1000 + i)
    if i % 2:
        return {"x": rng.standard_normal(500 + i), "n": np.arange(i, dtype=np.int32)}
    return rng.standard_normal((40, 25 + i))
