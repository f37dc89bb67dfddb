"""The state every part of the scheduler shares, declared once (``Scheduler.__init__`` sets it),
and the few methods one part calls in another."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .decisions import Decision
from .types import TaskId, TaskRec, WorkerRec, WorkerState


class Base:
    # the task queue
    _source: Iterator[tuple[Any, ...]] | None
    _seq_next: int
    _requeued: deque[TaskRec]
    _active: dict[TaskId, TaskRec]
    _starved: bool
    _draining: bool
    _avg_duration: float | None
    _timeout_of: Callable[[Any], float | None] | None
    prefetch: int
    retries: int
    timeout: float | None
    batch_window: float
    max_batch: int
    # workers
    _workers: dict[int, WorkerRec]
    _count: dict[WorkerState, int]
    _ok: set[int]
    _hungry: set[int]
    _multi: set[int]
    _kinds: dict[str, int]
    _needs_check: bool
    _no_worker_since: float | None
    _hello_warned: bool
    _start: float
    hello_patience: float
    lost_patience: float
    # leases
    _deadlines: list[tuple[float, int, int, TaskId]]
    _seq: int

    @property
    def finished(self) -> bool:
        raise NotImplementedError

    def _worker(self, rank: int) -> WorkerRec:
        raise NotImplementedError

    def _transition(self, w: WorkerRec, event: str) -> None:
        raise NotImplementedError

    def _queue_changed(self, w: WorkerRec) -> None:
        raise NotImplementedError

    def _report_in(self, w: WorkerRec, tid: TaskId, now: float, attempt: int | None = None) -> None:
        raise NotImplementedError

    def _leave_queue(self, w: WorkerRec, tid: TaskId, now: float) -> None:
        raise NotImplementedError

    def _requeue(self, rec: TaskRec, front: bool = True) -> None:
        raise NotImplementedError

    def _arm(self, w: WorkerRec, rec: TaskRec) -> None:
        raise NotImplementedError

    def _end(self, rec: TaskRec, rank: int, attempt: int, *, ok: bool, error: str | None) -> list[Decision]:
        raise NotImplementedError

    def give_up(self, reason: str) -> list[Decision]:
        raise NotImplementedError

    def abandon_running(self) -> list[TaskId]:
        raise NotImplementedError
