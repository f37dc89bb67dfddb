"""Task sources, read lazily: a JSONL file, a range, or any iterable.

Each yields ``(task_id, payload, position)``. In a JSONL file, a line's ``id`` key is its id,
else its 0-based line number. From an iterable, a dict payload's ``id`` key is its id, else
its 0-based position. A file is checked in one streaming pass before the run (JSON, ids,
duplicates), holding 8 bytes per task, so that bad input fails at once.

A task's parameters are described once, for the output's task table and the journal: as
canonical JSON where they are JSON, else by their ``repr``; their hash (of the JSON, or of
the pickle) lets a resume check that each done task still has the parameters it had.
"""

from __future__ import annotations

import array
import json
import os
import pickle
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from crc32c import crc32c

from .errors import UsageError
from .journal import DoneSet, id_key
from .sinks.layout import check_id

PARAMS_MAX = 10_000  # characters of a non-JSON task's repr kept in the task table
_CANON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def describe(payload: Any) -> tuple[str, int]:
    """(parameters as text, their 32-bit hash)."""
    try:
        text = _CANON(payload)
    except (TypeError, ValueError):
        try:
            h = crc32c(pickle.dumps(payload, protocol=4))
        except Exception:
            h = 0
        return repr(payload)[:PARAMS_MAX], h
    return text, crc32c(text.encode("utf-8", "surrogatepass"))


def _task_id(payload: Any, default: int) -> Any:
    if isinstance(payload, dict) and "id" in payload:
        return payload["id"]
    return default


def scan_jsonl(path: str | os.PathLike[str], done: DoneSet | None = None) -> int:
    """Validate a task file without keeping it in memory. Returns the number of tasks.

    Duplicate ids are found from 64-bit keys (8 bytes a task), confirmed by a second pass.
    With ``done`` (a resume), every done task must still have the parameters it had.
    """
    keys: array.array[int] = array.array("q")
    for lineno, tid, obj in _iter_jsonl(path):
        check_id(tid)
        keys.append(id_key(tid))
        if done is not None:
            check_unchanged(done, tid, obj, f"task file {path}, line {lineno}")
    k = np.frombuffer(keys, dtype=np.int64)
    if len(k) > 1:
        s = np.sort(k)
        dup = s[1:][s[1:] == s[:-1]]
        if len(dup):
            _report_duplicate(path, set(int(x) for x in dup))
    return len(k)


def _report_duplicate(path: str | os.PathLike[str], suspects: set[int]) -> None:
    seen: dict[str, int] = {}
    for lineno, tid, _ in _iter_jsonl(path):
        if id_key(tid) in suspects:
            name = check_id(tid)
            if name in seen:
                raise UsageError(f"task file {path}, line {lineno}: duplicate task id {tid!r}"
                                 f" (also on line {seen[name]})")
            seen[name] = lineno


def check_unchanged(done: DoneSet, tid: Any, payload: Any, where: str) -> bool:
    """True if ``tid`` is done; raises UsageError if it was done with other parameters."""
    h = done.lookup(tid)
    if h is None:
        return False
    if h and describe(payload)[1] != h:
        raise UsageError(f"{where}: task {tid!r} has other parameters than when it was done; the task list"
                         " changed since that run: restore it, or start a new output")
    return True


def _iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any, Any]]:
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"task file {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"cannot read task file {path}: {e.strerror}") from None
    with f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                msg = getattr(e, "msg", str(e))
                raise UsageError(f"task file {path}, line {i + 1}: invalid JSON ({msg})") from None
            if not isinstance(obj, dict):
                raise UsageError(f"task file {path}, line {i + 1}: expected a JSON object, got {type(obj).__name__}")
            yield i + 1, _task_id(obj, i), obj


def jsonl_tasks(path: str | os.PathLike[str]) -> Iterator[tuple[Any, Any, int]]:
    for n, (_, tid, obj) in enumerate(_iter_jsonl(path)):
        yield tid, obj, n


def range_tasks(n: int) -> Iterator[tuple[int, int, int]]:
    if n < 0:
        raise UsageError(f"--range must be 0 or more, not {n}")
    return ((i, i, i) for i in range(n))


def iterable_tasks(items: Iterable[Any]) -> Iterator[tuple[Any, Any, int]]:
    """Ids for a user's iterable (or a dict of id -> task); duplicates are caught as they appear."""
    seen: set[str] = set()
    pairs = items.items() if isinstance(items, dict) else ((_task_id(p, i), p) for i, p in enumerate(items))
    for i, (tid, payload) in enumerate(pairs):
        name = check_id(tid)
        if name in seen:
            raise UsageError(f"task {i}: duplicate task id {tid!r}")
        seen.add(name)
        yield tid, payload, i


def skip_done(tasks: Iterable[tuple[Any, Any, int]], done: DoneSet,
              steps: dict[Any, dict[str, Any]] | None = None) -> Iterator[tuple[Any, ...]]:
    """The tasks not yet done; a done task whose parameters changed stops the run (UsageError).

    A multi-step task with a stored step (``steps``: the journal's last step record of each
    unfinished task) resumes at that step: it comes with the ``StepCall`` that runs it.
    """
    from .steps import StepCall

    for tid, payload, seq in tasks:
        if check_unchanged(done, tid, payload, f"task {seq}"):
            continue
        rec = steps.get(tid) if steps else None
        if rec is None or rec.get("parent") is not None or not os.path.exists(rec["path"]):
            yield tid, payload, seq
            continue
        if rec.get("h") and describe(payload)[1] != rec["h"]:
            raise UsageError(f"task {seq}: task {tid!r} has other parameters than when its step {rec['n']} began;"
                             " the task list changed since that run: restore it, or start a new output")
        yield tid, payload, seq, StepCall(rec["n"], rec["next"], rec.get("needs"), rec.get("timeout"), rec["path"])


def timeout_of(payload: Any) -> float | None:
    if isinstance(payload, dict) and "timeout" in payload:
        t = payload["timeout"]
        if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
            raise UsageError(f"task {payload.get('id')!r}: timeout must be a positive number of seconds, not {t!r}")
        return float(t)
    return None
