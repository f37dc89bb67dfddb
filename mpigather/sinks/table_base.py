"""The small pieces that the table's modules and the sinks share: the ``meta`` column's records,
``RowsDone`` (rows made durable, for the journal), ``Column``, a column of rows not yet done
(``empty``), the ``done`` column against the journal (``compare_done``), positions as runs,
and rows staged for writing (``Staged``). The table's layout and its rules are in
``table_layout``; its storage and the rewriting of a layout in ``table_store``. Imports no MPI.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..tuples import NamedTuple

META = np.dtype([("rank", "<i4"), ("attempt", "<i2"), ("duration", "<f4")])  # the meta column's records
META_FIELDS = META.names


class RowsDone(NamedTuple):
    """Rows a sink made durable, for the journal: positions ``[seq0, seq0 + n)``."""

    seq0: int
    n: int
    tids: list[Any]
    crc: int
    nbytes: int
    rank: int
    attempt: int
    duration: float
    hash: int

    @classmethod
    def of(cls, seq0: int, tids: list[Any], meta: dict[str, Any]) -> RowsDone:
        return cls(seq0, len(tids), tids, meta["crc32c"], meta["bytes"], meta["rank"], meta["attempt"],
                   meta["duration"], meta.get("hash", 0))


class Column(NamedTuple):
    name: str
    dtype: str  # numpy dtype string; "str" for strings (and JSON text)
    shape: tuple[int, ...] = ()
    kind: str = ""  # the Spec's kind, for result and parameter columns


def empty(col: Column, n: int) -> np.ndarray:
    """A column of ``n`` rows not yet done: zeros, empty strings."""
    if col.dtype == "str":
        a = np.empty(n, dtype=object)
        a.fill("")
        return a
    return np.zeros((n, *col.shape), dtype=dtype_of(col))


def dtype_of(col: Column) -> np.dtype:
    """The numpy dtype of a column that is not of variable-length strings."""
    return META if col.dtype == "meta" else np.dtype(col.dtype)


def compare_done(mask: np.ndarray, done: Any) -> tuple[np.ndarray, np.ndarray]:
    """A table's ``done`` column against what the journal calls done (``journal.DoneSet``):
    (rows marked done that the journal never saw: a commit cut short, to clear; rows the
    journal calls done that are not there: to run again)."""
    ranges = np.zeros(max(len(mask), len(done.bits)), dtype=bool)
    for s, n, _ in done.ranges:
        ranges[s : s + n] = True
    want = ranges[: len(mask)]
    return (np.flatnonzero(mask & ~want),
            np.concatenate([np.flatnonzero(want & ~mask), np.flatnonzero(ranges[len(mask):]) + len(mask)]))


def runs(positions: np.ndarray) -> list[tuple[int, int]]:
    """Positions as sorted [start, stop) runs."""
    if not len(positions):
        return []
    p = np.sort(positions)
    breaks = np.flatnonzero(np.diff(p) != 1) + 1
    starts = np.concatenate(([0], breaks))
    stops = np.concatenate((breaks, [len(p)]))
    return [(int(p[a]), int(p[b - 1]) + 1) for a, b in zip(starts, stops)]


class Staged:
    """Rows waiting to be written, gathered into runs of consecutive positions, so that the
    batches of one block (a few milliseconds each) become one write of each column."""

    def __init__(self) -> None:
        self._runs: dict[int, tuple[int, list[dict[str, Any]]]] = {}  # end -> (start, values)

    def add(self, seq0: int, values: dict[str, Any]) -> None:
        end = seq0 + len(values["id"])
        run = self._runs.pop(seq0, None)
        if run is None:
            self._runs[end] = (seq0, [values])
        else:
            run[1].append(values)
            self._runs[end] = run

    def take(self) -> list[tuple[int, dict[str, Any]]]:
        """Each run: (its first position, each column's values). Runs that touch are joined,
        whatever order they came in (two workers' blocks alternate, and finish out of order)."""
        joined: list[tuple[int, int, list[dict[str, Any]]]] = []  # (start, end, parts)
        for end, (start, parts) in sorted(self._runs.items(), key=lambda r: r[1][0]):
            if joined and joined[-1][1] == start and joined[-1][2][0].keys() == parts[0].keys():
                joined[-1] = (joined[-1][0], end, joined[-1][2] + parts)
            else:
                joined.append((start, end, parts))
        self._runs.clear()
        return [(start, parts[0] if len(parts) == 1 else {k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
                for start, _, parts in joined]

    def __bool__(self) -> bool:
        return bool(self._runs)
