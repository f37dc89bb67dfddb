"""The scheduling state machine: a pure package, no I/O and no MPI (see ``core`` for the invariants).

One file per concern, and one facade, ``Scheduler``, that the master talks to:

- ``types``: the records it keeps (tasks in flight, workers) and the worker state table;
- ``workers``: worker states and their transitions, hello and lost patience;
- ``leases``: deadlines of running tasks, and what happens when one passes;
- ``queue``: the task source, requeued tasks, prefetch and stealing;
- ``steps``: multi-step tasks and the kinds of workers they need;
- ``decisions``: what events ask the master to do;
- ``core``: the facade, and the events that end tasks.
"""

from .core import Scheduler
from .decisions import Decision, Ended, Expired, Halt, Notice, Revoke, Send, Stop
from .leases import STREAM_RECHECK
from .types import RELEASED, TRANSITIONS, WAIT, TaskId, TaskRec, W, WorkerRec, WorkerState
from .workers import HELLO_PATIENCE, LOST_PATIENCE

__all__ = ["HELLO_PATIENCE", "LOST_PATIENCE", "RELEASED", "STREAM_RECHECK", "TRANSITIONS", "WAIT", "Decision",
           "Ended", "Expired", "Halt", "Notice", "Revoke", "Scheduler", "Send", "Stop", "TaskId", "TaskRec", "W",
           "WorkerRec", "WorkerState"]
