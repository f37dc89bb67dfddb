"""Multi-step task functions for the tests: fetch -> clean (-> repair) -> simulate, fan-outs,
steps that need a kind of worker, and steps that fail, hang or kill their worker once.

Each execution of a step appends ``<task> <step> <pid>`` to $MPIGATHER_TEST_DIR/steps.log
(when set), so tests can count how often each step ran.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np

import mpigather


def _log(task, step: str) -> None:
    d = os.environ.get("MPIGATHER_TEST_DIR")
    if d:
        with open(Path(d) / "steps.log", "a") as f:
            f.write(f"{task} {step} {os.getpid()}\n")


def _once(tag: str) -> bool:
    d = os.environ.get("MPIGATHER_TEST_DIR")
    if not d:
        return False
    try:
        os.close(os.open(Path(d) / f"once.{tag}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _slow() -> None:
    if os.environ.get("STEP_FAULT") == "slow":
        time.sleep(0.05)


def fetch(task):
    i = task["i"] if isinstance(task, dict) else task
    _log(i, "fetch")
    _slow()
    raw = np.arange(1000, dtype=np.float64) + i
    return mpigather.next_step(clean, {"i": i, "raw": raw})


def clean(data):
    _log(data["i"], "clean")
    _slow()
    if data["i"] % 5 == 4:
        return mpigather.next_step(repair, data)
    return mpigather.next_step(simulate, {"i": data["i"], "x": data["raw"] * 2})


def repair(data):
    _log(data["i"], "repair")
    return mpigather.next_step(simulate, {"i": data["i"], "x": data["raw"] * 2})


def simulate(data):
    _log(data["i"], "simulate")
    mode = os.environ.get("STEP_FAULT", "")
    i = data["i"]
    if mode == "raise" and i == 3 and _once(f"raise{i}"):
        raise RuntimeError("simulate failed once")
    if mode == "hang" and i == 3 and _once(f"hang{i}"):
        re.fullmatch(r"(a+)+$", "a" * 64 + "b")  # forever, in C, holding the GIL
    if mode == "kill" and i == 3 and _once(f"kill{i}"):
        os.kill(os.getpid(), signal.SIGKILL)
    _slow()
    return {"field": data["x"] + 1, "energy": float(i)}


def expected(i: int):
    """What the three-step pipeline gives for task i."""
    raw = np.arange(1000, dtype=np.float64) + i
    return {"field": raw * 2 + 1, "energy": float(i)}


def on_gpu(task):
    _log(task, "prepare")
    return mpigather.next_step(gpu_step, task, needs="gpu")


def gpu_step(task):
    _log(task, "gpu")
    return {"kinds": os.environ.get("MPIGATHER_KINDS", ""), "task": task}


def fan(task):
    _log(task, "fan")
    return [mpigather.next_step(leaf, (task, k)) for k in range(int(os.environ.get("FANOUT", "10")))]


def leaf(pair):
    task, k = pair
    _log(f"{task}.{k}", "leaf")
    return np.full(4, 100 * task + k)


def big_middle(task):
    """A 2.5 GiB intermediate between steps (made of three fresh arrays)."""
    n = (850 << 20) // 8
    return mpigather.next_step(shrink, [np.full(n, float(k + task)) for k in range(3)])


def shrink(arrays):
    return np.array([a[0] + a[-1] for a in arrays])


def tiny1(i):
    return mpigather.next_step(tiny2, i + 1)


def tiny2(i):
    return mpigather.next_step(tiny3, i * 2)


def tiny3(i):
    return np.int64(i - 1)


def tiny_fused(i):
    return np.int64((i + 1) * 2 - 1)
