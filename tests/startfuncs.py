"""A task module that rank 0 alone is slow to import: the workers wait for the master at the
run's first collective (``test_start.py``)."""

from __future__ import annotations

import time

from mpigather.cli import _rank_from_env

MASTER_LATE = 1.5  # seconds

if _rank_from_env() == 0:
    time.sleep(MASTER_LATE)


def cpu_so_far(task: int) -> float:
    """The CPU time this worker process has used so far."""
    return time.process_time()
