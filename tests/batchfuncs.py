"""Task functions for the batch-script tests: slow enough that a run can be stopped partway,
and pure functions of the task, so stored results can be recomputed and compared bit for bit."""

from __future__ import annotations

import os
import time

import numpy as np


def slow(i: int):
    """About 0.3 s (MPIGATHER_TEST_TASK_S overrides), then an array, or a dict of arrays for odd i."""
    time.sleep(float(os.environ.get("MPIGATHER_TEST_TASK_S", "0.3")))
    return value(i)


def value(i: int):
    rng = np.random.default_rng(1000 + i)
    if i % 2:
        return {"x": rng.standard_normal(500 + i), "n": np.arange(i, dtype=np.int32)}
    return rng.standard_normal((40, 25 + i))
