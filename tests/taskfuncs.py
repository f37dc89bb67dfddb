"""Task functions used by the MPI tests. Every value is a pure function of the task, so the
tests can recompute what each task returned and compare the stored result bit for bit."""

from __future__ import annotations

import os
import time

import numpy as np

STRUCT = np.dtype([("x", "<i4"), ("y", "<f8"), ("flag", "?"), ("name", "S5")])


def value(kind: str, i: int):
    rng = np.random.default_rng(i)
    if kind == "f64":
        return rng.standard_normal(1000 + i)
    if kind == "zero_d":
        return np.array(rng.integers(1 << 40), dtype=np.int64)
    if kind == "scalar":
        return np.float32(i) * np.float32(1.5)
    if kind == "empty":
        return np.empty((0, 3 + i), dtype=np.float32)
    if kind == "noncontig":
        return rng.standard_normal((40, 30))[::3, ::2].T
    if kind == "fortran":
        return np.asfortranarray(rng.integers(0, 1000, size=(17, 13), dtype=np.int16))
    if kind == "complex":
        return (rng.standard_normal((5, 7)) + 1j * rng.standard_normal((5, 7))).astype(np.complex128)
    if kind == "bool":
        return rng.integers(0, 2, size=(9, 4)).astype(bool)
    if kind == "structured":
        a = np.zeros(6 + i, dtype=STRUCT)
        a["x"] = np.arange(6 + i)
        a["y"] = rng.standard_normal(6 + i)
        a["flag"] = a["x"] % 2 == 0
        a["name"] = b"ab"
        return a
    if kind == "bigendian":
        return np.arange(50 + i, dtype=">i4")
    if kind == "f16":
        return rng.standard_normal(33).astype(np.float16)
    if kind == "datetime":
        return np.arange(5 + i).astype("datetime64[s]")
    if kind == "unicode":
        return np.array(["alpha", "beta", f"t{i}"])
    if kind == "bytes":
        return rng.bytes(100 + i)
    if kind == "empty_bytes":
        return b""
    if kind == "dict":
        # keys not in sorted order, and two whose file names sort differently from the keys
        return {"z": rng.standard_normal(10 + i), "a": np.arange(3, dtype=np.uint8), "a-b": np.array(7.0),
                "empty": np.zeros((0,), dtype=np.int8)}
    if kind == "none":
        return None
    if kind == "large":  # spans several chunks of 1 MiB, with a tail
        return rng.standard_normal(300_000 + 17 * i)
    raise ValueError(kind)


KINDS = ["f64", "zero_d", "scalar", "empty", "noncontig", "fortran", "complex", "bool", "structured",
         "bigendian", "f16", "datetime", "unicode", "bytes", "empty_bytes", "dict", "none", "large"]


def every_type(i: int):
    """Task i returns a value of kind KINDS[i % len(KINDS)]."""
    return value(KINDS[i % len(KINDS)], i)


def out_of_order(i: int):
    """Early tasks take longest, so results arrive in reverse order."""
    time.sleep(0.05 * max(0, 8 - i))  # 50 ms apart: a loaded machine does not blur the order
    return value("large", i) if i % 2 else value("f64", i)


def by_payload(task: dict):
    """For --tasks files: {"id": ..., "kind": ..., "i": ...}."""
    return value(task["kind"], task["i"])


def unsupported(i: int):
    """Task 3 returns what cannot be pickled; the others a list (any picklable value is fine)."""
    import threading

    return threading.Lock() if i == 3 else [i, "x"]


def raise_on_odd(i: int):
    if i % 2:
        raise ValueError(f"task {i} is odd")
    return value("f64", i)


def sized(i: int):
    """i MiB of deterministic bytes (uint8 pattern)."""
    return (np.arange(i << 20, dtype=np.uint64) * 2654435761 % 251).astype(np.uint8)


def big_result(i: int):
    """Task 0: one result over 2 GiB; others: 256 MiB each. Cheap to make and to check."""
    n = (2 << 30) + (300 << 20) if i == 0 else 256 << 20
    a = np.empty(n, dtype=np.uint8)
    a[:] = (i * 37 + 11) % 251
    a[:: 1 << 20] = np.arange(len(a[:: 1 << 20]), dtype=np.uint64) % 256
    return a


def pid_logged(i: int):
    """Appends 'i' to $MPIGATHER_TEST_LOG, one line per execution."""
    with open(os.environ["MPIGATHER_TEST_LOG"], "a") as f:
        f.write(f"{i}\n")
    return value("f64", i)
