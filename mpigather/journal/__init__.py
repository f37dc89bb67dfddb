"""Append-only journal of task states: the record that makes a run resumable and observable.

One JSON object per line, in a file next to the output (``OUT.journal``). A task is
written as done only after its data is on disk. Lines are buffered and made durable by
``commit()``: one fsync covers every record since the previous one (group commit), so
durability costs one fsync per batch of completions, not one per task.

Record types (key ``ev``), each written by one method of ``Journal``:
- ``start``: the run's parameters (total, argv, pid, host, mode...);
- ``source``: the total and signature of a task file checked while the run went on (they
  complete the ``start`` record, which could not say them yet);
- ``done``: a batch of finished tasks, column by column (ids, positions, parameter hashes,
  attempts, ranks, bytes, crc32c, durations, and paths in direct mode): about 40 bytes a task;
- ``rows``: a batch of rows of the table of small results: their positions in the task list
  as ranges (not their ids), and a parameter hash, attempt, rank, bytes, crc32c and duration
  per range: a few dozen bytes for thousands of tasks;
- ``error``: a distinct error, once, at its first failure: its number ``k`` in this run, its
  key (exception type and where it was raised), the text of that first failure, the task's id;
- ``failed``: failed tasks, batched by error and commit: the error's ``k``, ``final`` (the task
  ended failed) or not (an attempt that is retried), their positions as ranges (``pos``) and the
  ids of tasks with no position (``id``): a storm of 200,000 identical failures writes a few
  hundred such small records, not 200,000 tracebacks. (Older journals have one record per
  failed attempt: id, position, attempt, rank, error, final; they are still read.)
- ``workers``: every second or so, the master's heartbeat: how many tasks are running and
  queued, and each worker's state up to ``workerstats.LIST_MAX`` workers; above, the count of
  workers in each state and only the few that are not ok or silent longest (under 1 KB);
- ``reset``: the output was found damaged and set aside: forget the earlier done records;
- ``stats``: per-rank time accounting at the end of a run (every worker up to
  ``workerstats.LANES_MAX``; above, the outliers only); ``fleet``: the workers' totals,
  percentiles, outliers and busy workers over time (``workerstats.summarise``; journals of
  older versions have none, and their stats records say it all); ``end``: how the run ended.

A torn last line (the job was killed mid-write) is ignored and cut off before appending.
Reading is streamed, so a journal of ten million tasks is read in bounded memory.

One file per concern: ``writer`` (``Journal``, group commit, the torn tail), ``records``
(reading records, streamed), ``doneset`` (``DoneSet``, ``id_key``), ``state`` (replay into a
``State``: ``load_state``).
"""

from .doneset import DoneSet, id_key
from .records import HEARTBEAT_PREFIX, done_columns, read_records
from .state import RunRecord, State, load_state
from .writer import SUFFIX, Journal, journal_path, now

__all__ = ["HEARTBEAT_PREFIX", "SUFFIX", "DoneSet",
           "Journal", "RunRecord", "State", "done_columns", "id_key", "journal_path",
           "load_state", "now", "read_records"]
