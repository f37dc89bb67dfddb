"""Task functions of small results (rows of the table), and the columns they must give.

Every execution is appended to $MPIGATHER_TEST_DIR/executions.log (when set), so tests can
count them; "once" misbehaviour is remembered by a marker file there, as in faultfuncs.
"""

from __future__ import annotations

import os
import random
import re
import time
from pathlib import Path
from typing import Any

import numpy as np


def _log(i: int) -> None:
    d = os.environ.get("MPIGATHER_TEST_DIR")
    if d:
        with open(Path(d) / "executions.log", "a") as f:
            f.write(f"{i} {os.getpid()}\n")


def _first_time(tag: str, i: int) -> bool:
    try:
        fd = os.open(Path(os.environ["MPIGATHER_TEST_DIR"]) / f"{tag}.{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def record(i: Any) -> dict[str, Any]:
    """One row of every kind the table holds: Python and numpy scalars of several dtypes, a
    bool of each kind, a short string, small fixed-shape arrays and a nested dict. The values
    are chosen so that a lossy conversion (a float64 through float32, an int through float)
    shows up bit for bit."""
    i = int(i)
    return {
        "f64": i / 7 + 1e-17 * i,
        "f32": np.float32(i) / np.float32(3),
        "i64": (i * 2654435761) % (1 << 62) - (1 << 61),
        "i32": np.int32(-i),
        "i8": np.int8(i % 128 - 64),
        "u16": np.uint16(65535 - i),
        "flag": i % 3 == 0,
        "nb": np.bool_(i % 2),
        "name": f"point-{i}",
        "vec": np.arange(3, dtype=np.float32) * np.float32(i) + np.float32(0.1),
        "sub": {"a": i, "m": np.full((2, 2), i, np.int16) - np.eye(2, dtype=np.int16)},
    }


def expected_columns(n: int) -> dict[str, np.ndarray]:
    """The result columns of ``record`` over range(n), with the dtypes the table must keep."""
    recs = [record(i) for i in range(n)]
    dtypes = {"f64": np.float64, "f32": np.float32, "i64": np.int64, "i32": np.int32, "i8": np.int8,
              "u16": np.uint16, "flag": np.bool_, "nb": np.bool_, "vec": np.float32}
    cols = {k: np.array([r[k] for r in recs], dtype=dt) for k, dt in dtypes.items()}
    cols["name"] = np.array([r["name"] for r in recs], dtype=object)
    cols["sub/a"] = np.array([r["sub"]["a"] for r in recs], dtype=np.int64)
    cols["sub/m"] = np.array([r["sub"]["m"] for r in recs], dtype=np.int16)
    return cols


def record_logged(i: Any) -> dict[str, Any]:
    """``record``, logged, with about 2 ms of work (a sweep that can be killed part way)."""
    _log(int(i))
    time.sleep(0.002)
    return record(i)


def point(task: dict[str, Any]) -> dict[str, Any]:
    """A JSONL sweep's task, ``{"id": "p17", "seed": 17, "x": 0.017}`` -> a row."""
    _log(int(task["seed"]))
    time.sleep(0.002)
    return {"energy": task["x"] * task["seed"], "iters": task["seed"] % 11, "converged": task["seed"] % 5 != 0}


def mixed(i: Any) -> Any:
    """Mostly rows; every 10th task from 3 has another key, task 5 returns a 1 MiB array (a
    large result, stored whole) and task 8 a bare string: all rows but task 5."""
    i = int(i)
    if i == 5:
        return np.full(1 << 17, i, dtype=np.float64)
    if i % 10 == 3:
        return {"energy": float(i), "extra": i}
    if i == 8:
        return "not a row"
    return {"energy": float(i)}


def flaky(i: Any) -> dict[str, Any]:
    """Rows; task 37's first execution hangs in C holding the GIL (past --timeout), task 61's
    first execution raises: both inside a block of tiny tasks."""
    i = int(i)
    _log(i)
    if i == 37 and _first_time("hang", i):
        re.fullmatch(r"(a+)+$", "a" * 64 + "b")
    if i == 61 and _first_time("raise", i):
        raise RuntimeError(f"task {i} fails the first time")
    return {"v": float(i), "sq": i * i}


def _jitter() -> None:
    """A small random delay, so that results reach the master in another order each run."""
    time.sleep(random.random() * 0.004)


LENGTHS = (1, 3, 7, 3, 1000, 5)


def varying(i: Any) -> np.ndarray:
    """An array whose length cycles 1, 3, 7, 3, 1000, 5: each is /results/<id>, whatever its size."""
    i = int(i)
    _log(i)
    _jitter()
    return np.arange(LENGTHS[i % len(LENGTHS)]) + i


def optional(i: Any) -> dict[str, Any]:
    """A record; every 4th adds an "error" field, every 7th has an int energy (the column is float)."""
    i = int(i)
    _log(i)
    _jitter()
    r: dict[str, Any] = {"energy": i if i % 7 == 0 else i / 3, "converged": i % 5 != 0}
    if i % 4 == 0:
        r["error"] = f"warning {i}"
    return r


def spectra(i: Any) -> dict[str, Any]:
    """A record with a small array (rows only in a table of arrays); every 9th array is longer."""
    i = int(i)
    _log(i)
    _jitter()
    return {"x": float(i), "spec": np.arange(5 if i % 9 == 0 else 4, dtype=np.float32) + i}


def optional_slow(i: Any) -> dict[str, Any]:
    """``optional`` with about 3 ms of work (a run that can be killed part way)."""
    time.sleep(0.003)
    return optional(i)


def varying_slow(i: Any) -> np.ndarray:
    """``varying`` with about 3 ms of work."""
    time.sleep(0.003)
    return varying(i)
