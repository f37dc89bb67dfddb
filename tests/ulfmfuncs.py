"""Tasks that kill their own worker process at a chosen moment, once (a marker file in
$MPIGATHER_TEST_DIR remembers it), for the dead-worker tests under Open MPI with ULFM.

The victim is chosen by task id: ``MPIGATHER_KILL_TASKS`` (comma-separated ids) and
``MPIGATHER_KILL_WHEN``: ``computing`` (SIGKILL inside the task), ``idle`` (0.3 s after the task
returned), ``streaming`` (20 ms after returning 256 MiB, while it is being sent) or ``writing``
(50 ms after returning 256 MiB, while a direct-mode worker writes it).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

BIG = 256 << 20


def _first(tag: str) -> bool:
    marker = Path(os.environ["MPIGATHER_TEST_DIR"]) / f"killed.{tag}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _die_after(seconds: float) -> None:
    threading.Timer(seconds, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()


def value(i: int, victims: set[int] | None = None, when: str | None = None) -> np.ndarray:
    """Task i's result (the victims of a streaming or writing kill return 256 MiB)."""
    when = when or os.environ.get("MPIGATHER_KILL_WHEN", "computing")
    if when in ("streaming", "writing") and i in (_victims() if victims is None else victims):
        a = np.empty(BIG, dtype=np.uint8)
        a[:] = i % 251
        return a
    return np.arange(1000, dtype=np.float64) * i


def _victims() -> set[int]:
    return {int(x) for x in os.environ.get("MPIGATHER_KILL_TASKS", "").split(",") if x}


def task(i: int):
    with open(Path(os.environ["MPIGATHER_TEST_DIR"]) / "executions.log", "a") as f:
        f.write(f"{i} {os.getpid()}\n")
    time.sleep(0.05)
    when = os.environ.get("MPIGATHER_KILL_WHEN", "computing")
    if i in _victims() and _first(str(i)):
        if when == "computing":
            os.kill(os.getpid(), signal.SIGKILL)
        _die_after({"idle": 0.3, "streaming": 0.02, "writing": 0.05}[when])
    return value(i)
