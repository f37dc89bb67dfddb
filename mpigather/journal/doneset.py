"""What a journal calls done, in bounded memory: ``DoneSet`` (sorted 64-bit id keys, a bit per
position, ranges of table rows) and ``id_key``, the stable key of a task id."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def id_key(tid: Any) -> int:
    """A stable 64-bit key of a task id (ids of any length, ten million of them in 80 MB)."""
    from hashlib import blake2b  # (here: loading OpenSSL costs a few ms of every start)

    raw = (b"i" + str(tid).encode()) if type(tid) is int else (b"s" + str(tid).encode("utf-8", "surrogatepass"))
    return int.from_bytes(blake2b(raw, digest_size=8).digest(), "little", signed=True)

def _array(values: Iterable[int], dtype: Any) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values.astype(dtype, copy=False)
    return np.fromiter(values, dtype=dtype)

class DoneSet:
    """What a journal calls done: results stored whole, as sorted 64-bit id keys with their
    parameter hashes (12 bytes a task, whatever the ids look like), and every done task's
    position in the task list as one bit; rows of the table as ranges of positions, each with
    the hash of its tasks' parameters."""

    steps: dict[Any, dict[str, Any]] | None = None  # on resume: unfinished tasks' last stored steps

    def __init__(self, keys: Iterable[int] = (), hashes: Iterable[int] = (), positions: Iterable[int] = (),
                 ranges: Iterable[tuple[int, int, int]] = (), unplaced: int | None = None) -> None:
        k = _array(keys, np.int64)
        h = _array(hashes, np.uint32)
        order = np.argsort(k, kind="stable")
        k, h = k[order], h[order]
        if len(k) > 1:  # a task done twice keeps its last record
            last = np.ones(len(k), dtype=bool)
            last[:-1] = k[1:] != k[:-1]
            k, h = k[last], h[last]
        self._keys, self._hashes = k, h
        self.ranges = [(int(s), int(n), int(x)) for s, n, x in ranges]
        pos = _array(positions, np.int64)
        top = max([int(pos.max()) + 1 if len(pos) else 0] + [s + n for s, n, _ in self.ranges])
        bits = np.zeros(top, dtype=bool)
        bits[pos] = True
        for s, n, _ in self.ranges:
            bits[s : s + n] = True
        self.bits = bits
        # whole results with no position of their own (a fan-out's children)
        self.unplaced = max(0, len(k) - len(np.unique(pos))) if unplaced is None else unplaced

    def __len__(self) -> int:
        return int(np.count_nonzero(self.bits)) + self.unplaced

    @property
    def n_whole(self) -> int:
        """Results stored whole (each with a row of the output's task list)."""
        return len(self._keys)

    def done_at(self, seq: int) -> bool:
        return 0 <= seq < len(self.bits) and bool(self.bits[seq])

    def lookup(self, tid: Any) -> int | None:
        """The parameter hash recorded for ``tid`` stored whole, or None if it is not."""
        if not len(self._keys):
            return None
        k = id_key(tid)
        i = int(np.searchsorted(self._keys, k))
        if i < len(self._keys) and self._keys[i] == k:
            return int(self._hashes[i])
        return None

    def __contains__(self, tid: Any) -> bool:
        return self.lookup(tid) is not None
