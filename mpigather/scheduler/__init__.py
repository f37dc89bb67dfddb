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

from .core import Scheduler
from .decisions import Decision, Done, Ended, Expired, Halt, Notice, Revoke, Send, Stop, StopEarly
from .leases import STREAM_RECHECK
from .limits import AUTO_FIRST, FailureLimit
from .queue import IterSource
from .types import RELEASED, TRANSITIONS, WAIT, Block, Chunk, TaskId, TaskRec, W, WorkerRec, WorkerState
from .workers import HELLO_PATIENCE, LOST_PATIENCE

__all__ = ["AUTO_FIRST", "HELLO_PATIENCE", "LOST_PATIENCE", "RELEASED", "STREAM_RECHECK", "TRANSITIONS", "WAIT",
           "Block", "Chunk", "Decision", "Done", "Ended", "Expired", "FailureLimit", "Halt", "IterSource", "Notice",
           "Revoke", "Scheduler", "Send", "Stop", "StopEarly", "TaskId", "TaskRec", "W", "WorkerRec", "WorkerState"]
