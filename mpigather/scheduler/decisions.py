"""What the scheduler asks the master to do: every event returns a list of these decisions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .types import TaskId


class Decision:
    """What an event asks the master to do. Every event returns a list of these."""

    __slots__ = ()


@dataclass(frozen=True)
class Send(Decision):
    """Send these (task id, attempt, payload) assignments to the worker."""

    rank: int
    tasks: list[tuple[Any, ...]]  # (id, attempt, payload), or (id, attempt, payload, steps.StepCall)


@dataclass(frozen=True)
class Revoke(Decision):
    """Ask the worker to drop these queued, not yet started tasks (and acknowledge, for a steal)."""

    rank: int
    tids: list[TaskId]
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
class Notice(Decision):
    """Something the user should read in the log ("warning" or "error")."""

    level: str
    text: str

