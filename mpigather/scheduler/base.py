"""The state every part of the scheduler shares, declared once (``Scheduler.__init__`` sets it),
and the few methods that one part calls in another."""

from __future__ import annotations

from collections import deque
from typing import Any, Protocol

from .decisions import Decision
from .types import Block, Chunk, TaskId, TaskRec, WorkerRec, WorkerState, _Wait


class Source(Protocol):
    """Where tasks come from: ``take(n)`` gives up to ``n`` consecutive tasks, ``WAIT`` when
    there are none now but may be later, None once there will be no more. ``available`` (when
    the source knows it): how many tasks it could give at once now."""

    def take(self, n: int) -> Chunk | _Wait | None: ...


class Base:
    # the task queue
    _source: Source | None
    _requeued: deque[Block]  # blocks to hand out before new ones from the source
    _recs: dict[TaskId, TaskRec]  # every unfinished task with a history
    _leases: dict[int, Block]  # live leases, by id
    _next_bid: int
    _pulled: int  # tasks read from the source
    total: int | None  # tasks in the source, when known
    _starved: bool  # the last look at the source found nothing to hand out now
    _draining: bool
    _grace_end: float | None  # when a drain's running tasks are abandoned
    _avg: float | None  # measured seconds per task
    _timeout_of: Any
    prefetch: int
    retries: int
    timeout: float | None
    block_time: float
    max_block: int
    n_done: int
    n_failed: int
    # workers
    _workers: dict[int, WorkerRec]
    _count: dict[WorkerState, int]
    _ok: set[int]  # healthy workers
    _hungry: set[int]  # healthy workers whose queue shrank since dispatch last filled it
    _multi: set[int]  # healthy workers holding more than one task (steal donors)
    _asked: set[int]  # workers asked for tasks (a steal, a drain) that have not answered
    _stop_cuts: dict[int, int]  # lease -> where a drain cut it: a failure past that is not counted
    _idle: set[int]  # healthy workers holding no task
    _kinds: dict[str, int]  # live workers of each kind
    _needs_check: bool  # a requeued task needs a kind of worker: can anyone run it?
    _no_worker_since: float | None
    _hello_warned: bool
    _start: float
    hello_patience: float
    lost_patience: float
    # leases
    _deadlines: list[tuple[float, int, int, int, int]]  # (deadline, tie-break, rank, lease id, index)
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

    def _report_in(self, w: WorkerRec) -> None:
        raise NotImplementedError

    def _advance(self, w: WorkerRec, b: Block, n: int, now: float) -> None:
        raise NotImplementedError

    def _take_back(self, w: WorkerRec, error: str) -> tuple[list[Decision], TaskRec | None]:
        raise NotImplementedError

    def _requeue_rec(self, rec: TaskRec, front: bool = True) -> None:
        raise NotImplementedError

    def _requeue_blocks(self, blocks: list[Block]) -> None:
        raise NotImplementedError

    def _promote(self, b: Block, i: int) -> TaskRec:
        raise NotImplementedError

    def _arm(self, w: WorkerRec) -> None:
        raise NotImplementedError

    def _asking(self, w: WorkerRec, on: bool) -> None:
        raise NotImplementedError

    def _end_rec(self, rec: TaskRec, rank: int, attempt: int, *, ok: bool, error: str | None) -> list[Decision]:
        raise NotImplementedError

    def give_up(self, reason: str) -> list[Decision]:
        raise NotImplementedError

    def _forget(self, b: Block) -> None:
        raise NotImplementedError

    def in_flight(self) -> int:
        raise NotImplementedError

    def abandon_running(self) -> int:
        raise NotImplementedError
