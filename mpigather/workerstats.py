"""Per-worker statistics that stay bounded at any number of workers, and their summaries.

A run of 3 workers is read worker by worker; a run of 10,000 is read as totals, percentiles and
outliers. This module holds both, so that the end-of-run summary, ``report``, ``status`` and the
timeline say the same thing the same way:

- ``SpanLog`` (worker side, in ``spanlog``, which a worker imports alone): the spans of a
  worker's tasks (task id, start, duration, outcome, step). It keeps the last ``keep`` spans
  for the timeline and folds every older one into a ``Profile``: busy seconds over time in at
  most ``PROFILE_BINS`` bins, whose width doubles as the run goes on. A worker's goodbye thus
  costs a few KiB, whatever it ran.
- ``Fleet`` (master side): one small record per worker (counts and seconds), the spans of at most
  ``LANES_MAX`` workers (every worker in a small run; the outliers in a large one), and the sum
  of the workers' profiles: how many workers were busy, and alive, over time.
- ``summarise``: totals, percentiles (min, p10, p50, p90, max) and up to ``OUTLIERS`` workers of
  each kind: the slowest (seconds per task), the least busy, the ones with failed tasks, the lost
  and the stuck ones. It is what the journal keeps (``fleet`` record) and what ``report`` shows.
- ``heartbeat``: the master's heartbeat record for ``status``: every worker up to ``LIST_MAX``;
  above, the count in each state, percentiles of the time since each was last heard from, and the
  ``HB_OUTLIERS`` workers that are not ok or were heard from longest ago: under 1 KB a second.

Below ``LIST_MAX`` workers every text lists each worker on its own line, as small runs always did.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from .spanlog import (  # noqa: F401  (used, and re-exported)
    FEW,
    LANES_MAX,
    PROFILE_BINS,
    PROFILE_WIDTH,
    SPANS_AT_SCALE,
    SPANS_MIN,
    SPANS_TOTAL,
    Profile,
    Span,
    SpanLog,
)

LIST_MAX = 16  # texts list every worker on its own line up to this many workers
OUTLIERS = 10  # workers named, per kind of outlier, above those sizes
HB_OUTLIERS = 8  # workers a heartbeat names above LIST_MAX: the record stays under 1 KB
PCTS = ("min", "p10", "p50", "p90", "max")
METRICS = ("busy_pct", "tasks", "compute", "send", "idle", "wall", "per_task")
KINDS = ("slowest", "least_busy", "failed", "lost", "stuck")  # kinds of outliers, in the order texts show them
TASK_CHARS = 40  # a heartbeat's task ids are cut to this many characters
PROFILES_BATCH = 256  # workers' profiles the master collects before it adds them in one go


def _f(w: dict[str, Any], key: str) -> float:
    try:
        return float(w.get(key) or 0.0)
    except (TypeError, ValueError):
        return 0.0


def busy_pct(w: dict[str, Any]) -> float | None:
    wall = _f(w, "wall")
    return round(100.0 * _f(w, "compute") / wall, 1) if wall > 0 else None


def per_task(w: dict[str, Any]) -> float | None:
    n = int(w.get("tasks") or 0)
    return _f(w, "compute") / n if n > 0 else None


def failed_of(w: dict[str, Any]) -> int:
    """Failed tasks of a worker: counted by the worker (newer runs), else from its spans."""
    if w.get("failed") is not None:
        return int(w["failed"])
    return sum(1 for sp in w.get("spans") or [] if len(sp) > 3 and sp[3] == "failed")


class _Top:
    """The ``k`` ranks with the highest keys, kept sorted as they come (O(log k) each)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.items: list[tuple[float, int]] = []  # (-key, rank): best first

    def offer(self, key: float, rank: int) -> int | None:
        """Take ``rank`` if it is among the top; return the rank it pushed out (or ``rank`` itself)."""
        item = (-key, rank)
        if len(self.items) < self.k:
            bisect.insort(self.items, item)
            return None
        if item >= self.items[-1]:
            return rank
        bisect.insort(self.items, item)
        return self.items.pop()[1]

    def ranks(self) -> list[int]:
        return [r for _k, r in self.items]


class Fleet:
    """What the master keeps of its workers' goodbyes: a record per worker (without spans), the
    spans of at most ``LANES_MAX`` workers, and the summed profiles (busy workers and alive
    workers over time). ``records`` is ``Summary.workers``."""

    def __init__(self, records: dict[int, dict[str, Any]] | None = None, lanes: int = LANES_MAX) -> None:
        self.records: dict[int, dict[str, Any]] = {} if records is None else records
        self.lanes = lanes
        self.busy = Profile()
        self.alive = Profile()
        self._top = {"slowest": _Top(OUTLIERS), "least_busy": _Top(OUTLIERS), "failed": _Top(OUTLIERS)}
        self._with_spans: set[int] = set()
        self._profiles: list[tuple[float, float, Any]] = []  # not yet added to ``busy``
        self._walls: list[float] = []  # not yet added to ``alive``

    def _flush(self) -> None:
        self.busy.merge_many(self._profiles)
        self._profiles = []
        if self._walls:
            walls = np.array(self._walls)
            self.alive.later(np.zeros(len(walls)), walls)
            self._walls = []

    def add(self, rank: int, stats: dict[str, Any]) -> dict[str, Any]:
        """A worker's goodbye (``worker`` stats): keep its record, maybe its spans; sum its profile."""
        w = dict(stats)
        prof = w.pop("profile", None)
        if prof:
            v = prof.get("v")
            self._profiles.append((float(prof.get("t0") or 0.0), float(prof.get("w") or PROFILE_WIDTH),
                                   [] if v is None else v))
            if len(self._profiles) >= PROFILES_BATCH:
                self._flush()
        elif w.get("spans"):  # a worker of an older version: its spans are all there is
            try:
                self.busy.later(np.array([float(sp[1]) for sp in w["spans"]]),
                                np.array([float(sp[2]) for sp in w["spans"]]))
            except (IndexError, TypeError, ValueError):
                pass
        wall = _f(w, "wall")
        if wall > 0:
            self._walls.append(wall)
        w["failed"] = failed_of(w)
        self.records[rank] = w
        if w.get("spans") is not None:
            self._with_spans.add(rank)
        for kind, top in self._top.items():
            key = _outlier_key(kind, w)
            if key is not None:
                top.offer(key, rank)
        if len(self._with_spans) > self.lanes:  # amortised: this leaves at most 3 * OUTLIERS
            for r in self._with_spans - self.kept():
                self._drop_spans(r)
        return w

    def kept(self) -> set[int]:
        """Ranks whose spans are kept once there are more than ``lanes`` workers: the outliers."""
        return {r for top in self._top.values() for r in top.ranks()}

    def _drop_spans(self, rank: int) -> None:
        w = self.records.get(rank)
        if w is not None:
            w.pop("spans", None)
        self._with_spans.discard(rank)

    def profiles(self) -> dict[str, Any]:
        self._flush()
        return {"busy": self.busy.export(), "alive": self.alive.export()}


def _outlier_key(kind: str, w: dict[str, Any]) -> float | None:
    """How much of an outlier of ``kind`` a worker is (higher: more), or None if it is not one."""
    if w.get("lost"):
        return None
    if kind == "slowest":
        return per_task(w)
    if kind == "least_busy":
        b = busy_pct(w)
        return None if b is None else -b
    if kind == "failed":
        n = failed_of(w)
        return float(n) if n > 0 else None
    return None


def percentiles(values: list[float]) -> dict[str, float] | None:
    """min, p10, p50, p90 and max (nearest rank), and the mean; None for no values."""
    if not values:
        return None
    v = sorted(values)
    n = len(v)

    def at(q: float) -> float:
        return v[min(n - 1, max(0, math.ceil(q * n) - 1))]

    out = {"min": v[0], "p10": at(0.10), "p50": at(0.50), "p90": at(0.90), "max": v[-1], "mean": sum(v) / n}
    return {k: round(x, 6) for k, x in out.items()}


def summarise(workers: dict[Any, dict[str, Any]], *, lost: Iterable[int] = (), stuck: dict[int, Any] | None = None,
              profiles: dict[str, Any] | None = None) -> dict[str, Any]:
    """Totals, percentiles and outliers of a run's workers (the ``fleet`` record of the journal).

    ``workers``: each worker's record (rank -> stats); ``lost``/``stuck``: from the scheduler (a
    worker's own record may say ``lost`` too). ``profiles``: ``Fleet.profiles()``, kept as it is."""
    stuck = stuck or {}
    recs = {int(r): w for r, w in workers.items()}
    lost_ranks = sorted(set(int(r) for r in lost) | {r for r, w in recs.items() if w.get("lost")})
    live = {r: w for r, w in recs.items() if not w.get("lost")}
    # one pass over the workers, each number read once (19 reads a worker cost 0.3 s at 10,000)
    cols: dict[str, list[float]] = {m: [] for m in METRICS}
    keyed: dict[str, list[tuple[float, int]]] = {"slowest": [], "least_busy": [], "failed": []}
    for r, w in live.items():
        tasks, compute, wall = _f(w, "tasks"), _f(w, "compute"), _f(w, "wall")
        cols["tasks"].append(tasks)
        cols["compute"].append(compute)
        cols["send"].append(_f(w, "send"))
        cols["idle"].append(_f(w, "idle"))
        cols["wall"].append(wall)
        n = int(w.get("tasks") or 0)
        if wall > 0:  # (busy_pct and per_task, inline)
            b = round(100.0 * compute / wall, 1)
            cols["busy_pct"].append(b)
            keyed["least_busy"].append((-b, r))
        if n > 0:
            cols["per_task"].append(compute / n)
            keyed["slowest"].append((compute / n, r))
        nf = failed_of(w)
        if nf > 0:
            keyed["failed"].append((float(nf), r))
    totals: dict[str, float] = {k: round(sum(cols[k]), 6) for k in ("compute", "send", "idle", "wall")}
    totals["tasks"] = sum(int(w.get("tasks") or 0) for w in recs.values())
    totals["failed"] = sum(failed_of(w) for w in recs.values())
    totals["bytes"] = sum(int(w.get("bytes") or 0) for w in recs.values())
    outliers: dict[str, list[int]] = {}
    counts: dict[str, int] = {}
    for kind in ("slowest", "least_busy", "failed"):  # (as _outlier_key ranks them)
        best = heapq.nlargest(OUTLIERS, keyed[kind], key=lambda kr: (kr[0], -kr[1]))
        outliers[kind] = [r for _k, r in best]
        counts[kind] = len(keyed[kind])
    outliers["lost"], counts["lost"] = lost_ranks[:OUTLIERS], len(lost_ranks)
    stuck_ranks = sorted(int(r) for r in stuck)
    outliers["stuck"], counts["stuck"] = stuck_ranks[:OUTLIERS], len(stuck_ranks)
    out = {"n": len(set(recs) | set(lost_ranks)), "hosts": len({str(w.get("host")) for w in recs.values()
                                                                 if w.get("host")}),
           "totals": totals, "pct": {m: percentiles(cols[m]) for m in METRICS}, "outliers": outliers,
           "counts": counts}
    if stuck:
        out["stuck_tasks"] = {str(r): stuck[r] for r in stuck_ranks[:OUTLIERS]}
    if profiles:
        out["profiles"] = profiles
    return out


def journaled(fleet: dict[str, Any], workers: dict[Any, dict[str, Any]]) -> list[Any]:
    """Ranks whose own stats record the journal keeps: all of a small run, the outliers of a large one."""
    if len(workers) <= LANES_MAX:
        return sorted(workers, key=int)
    keep = {r for ranks in fleet["outliers"].values() for r in ranks}
    return sorted((r for r in workers if int(r) in keep), key=int)


_WHY = {"failed": "failed tasks", "lost": "lost", "stuck": "stuck"}


def _fmt(m: str, x: float) -> str:
    if m == "busy_pct":
        return f"{x:.0f}%"
    if m == "tasks":
        return f"{x:.0f}"
    if m == "per_task":
        return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.2f} s"
    return f"{x:.2f}"


_LABEL = {"busy_pct": "busy", "tasks": "tasks", "per_task": "time per task", "compute": "compute (s)",
          "send": "send (s)", "idle": "idle (s)", "wall": "wall (s)"}


def lines(fleet: dict[str, Any], workers: dict[Any, dict[str, Any]], row: Any, header: str) -> list[str]:
    """The text of a large run's workers: percentiles, then the outliers of each kind under the
    caller's ``header`` (``row(rank, record)`` formats one worker's line, as for a small run)."""
    n, hosts = fleet.get("n", len(workers)), fleet.get("hosts", 0)
    out = [f"  {n} workers" + (f" on {hosts} host(s)" if hosts else ""),
           f"    {'per worker':<14}" + "".join(f" {p:>9}" for p in PCTS)]
    for m in ("busy_pct", "tasks", "per_task", "compute", "send", "idle", "wall"):
        p = (fleet.get("pct") or {}).get(m)
        if p:
            out.append(f"    {_LABEL[m]:<14}" + "".join(f" {_fmt(m, p[k]):>9}" for k in PCTS))
    counts = fleet.get("counts") or {}
    for kind in KINDS:
        ranks = (fleet.get("outliers") or {}).get(kind) or []
        if not ranks:
            continue
        total = counts.get(kind, len(ranks))
        if kind in ("lost", "stuck"):  # no statistics of their own: their ranks on one line
            more = f" (the first {len(ranks)})" if total > len(ranks) else ""
            tasks = fleet.get("stuck_tasks") or {}
            named = [f"{r} (task {tasks[str(r)]!r})" if str(r) in tasks else str(r) for r in ranks]
            out.append(f"  {total} worker(s) {_WHY[kind]}{more}: rank " + ", ".join(named))
            continue
        if header:
            out.append(header)
            header = ""
        if kind == "slowest":
            out.append(f"  the {len(ranks)} slowest workers (most seconds per task):")
        elif kind == "least_busy":
            out.append(f"  the {len(ranks)} least busy workers:")
        else:
            out.append(f"  {total} worker(s) with {_WHY[kind]}" + (f", the first {len(ranks)}:" if total > len(ranks)
                                                                     else ":"))
        for r in ranks:
            w = workers.get(r) or workers.get(str(r))
            if w is not None:
                out.append(row(r, w))
    return out


# -- the heartbeat ------------------------------------------------------------------------------------


def heartbeat(table: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The per-worker part of a heartbeat record: the whole ``table`` (rank -> state, queued,
    seen_ago, task) up to ``LIST_MAX`` workers; above, counts by state, percentiles of
    ``seen_ago``, and only the ``HB_OUTLIERS`` workers that are not ok or were seen longest ago."""
    if len(table) <= LIST_MAX:
        return {"table": table}
    states: dict[str, int] = {}
    for w in table.values():
        s = str(w.get("state"))
        states[s] = states.get(s, 0) + 1
    seen = percentiles([float(w.get("seen_ago") or 0.0) for w in table.values()]) or {}
    worst = heapq.nlargest(HB_OUTLIERS, table.items(),
                           key=lambda kv: (kv[1].get("state") not in ("ok", "stopped", "stopping"),
                                           float(kv[1].get("seen_ago") or 0.0), -kv[0]))
    out = {}
    for rank, w in worst:
        w = dict(w)
        if w.get("task") is not None and not isinstance(w["task"], int):
            w["task"] = str(w["task"])[:TASK_CHARS]
        out[rank] = w
    return {"n": len(table), "states": states, "seen": {k: round(seen[k], 1) for k in PCTS if k in seen},
            "table": out}


__all__ = ["Fleet", "Profile", "SpanLog", "heartbeat", "lines", "percentiles", "summarise"]
