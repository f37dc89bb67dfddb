"""The records the scheduler keeps: blocks of tasks, tasks with a history, and workers.

A ``Block`` is consecutive tasks of the source (positions ``seq0``, ``seq0 + 1``...) leased as
one unit: one message to the worker, one lease, one event per batch of results. Each task keeps
its own outcome: a task that fails, hangs or moves to another step leaves its block, gets a
``TaskRec`` (its history: failures, the workers that tried it, its steps) and a block of its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from enum import Enum
from reprlib import recursive_repr
from typing import Any

from ..tuples import NamedTuple

TaskId = Hashable


class _Wait:
    """Given by a task source that may grow later (the executor): nothing to hand out now."""

    def __repr__(self) -> str:
        return "WAIT"


WAIT = _Wait()


class Chunk(NamedTuple):
    """Consecutive tasks from a source: ids, payloads, the position of the first (the others
    follow it), and, for a resumed multi-step task (always alone), the step it resumes at."""

    tids: list[Any]
    payloads: list[Any]
    seq0: int
    call: Any = None  # a steps.StepCall
    hashes: list[int] | None = None  # each task's parameter hash, when the output keeps them


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


@recursive_repr()
def _repr(obj: Any) -> str:
    """``Name(field=value, ...)``, the fields being the slots, as a dataclass shows itself (a task's
    record shows its block, which shows its records: the second time, ``...``)."""
    return f"{type(obj).__name__}({', '.join(f'{f}={getattr(obj, f)!r}' for f in obj.__slots__)})"


# The records are classes with their ``__slots__`` and ``__init__`` written out, not dataclasses:
# a dataclass costs about half a millisecond to define (its methods are generated as source and
# compiled), which a cold executor pays before its first result. Equality is identity.


class TaskRec:
    """A task with a history of its own: it failed, hung, lost its worker, or has steps."""

    __slots__ = ("tid", "payload", "seq", "timeout", "attempts", "failures", "tried", "last_error", "hash", "block",
                 "step", "call", "needs", "waiting", "input_coming", "parent", "children_left", "child_failed",
                 "ended")

    def __init__(self, tid: TaskId, payload: Any, seq: int = -1, timeout: float | None = None, attempts: int = 0,
                 failures: int = 0, tried: set[int] | None = None, last_error: str | None = None,
                 hash: int | None = None, block: Block | None = None, step: int = 0, call: Any = None,
                 needs: str | None = None, waiting: bool = False, input_coming: bool = False,
                 parent: TaskId | None = None, children_left: int = 0, child_failed: str | None = None,
                 ended: bool = False) -> None:
        self.tid = tid
        self.payload = payload
        self.seq = seq  # position in the task source
        self.timeout = timeout  # the lease of the step it runs (None: the task's own, or the run's)
        # the current attempt number: hand-outs that may have started it (a task taken back
        # unstarted, by a steal, keeps its number)
        self.attempts = attempts
        self.failures = failures  # exceptions and lease expiries
        self.tried = set() if tried is None else tried
        self.last_error = last_error
        self.hash = hash  # its parameter hash
        self.block = block  # the block it is in (None: waiting for a step's input or its children)
        # multi-step tasks (see steps.py)
        self.step = step  # the step running, or to run next (0: the task function)
        self.call = call  # what a worker gets to run ``step`` (a steps.StepCall); None: the task itself
        self.needs = needs  # the kind of worker ``step`` needs
        self.waiting = waiting  # its next step's input is not stored yet: not dispatchable
        self.input_coming = input_coming  # the input of ``step`` was received and is being stored
        self.parent = parent  # a child of a fan-out
        self.children_left = children_left  # a parent waits for this many children
        self.child_failed = child_failed
        self.ended = ended

    __repr__ = _repr


class Block:
    """Consecutive tasks leased as one unit. The worker runs them in order, so tasks
    ``[0, next)`` have reported (ended, or left the block) and the task at ``next`` runs while
    the block is at the head of its worker's queue."""

    __slots__ = ("tids", "payloads", "seq0", "hashes", "recs", "bid", "attempt", "rank", "next")

    def __init__(self, tids: list[Any], payloads: list[Any], seq0: int, hashes: list[int] | None = None,
                 recs: dict[int, TaskRec] | None = None, bid: int = 0, attempt: int = 0, rank: int | None = None,
                 next: int = 0) -> None:
        self.tids = tids
        self.payloads = payloads
        self.seq0 = seq0  # position of ``tids[0]``; task i is at ``seq0 + i``
        self.hashes = hashes
        self.recs = recs  # tasks with a history, by index
        self.bid = bid  # the id of its live lease (a new one at every dispatch); 0 while queued
        self.attempt = attempt  # the attempt number of every task in it
        self.rank = rank  # the worker holding the lease
        self.next = next

    __repr__ = _repr

    def __len__(self) -> int:
        return len(self.tids)

    @property
    def left(self) -> int:
        """Tasks not yet reported."""
        return len(self.tids) - self.next

    def rec(self, i: int) -> TaskRec | None:
        return self.recs.get(i) if self.recs else None

    @classmethod
    def single(cls, rec: TaskRec) -> Block:
        """A block of one task with a history (a retry, a step handed to another worker...)."""
        b = cls([rec.tid], [rec.payload], rec.seq, None if rec.hash is None else [rec.hash], {0: rec})
        rec.block = b
        return b

    def cut(self, i: int) -> Block:
        """Take tasks ``[i, len)`` out into a new (queued) block; this one keeps ``[0, i)``."""
        tail = Block(self.tids[i:], self.payloads[i:], self.seq0 + i,
                     None if self.hashes is None else self.hashes[i:], attempt=self.attempt)
        if self.recs:
            moved = {k - i: r for k, r in self.recs.items() if k >= i}
            self.recs = {k: r for k, r in self.recs.items() if k < i} or None
            if moved:
                tail.recs = moved
                for r in moved.values():
                    r.block = tail
        del self.tids[i:], self.payloads[i:]
        if self.hashes is not None:
            del self.hashes[i:]
        return tail


class WorkerRec:
    """What the scheduler keeps about one worker."""

    __slots__ = ("rank", "queue", "held", "state", "head_since", "last_seen", "streaming", "revoking", "stuck",
                 "stuck_at", "kinds")

    def __init__(self, rank: int, queue: deque[Block] | None = None, held: int = 0, state: WorkerState = W.NEW,
                 head_since: float = 0.0, last_seen: float = 0.0, streaming: bool = False, revoking: bool = False,
                 stuck: TaskId | None = None, stuck_at: tuple[int, int] | None = None,
                 kinds: frozenset[str] = frozenset()) -> None:
        self.rank = rank
        self.queue = deque() if queue is None else queue  # leased blocks, in the order it runs them
        self.held = held  # tasks not yet reported in those blocks
        self.state = state
        self.head_since = head_since  # when the running task started (as far as the master knows)
        self.last_seen = last_seen
        self.streaming = streaming  # a result of its running task is being received
        self.revoking = revoking  # a steal request is on its way
        self.stuck = stuck  # the task it was running when its lease expired
        self.stuck_at = stuck_at  # (lease id, index) of that task
        self.kinds = kinds  # what the worker said it is (gpu, bigmem...)

    __repr__ = _repr
