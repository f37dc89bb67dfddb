"""``mpigather report PATH``: where the time went, per worker, from the journal's stats records.

Up to ``workerstats.LIST_MAX`` workers it lists each one; above, it shows totals, percentiles
(min, p10, p50, p90, max) and the outliers: the slowest, least busy, failed, lost and stuck
workers (the journal keeps the stats of those only, and a ``fleet`` record of the rest).

A journal can hold several runs (``--resume``). The report is about the last run that left
worker statistics (each run writes them when it ends, interrupted or not); ``runs`` and
``run`` say which one that is, so that ranks of an earlier, larger run never mix in.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import workerstats as WS
from .journal import journal_path, load_state


def collect(out: str) -> dict[str, Any]:
    jp = journal_path(Path(out))
    if not jp.exists():
        raise FileNotFoundError(f"no journal {jp}: is {out} the --out of a run?")
    runs = load_state(jp).runs
    if not runs:
        return {"out": str(out), "workers": {}, "master": {}, "wall": None, "runs": 0, "run": 0,
                "done": 0, "failed": 0, "interrupted": False, "exit": None, "totals": {}}
    idx = max((i for i, r in enumerate(runs) if r.stats or r.end or r.fleet), default=len(runs) - 1)
    run = runs[idx]
    end = run.end or {}
    workers: dict[str, Any] = {}
    for rank, w in sorted(run.stats.items(), key=lambda kv: int(kv[0])):
        w = dict(w)
        wall = float(w.get("wall") or 0.0)
        acc = sum(float(w.get(k) or 0.0) for k in ("compute", "send", "idle"))
        w["other"] = max(wall - acc, 0.0)  # time not in a measured state (loop overhead)
        w["busy_pct"] = WS.busy_pct(w)
        w["failed"] = WS.failed_of(w)
        workers[rank] = w
    fleet = run.fleet
    if fleet is None:  # a journal of an older version: every worker's stats are there; sum them here
        f = WS.Fleet(lanes=len(run.stats))
        for rank, w in run.stats.items():
            f.add(int(rank), w)
        fleet = WS.summarise(f.records, profiles=f.profiles())
    return {"out": str(out), "workers": workers, "master": end.get("master", {}), "wall": end.get("wall"),
            "runs": len(runs), "run": idx + 1, "done": run.done, "failed": run.failed,
            "interrupted": bool(end.get("interrupted")), "exit": end.get("exit"), "totals": fleet["totals"],
            "fleet": fleet}


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.3f} GiB"


def text(info: dict[str, Any]) -> str:
    lines = []
    run = f" (run {info['run']} of {info['runs']})" if info.get("runs", 0) > 1 else ""
    state = ""
    if info.get("exit") is not None:
        state = f", exit {info['exit']}" + (" (interrupted, resumable)" if info.get("interrupted") else "")
    lines.append(f"{info['out']}{run}: wall {info['wall'] or 0:.2f} s, {info.get('done', 0)} done,"
                 f" {info.get('failed', 0)} failed{state}")
    if not info["workers"] and not (info.get("fleet") or {}).get("n"):
        lines.append("  no worker statistics yet (they are written when a run ends)")
    else:
        head = "  rank  host                done failed   compute     send     idle     wall   busy  (seconds)"
        fleet = info.get("fleet") or {}
        n = int(fleet.get("n") or len(info["workers"]))
        if n <= WS.LIST_MAX and len(info["workers"]) >= n:
            lines.append(head)
            lines += [_row(rank, w) for rank, w in info["workers"].items()]
        else:
            lines += WS.lines(fleet, info["workers"], _row, head)
        t = info["totals"]
        if n > 1:
            all_busy = 100.0 * t["compute"] / t["wall"] if t["wall"] > 0 else 0.0
            lines.append(f"  {'all':>4}  {'':<16} {t['tasks']:>6} {t['failed']:>6} {t['compute']:>9.2f}"
                         f" {t['send']:>8.2f} {t['idle']:>8.2f} {t['wall']:>8.2f} {all_busy:>5.0f}%")
        lines.append(f"  gathered {_gib(t['bytes'])}")
        hints = _hints(info)
        lines += [f"  hint: {h}" for h in hints]
    m = info["master"]
    if m:
        lines.append(f"  master: receiving {m.get('recv', 0):.2f} s, writing {m.get('write', 0):.2f} s,"
                     f" waiting {m.get('wait', 0):.2f} s; peak RSS {m.get('peak_rss_mib', 0):.0f} MiB")
    return "\n".join(lines)


def _row(rank: Any, w: dict[str, Any]) -> str:
    busy = f"{w['busy_pct']:>5.0f}%" if w.get("busy_pct") is not None else "     ?"
    return (f"  {rank:>4}  {str(w.get('host', '?'))[:16]:<16} {w.get('tasks', 0):>6}"
            f" {w.get('failed', 0):>6} {w.get('compute', 0):>9.2f} {w.get('send', 0):>8.2f}"
            f" {w.get('idle', 0):>8.2f} {w.get('wall', 0):>8.2f} {busy}")


def _hints(info: dict[str, Any]) -> list[str]:
    """One-line readings of the numbers, for the common ways a run loses time."""
    t = info["totals"]
    out: list[str] = []
    n = int((info.get("fleet") or {}).get("n") or len(info["workers"]))
    if t["wall"] <= 0 or t["wall"] / max(n, 1) < 5.0:
        return out  # a run of a few seconds says little about where time goes
    if t["idle"] / t["wall"] > 0.25 and t["tasks"]:
        per_task = t["compute"] / max(t["tasks"], 1)
        if per_task < 0.01:
            out.append(f"workers idle {100 * t['idle'] / t['wall']:.0f}% of the time with tiny tasks"
                       f" ({per_task * 1e3:.2f} ms each): raise --prefetch, or make tasks bigger")
        else:
            out.append(f"workers idle {100 * t['idle'] / t['wall']:.0f}% of the time: fewer tasks than workers"
                       " near the end, or the master is slow to write (see master: writing)")
    if t["send"] / t["wall"] > 0.25:
        out.append(f"workers spent {100 * t['send'] / t['wall']:.0f}% of their time sending: the master's disk"
                   " or network is the bottleneck; try --mode direct")
    return out


def report(out: str, *, plot: str | None = None, as_json: bool = False) -> int:
    try:
        info = collect(out)
    except FileNotFoundError as e:
        print(f"mpigather: error: {e}", file=sys.stderr)
        return 2
    if plot:
        from .timeline import check_available

        check_available()  # a missing matplotlib is a usage error (exit 2), said before any output
    if as_json:
        print(json.dumps({**info, "workers": {r: {k: v for k, v in w.items() if k != "spans"}
                                              for r, w in info["workers"].items()}}, default=str))
    else:
        print(text(info))
    if plot:
        from .timeline import draw

        draw(info, plot)
        print(f"timeline written to {plot}", file=sys.stderr if as_json else sys.stdout)
    return 0
