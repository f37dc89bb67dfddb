"""The scheduling state machine: a pure package, no I/O and no MPI (``core`` lists the invariants).

One file per concern, and one facade, ``Scheduler``, that the master talks to:

- ``types``: the records it keeps (blocks of tasks, tasks with a history, workers) and the
  table of worker states;
- ``workers``: worker states and their transitions, hello and lost patience;
- ``leases``: deadlines of running tasks, and what a lease that ends early gives back;
- ``queue``: the task source, block sizes, requeued work, dispatch and stealing;
- ``steps``: multi-step tasks and the kinds of workers they need;
- ``decisions``: what events ask the master to do;
- ``limits``: when failing tasks stop the run early (``--max-failures``);
- ``core``: the facade, the events that end tasks, and the run's end.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_getattr

# Where each name lives, imported on first use (PEP 562): ``scheduler.limits`` alone (the
# options check ``max_failures`` with it) does not import the whole state machine.
_WHERE = {
    "Scheduler": "core", "Decision": "decisions", "Done": "decisions", "Ended": "decisions", "Expired": "decisions",
    "Halt": "decisions", "Notice": "decisions", "Revoke": "decisions", "Send": "decisions", "Stop": "decisions",
    "StopEarly": "decisions", "STREAM_RECHECK": "leases", "AUTO_FIRST": "limits", "FailureLimit": "limits",
    "IterSource": "queue", "RELEASED": "types", "TRANSITIONS": "types", "WAIT": "types", "Block": "types",
    "Chunk": "types", "TaskId": "types", "TaskRec": "types", "W": "types", "WorkerRec": "types",
    "WorkerState": "types", "HELLO_PATIENCE": "workers", "LOST_PATIENCE": "workers",
}

__all__ = ["AUTO_FIRST", "HELLO_PATIENCE", "LOST_PATIENCE", "RELEASED", "STREAM_RECHECK", "TRANSITIONS", "WAIT",
           "Block", "Chunk", "Decision", "Done", "Ended", "Expired", "FailureLimit", "Halt", "IterSource", "Notice",
           "Revoke", "Scheduler", "Send", "Stop", "StopEarly", "TaskId", "TaskRec", "W", "WorkerRec", "WorkerState"]


__getattr__ = lazy_getattr(__name__, _WHERE, globals())


if TYPE_CHECKING:  # for type checkers: the same names, imported eagerly
    from .core import Scheduler
    from .decisions import Decision, Done, Ended, Expired, Halt, Notice, Revoke, Send, Stop, StopEarly
    from .leases import STREAM_RECHECK
    from .limits import AUTO_FIRST, FailureLimit
    from .queue import IterSource
    from .types import RELEASED, TRANSITIONS, WAIT, Block, Chunk, TaskId, TaskRec, W, WorkerRec, WorkerState
    from .workers import HELLO_PATIENCE, LOST_PATIENCE
