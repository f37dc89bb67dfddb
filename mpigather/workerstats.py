"""Per-worker statistics that stay bounded at any number of workers, and their summaries.

A run of 3 workers is read worker by worker; a run of 10,000 is read as totals, percentiles and
outliers. This module holds both, so that the end-of-run summary, ``report``, ``status`` and the
timeline say the same thing the same way:

- ``SpanLog`` (worker side): the spans of a worker's tasks (task id, start, duration, outcome,
  step). It keeps the last ``keep`` spans for the timeline and folds every older one into a
  ``Profile``: busy seconds over time in at most ``PROFILE_BINS`` bins, whose width doubles as
  the run goes on. A worker's goodbye thus costs a few KiB, whatever it ran.
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
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

LIST_MAX = 16  # texts list every worker on its own line up to this many workers
LANES_MAX = 64  # the timeline draws a lane per worker, and the master keeps every worker's spans, up to this many
OUTLIERS = 10  # workers named, per kind of outlier, above those sizes
HB_OUTLIERS = 8  # workers a heartbeat names above LIST_MAX: the record stays under 1 KB
SPANS_AT_SCALE = 500  # the last spans a worker sends when the run has more than LANES_MAX workers...
SPANS_TOTAL = 100_000  # ...and at most about this many from all workers together (the master decodes
SPANS_MIN = 10  # every goodbye, and keeps the spans of the outliers only), but at least this many
PROFILE_BINS = 256  # bins of a profile of busy time; their width doubles as the run goes on
PROFILE_WIDTH = 0.01  # seconds: the first width of a bin
BATCH = 1 << 16  # intervals a profile collects before it adds them in one go
FEW = 8  # intervals a profile adds one at a time rather than with numpy
PROFILES_BATCH = 256  # workers' profiles the master collects before it adds them in one go
PCTS = ("min", "p10", "p50", "p90", "max")
METRICS = ("busy_pct", "tasks", "compute", "send", "idle", "wall", "per_task")
KINDS = ("slowest", "least_busy", "failed", "lost", "stuck")  # kinds of outliers, in the order texts show them
TASK_CHARS = 40  # a heartbeat's task ids are cut to this many characters

Span = tuple[Any, float, float, str, str]  # task id, start, duration, outcome, step name


class Profile:
    """Seconds of some quantity (busy time, or lifetime) over time: at most ``bins`` bins of width
    ``width``; a time past the last bin doubles the width (pairs of bins are merged). Adding a
    batch of intervals, or another profile, costs a few numpy operations."""

    def __init__(self, width: float = PROFILE_WIDTH, bins: int = PROFILE_BINS) -> None:
        self.width = width
        self.bins = bins
        self.v = np.zeros(0)
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._n_pending = 0

    def _coarsen(self) -> None:
        v = self.v if len(self.v) % 2 == 0 else np.append(self.v, 0.0)
        self.v = v.reshape(-1, 2).sum(axis=1)
        self.width *= 2

    def _fit(self, end: float, width: float = 0.0) -> None:
        while end > self.width * self.bins or self.width < width:
            self._coarsen()

    def add(self, a: float, d: float, mass: float | None = None) -> None:
        """Spread ``mass`` (``d`` by default) evenly over [a, a + d) seconds; times before 0 count at 0."""
        self.add_many(np.array([a], dtype=float), np.array([d], dtype=float),
                      None if mass is None else np.array([mass], dtype=float))

    def add_many(self, a: np.ndarray, d: np.ndarray, mass: np.ndarray | None = None) -> None:
        """``add`` for arrays of intervals."""
        mass = d if mass is None else mass
        if len(a) <= FEW:  # a worker's goodbye folds its few last spans: numpy's calls would cost more
            self._add_few(a.tolist(), d.tolist(), mass.tolist())
            return
        ok = np.isfinite(a) & np.isfinite(d) & np.isfinite(mass) & (mass > 0)
        if not ok.all():
            a, d, mass = a[ok], d[ok], mass[ok]
        if not len(a):
            return
        a = np.maximum(a, 0.0)
        d = np.maximum(d, 0.0)
        self._fit(float((a + d).max()))
        w, top = self.width, self.bins - 1
        i0 = np.minimum((a / w).astype(np.int64), top)
        i1 = np.minimum(np.ceil((a + d) / w - 1e-9).astype(np.int64) - 1, top)  # the bin of its last instant
        i1 = np.maximum(i1, i0)
        n = int(i1.max()) + 1
        if len(self.v) < n:
            self.v = np.concatenate([self.v, np.zeros(n - len(self.v))])
        size = len(self.v)

        def at(idx: np.ndarray, x: np.ndarray) -> np.ndarray:  # np.add.at, ten times faster
            return np.bincount(idx, weights=x, minlength=size)[:size].astype(float, copy=False)

        one = i0 == i1
        acc = at(i0[one], mass[one])
        m = ~one  # across bin edges: its first and last bins in part, the ones between whole
        if m.any():
            j0, j1, am, per_s = i0[m], i1[m], a[m], mass[m] / d[m]
            acc += at(j0, ((j0 + 1) * w - am) * per_s) + at(j1, (am + d[m] - j1 * w) * per_s)
            mid = at(j0 + 1, w * per_s) - at(j1, w * per_s)  # + from the second bin, - from the last
            acc += np.cumsum(mid)
        self.v += acc

    def _add_few(self, a_s: list[float], d_s: list[float], m_s: list[float]) -> None:
        """``add_many`` of a few intervals, one at a time (the same bins, the same mass)."""
        items = [(max(a, 0.0), max(d, 0.0), m) for a, d, m in zip(a_s, d_s, m_s)
                 if math.isfinite(a) and math.isfinite(d) and math.isfinite(m) and m > 0]
        if not items:
            return
        self._fit(max(a + d for a, d, _m in items))
        w, top = self.width, self.bins - 1
        for a, d, m in items:
            i0 = min(int(a / w), top)
            i1 = max(min(math.ceil((a + d) / w - 1e-9) - 1, top), i0)
            if len(self.v) <= i1:
                self.v = np.concatenate([self.v, np.zeros(i1 + 1 - len(self.v))])
            v = self.v
            if i0 == i1:
                v[i0] += m
            else:
                per_s = m / d
                v[i0] += ((i0 + 1) * w - a) * per_s
                v[i1] += (a + d - i1 * w) * per_s
                v[i0 + 1 : i1] += w * per_s

    def merge(self, t0: float, width: float, values: Iterable[float], *, later: bool = False) -> None:
        """Add another profile, whose first bin starts at ``t0`` seconds; ``later``: with the next
        batch (``flush``), so that adding thousands of profiles costs a few numpy calls."""
        vals = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)
        if not len(vals) or not width > 0:
            return
        self.later(t0 + np.arange(len(vals)) * width, np.full(len(vals), float(width)), vals)
        if not later:
            self.flush()

    def merge_many(self, profiles: list[tuple[float, float, Any]]) -> None:
        """``merge`` each (t0, width, values) of ``profiles``, in one batch. Profiles on the same
        bins (workers' profiles start at their own start, and most have the same width) are summed
        first, bin by bin: thousands of workers' profiles cost a few numpy calls per distinct bins."""
        same: dict[tuple[float, float], list[np.ndarray]] = {}
        for t0, w, v in profiles:
            if len(v) and w > 0:
                same.setdefault((t0, w), []).append(np.asarray(v, dtype=float))
        profiles = []
        for (t0, w), vs in same.items():
            acc = vs[0]
            if len(vs) > 1:
                acc = np.zeros(max(len(v) for v in vs))
                for v in vs:
                    acc[: len(v)] += v
            profiles.append((t0, w, acc))
        if not profiles:
            return
        lens = np.array([len(v) for _t, _w, v in profiles])
        widths = np.repeat(np.array([w for _t, w, _v in profiles], dtype=float), lens)
        first = np.repeat(np.cumsum(lens) - lens, lens)
        a = np.repeat(np.array([t0 for t0, _w, _v in profiles], dtype=float), lens)
        a += (np.arange(int(lens.sum())) - first) * widths
        vals = np.concatenate([v for _t, _w, v in profiles])
        self.later(a, widths, vals)

    def later(self, a: np.ndarray, d: np.ndarray, mass: np.ndarray | None = None) -> None:
        """``add_many`` with the next batch (at the latest when ``BATCH`` intervals wait)."""
        self._pending.append((a, d, d if mass is None else mass))
        self._n_pending += len(a)
        if self._n_pending >= BATCH:
            self.flush()

    def flush(self) -> None:
        pend, self._pending, self._n_pending = self._pending, [], 0
        if pend:
            self.add_many(*(np.concatenate([p[k] for p in pend]) for k in range(3)))

    def export(self, t0: float = 0.0, *, array: bool = False) -> dict[str, Any]:
        """``t0``, the width and the values: a list (for JSON), or with ``array`` a numpy array,
        which a goodbye pickles and the master merges at a fraction of the cost of a list."""
        self.flush()
        v = np.round(self.v, 4) if array else [round(float(x), 4) for x in self.v]
        return {"t0": round(t0, 6), "w": self.width, "v": v}

    @classmethod
    def of(cls, rec: dict[str, Any] | None) -> Profile:
        """A profile from ``export``'s record."""
        p = cls()
        if rec:
            v = rec.get("v")
            p.merge(float(rec.get("t0") or 0.0), float(rec.get("w") or PROFILE_WIDTH), () if v is None else v)
        return p


class SpanLog:
    """A worker's task spans: the last ``keep`` as they are, every one in a profile of busy time.

    ``append`` costs what a list append costs; older spans are folded into the profile a batch
    at a time, so that a worker running 100,000 tiny tasks a second does not pay per task."""

    def __init__(self, keep: int = 5000) -> None:
        self.keep = max(keep, 1)
        self.origin = time.perf_counter()
        self._spans: list[Span] = []
        self._folded = Profile()
        self._failed = 0  # failed spans folded

    def append(self, span: Span) -> None:
        self._spans.append(span)
        if len(self._spans) >= 2 * self.keep:
            self._fold_old()

    def extend(self, spans: list[Span]) -> None:
        self._spans.extend(spans)
        if len(self._spans) >= 2 * self.keep:
            self._fold_old()

    def _fold_old(self) -> None:
        old = self._spans[: -self.keep]
        del self._spans[: -self.keep]
        self._failed += self._fold(self._folded, old)

    def __len__(self) -> int:
        return len(self._spans)

    def __iter__(self) -> Any:
        return iter(self._spans[-self.keep :])

    def _fold(self, prof: Profile, spans: list[Span]) -> int:
        """Add ``spans`` to ``prof``; return how many of them failed."""
        if not spans:
            return 0
        _t, a, d, outcome, _n = zip(*spans)  # columns, transposed in C
        prof.add_many(np.array(a, dtype=float) - self.origin, np.array(d, dtype=float))
        return outcome.count("failed")

    def export(self, start: float, n_workers: int = 1) -> dict[str, Any]:
        """What a worker's goodbye carries: its last spans (offsets from ``start``), how many of its
        tasks failed, and its profile of busy time (seconds from ``start``)."""
        prof = Profile(self._folded.width, self._folded.bins)
        prof.v = self._folded.v.copy()
        failed = self._failed + self._fold(prof, self._spans)
        limit = self.keep
        if n_workers > LANES_MAX:
            limit = min(limit, SPANS_AT_SCALE, max(SPANS_MIN, SPANS_TOTAL // n_workers))
        spans = [(str(t), a - start, d, s, n) for t, a, d, s, n in self._spans[-limit:]]
        return {"spans": spans, "failed": failed, "profile": prof.export(self.origin - start, array=True)}


# -- the master's side ---------------------------------------------------------------------------------


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
