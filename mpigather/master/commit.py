"""Group commit: finished results are made durable (the sink's fsync, on the
``mpigather-commit`` thread, so the disk works while the next results arrive), and only then
journaled as done, one record of each kind and one fsync per batch, by the same thread
(``journal_done``): the loop never waits for a disk. Once the batch is journaled, the loop
counts it (``count_done``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..sinks.table_base import RowsDone
from .base import Base

if TYPE_CHECKING:
    from ..journal import Journal
    from ..sinks import Meta
    from ..summary import Summary

COMMIT_EVERY = 0.02  # the shortest time between group commits of a file output (s)
COMMIT_MAX = 0.5  # the longest, however slow the disk (s): what a killed run may have to redo
# A commit (the output's flush and fsync, the journal's fsync) costs about the same whatever it
# holds: HDF5 rewrites each column's last chunk whole. So commits are spaced by what the last
# one took, to keep them under this share of the time. A 200,000-row sweep made 190-370 commits
# 20 ms apart, which cost the master 3.3 us a row of CPU and held its loop 2.5 s (the journal's
# fsync, the table's writes); spaced so, 13-20 commits, 0.6 us a row, 0.4 s (docs/scaling.md).
COMMIT_SHARE = 0.05


class CommitMixin(Base):
    """Part of ``Master``: when to commit, and what a commit records."""

    def _commit(self, wait: bool = False) -> None:
        """Group commit: make the finished results durable, then journal them as done.

        File sinks fsync on a helper thread, so the disk works while the next results arrive;
        the journal lines are written only once that fsync returned. ``wait``: finish everything now.
        """
        t = time.perf_counter()
        job = self._commit_job
        if job is not None:
            if not job.done() and not wait:
                return
            self._commit_job = None
            self._record(*job.result())
        steps = self._steps_sink.take_ready() if self._steps_sink is not None else None
        if not (wait or steps is not None or self.sink.in_memory or t - self._last_commit >= self._commit_gap):
            return  # results keep coming: a little longer makes fewer, larger commits
        self._last_commit = t
        batch = self.sink.take_ready()
        if batch is not None or steps is not None:
            if wait or self.sink.in_memory:
                self._record(*self._make_durable(batch, steps))
            else:
                if self._committer is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._committer = ThreadPoolExecutor(1, thread_name_prefix="mpigather-commit")
                self._commit_job = self._committer.submit(self._make_durable, batch, steps)
        self._t["write"] += time.perf_counter() - t

    def _make_durable(self, batch: Any, steps: Any) -> tuple[list[tuple[Any, Meta]], list[tuple[Any, Meta]], float]:
        """(On the committer thread, or the loop's when it waits.) Step outputs first: a result
        never becomes durable before the outputs that led to it. The batch's results are
        journaled here, once durable: a journal fsync waits for the disk as the output's does.
        Returns (results, step outputs, the seconds it took)."""
        t = time.perf_counter()
        stored = self._steps_sink.make_durable(steps) if steps is not None else []  # type: ignore[union-attr]
        ready = self.sink.make_durable(batch) if batch is not None else []
        journal_done(ready, self.journal)
        return ready, stored, time.perf_counter() - t

    def _record(self, ready: list[tuple[Any, Meta]], steps: list[tuple[Any, Meta]], took: float) -> None:
        """(On the loop.) A batch is durable and journaled: its step outputs let their next steps
        run, its results count as done. The next commit is spaced by what this one took."""
        t = time.perf_counter()
        if steps:
            self._steps_stored(steps)
            if ready and self.journal is not None:
                self.journal.commit()  # the step records, durable with the batch as they always were
        if ready:
            self._record_done(ready)
            if self.on_durable is not None:
                first, self.on_durable = self.on_durable, None
                first()
        took += time.perf_counter() - t  # (the step records' fsync)
        self._commit_gap = min(COMMIT_MAX, max(COMMIT_EVERY, took / COMMIT_SHARE))

    def _record_done(self, ready: list[tuple[Any, Meta]]) -> None:
        count_done(ready, self.summary, self.on_done)
        if self._ckpts and not self.opts.keep_steps:
            from ..sinks.base import remove_quietly

            for tid, _ in ready:  # done and journaled: its step outputs are no longer needed
                for path in self._ckpts.pop(tid, ()):
                    remove_quietly(path)


def record_done(ready: list[Any], journal: Journal | None, summary: Summary,
                on_done: Callable[[Any, Meta], None] | None) -> None:
    """Results that the sink made durable (``(id, meta)`` of whole ones, ``RowsDone`` of rows):
    journal them as done (one record of each kind, one fsync), count them."""
    journal_done(ready, journal)
    count_done(ready, summary, on_done)


def journal_done(ready: list[Any], journal: Journal | None) -> None:
    """Journal durable results as done: one record of each kind, one fsync."""
    if not ready or journal is None:
        return
    whole = [x for x in ready if type(x) is not RowsDone]
    journal.done(whole)
    journal.rows([x for x in ready if type(x) is RowsDone] if len(whole) < len(ready) else [])
    journal.commit()


def count_done(ready: list[Any], summary: Summary, on_done: Callable[[Any, Meta], None] | None) -> None:
    """Count journaled results as done, and tell ``on_done`` of each whole one."""
    for x in ready:
        if type(x) is RowsDone:
            summary.done += x.n
            summary.bytes += x.nbytes
            continue
        tid, meta = x
        summary.done += 1
        summary.bytes += meta["bytes"]
        if on_done is not None:
            on_done(tid, meta)
