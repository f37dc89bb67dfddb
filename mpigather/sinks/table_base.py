"""The table of small results, as every sink lays it out: one column per field, row ``i`` the
task at position ``i`` of the task list.

Columns (names as in HDF5's ``/table`` group; a directory has ``DIR/_table/<name>.npy``):

- ``id``: the task ids (int64; or strings: fixed-width bytes, ``S16``..., where the first ids
  are short ASCII, else variable-length);
- ``done``: True where the row holds a finished task's result;
- ``result/<field>``: the result's fields (``result/value`` for a bare number or string; a
  nested dict's fields are ``result/a/b``);
- ``params/<key>``: the task's parameters (a task file's keys, its ``id`` left out);
- ``meta``: who ran it, which attempt, how long (one record a row: ``rank``, ``attempt``,
  ``duration`` in seconds).

The layout is fixed by the first rows: a later result with another schema (another key, dtype
or shape) does not fit, and is stored whole, like a large result. Imports no MPI.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np

from .. import table_schema as T

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
    dtype: str  # numpy dtype string; "str" for strings
    shape: tuple[int, ...] = ()
    kind: str = ""  # the table.Leaf kind, for result and parameter columns


class Layout:
    """What a table holds: the schema of its results and of its parameters, and its ids' type."""

    def __init__(self, schema: T.Schema, pschema: T.Schema | None, ids: str) -> None:
        self.schema, self.pschema, self.ids = schema, pschema, ids  # ids: "int", "str" or "S<width>"
        self.result_names = [f"result/{T.name(leaf)}" for leaf in schema[1]]
        self.param_names = [] if pschema is None else [f"params/{T.name(leaf)}" for leaf in pschema[1]]

    @classmethod
    def first(cls, schema: T.Schema, pschema: T.Schema | None, tids: list[Any]) -> Layout:
        if all(type(t) is int for t in tids):
            return cls(schema, pschema, "int")
        longest = max((len(t) for t in tids if type(t) is str), default=0)
        if all(type(t) is str and t.isascii() for t in tids) and longest <= 32:
            return cls(schema, pschema, f"S{max(16, 2 * longest)}")  # room for longer ones to come
        return cls(schema, pschema, "str")

    def fits(self, schema: T.Schema, pschema: T.Schema | None, tids: list[Any]) -> bool:
        if schema != self.schema or pschema != self.pschema:
            return False
        if self.ids == "int":
            return all(type(t) is int for t in tids)
        if self.ids == "str":
            return all(type(t) is str for t in tids)
        width = int(self.ids[1:])
        return all(type(t) is str and t.isascii() and len(t) <= width for t in tids)

    def columns(self) -> list[Column]:
        cols = [Column("id", {"int": "<i8", "str": "str"}.get(self.ids, f"|{self.ids}")), Column("done", "|b1")]
        for prefix, schema in (("result", self.schema), ("params", self.pschema)):
            if schema is None:
                continue
            for leaf in schema[1]:
                cols.append(Column(f"{prefix}/{T.name(leaf)}", "str" if leaf.kind == "str" else leaf.dtype,
                                   leaf.shape, leaf.kind))
        cols.append(Column("meta", "meta"))
        return cols

    def to_json(self) -> str:
        return json.dumps({"version": 1, "ids": self.ids, "dict": self.schema[0], "fields": T.describe(self.schema),
                           "params_dict": None if self.pschema is None else self.pschema[0],
                           "params": None if self.pschema is None else T.describe(self.pschema)})

    @classmethod
    def from_json(cls, text: str) -> Layout:
        d = json.loads(text)
        pschema = None if d["params"] is None else T.from_description(d["params_dict"], d["params"])
        return cls(T.from_description(d["dict"], d["fields"]), pschema, d["ids"])

    def batch_values(self, tids: list[Any], rows: Any, meta: dict[str, Any]) -> dict[str, Any]:
        """Each column's values for the first ``len(tids)`` rows of a worker's batch (the rest
        were revoked), by column name."""
        n = len(tids)
        cols = rows.cols if n == rows.n else [c[:n] for c in rows.cols]
        pcols = rows.pcols if rows.pcols is None or n == rows.n else [c[:n] for c in rows.pcols]
        kind = {"int": np.int64, "str": object}.get(self.ids, self.ids)
        out: dict[str, Any] = {"id": np.array(tids, dtype=kind), "done": np.ones(n, dtype=bool)}
        out.update(zip(self.result_names, cols))
        if pcols is not None:
            out.update(zip(self.param_names, pcols))
        rec = np.empty(n, dtype=META)
        rec["rank"], rec["attempt"], rec["duration"] = meta["rank"], meta["attempt"], rows.durations[:n]
        out["meta"] = rec
        return out


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


class MemoryTable:
    """The table kept on the master (``out=None``): numpy columns that grow as rows arrive."""

    def __init__(self, layout: Layout, total: int | None) -> None:
        self.layout = layout
        self.cols = {c.name: empty(c, max(total or 0, 1024)) for c in layout.columns()}
        self.specs = {c.name: c for c in layout.columns()}
        self.n = total or 0  # rows: every task's position, as far as known

    def put(self, seq0: int, values: dict[str, Any]) -> None:
        end = seq0 + len(values["id"])
        cap = len(self.cols["id"])
        if end > cap:
            grow = max(end, 2 * cap)
            for name, a in self.cols.items():
                b = empty(self.specs[name], grow)
                b[:cap] = a
                self.cols[name] = b
        self.n = max(self.n, end)
        for name, v in values.items():
            self.cols[name][seq0:end] = v

    def column(self, name: str) -> np.ndarray:
        return self.cols[name][: self.n]


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
        """Each run: (its first position, each column's values)."""
        out = []
        for start, parts in self._runs.values():
            if len(parts) == 1:
                out.append((start, parts[0]))
            else:
                out.append((start, {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}))
        self._runs.clear()
        return out

    def __bool__(self) -> bool:
        return bool(self._runs)
