"""The worker table that ``status`` shows (written to the journal with each heartbeat record):
each worker's state, queue and last-seen age, from the scheduler's records and the task each
worker last said it runs.
"""

from __future__ import annotations

from typing import Any

from ..scheduler import Scheduler, WorkerState
from ..steps import step_name


def worker_table(sched: Scheduler, hb_task: dict[int, Any], multistep: bool,
                 now: float) -> tuple[dict[int, dict[str, Any]], int, int, dict[str, list[int]]]:
    """Each worker's state, queue length and last-seen age; how many tasks run and wait; and
    for multi-step tasks, how many run and wait at each step ({step: [running, queued]})."""
    out = {}
    running = queued = 0
    by_step: dict[str, list[int]] = {}
    for rank, w in sched.workers().items():
        held = w.held
        head = w.queue[0] if w.queue else None
        if held and w.state is WorkerState.OK:
            running += 1
            queued += held - 1
            if multistep:
                for k, b in enumerate(w.queue):
                    for j in range(b.next, len(b)):
                        rec = b.rec(j)
                        name = step_name(rec.call.func) if rec is not None and rec.call is not None else "task"
                        by_step.setdefault(name, [0, 0])[0 if (k == 0 and j == b.next) else 1] += 1
        elif w.state is WorkerState.SUSPECT and w.stuck is not None:
            running += 1
        task = head.tids[head.next] if head is not None and head.next < len(head) else None
        out[rank] = {"state": str(w.state), "queued": max(held - 1, 0), "seen_ago": round(now - w.last_seen, 3),
                     "task": hb_task.get(rank, task)}
    return out, running, queued, by_step
