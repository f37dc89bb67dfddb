"""The checking pass over a task file before the run: JSON, ids and duplicates, in bounded memory."""

from __future__ import annotations

import array
import os

import numpy as np
from crc32c import crc32c

from ..errors import UsageError
from ..sinks.layout import check_id
from .lines import _iter_jsonl, _open_tasks, _parse
from .params import _task_id


def _report_duplicate(path: str | os.PathLike[str], suspects: set[int]) -> None:
    seen: dict[str, int] = {}
    for lineno, tid, _ in _iter_jsonl(path):
        if hash((type(tid) is int, tid)) in suspects:
            name = check_id(tid)
            if name in seen:
                raise UsageError(f"task file {path}, line {lineno}: duplicate task id {tid!r}"
                                 f" (also on line {seen[name]})")
            seen[name] = lineno


def _scan(path: str | os.PathLike[str]) -> tuple[int, int, int, np.ndarray]:
    """One pass over a task file: JSON, ids and duplicates checked, 12 bytes a task held while it
    runs (a hash of the id that this process alone uses, confirmed by a second pass on a clash,
    and the line's crc32c) and 4 kept. Returns (tasks, size, crc32c of the file, each task's
    hash as a uint32 array)."""
    keys: array.array[int] = array.array("q")
    hashes: array.array[int] = array.array("I")
    crc = size = 0
    seq = -1
    with _open_tasks(path) as f:
        for i, line in enumerate(f):
            crc = crc32c(line, crc)
            size += len(line)
            stripped = line.strip()
            if not stripped:
                continue
            seq += 1
            obj = _parse(path, i, stripped.decode())
            tid = _task_id(obj, i)
            check_id(tid)
            keys.append(hash((type(tid) is int, tid)))
            hashes.append(crc32c(stripped))
    k = np.frombuffer(keys, dtype=np.int64)
    if len(k) > 1:
        s = np.sort(k)
        dup = s[1:][s[1:] == s[:-1]]
        if len(dup):
            _report_duplicate(path, set(int(x) for x in dup))
    return len(k), size, crc, np.frombuffer(hashes, dtype=np.uint32)  # 4 bytes a task (a list: ~36)
