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
    finished = bool(st.ends) and st.ends[-1].get("time", 0) >= (start or 0)
    eta = None
    if rate and pending is not None and not finished:
        eta = (pending + running) / rate
    workers = {}
    for rank, t in st.heartbeats.items():
        workers[str(rank)] = {"last_seen_s": round(now - t, 1)}
    return {
        "out": str(out), "total": total, "done": done, "failed": failed, "running": running, "pending": pending,
        "bytes": st.bytes_done, "rate_per_s": rate, "eta_s": eta, "finished": finished,
        "exit": st.ends[-1].get("exit") if finished else None, "runs": st.runs, "workers": workers,
        "failures": {str(k): (v.get("error") or "").strip().splitlines()[-1:] for k, v in st.failed.items()},
    }


def status(out: str, *, as_json: bool = False) -> int:
    try:
        info = collect(out)
    except FileNotFoundError as e:
        print(f"mpigather: error: {e}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(info, default=str))
        return 0
    state = "finished" if info["finished"] else "running (or stopped without an end record)"
    tot = info["total"] if info["total"] is not None else "?"
    print(f"{info['out']}: {state}")
    print(f"  {info['done']}/{tot} done, {info['failed']} failed, {info['running']} running,"
          f" {info['pending'] if info['pending'] is not None else '?'} pending;"
          f" {info['bytes'] / (1 << 30):.3f} GiB")
    if info["rate_per_s"]:
        eta = f", ETA {info['eta_s']:.0f} s" if info["eta_s"] is not None else ""
        print(f"  rate {info['rate_per_s']:.2f} tasks/s{eta}")
    for rank, w in sorted(info["workers"].items(), key=lambda kv: int(kv[0])):
        print(f"  worker {rank}: last seen {w['last_seen_s']:.1f} s ago")
    for tid, err in info["failures"].items():
        print(f"  FAILED {tid}: {err[0] if err else ''}")
    return 0
