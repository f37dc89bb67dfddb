"""Bit-for-bit comparison of stored results with what the task functions return."""

from __future__ import annotations

from typing import Any

import numpy as np


def same(got: Any, want: Any) -> bool:
    if isinstance(want, np.generic):
        want = np.asarray(want)
    if want is None:
        return got is None
    if isinstance(want, (bytes, bytearray)):
        return isinstance(got, bytes) and got == bytes(want)
    if isinstance(want, dict):
        return isinstance(got, dict) and set(got) == set(want) and all(same(got[k], want[k]) for k in want)
    if isinstance(got, np.generic):  # the executor gives back numpy scalars as they were
        got = np.asarray(got)
    if not isinstance(got, np.ndarray):
        return False
    return (got.dtype == want.dtype and got.shape == want.shape
            and np.ascontiguousarray(got).tobytes() == np.ascontiguousarray(want).tobytes())


def check_all(results: Any, func: Any, ids: Any) -> list[str]:
    """Ids whose stored result differs from ``func(id)``, or is missing."""
    bad = []
    for i in ids:
        key = str(i)
        if key not in results:
            bad.append(f"{i}: missing")
            continue
        if not same(results[key], func(i)):
            bad.append(f"{i}: differs ({results[key]!r:.80} vs {func(i)!r:.80})")
    return bad
