"""A worker's record of its tasks, bounded whatever it runs (``SpanLog``), and the busy-time
profiles it folds older spans into (``Profile``), which the master adds up over the workers
(``workerstats.Fleet``). A worker imports this module alone, not the summaries of
``workerstats``."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

LANES_MAX = 64  # the timeline draws a lane per worker, and the master keeps every worker's spans, up to this many
SPANS_AT_SCALE = 500  # the last spans a worker sends when the run has more than LANES_MAX workers...
SPANS_TOTAL = 100_000  # ...and at most about this many from all workers together (the master decodes
SPANS_MIN = 10  # every goodbye, and keeps the spans of the outliers only), but at least this many
PROFILE_BINS = 256  # bins of a profile of busy time; their width doubles as the run goes on
PROFILE_WIDTH = 0.01  # seconds: the first width of a bin
BATCH = 1 << 16  # intervals a profile collects before it adds them in one go
FEW = 8  # intervals a profile adds one at a time rather than with numpy

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
