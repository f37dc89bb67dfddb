"""What the scheduler asks the master to do: every event returns a list of these decisions."""

from __future__ import annotations

from dataclasses import dataclass, field

from .types import Block, TaskId


class Decision:
    """What an event asks the master to do. Every event returns a list of these."""

    __slots__ = ()


@dataclass(frozen=True)
class Send(Decision):
    """Send these blocks to the worker (each a new lease: ``Block.bid``, ``Block.attempt``)."""

    rank: int
    blocks: list[Block]


@dataclass(frozen=True)
class Revoke(Decision):
    """Ask the worker to drop the tasks of these leases from the given index on, where not yet
    started: ``[(lease id, index)]`` (and to acknowledge, for a steal)."""

    rank: int
    cuts: list[tuple[int, int]]
    expect_ack: bool


@dataclass(frozen=True)
class Stop(Decision):
    rank: int


@dataclass(frozen=True)
class Ended(Decision):
    """How a task ended, for the journal and the summary."""

    tid: TaskId
    attempt: int
    rank: int
    ok: bool
    error: str | None = None
    seq: int = field(default=-1, compare=False)  # its position in the task list (-1: none: a fan-out's child)


@dataclass(frozen=True)
class Done(Decision):
    """Consecutive tasks of one block ended done: one decision for the lot."""

    rank: int
    attempt: int
    tids: list[TaskId]


@dataclass(frozen=True)
class Expired(Decision):
    """A lease ran out; the worker is now suspect and its tasks went back to the queue."""

    rank: int
    tid: TaskId
    attempt: int
    requeued: bool


@dataclass(frozen=True)
class Halt(Decision):
    """The run cannot go on (every worker is lost): what is left stays for a resume."""

    reason: str


@dataclass(frozen=True)
class StopEarly(Decision):
    """Too many tasks failed (``--max-failures``), or the task function cannot take the tasks
    (``fatal``): no new work is handed out; running tasks finish within the grace period, and
    the rest is left for a resume."""

    reason: str
    failed: int
    done: int
    fatal: bool = False


@dataclass(frozen=True)
class Notice(Decision):
    """Something the user should read in the log ("warning" or "error")."""

    level: str
    text: str

