"""Task sources, read lazily: a JSONL file, a range, or any iterable.

Each yields ``(task_id, payload)``. In a JSONL file, a line's ``id`` key is its id, else
its 0-based line number. From an iterable, a dict payload's ``id`` key is its id, else
its 0-based position. A file is checked in one streaming pass before the run (JSON, ids,
duplicates) so that bad input fails at once, holding only the ids in memory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import UsageError
from .sinks import check_id


def _task_id(payload: Any, default: int) -> Any:
    if isinstance(payload, dict) and "id" in payload:
        return payload["id"]
    return default


def scan_jsonl(path: str | os.PathLike[str]) -> int:
    """Validate a task file without keeping it in memory. Returns the number of tasks."""
    seen: set[str] = set()
    n = 0
    for lineno, tid, _ in _iter_jsonl(path):
        name = check_id(tid)
        if name in seen:
            raise UsageError(f"task file {path}, line {lineno}: duplicate task id {tid!r}")
        seen.add(name)
        n += 1
    return n


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


def jsonl_tasks(path: str | os.PathLike[str]) -> Iterator[tuple[Any, Any]]:
    for _, tid, obj in _iter_jsonl(path):
        yield tid, obj


def range_tasks(n: int) -> Iterator[tuple[int, int]]:
    if n < 0:
        raise UsageError(f"--range must be 0 or more, not {n}")
    return ((i, i) for i in range(n))


def iterable_tasks(items: Iterable[Any]) -> Iterator[tuple[Any, Any]]:
    """Ids for a user's iterable; duplicates are caught as they appear."""
    seen: set[str] = set()
    for i, payload in enumerate(items):
        tid = _task_id(payload, i)
        name = check_id(tid)
        if name in seen:
            raise UsageError(f"task {i}: duplicate task id {tid!r}")
        seen.add(name)
        yield tid, payload


def skip_done(tasks: Iterable[tuple[Any, Any]], done: set[Any]) -> Iterator[tuple[Any, Any]]:
    for tid, payload in tasks:
        if tid not in done:
            yield tid, payload


def timeout_of(payload: Any) -> float | None:
    if isinstance(payload, dict) and "timeout" in payload:
        t = payload["timeout"]
        if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
            raise UsageError(f"task {payload.get('id')!r}: timeout must be a positive number of seconds, not {t!r}")
        return float(t)
    return None
