"""The worker loop: take tasks from the master, call the function, send back results.

``recv -> call -> send``, with a local FIFO of leased blocks of tasks, so that the next task
is already here when one ends. Results that fit a table row (numbers, short strings, small
arrays, dicts of these) are gathered into columns, many tasks to one ``Rows`` item; other
small results are batched into the same message; large ones go as a header followed by raw
chunks. An exception in the task (any ``BaseException``) never escapes: it goes back to the
master with the rank, host and traceback.

Two threads share the work. The main thread runs tasks and sends their results. A helper
thread owns receiving: it queues new tasks, answers the master's revokes at once (so a task
queued here moves to an idle worker even while this one computes), sends heartbeats during
long tasks, and flushes batched results that would otherwise wait behind a long task. Where
the MPI library allows no second thread (below ``MPI_THREAD_SERIALIZED``), the main thread
does the receiving between tasks instead, and the worker says what is lost.

One file per room, and one facade, ``Worker``, that ``api`` and ``executor`` talk to:

- ``base``: the state every room shares;
- ``helper``: the helper thread: receiving, heartbeats, aged flushes, and how it waits;
- ``queue``: the local queue of leased blocks, waiting for the next task, and revokes;
- ``call``: calling the user's function, and checking its signature (``_misfit``);
- ``rows``: the rows accumulator of results that fit a table row;
- ``send``: encoding results, the batch waiting to go, large results in chunks;
- ``steps``: what runs after a step of a multi-step task;
- ``leave``: the goodbye, leaving on a Ctrl-C, and the crash;
- ``tracebacks``: the text of a failure (``where``, ``format_exc``, ``format_again``);
- ``core``: the facade, its state, ``run``, ``serve`` (a worker rank's part) and ``current_worker()``.
"""

from .call import FULL_TRACEBACKS
from .core import SPANS_KEPT, Worker, WorkerInfo, current_worker, serve
from .leave import ABORT_WAIT, INTERRUPT_WAIT
from .rows import params_of
from .send import FLUSH_BYTES, POSTED_MAX
from .tracebacks import format_again, format_exc, where

__all__ = ["ABORT_WAIT", "FLUSH_BYTES", "FULL_TRACEBACKS", "INTERRUPT_WAIT", "POSTED_MAX", "SPANS_KEPT", "Worker",
           "WorkerInfo", "current_worker", "format_again", "format_exc", "params_of", "serve", "where"]
