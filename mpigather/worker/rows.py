"""The rows accumulator: consecutive results of one block that fit a table row (``table``:
numbers, short strings, small arrays, dicts of these) are gathered into columns, many tasks to
one ``Rows`` item, with their parameters as columns of their own.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import messages as M
from .. import table_schema as T
from .base import Base
from .queue import _Local


class _RowsAcc:
    """Consecutive results of one block that fit one table schema (and their parameters one
    schema, or none), gathered until the batch is sent."""

    __slots__ = ("bid", "start", "tid0", "attempt", "rows", "params", "durations", "match", "pmatch", "dmatch",
                 "next")

    def __init__(self, bid: int, start: int, tid0: Any, attempt: int, schema: Any, pschema: Any,
                 from_dict: bool = False) -> None:
        self.bid, self.start, self.tid0, self.attempt = bid, start, tid0, attempt
        self.rows = T.RowsBuilder(schema)
        self.params = T.RowsBuilder(pschema) if pschema is not None else None
        self.durations: list[float] = []
        self.match = T.matcher(schema)
        self.pmatch = T.matcher(pschema) if pschema is not None else None
        # the parameters of a task that is a dict (a line of a task file): matched in the task
        # itself, its id left out, without the copy that ``params_of`` makes
        self.dmatch = T.matcher(pschema, skip="id") if pschema is not None and from_dict else None
        self.next = start  # the index of the task whose row would come next

    def message(self) -> M.Rows:
        cols = self.rows.columns()
        p = self.params
        return M.Rows(self.bid, self.start, self.rows.n, self.tid0, self.attempt, self.rows.schema, cols,
                      T.checksum(cols), np.array(self.durations, dtype=np.float32),
                      None if p is None else p.schema, None if p is None else p.columns())


def params_of(tid: Any, payload: Any) -> Any:
    """What a task's parameters are, for the table: a dict's keys but its id; another value as
    ``task`` unless it is the id itself (a range)."""
    if type(payload) is dict:
        return {k: v for k, v in payload.items() if k != "id"} if "id" in payload else payload
    return None if payload == tid else {"task": payload}


class RowsMixin(Base):
    """Part of ``Worker``: adding a result to the rows of its block."""

    def _row(self, blk: _Local, i: int, value: Any, dt: float) -> bool:
        """Add a result to the rows of its block, if it fits a table row. False: it does not.
        (Under the send lock: the helper thread may send the rows gathered so far at any time.)"""
        tid, payload = blk.tids[i], blk.payloads[i]
        params: Any = None
        with self._send_lock:
            acc = self._rows
            if acc is not None and acc.next == i and acc.bid == blk.bid:
                leaves = acc.match(value)
                if not self.keep_params:
                    pleaves, fits = None, acc.pmatch is None
                elif acc.dmatch is not None and type(payload) is dict:
                    pleaves = acc.dmatch(payload)
                    fits = pleaves is not None
                elif acc.pmatch is not None:
                    params = params_of(tid, payload)
                    pleaves = acc.pmatch(params) if params is not None else None
                    fits = pleaves is not None
                else:  # rows without parameter columns take only rows whose parameters cannot be columns
                    params = params_of(tid, payload)
                    pleaves = None
                    fits = params is None or T.schema_of(params) is None
                if leaves is not None and fits:
                    acc.rows.rows.append(leaves)
                    if pleaves is not None:
                        acc.params.rows.append(pleaves)  # type: ignore[union-attr]
                    acc.durations.append(dt)
                    acc.next = i + 1
                    self._pending_bytes += 16 * len(leaves)
                    self._maybe_flush_locked(dt)
                    return True
        schema = T.schema_of(value, self.opts.table)  # arrays are rows only in a table of arrays
        if schema is None:
            return False
        if self.keep_params and params is None:
            params = params_of(tid, payload)
        pschema = T.schema_of(params) if params is not None else None
        acc = _RowsAcc(blk.bid, i, tid, blk.attempt, schema, pschema, type(payload) is dict)
        acc.rows.add(T.leaves_of(value, schema))  # type: ignore[arg-type]
        if acc.params is not None:
            acc.params.add(T.leaves_of(params, pschema))  # type: ignore[arg-type]
        acc.durations.append(dt)
        acc.next = i + 1
        with self._send_lock:
            self._queue_locked(acc, 16 * len(schema[1]))
            self._rows = acc
            self._maybe_flush_locked(dt)
        return True
