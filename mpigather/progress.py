"""Live progress: a tqdm bar on a terminal, periodic log lines in a batch log, or nothing."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("mpigather")


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB"


class Progress:
    """Updated by the master from its housekeeping; cheap when nothing is due."""

    def __init__(self, mode: str, total: int | None, interval: float = 10.0) -> None:
        self.mode, self.total, self.interval = mode, total, interval
        self._bar: Any = None
        self._last = 0.0
        self._t0 = time.monotonic()
        self._shown = 0
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="task", dynamic_ncols=True, file=sys.stderr, smoothing=0.1)

    @classmethod
    def make(cls, mode: str, total: int | None) -> Progress | None:
        if mode == "off":
            return None
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "log"
        return cls(mode, total)

    def update(self, sched: Any, summary: Any, now: float) -> None:
        if self._bar is not None:
            if now - self._last < 0.2:
                return
            self._last = now
            n = summary.done + len(summary.failed)
            if n > self._shown:
                self._bar.update(n - self._shown)
                self._shown = n
            self._bar.set_postfix(failed=len(summary.failed), gathered=_gib(summary.bytes), refresh=False)
            return
        if now - self._last < self.interval:
            return
        self._last = now
        log.info("%s", self.line(summary, now))

    def line(self, summary: Any, now: float) -> str:
        n = summary.done + len(summary.failed)
        el = max(now - self._t0, 1e-9)
        rate = summary.done / el
        parts = [f"progress: {summary.done} done", f"{len(summary.failed)} failed"]
        if self.total is not None:
            left = max(self.total - n - summary.skipped, 0)
            parts[0] = f"progress: {summary.done}/{self.total} done"
            if rate > 0:
                parts.append(f"ETA {left / rate:.0f} s")
        parts += [f"{rate:.1f} tasks/s", f"{_gib(summary.bytes)} gathered"]
        return ", ".join(parts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log":
            log.info("%s", self.line_final())

    def line_final(self) -> str:
        return "progress: finished"
