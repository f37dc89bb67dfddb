"""The worker table that ``status`` shows (written to the journal with each heartbeat record):
each worker's state, queue and last-seen age, from the scheduler's records and the task each
worker last said it runs. Above ``workerstats.LIST_MAX`` workers, ``heartbeat`` summarises in
one pass, without a record per worker: counts by state, percentiles of the last-seen ages and
the few outliers, as ``workerstats.heartbeat`` would from the whole table.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

from ..scheduler import Scheduler, WorkerState
from ..scheduler.types import WorkerRec


def worker_table(workers: Mapping[int, WorkerRec], hb_task: dict[int, Any], multistep: bool,
                 now: float) -> tuple[dict[int, dict[str, Any]], int, int, dict[str, list[int]]]:
    """Each worker's state, queue length and last-seen age; how many tasks run and wait; and
    for multi-step tasks, how many run and wait at each step ({step: [running, queued]})."""
    out = {}
    running = queued = 0
    by_step: dict[str, list[int]] = {}
    for rank, w in workers.items():
        held = w.held
        head = w.queue[0] if w.queue else None
        if held and w.state is WorkerState.OK:
            running += 1
            queued += held - 1
            if multistep:
                from ..steps import step_name

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


def heartbeat(sched: Scheduler, hb_task: dict[int, Any], multistep: bool,
              now: float) -> tuple[dict[str, Any], int, int, dict[str, list[int]]]:
    """The per-worker part of a heartbeat record (``workerstats.heartbeat``), how many tasks run
    and wait, and the tasks by step. Up to ``LIST_MAX`` workers (or with multi-step tasks) it is
    the whole table; above, one pass over the workers with no record built per worker (building
    them cost 22 ms a second at 10,000 workers, 0.2 s at 100,000). (A run with a journal only:
    the summaries' module is not imported by an in-memory master.)"""
    from .. import workerstats as WS

    workers = sched.workers()
    if len(workers) <= WS.LIST_MAX or multistep:
        table, running, queued, by_step = worker_table(workers, hb_task, multistep, now)
        return WS.heartbeat(table), running, queued, by_step
    ok, suspect = WorkerState.OK, WorkerState.SUSPECT
    settled = {WorkerState.OK, WorkerState.STOPPED, WorkerState.STOPPING}
    running = queued = 0
    states: dict[str, int] = {}
    ages: list[float] = []
    for w in workers.values():
        held, state = w.held, w.state
        if held and state is ok:
            running += 1
            queued += held - 1
        elif state is suspect and w.stuck is not None:
            running += 1
        states[state] = states.get(state, 0) + 1
        ages.append(now - w.last_seen)
    worst = heapq.nlargest(WS.HB_OUTLIERS, workers.items(),
                           key=lambda kv: (kv[1].state not in settled, now - kv[1].last_seen, -kv[0]))
    table, _r, _q, _s = worker_table(dict(worst), hb_task, False, now)
    for row in table.values():  # (as workerstats.heartbeat cuts them)
        if row.get("task") is not None and not isinstance(row["task"], int):
            row["task"] = str(row["task"])[:WS.TASK_CHARS]
    seen = WS.percentiles(ages) or {}
    return ({"n": len(workers), "states": {str(k): v for k, v in states.items()},
             "seen": {k: round(seen[k], 1) for k in WS.PCTS if k in seen}, "table": table}, running, queued, {})

