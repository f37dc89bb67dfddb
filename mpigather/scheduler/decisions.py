"""What the scheduler asks the master to do: every event returns a list of these decisions.

Each is a small immutable record written out by hand (``__slots__``, ``__init__``), not a frozen
dataclass: defining one of those costs about half a millisecond (its methods are generated as
source and compiled), and nine of them were a tenth of the time to an executor's first result.
"""

from __future__ import annotations

from typing import Any

from .types import Block, TaskId

_set = object.__setattr__


class Decision:
    """What an event asks the master to do. Every event returns a list of these.

    Its fields are its ``__slots__``, in order (``match`` takes them positionally); two decisions
    are equal when they are of one kind and their fields but those in ``_not_compared`` are."""

    __slots__: tuple[str, ...] = ()
    _not_compared: tuple[str, ...] = ()

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self.__slots__ if f not in self._not_compared)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{f}={getattr(self, f)!r}' for f in self.__slots__)})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a decision")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a decision")


class Send(Decision):
    """Send these blocks to the worker (each a new lease: ``Block.bid``, ``Block.attempt``)."""

    __slots__ = __match_args__ = ("rank", "blocks")
    rank: int
    blocks: list[Block]

    def __init__(self, rank: int, blocks: list[Block]) -> None:
        _set(self, "rank", rank)
        _set(self, "blocks", blocks)


class Revoke(Decision):
    """Ask the worker to drop the tasks of these leases from the given index on, where not yet
    started: ``[(lease id, index)]`` (and to acknowledge, for a steal)."""

    __slots__ = __match_args__ = ("rank", "cuts", "expect_ack")
    rank: int
    cuts: list[tuple[int, int]]
    expect_ack: bool

    def __init__(self, rank: int, cuts: list[tuple[int, int]], expect_ack: bool) -> None:
        _set(self, "rank", rank)
        _set(self, "cuts", cuts)
        _set(self, "expect_ack", expect_ack)


class Stop(Decision):
    """Tell the worker to stop once its queue is empty."""

    __slots__ = __match_args__ = ("rank",)
    rank: int

    def __init__(self, rank: int) -> None:
        _set(self, "rank", rank)


class Ended(Decision):
    """How a task ended, for the journal and the summary."""

    __slots__ = __match_args__ = ("tid", "attempt", "rank", "ok", "error", "seq")
    _not_compared = ("seq",)
    tid: TaskId
    attempt: int
    rank: int
    ok: bool
    error: str | None
    seq: int  # its position in the task list (-1: none: a fan-out's child)

    def __init__(self, tid: TaskId, attempt: int, rank: int, ok: bool, error: str | None = None,
                 seq: int = -1) -> None:
        _set(self, "tid", tid)
        _set(self, "attempt", attempt)
        _set(self, "rank", rank)
        _set(self, "ok", ok)
        _set(self, "error", error)
        _set(self, "seq", seq)


class Done(Decision):
    """Consecutive tasks of one block ended done: one decision for the lot."""

    __slots__ = __match_args__ = ("rank", "attempt", "tids")
    rank: int
    attempt: int
    tids: list[TaskId]

    def __init__(self, rank: int, attempt: int, tids: list[TaskId]) -> None:
        _set(self, "rank", rank)
        _set(self, "attempt", attempt)
        _set(self, "tids", tids)


class Expired(Decision):
    """A lease ran out; the worker is now suspect and its tasks went back to the queue."""

    __slots__ = __match_args__ = ("rank", "tid", "attempt", "requeued")
    rank: int
    tid: TaskId
    attempt: int
    requeued: bool

    def __init__(self, rank: int, tid: TaskId, attempt: int, requeued: bool) -> None:
        _set(self, "rank", rank)
        _set(self, "tid", tid)
        _set(self, "attempt", attempt)
        _set(self, "requeued", requeued)


class Halt(Decision):
    """The run cannot go on (every worker is lost): what is left stays for a resume."""

    __slots__ = __match_args__ = ("reason",)
    reason: str

    def __init__(self, reason: str) -> None:
        _set(self, "reason", reason)


class StopEarly(Decision):
    """Too many tasks failed (``--max-failures``), or the task function cannot take the tasks
    (``fatal``): no new work is handed out; running tasks finish within the grace period, and
    the rest is left for a resume."""

    __slots__ = __match_args__ = ("reason", "failed", "done", "fatal")
    reason: str
    failed: int
    done: int
    fatal: bool

    def __init__(self, reason: str, failed: int, done: int, fatal: bool = False) -> None:
        _set(self, "reason", reason)
        _set(self, "failed", failed)
        _set(self, "done", done)
        _set(self, "fatal", fatal)


class Notice(Decision):
    """Something the user should read in the log ("warning" or "error")."""

    __slots__ = __match_args__ = ("level", "text")
    level: str
    text: str

    def __init__(self, level: str, text: str) -> None:
        _set(self, "level", level)
        _set(self, "text", text)
