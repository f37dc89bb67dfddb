"""Rows: results of consecutive tasks of a lease that fit a table row arrive as one ``Rows``
item (a numpy array per column, with a crc32c) and go into the sink's table as one slice of
each column, with one scheduler event for the lot. Rows of another shape than the table's,
and late rows of a lease that is over, are stored one by one as whole results.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .. import messages as M
from .. import results as R
from .. import table_schema as T
from ..sinks import Meta
from .base import Base

log = logging.getLogger("mpigather")


class RowsMixin(Base):
    """Part of ``Master``: the table path of small results."""

    def _on_rows(self, src: int, rows: M.Rows, now: float) -> None:
        """Results of consecutive tasks of a lease that fit a table row: one slice of each column,
        one scheduler event. Rows past a cut the worker had not seen are not done; rows of a lease
        that is over are looked at one by one (a late result of a task retried alone still wins)."""
        self._hb_task.pop(src, None)
        n = self.sched.accept_rows(src, rows.bid, rows.start, rows.n)
        if n == 0:
            self._late_rows(src, rows, now)
            return
        if T.checksum(rows.cols) != rows.crc:
            for _k in range(n):
                b = self.sched.lease(src, rows.bid)
                if b is None:
                    break
                self._bad_checksum(src, rows.bid, b.next, b.tids[b.next], rows.attempt, rows.crc,
                                   T.checksum(rows.cols), now)
            return
        b = self.sched.lease(src, rows.bid)
        assert b is not None
        start, end = rows.start, rows.start + n
        tids = b.tids[start:end]
        dur = float(rows.durations[:n].sum())
        crc = rows.crc if n == rows.n else T.checksum([c[:n] for c in rows.cols])  # (the rows stored)
        meta: Meta = {"rank": src, "attempt": rows.attempt, "duration": dur, "crc32c": crc,
                      "bytes": T.nbytes(rows.cols) * n // max(rows.n, 1),
                      "hash": _block_hash(b.hashes[start:end]) if b.hashes is not None else 0}
        t = time.perf_counter()
        try:
            stored = self.sink.put_rows(b.seq0 + start, tids, rows, meta)
            if not stored:  # another schema than the table's: each result is stored whole
                self._rows_whole(src, b, rows, n)
        finally:
            self._t["write"] += time.perf_counter() - t
        self._decide_all(self.sched.rows_done(src, rows.bid, start, n, now, dur), now)

    def _rows_whole(self, src: int, b: Any, rows: M.Rows, n: int) -> None:
        """Rows that do not fit the table (another key, dtype or shape): each stored whole."""
        if not self._said_whole:
            self._said_whole = True
            log.info("results of another shape than the table's first rows are stored whole, like large ones"
                     " (first: task %r)", rows.tid0)
        for k in range(n):
            i = rows.start + k
            value = T.values(rows.schema, rows.cols, k)
            header, bufs = R.encode(value)
            meta = self._meta(src, b, i, b.tids[i], rows.attempt, header, float(rows.durations[k]))
            self.sink.put(b.tids[i], header, bufs, meta)

    def _late_rows(self, src: int, rows: M.Rows, now: float) -> None:
        tid = rows.tid0
        if not self.sched.accept(src, rows.bid, rows.start, tid):
            self._decide_all(self.sched.discarded(src, now), now)
            return
        rec = self.sched.task(tid)
        assert rec is not None
        # a row still: where a result is stored never depends on when it arrived
        meta: Meta = {"rank": src, "attempt": rows.attempt, "duration": float(rows.durations[0]),
                      "crc32c": T.checksum([c[:1] for c in rows.cols]), "bytes": T.nbytes([c[:1] for c in rows.cols]),
                      "hash": _block_hash([rec.hash]) if rec.hash is not None else 0}
        self.sink.put_rows(rec.seq, [tid], rows, meta)
        self._decide_all(self.sched.task_done(src, rows.bid, rows.start, tid, now, None, rows.attempt), now)


def _block_hash(hashes: Any) -> int:
    """``tasks.params.block_hash``, imported at its first use: rows carry their tasks' hashes only
    in a run with an output (an in-memory master, and the executor's, never import it)."""
    from ..tasks.params import block_hash

    return block_hash(hashes)
