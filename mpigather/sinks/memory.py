"""Results kept in the master's memory (``out=None``): the summary and the executor hand them out.

Small results are rows of a ``MemoryTable``; the others are kept whole. ``in_task_order()``
gives both as one read-only mapping of task id to value, in task order.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import results as R
from .. import table_schema as T
from .base import Meta, Sink, Target
from .table_base import RowsDone

if TYPE_CHECKING:
    from .table_store import MemoryTable

# (recvmem, for results that come in chunks, and the table's layout and store, for rows kept as
# a table, are imported at their first use: the executor's sink needs neither for its first result)


class _MemoryTarget(Target):
    def __init__(self, sink: MemorySink, tid: Any, header: R.Header, meta: Meta) -> None:
        self.sink, self.tid, self.header, self.meta = sink, tid, header, meta
        from .. import recvmem

        # pages ready before the chunks come: reused from a dropped result, or faulted in ahead
        self.raw = [recvmem.empty(p.nbytes) for p in header.parts]

    def buffer(self, part: int, offset: int, n: int) -> np.ndarray:
        return self.raw[part][offset : offset + n]

    def write(self, part: int, offset: int, buf: Any) -> None:
        self.raw[part][offset : offset + len(buf)] = np.frombuffer(buf, dtype=np.uint8)

    def finish(self) -> None:
        # raises what rebuilding the value raises (an object that fails to unpickle): that task fails
        self.sink._ready.append((self.tid, R.assemble(self.header, self.raw), self.meta))


class MemorySink(Sink):
    """Keeps every result on the master, for library calls with ``out=None`` and the executor."""

    kind = "memory"
    in_memory = True

    def __init__(self) -> None:
        self.results: dict[Any, Any] = {}  # the results kept whole
        self.meta: dict[Any, Meta] = {}
        self.table: MemoryTable | None = None
        self._ready: list[Any] = []

    def open(self, tid: Any, header: R.Header, meta: Meta) -> Target:
        return _MemoryTarget(self, tid, header, meta)

    def put(self, tid: Any, header: R.Header, bufs: list[Any], meta: Meta) -> None:
        # the bytes came unpickled into fresh, writable buffers: view them, no copy
        raws = [np.frombuffer(b, dtype=np.uint8) for b in bufs]
        self._ready.append((tid, R.assemble(header, raws), meta))

    def put_rows(self, seq0: int, tids: list[Any], rows: Any, meta: Meta) -> bool:
        from .table_layout import Layout
        from .table_store import MemoryTable, fit_layout

        if self.table is None:
            self.table = MemoryTable(Layout.empty(), self.total)
        t = self.table
        t.layout = fit_layout(t, t.layout, rows, tids, lambda: None)
        t.put(seq0, t.layout.batch_values(tids, rows, meta))
        self._ready.append(RowsDone.of(seq0, tids, meta))
        return True

    def take_ready(self) -> Any:
        ready, self._ready = self._ready, []
        return ready or None

    def make_durable(self, batch: Any) -> list[Any]:
        out: list[Any] = []
        for entry in batch:
            if type(entry) is RowsDone:
                out.append(entry)
                continue
            tid, value, meta = entry
            self.results[tid] = value
            self.meta[tid] = meta
            out.append((tid, meta))
        return out

    def in_task_order(self) -> Mapping[Any, Any]:
        """Every result, rows and whole ones, as one mapping in task order."""
        return InMemory(self)


class InMemory(Mapping[Any, Any]):
    """A run's results in memory: task id -> value, in task order (a row's value is rebuilt
    when asked for); ``columns()`` and ``to_pandas()`` give the table of small results."""

    def __init__(self, sink: MemorySink) -> None:
        self._sink = sink
        self._pos: dict[Any, int] | None = None
        self._order: list[Any] | None = None

    def _table_positions(self) -> dict[Any, int]:
        if self._pos is None:
            t = self._sink.table
            if t is None:
                self._pos = {}
            else:
                done = np.flatnonzero(t.column("done"))
                ids = t.column("id")[done]
                keys = [x.decode() for x in ids.tolist()] if ids.dtype.kind == "S" else ids.tolist()
                self._pos = dict(zip(keys, done.tolist()))
        return self._pos

    def __getitem__(self, tid: Any) -> Any:
        whole = self._sink.results
        if tid in whole:
            return whole[tid]
        i = self._row(tid)
        if i is None:
            raise KeyError(tid)
        t = self._sink.table
        assert t is not None
        from ..reader_table import row_value

        return row_value(t.layout, lambda name, where: t.column(name)[where], i)

    def _row(self, tid: Any) -> int | None:
        pos = self._table_positions()
        i = pos.get(tid)
        if i is None and type(tid) is int and self._sink.table is not None and self._sink.table.layout.ids != "int":
            i = pos.get(str(tid))  # (int ids beside str ones are stored as text)
        return i

    def __contains__(self, tid: object) -> bool:
        return tid in self._sink.results or self._row(tid) is not None

    def __len__(self) -> int:
        return len(self._sink.results) + len(self._table_positions())

    def __iter__(self) -> Iterator[Any]:
        if self._order is None:
            pos = self._table_positions()
            whole = self._sink.results
            if all(type(t) is int for t in whole) and all(type(t) is int for t in pos):
                keyed = [(t, t) for t in whole] + [(t, t) for t in pos]  # numeric ids numerically
            else:
                keyed = [(self._sink.meta[t].get("seq", 0), t) for t in whole] + [(p, t) for t, p in pos.items()]
            keyed.sort(key=lambda x: x[0])
            self._order = [t for _, t in keyed]
        return iter(self._order)

    def __repr__(self) -> str:
        return f"<{len(self)} results in memory>"

    def columns(self, meta: bool = False) -> dict[str, np.ndarray]:
        """The table of small results: a dict of numpy arrays in task order, with ``id`` and the
        ``done`` mask (see ``reader.table_columns`` for the names)."""
        from ..reader_table import table_columns

        t = self._sink.table
        if t is None:
            return {}
        return table_columns(t.layout, t.column, meta)

    def to_pandas(self, meta: bool = False) -> Any:
        """The table as a pandas DataFrame: one row per task whose result is in the table."""
        from ..reader_table import table_frame

        return table_frame(self.columns(meta))


class ValuesSink(MemorySink):
    """Every result kept whole, rows included (rebuilt from their columns, a column at a time):
    the executor hands each value to its future."""

    def put_rows(self, seq0: int, tids: list[Any], rows: Any, meta: Meta) -> bool:
        n = len(tids)
        cols = rows.cols if n == rows.n else [c[:n] for c in rows.cols]
        shared = {"rank": meta["rank"], "attempt": meta["attempt"], "bytes": 0}
        self._ready.extend((tid, v, shared) for tid, v in zip(tids, T.all_values(rows.schema, cols)))
        return True
