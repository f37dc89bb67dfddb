"""Task functions for stopping early: every task fails, some fail at random, keyword calling."""

from __future__ import annotations

import math
import os
import random
import time
from pathlib import Path


def storm(task):
    return math.sqrt(task["x"]) + "typo"  # TypeError on every task: a new user's first sweep


def fixed(task):
    return math.sqrt(task["x"]) * task["seed"]


def sometimes(i):
    """About 10% of the tasks fail, the same ones every run (decided by the task's own seed)."""
    if random.Random(i).random() < 0.10:
        raise ValueError(f"task {i} is unlucky")
    return i * 0.5


def first_fails_once(i):
    """Task 0 fails on its first run (a marker file in $MPIGATHER_TEST_DIR remembers it), once
    another task has started (at most 30 s later): the others take a while, so one is running
    when the run stops. (Failing at once, it once stopped the run before the other worker had
    said hello, and nothing was running.)"""
    here = Path(os.environ["MPIGATHER_TEST_DIR"])
    if i == 0:
        marker = here / "failed-once"
        if not marker.exists():
            end = time.monotonic() + 30
            while not (here / "another-started").exists() and time.monotonic() < end:
                time.sleep(0.01)
            marker.touch()
            raise RuntimeError("task 0 fails the first time")
        return 0.0
    (here / "another-started").touch()
    time.sleep(0.3)
    return i * 2.0


def point(seed, x):
    return seed * 1000 + x


def point_py(seed, x, scale=1.0):
    return (seed + x) * scale
