"""``mpigather status PATH``: how far a run is, live or not, read from its lock and journal.

A run is live exactly while its master holds the output's lock (the kernel drops it when the
process dies, however it dies), so a dead run is never called running. The counts always
add up: done + failed + running + queued + pending = total, where running tasks are being
computed now and queued ones wait at a worker. A run of many workers is summed up: how many
are in each state, percentiles of the time since each was heard from, and the few workers that
are not ok or silent longest (``workerstats.heartbeat``). ``--json`` prints the schema documented in
docs/status.md. Reading takes no lock the master needs and costs the master nothing.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from .failures import show
from .journal import journal_path, load_state
from .lock import probe
from .workerstats import LIST_MAX, PCTS, percentiles

SCHEMA = 2  # 2: ``errors`` (each distinct error once, its tasks as ranges) replaced ``failures``
WAIT_POLL = 0.2  # seconds between two looks at the lock while waiting for a run to end
EXIT_TIMEOUT = 124  # --wait --timeout ran out while the run was still live (as timeout(1))
EXIT_KILLED = 75  # a run that died without an end record: resumable


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "?"


def _ago(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _state(st: Any, live: bool, holder: dict[str, Any], failed: int) -> tuple[str, str, int | None]:
    """(state, what to tell the user, exit status) of a run, from its journal and its lock."""
    run = st.last_run
    end = run.end if run is not None else None
    exit_code = end.get("exit") if end else None
    start_t = st.start.get("time")
    if live:
        return ("running", f"running since {_when(start_t)}, pid {holder.get('pid', st.start.get('pid'))}"
                           f" on {holder.get('host', st.start.get('host'))}", None)
    if end is not None and end.get("interrupted"):
        return "interrupted", "interrupted by a signal; resumable with --resume", exit_code
    if end is not None and end.get("stopped_early"):
        return ("stopped early", f"exit {exit_code}: {end['stopped_early']}; fix the cause, then --resume runs the"
                                 " failed tasks and the rest", exit_code)
    if end is not None and exit_code in (0, 1):
        return "finished", f"exit {exit_code}" + (f": {failed} task(s) failed" if failed else ""), exit_code
    if end is not None:
        return ("failed", f"failed (exit {exit_code}: {end.get('error', 'see the log')}); resumable with --resume",
                exit_code)
    if st.runs:
        last = st.last_record_time
        detail = (f"not running since {_when(last)} (no heartbeat for {_ago(time.time() - last)})" if last else
                  "not running") + "; it ended without an end record (killed?); resumable with --resume"
        return "dead", detail, EXIT_KILLED
    return "not started", "no run has started yet", None


def _live_parts(st: Any, hb: dict[str, Any], live: bool) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """The workers as the last heartbeat saw them (live runs only): every one in a run of up to
    ``workerstats.LIST_MAX`` workers, the outliers in a larger one; and the tasks at each step."""
    workers = {}
    if live and hb:
        lag = time.time() - hb.get("time", time.time())
        for rank, w in (hb.get("table") or {}).items():
            workers[str(rank)] = {"state": w.get("state"), "last_seen_s": round(w.get("seen_ago", 0) + lag, 1),
                                  "queued": w.get("queued"), "task": w.get("task")}
    steps: dict[str, dict[str, int]] = {name: {"done": n, "running": 0, "queued": 0}
                                        for name, n in st.step_counts.items()}
    if live:
        for name, (r, q) in (hb.get("steps") or {}).items():
            steps.setdefault(name, {"done": 0, "running": 0, "queued": 0}).update(running=r, queued=q)
    return workers, steps


def _fleet(hb: dict[str, Any], live: bool) -> dict[str, Any]:
    """How many workers a live run has, in which states, and how long since each was heard from
    (min, p10, p50, p90, max seconds); from the last heartbeat."""
    if not (live and hb):
        return {"n_workers": None, "worker_states": {}, "last_seen_s": None}
    lag = max(time.time() - hb.get("time", time.time()), 0.0)
    table = hb.get("table") or {}
    if "n" in hb:  # a large run: its heartbeat names only the outliers
        seen = {k: round(float(v) + lag, 1) for k, v in (hb.get("seen") or {}).items()}
        return {"n_workers": hb["n"], "worker_states": hb.get("states") or {}, "last_seen_s": seen or None}
    states: dict[str, int] = {}
    for w in table.values():
        states[str(w.get("state"))] = states.get(str(w.get("state")), 0) + 1
    pct = percentiles([float(w.get("seen_ago") or 0.0) + lag for w in table.values()])
    return {"n_workers": len(table), "worker_states": states,
            "last_seen_s": {k: round(pct[k], 1) for k in PCTS} if pct else None}


def collect(out: str) -> dict[str, Any]:
    jp = journal_path(Path(out))
    if not jp.exists():
        raise FileNotFoundError(f"no journal {jp}: is {out} the --out of a run?")
    live, holder = probe(out)
    st = load_state(jp)
    if live is None:  # no lock file: an output of an older version; look for its pid on this host
        live = _pid_alive(st.start)
    total = None if st.total is None else st.total + st.children  # fanned-out tasks' children count too
    done, failed = st.n_done, st.n_failed
    hb = st.heartbeat or {}
    running = int(hb.get("running", 0)) if live else 0
    queued = int(hb.get("queued", 0)) if live else 0
    if total is not None:
        # a heartbeat is a few seconds old: never let the parts add up to more than the whole
        running = min(running, max(total - done - failed, 0))
        queued = min(queued, max(total - done - failed - running, 0))
    pending = None if total is None else max(total - done - failed - running - queued, 0)
    start_t = st.start.get("time")
    rate = None
    if st.done_in_run and start_t and st.last_done_time and st.last_done_time > start_t:
        rate = st.done_in_run / (st.last_done_time - start_t)
    state, detail, exit_code = _state(st, bool(live), holder, failed)
    eta = (pending + queued + running) / rate if live and rate and pending is not None else None
    workers, steps = _live_parts(st, hb, bool(live))
    fleet = _fleet(hb, bool(live))
    return {
        "schema": SCHEMA, "out": str(out), "state": state, "detail": detail, "live": bool(live), "exit": exit_code,
        "total": total, "done": done, "failed": failed, "running": running, "queued": queued, "pending": pending,
        "bytes": st.bytes_done, "rate_per_s": rate, "eta_s": eta, "runs": len(st.runs), "started": start_t,
        "last_heartbeat": hb.get("time") if hb else None, "last_record": st.last_record_time,
        "holder": holder if live else None, "workers": workers, **fleet,
        "finished": state in ("finished", "stopped early"),
        "errors": st.distinct_errors(),
        "steps": steps,
    }


def _pid_alive(start: dict[str, Any]) -> bool:
    """Is the master that wrote this journal still running (same host only)?"""
    import os
    import socket

    pid, host = start.get("pid"), start.get("host")
    if not pid or (host and host != socket.gethostname()):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def text(info: dict[str, Any]) -> str:
    tot = info["total"] if info["total"] is not None else "?"
    lines = [f"{info['out']}: {info['state']} ({info['detail']})",
             f"  {info['done']}/{tot} done, {info['failed']} failed, {info['running']} running,"
             f" {info['queued']} queued, {info['pending'] if info['pending'] is not None else '?'} pending;"
             f" {info['bytes'] / (1 << 30):.3f} GiB"]
    if info.get("steps"):
        parts = []
        for name, c in info["steps"].items():
            bits = [f"{c[k]} {k}" for k in ("done", "running", "queued") if c.get(k)]
            parts.append(f"{name} {', '.join(bits) or '0 done'}")
        lines.append("  steps: " + " · ".join(parts))
    if info["rate_per_s"]:
        eta = f", ETA {info['eta_s']:.0f} s" if info["eta_s"] is not None else ""
        lines.append(f"  rate {info['rate_per_s']:.2f} tasks/s{eta}")
    n = info.get("n_workers")
    if n is not None and n > LIST_MAX:
        states = ", ".join(f"{c} {s}" for s, c in sorted((info.get("worker_states") or {}).items(),
                                                          key=lambda kv: (-kv[1], kv[0])))
        seen = info.get("last_seen_s") or {}
        heard = (f"; last heard from: p50 {seen['p50']:.1f} s ago, p90 {seen['p90']:.1f} s, max {seen['max']:.1f} s"
                 if {"p50", "p90", "max"} <= set(seen) else "")
        lines.append(f"  {n} workers ({states}){heard}")
        if info["workers"]:
            lines.append("  not ok, or silent longest:")
    for rank, w in sorted(info["workers"].items(), key=lambda kv: int(kv[0])):
        task = f", task {w['task']!r}" if w.get("task") is not None else ""
        lines.append(f"  worker {rank}: {w['state']}, last seen {w['last_seen_s']:.1f} s ago,"
                     f" {w['queued']} queued{task}")
    if info["errors"]:
        lines += show(info["errors"], info["failed"])
        if any(e["positions"] for e in info["errors"]):
            lines.append("  (#N: the task at position N of the task list, line N+1 of a task file;"
                         " --json lists every one)")
    return "\n".join(lines)


def status(out: str, *, as_json: bool = False, wait: bool = False, timeout: float | None = None) -> int:
    """Print the state of a run. With ``wait``, first wait until it is no longer live and
    return its exit status (0, 1, 75 or 3; 124 if ``timeout`` ran out first)."""
    try:
        info = collect(out)
        if wait:
            end = None if timeout is None else time.monotonic() + timeout
            while info["live"]:
                if end is not None and time.monotonic() > end:
                    break
                time.sleep(WAIT_POLL)
                if probe(out)[0]:
                    continue
                info = collect(out)
    except FileNotFoundError as e:
        print(f"mpigather: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, default=str) if as_json else text(info), flush=True)
    if not wait:
        return 0
    if info["live"]:
        return EXIT_TIMEOUT
    code = info["exit"]
    return int(code) if code is not None else 0
