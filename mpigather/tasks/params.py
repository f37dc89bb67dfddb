"""A task's parameters: their text for the output's task table, their hash, and the checks a
resume makes with those hashes (every done task must still have the parameters it had).

A task's parameters are described as canonical JSON where they are JSON, else by their
``repr``. Their hash (of a file's line; of the JSON, or of the pickle, for other tasks) lets a
resume check that each done task still has the parameters it had.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..crc import crc32c
from ..errors import UsageError

if TYPE_CHECKING:
    from ..journal import DoneSet

PARAMS_MAX = 10_000  # characters of a non-JSON task's repr kept in the task table
_CANON: Any = None  # canonical JSON, made at the first use (json is not imported by every run)


def describe(payload: Any) -> tuple[str, int]:
    """(parameters as text, their 32-bit hash)."""
    global _CANON
    if _CANON is None:
        import json

        _CANON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
    try:
        text = _CANON(payload)
    except (TypeError, ValueError):
        try:
            h = crc32c(pickle.dumps(payload, protocol=4))
        except Exception:
            h = 0
        return repr(payload)[:PARAMS_MAX], h
    return text, crc32c(text.encode("utf-8", "surrogatepass"))


def block_hash(hashes: Sequence[int] | np.ndarray) -> int:
    """One parameter hash for consecutive tasks (a resume recomputes it the same way)."""
    return int(crc32c(np.asarray(hashes, dtype=np.uint32).tobytes()))


def _task_id(payload: Any, default: int) -> Any:
    if isinstance(payload, dict) and "id" in payload:
        return payload["id"]
    return default


def _check_one(done: DoneSet, tid: Any, h: int, seq: int) -> None:
    """A task stored whole that is done must keep its parameter hash."""
    want = done.lookup(tid)
    if want and want != h:
        raise UsageError(f"task {seq}: task {tid!r} has other parameters than when it was done; the task list"
                         " changed since that run: restore it, or start a new output")


def _check_ranges(done: DoneSet, hashes: Sequence[int] | np.ndarray, id_at: Any) -> None:
    """Rows of the table that are done must keep the hash of their tasks' parameters
    (``id_at(position)``: a task's id, for the message)."""
    for s0, n, want in done.ranges:
        if want and (s0 + n > len(hashes) or block_hash(hashes[s0 : s0 + n]) != want):
            if s0 + n > len(hashes):
                which = f"task {s0} (or one after it)"
            elif n == 1:
                which = f"task {s0}: task {id_at(s0)!r}"
            else:
                which = f"one of tasks {s0} to {s0 + n - 1} ({id_at(s0)!r} to {id_at(s0 + n - 1)!r})"
            raise UsageError(f"{which} has other parameters than when it was done; the task list changed since"
                             " that run: restore it, or start a new output")


def timeout_of(payload: Any) -> float | None:
    if isinstance(payload, dict) and "timeout" in payload:
        t = payload["timeout"]
        if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
            raise UsageError(f"task {payload.get('id')!r}: timeout must be a positive number of seconds, not {t!r}")
        return float(t)
    return None
