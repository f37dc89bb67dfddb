"""The records the scheduler keeps: tasks in flight, and workers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

TaskId = Hashable


class _Wait:
    """Yielded by a task source that may grow later (the executor): nothing to hand out now."""

    def __repr__(self) -> str:
        return "WAIT"


WAIT = _Wait()


class WorkerState(str, Enum):
    NEW = "new"  # expected, has not said hello yet
    OK = "ok"  # healthy: may receive tasks
    SUSPECT = "suspect"  # stuck in a task (its lease expired, or another worker's result won)
    STOPPING = "stopping"  # told to stop, goodbye not yet seen
    STOPPED = "stopped"  # said goodbye
    LOST = "lost"  # its process is gone

    def __str__(self) -> str:
        return self.value


W = WorkerState

# (state, event) -> next state. Everything else is a protocol error.
TRANSITIONS: dict[tuple[WorkerState, str], WorkerState] = {
    (W.NEW, "hello"): W.OK,
    (W.OK, "report_in"): W.OK,
    (W.OK, "expire"): W.SUSPECT,
    (W.OK, "superseded"): W.SUSPECT,
    (W.OK, "stop"): W.STOPPING,
    (W.SUSPECT, "report_in"): W.OK,
    (W.SUSPECT, "unstuck"): W.OK,  # the task it expired on was dropped unstarted
    (W.STOPPING, "report_in"): W.STOPPING,  # a task abandoned at the end of a grace period
    (W.LOST, "report_in"): W.LOST,  # a message it sent before it died
    (W.NEW, "bye"): W.STOPPED,
    (W.OK, "bye"): W.STOPPED,
    (W.SUSPECT, "bye"): W.STOPPED,
    (W.STOPPING, "bye"): W.STOPPED,
    (W.LOST, "bye"): W.LOST,
    (W.NEW, "lost"): W.LOST,
    (W.OK, "lost"): W.LOST,
    (W.SUSPECT, "lost"): W.LOST,
    (W.STOPPING, "lost"): W.LOST,
    (W.STOPPED, "lost"): W.STOPPED,  # it had finished already
    (W.LOST, "lost"): W.LOST,
}
RELEASED = frozenset({W.STOPPED, W.LOST, W.SUSPECT})  # the run need not wait for these at its end


@dataclass
class TaskRec:
    """A task that has started but not ended."""

    tid: TaskId
    payload: Any
    timeout: float | None
    seq: int = -1  # position in the task source
    attempts: int = 0  # dispatches so far; the current attempt number
    failures: int = 0  # exceptions and lease expiries
    tried: set[int] = field(default_factory=set)
    last_error: str | None = None
    rank: int | None = None  # holder of the live lease, None while queued
    ended: bool = False
    # multi-step tasks (see steps.py)
    step: int = 0  # the step running, or to run next (0: the task function)
    call: Any = None  # what a worker gets to run ``step`` (a steps.StepCall); None: the task itself
    needs: str | None = None  # the kind of worker ``step`` needs
    waiting: bool = False  # its next step's input is not stored yet: not dispatchable
    input_coming: bool = False  # the input of ``step`` was received and is being stored
    parent: TaskId | None = None  # a child of a fan-out
    children_left: int = 0  # a parent waits for this many children
    child_failed: str | None = None


@dataclass
class WorkerRec:
    rank: int
    queue: OrderedDict[TaskId, None] = field(default_factory=OrderedDict)  # FIFO of leased tasks
    state: WorkerState = W.NEW
    head_since: float = 0.0  # when the head task started running (as far as the master knows)
    last_seen: float = 0.0
    streaming: TaskId | None = None  # task whose result is being received
    revoking: bool = False  # a steal request is on its way
    stuck: TaskId | None = None  # task it was running when its lease expired
    kinds: frozenset[str] = frozenset()  # what the worker said it is (gpu, bigmem...)


