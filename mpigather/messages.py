"""Message kinds and tags. Messages are small tuples ``(KIND, ...)``; array data never rides in them
except for results small enough to inline. Tags are fixed and few: task ids never become tags."""

from __future__ import annotations

# tags
CTRL = 11  # worker -> master: pickled control tuples
DATA = 12  # worker -> master: raw chunks of the result announced last by that worker
TASK = 13  # master -> worker: pickled assignments and commands

# worker -> master
HELLO = "hello"  # (HELLO, host, pid)
RESULTS = "results"  # (RESULTS, [Item, ...]); the last item may announce chunks that follow on DATA
FAILED = "failed"  # (FAILED, tid, attempt, error text, cause, duration, pickled exception | None)
#                    cause: "error" | "unsupported"; the exception only for the executor
HEARTBEAT = "hb"  # (HEARTBEAT, tid, seconds in task)
REVOKED = "revoked"  # (REVOKED, [tids dropped unstarted])
TRAILER = "trailer"  # (TRAILER, tid, crc32c): after the last chunk of a streamed result
LOG = "log"  # (LOG, levelno, text)
BYE = "bye"  # (BYE, stats dict)

# master -> worker
TASKS = "tasks"  # (TASKS, [(tid, attempt, payload), ...])
REVOKE = "revoke"  # (REVOKE, [tids], ack wanted)
STOP = "stop"  # (STOP,)
ABORT = "abort"  # (ABORT, reason)

# A result item: (tid, attempt, header, duration, inline bufs | None, path | None)
# inline bufs: the parts' bytes, for small results; path: direct mode, the file the worker wrote;
# both None: the bytes follow as DATA messages, one per chunk of results.chunk_plan().
