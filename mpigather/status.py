"""``mpigather status PATH``: how far a run is, read from its journal (live or finished)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .journal import journal_path, load_state


def collect(out: str) -> dict[str, Any]:
    jp = journal_path(Path(out))
    if not jp.exists():
        raise FileNotFoundError(f"no journal {jp}: is {out} the --out of a run?")
    st = load_state(jp)
    total = st.total
    done, failed, running = len(st.done), len(st.failed), len(st.running)
    pending = None if total is None else max(total - done - failed - running, 0)
    now = time.time()
    start = st.start.get("time")
    rate = None
    if start and st.done_times:
        recent = [t for t in st.done_times if t >= start]
        span = (max(recent) if recent else now) - start
        rate = len(recent) / span if span > 0 and recent else None
    ended = bool(st.ends) and st.ends[-1].get("time", 0) >= (start or 0)
    end = st.ends[-1] if ended else {}
    if ended:
        state = "interrupted (resumable with --resume)" if end.get("interrupted") else "finished"
    elif _alive(st.start):
        state = "running"
    else:
        state = "stopped without an end record (killed?); --resume continues it"
    eta = None
    if rate and pending is not None and state == "running":
        eta = (pending + running) / rate
    workers = {}
    if st.workers_time is not None and not ended:
        lag = (now if state == "running" else st.workers_time) - st.workers_time
        for rank, w in st.workers.items():
            workers[str(rank)] = {"state": w.get("state"), "last_seen_s": round(w.get("seen_ago", 0) + lag, 1),
                                  "queued": w.get("queued"), "task": w.get("task")}
    if state != "running":
        running = 0
    return {
        "out": str(out), "state": state, "total": total, "done": done, "failed": failed, "running": running,
        "pending": pending, "bytes": st.bytes_done, "rate_per_s": rate, "eta_s": eta, "finished": ended,
        "exit": end.get("exit"), "runs": st.runs, "workers": workers,
        "failures": {str(k): (v.get("error") or "").strip().splitlines()[-1:] for k, v in st.failed.items()},
    }


def _alive(start: dict[str, Any]) -> bool:
    """Is the master that wrote this journal still running (same host only)?"""
    import os
    import socket

    pid, host = start.get("pid"), start.get("host")
    if not pid:
        return False
    if host and host != socket.gethostname():
        return True  # another host's processes cannot be checked from here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(out: str, *, as_json: bool = False) -> int:
    try:
        info = collect(out)
    except FileNotFoundError as e:
        print(f"mpigather: error: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(info, default=str))
        return 0
    state = info["state"]
    tot = info["total"] if info["total"] is not None else "?"
    print(f"{info['out']}: {state}")
    print(f"  {info['done']}/{tot} done, {info['failed']} failed, {info['running']} running,"
          f" {info['pending'] if info['pending'] is not None else '?'} pending;"
          f" {info['bytes'] / (1 << 30):.3f} GiB")
    if info["rate_per_s"]:
        eta = f", ETA {info['eta_s']:.0f} s" if info["eta_s"] is not None else ""
        print(f"  rate {info['rate_per_s']:.2f} tasks/s{eta}")
    for rank, w in sorted(info["workers"].items(), key=lambda kv: int(kv[0])):
        task = f", task {w['task']!r}" if w.get("task") is not None else ""
        print(f"  worker {rank}: {w['state']}, last seen {w['last_seen_s']:.1f} s ago, {w['queued']} queued{task}")
    for tid, err in info["failures"].items():
        print(f"  FAILED {tid}: {err[0] if err else ''}")
    return 0
