"""Multi-step tasks on the worker: a step that returns what runs next sends its output (or a
notice that the task goes on here), fans out into children, or goes on here with the next step;
a later step's input is read from where the master stored it.
"""

from __future__ import annotations

from typing import Any

from .. import messages as M
from .. import steps
from .base import Base
from .queue import _Local


class StepsMixin(Base):
    """Part of ``Worker``: what runs after a step."""

    def _next(self, blk: _Local, i: int, n: int, name: str, value: Any, t0: float,
              dt: float) -> steps.NextStep | None:
        """A step returned what runs next: send its output (or say it goes on here); the next
        step to run here, or None when it is handed to other workers."""
        self._spans.append((blk.tids[i], t0, dt, "step", name))
        if type(value) is list:  # fan-out: each a child task, run wherever
            for k, child in enumerate(value):
                enc = self._encode(blk, i, n, name, child.value, t0, dt)
                if enc is None:
                    return None
                info = steps.StepInfo(n, name, steps.func_ref(child.func), child.needs, child.timeout, False,
                                      k, len(value))
                self._deliver(blk, i, enc[0], enc[1], dt, info)
            return None
        nxt: steps.NextStep = value
        go_on = self.opts.affinity and (nxt.needs is None or nxt.needs in self.kinds)
        info = steps.StepInfo(n, name, steps.func_ref(nxt.func), nxt.needs, nxt.timeout, go_on)
        if self.opts.checkpoint == "every" or not go_on:
            enc = self._encode(blk, i, n, name, nxt.value, t0, dt)
            if enc is None:
                return None
            self._deliver(blk, i, enc[0], enc[1], dt, info)
        else:
            self._note(M.Step(blk.bid, i, blk.tids[i], blk.attempt, info, dt), dt)
        return nxt if go_on else None


def _load_input(path: str | None) -> Any:
    """A step's input, stored by the master as a result of its own (a file of the output's steps)."""
    from ..reader_whole import load_entry

    if path is None:
        raise ValueError("the step's input was not stored")
    return load_entry(path)
