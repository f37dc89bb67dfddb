"""Live progress: a tqdm bar on a terminal, periodic log lines in a batch log, or nothing.

``--progress auto`` (the default) picks the bar when stderr is a terminal and log lines
otherwise (a batch job's output file); ``--quiet`` or ``--progress off`` silence both.
A log line says how far the run is, how fast it goes and when it should end::

    progress: 1200/5000 done (24%), 3 failed, 41.2 tasks/s, 18.75 GiB gathered (0.64 GiB/s), ETA 1m32s

The interval between log lines is 10 s, or ``MPIGATHER_PROGRESS_INTERVAL`` seconds.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("mpigather")

DEFAULT_INTERVAL = 10.0
BAR_INTERVAL = 0.2  # seconds between bar refreshes


def _size(n: float) -> str:
    for unit, k in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k:
            return f"{n / k:.2f} {unit}"
    return f"{int(n)} B"


def _duration(s: float) -> str:
    if s < 60:
        return f"{s:.0f}s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h}h{m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d{h:02d}h"


def _rate(r: float) -> str:
    return f"{r:.1f}" if r >= 1 else f"{r:.3g}"


def interval_from_env(default: float = DEFAULT_INTERVAL) -> float:
    raw = os.environ.get("MPIGATHER_PROGRESS_INTERVAL")
    if raw is None or not raw.strip():
        return default
    try:
        v = float(raw)
    except ValueError:
        log.warning("ignoring MPIGATHER_PROGRESS_INTERVAL=%r: not a number of seconds", raw)
        return default
    if not v > 0:
        log.warning("ignoring MPIGATHER_PROGRESS_INTERVAL=%r: must be greater than 0", raw)
        return default
    return v


class Progress:
    """Updated by the master from its housekeeping; cheap when nothing is due.

    ``total`` counts every task of the run, ``done_before`` those an earlier run finished
    (``--resume``): they count as done, but not in the rate.
    """

    def __init__(self, mode: str, total: int | None, interval: float | None = None, *,
                 done_before: int = 0) -> None:
        self.mode, self.total = mode, total
        self.interval = interval_from_env() if interval is None else float(interval)
        self.done_before = int(done_before)
        self._bar: Any = None
        self._t0 = time.monotonic()
        self._last = self._t0  # the first log line comes one interval after the start
        self._shown = 0
        self._summary: Any = None
        self._closed = False
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=self.done_before, unit="task", dynamic_ncols=True,
                             file=sys.stderr, smoothing=0.1, mininterval=BAR_INTERVAL, desc="mpigather")

    @classmethod
    def make(cls, mode: str, total: int | None, *, done_before: int = 0,
             interval: float | None = None) -> Progress | None:
        if mode == "off":
            return None
        if mode == "auto":
            mode = "bar" if _isatty(sys.stderr) else "log"
        return cls(mode, total, interval, done_before=done_before)

    def set_total(self, total: int) -> None:
        """The total, once known (a task file checked while the run went on)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    # -- updates --------------------------------------------------------------------------

    def update(self, sched: Any, summary: Any, now: float) -> None:
        self._summary = summary
        if self._bar is not None:
            if now - self._last < BAR_INTERVAL:
                return
            self._last = now
            self._sync_bar(summary)
            return
        if now - self._last < self.interval:
            return
        self._last = now
        log.info("%s", self.line(summary, now))

    def _sync_bar(self, summary: Any) -> None:
        n = summary.done + len(summary.failed)
        self._bar.set_postfix_str(f"{len(summary.failed)} failed, {_size(summary.bytes)} gathered", refresh=False)
        if n > self._shown:
            self._bar.update(n - self._shown)  # refreshes the line, postfix included
            self._shown = n

    # -- the log line -----------------------------------------------------------------------

    def numbers(self, summary: Any, now: float) -> dict[str, Any]:
        """done/total, failed, rates and ETA, as numbers (None where unknown)."""
        el = max(now - self._t0, 1e-9)
        done_now = summary.done
        failed = len(summary.failed)
        done = self.done_before + done_now
        rate = (done_now + failed) / el  # tasks ended per second in this run
        left = None if self.total is None else max(self.total - done - failed, 0)
        eta = None
        if left is not None:
            eta = 0.0 if left == 0 else (left / rate if rate > 0 else None)
        return {"done": done, "total": self.total, "failed": failed, "rate": rate,
                "bytes": summary.bytes, "byte_rate": summary.bytes / el, "elapsed": el, "left": left, "eta": eta}

    def line(self, summary: Any, now: float) -> str:
        x = self.numbers(summary, now)
        if x["total"] is not None:
            pct = 100.0 * (x["done"] + x["failed"]) / x["total"] if x["total"] else 100.0
            head = f"progress: {x['done']}/{x['total']} done ({pct:.0f}%)"
        else:
            head = f"progress: {x['done']}/? done"
        if self.done_before:
            head += f" [{self.done_before} by earlier runs]"
        eta = "ETA ?" if x["eta"] is None else f"ETA {_duration(x['eta'])}"
        return (f"{head}, {x['failed']} failed, {_rate(x['rate'])} tasks/s, {_size(x['bytes'])} gathered"
                f" ({_size(x['byte_rate'])}/s), {eta}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        s = self._summary
        if self._bar is not None:
            if s is not None:
                self._sync_bar(s)
                self._bar.refresh()
            self._bar.close()
        elif self.mode == "log":
            log.info("%s", self.line_final())

    def line_final(self) -> str:
        s = self._summary
        if s is None:
            return "progress: finished"
        now = time.monotonic()
        x = self.numbers(s, now)
        tot = "?" if x["total"] is None else x["total"]
        state = "stopped" if getattr(s, "interrupted", False) else "finished"
        return (f"progress: {state}: {x['done']}/{tot} done, {x['failed']} failed in {_duration(x['elapsed'])}"
                f" ({_rate(x['rate'])} tasks/s), {_size(x['bytes'])} gathered ({_size(x['byte_rate'])}/s)")


def _isatty(f: Any) -> bool:
    try:
        return bool(f.isatty())
    except (AttributeError, ValueError):
        return False
