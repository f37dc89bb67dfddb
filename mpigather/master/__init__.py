"""The master's event loop: probe any source, receive, feed the scheduler, carry out its decisions.

It never blocks on one worker: each chunk is a separate message, matched by probe from
whichever worker sent it and received straight into that worker's open result. Between
messages it commits (sink fsync on a helper thread, then journal fsync: group commit), ticks
the scheduler (leases, grace, patience), dispatches, reports progress, and sleeps with a
capped backoff when nothing arrives. Every decision comes from the scheduler; this loop only
carries them out.

One file per room, and one facade, ``Master``, that ``api`` and ``executor`` talk to:

- ``base``: the state every room shares (what the master keeps per worker comes first);
- ``loop``: the event loop, the dispatch of messages, housekeeping, and how it waits (``_idle``);
- ``decisions``: the scheduler's decisions carried out (messages to workers, ended tasks);
- ``streams``: results stored whole, and the chunked receive of large ones;
- ``rows``: results that fit a table row, a slice of each column at a time;
- ``commit``: group commit (durable first, then journaled) and ``record_done``;
- ``failures``: failed attempts and their errors, lost workers, stopping early;
- ``shutdown``: Ctrl-C, abort, and ``release_workers`` (goodbyes);
- ``steps``: multi-step tasks and fan-outs;
- ``workers``: the worker table that ``status`` shows;
- ``core``: the facade and its state.
"""

from .commit import COMMIT_EVERY, record_done
from .core import Master
from .loop import HEARTBEAT_MAX, HOUSEKEEPING_EVERY
from .shutdown import INTERRUPT_WAIT, ranks_text, release_workers
from .steps import child_id

__all__ = ["COMMIT_EVERY", "HEARTBEAT_MAX", "HOUSEKEEPING_EVERY", "INTERRUPT_WAIT", "Master", "child_id",
           "ranks_text", "record_done", "release_workers"]
