"""Failures: a task's attempt that failed (raised on the worker, or a result that does not check
or cannot be rebuilt here) is matched to its distinct error (``failures.ErrorLog``, journaled
once) and handed to the scheduler, which retries the task or ends it; an ended task is counted
and journaled. Lost workers (ULFM) give their tasks back. When failures pass ``--max-failures``
(or the function cannot take its tasks), the scheduler stops early and this room says why.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ChecksumError
from ..failures import SIGNATURE, TEXTS_KEPT, Error, error_key
from ..scheduler import WorkerState
from .base import Base

log = logging.getLogger("mpigather")

_ValueErrors = (Exception,)  # what rebuilding or storing one value may raise without the run failing


def _value_error(tid: Any, src: int, e: BaseException) -> str:
    return (f"task {tid!r} (from rank {src}): its result could not be rebuilt on the master:"
            f" {type(e).__name__}: {e}")


class FailuresMixin(Base):
    """Part of ``Master``: failed attempts, ended tasks, lost workers, stopping early."""

    def _task_failed(self, src: int, bid: int, i: int, tid: Any, attempt: int, text: str, now: float,
                     where: str = "", fatal: bool = False, duration: float | None = None) -> None:
        """A task's attempt failed: its error is found (or recorded, once); the scheduler decides
        whether the task is retried or ends failed (then ``Ended`` counts it), or the run stops."""
        b = self.sched.lease(src, bid)
        counted = b is not None or self.sched.task(tid) is not None
        e = self._error(error_key(where, text), text, tid) if counted else None
        if e is not None:
            self._failing[tid] = e
        self._decide_all(self.sched.task_failed(src, bid, i, tid, text, now, attempt, fatal, duration), now)
        if e is not None and self._failing.pop(tid, None) is not None and self.journal is not None:
            self.journal.failed(e.k, tid, b.seq0 + i if b is not None else -1, final=False)  # retried

    def _error(self, key: str, text: str, tid: Any) -> Error:
        """The distinct error with this key; journaled once, at its first failure."""
        e, new = self.errors.error(key, text, tid)
        if new and self.journal is not None:
            self.journal.error(e.k, key, text, tid)
        return e

    def _ended_failed(self, tid: Any, error: str | None, seq: int) -> None:
        """The scheduler ended a task failed: count it under its error, journal it, tell the caller."""
        self._parents.discard(tid)
        e = self._failing.pop(tid, None) or self._error(error_key("", error), error or "failed", tid)
        self.errors.ended(e, tid, seq)
        # the first failures keep their own text; later ones share their error's (bounded memory)
        self.summary.failed[tid] = (error or "failed") if len(self.summary.failed) < TEXTS_KEPT else e.text
        if self.journal is not None:
            self.journal.failed(e.k, tid, seq, final=True)
        exc = self._exc.pop(tid, None)
        if self.on_failed is not None:
            self.on_failed(tid, error or "failed", exc)

    def _expired(self, rank: int, tid: Any, attempt: int, requeued: bool) -> None:
        """A lease ran out: say so, and journal the attempt as failed (not final)."""
        log.warning("task %r: lease expired on worker %d (attempt %d); %s", tid, rank, attempt,
                    "requeued" if requeued else "no retries left")
        if self.journal is not None:
            e = self._error("lease expired", f"task {tid!r}: lease expired on worker {rank}", tid)
            self.journal.failed(e.k, tid, final=False)

    def _rebuild_failed(self, src: int, bid: int, i: int, tid: Any, attempt: int, e: BaseException,
                        now: float) -> None:
        if self.on_failed is not None:  # the executor hands the error itself to the future, traceback and all
            self._exc[tid] = e
        self._task_failed(src, bid, i, tid, attempt, _value_error(tid, src, e), now)

    def _bad_checksum(self, src: int, bid: int, i: int, tid: Any, attempt: int, want: int, got: int,
                      now: float) -> None:
        err = str(ChecksumError(f"task {tid!r} from rank {src}: checksum {got:#010x} != sent {want:#010x}"))
        log.error(err)
        self._task_failed(src, bid, i, tid, attempt, err, now)

    def _on_lost(self, ranks: list[int], now: float) -> None:
        """The MPI library reports dead processes (ULFM): what they held goes to the others."""
        self._lost.difference_update(ranks)
        for rank in ranks:
            w = self.sched.workers().get(rank)
            if w is None or w.state is WorkerState.LOST:
                continue
            self._dead.add(rank)
            host = self._hosts.get(rank, "?")
            log.error("worker %d (host %s) is lost: its process died; its tasks go to the other workers", rank, host)
            self.summary.workers.setdefault(rank, {"host": host, "lost": True, "tasks": 0})
            stream = self._streams.pop(rank, None)
            if stream is not None and stream.target is not None:
                self._pipe.settle(stream)
                stream.target.discard()
            self._settling = [(s, st) for s, st in self._settling if s != rank]
            self._hb_task.pop(rank, None)
            self._decide_all(self.sched.worker_lost(rank, now), now)

    def _stopped_early(self, reason: str, failed: int, done: int, fatal: bool) -> None:
        """The scheduler stopped handing out work: say why, once, and how to go on."""
        cli = self.opts.interface == "cli"
        top = max(self.errors.errors, key=lambda x: x.count, default=None)
        if fatal:
            top = next((e for e in self.errors.errors if e.key == SIGNATURE), top)
        last = top.text.strip().splitlines()[-1] if top is not None and top.text.strip() else "?"
        if fatal:
            why = f"{reason} (the error above)"
            log.error("stopping early: %s: %s", reason, last)
        else:
            flag = f"--max-failures {self.sched.max_failures}" if cli else \
                f"max_failures={str(self.sched.max_failures)!r}"
            why = f"{reason} ({flag})"
            log.error("stopping early: %s; the most frequent error, %d time(s): %s; no new tasks, running ones"
                      " get %.0f s to finish", why, top.count if top else 0, last, self.opts.grace)
        self.summary.stopped_early = why
        self.summary.stopped_hint = (f"fix the cause, then run the same command with {self.opts.flag('resume')}:"
                                     " it runs the failed tasks and the ones not run"
                                     + ("" if fatal else
                                        f"; {'--max-failures none' if cli else 'max_failures=' + repr('none')}"
                                        " runs every task whatever fails"))
