"""Wire messages: one small class per message, so that both loops can ``match`` on them.

NamedTuples, like ``results.Header``: they pickle as small tuples (thousands go by per second
for tiny tasks), and ``match Msg(field=...)`` reads them by name. Array data never rides in
them, except for results small enough to travel inline. Tags are fixed and few: task ids
never become tags.
"""

from __future__ import annotations

from typing import Any

from .tuples import NamedTuple

# tags
CTRL = 11  # worker -> master: pickled control messages
DATA = 12  # worker -> master: raw chunks of the result announced last by that worker
TASK = 13  # master -> worker: pickled assignments and commands
RELEASE = 14  # master -> worker, empty: the run is closed, the worker may leave (``MPILink.await_release``)


# -- worker -> master -----------------------------------------------------------------------


class Hello(NamedTuple):
    """A worker is ready for tasks."""

    host: str
    pid: int
    kinds: tuple[str, ...] = ()


class Item(NamedTuple):
    """One finished task: task ``i`` of lease ``bid``. ``inline``: the parts' bytes, for small
    results; ``path``: direct mode, where the worker wrote it; both None: the bytes follow as
    DATA messages, one per chunk of ``results.chunk_plan()``, then a ``Trailer``."""

    bid: int
    i: int
    tid: Any
    attempt: int
    header: Any  # results.Header
    duration: float
    inline: list[bytearray] | None
    path: str | None
    step: Any = None  # steps.StepInfo of a multi-step task: which step this is the output of


class Rows(NamedTuple):
    """Tasks ``[start, start + n)`` of lease ``bid`` finished with results that fit one table
    schema: their columns (see ``table``), with the columns of their parameters where those
    fit one too. ``tid0``: the first task's id (a late result of it may still win)."""

    bid: int
    start: int
    n: int
    tid0: Any
    attempt: int
    schema: Any  # table.Schema
    cols: list[Any]
    crc: int  # table.checksum of cols
    durations: Any  # float32 array, seconds each task took
    pschema: Any = None  # table.Schema of the parameters, or None
    pcols: list[Any] | None = None


class Results(NamedTuple):
    """Finished tasks, batched: results, rows, failures and notices of steps that went on where
    they ran, in the order they happened; the last item may announce chunks that follow on DATA."""

    items: list[Any]


class Failed(NamedTuple):
    """The task raised (or its result could not be sent). ``exc``: the pickled exception, for
    the executor; ``where``: its type and the place it was raised, to tell identical errors."""

    bid: int
    i: int
    tid: Any
    attempt: int
    text: str
    duration: float
    exc: bytes | None = None
    step: int = 0  # the step that failed
    where: str = ""
    fatal: bool = False  # the task function cannot take the tasks (its signature): the run stops


class Step(NamedTuple):
    """A step finished and the worker goes on with the next itself, keeping its output in
    memory (``checkpoint="none"``): no data follows."""

    bid: int
    i: int
    tid: Any
    attempt: int
    info: Any  # steps.StepInfo
    duration: float


class Heartbeat(NamedTuple):
    """Sent while a long task runs."""

    tid: Any
    seconds: float


class Revoked(NamedTuple):
    """The answer to a ``Revoke`` that asked for one: of each lease, the index from which it
    dropped the tasks unstarted (None: nothing of it)."""

    cuts: list[tuple[int, int | None]]


class Trailer(NamedTuple):
    """After the last chunk of a streamed result: the sender's checksum of all its bytes."""

    tid: Any
    crc: int


class Log(NamedTuple):
    """A worker's warning or error, for the master's log."""

    level: int
    text: str


class Crash(NamedTuple):
    """An internal error on a worker (not in a task): the run cannot go on."""

    text: str


class Interrupted(NamedTuple):
    """The worker got a Ctrl-C (SIGINT): the whole run stops now. Its finished results came
    before this, its ``Bye`` follows."""


class Bye(NamedTuple):
    """The worker is leaving; its time accounting."""

    stats: dict[str, Any]


# -- master -> worker -----------------------------------------------------------------------


class Block(NamedTuple):
    """A lease of consecutive tasks, run in order: ``calls`` (a steps.StepCall for a task that
    runs a later step, else None), when any of them does."""

    bid: int
    attempt: int
    tids: list[Any]
    payloads: list[Any]
    calls: list[Any] | None = None


class Tasks(NamedTuple):
    """Leases, in the order the worker runs them."""

    blocks: list[Block]


class Revoke(NamedTuple):
    """Of each lease, drop the tasks from that index on that have not started:
    ``[(lease id, index)]``; answer with ``Revoked`` when ``ack``."""

    cuts: list[tuple[int, int]]
    ack: bool


class Stop(NamedTuple):
    """Finish the queued tasks, then say goodbye."""


class Abort(NamedTuple):
    """Drop everything and say goodbye now: the master failed, or (``interrupted``) the run got a
    Ctrl-C, and the worker then raises KeyboardInterrupt."""

    reason: str
    interrupted: bool = False


TO_MASTER = (Hello, Results, Rows, Item, Failed, Step, Heartbeat, Revoked, Trailer, Log, Crash, Interrupted, Bye)
TO_WORKER = (Tasks, Revoke, Stop, Abort)
