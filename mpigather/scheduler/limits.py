"""When a run stops early because its tasks fail: the ``--max-failures`` rule, pure and O(1).

What counts: a task counts once, when it has ended as failed, that is after its last retry
(``--retries``); an attempt that is retried does not count, nor does a lease that expired and
was handed out again. A task done counts as done. The rule is judged on the tasks of this run
(a resume starts counting afresh).

The rules (``FailureLimit.parse``):
- ``auto`` (the default): stop when the first ``AUTO_FIRST`` tasks to end have all failed and
  none succeeded. A task function with a bug fails on every task, so the run stops after about
  twenty of them; a run in which any task succeeded is never stopped by this rule, so a careful
  user whose tasks fail now and then is not surprised.
- ``N``: at most N tasks may fail; the N+1th stops the run (``0``: stop at the first failure).
- ``N%``: stop once more than N% of the tasks that ended have failed, judged once enough tasks
  ended that one failure is at most N% of them (and at least ``MIN_SAMPLE``), or at once when
  the failures are more than N% of all the tasks (when their number is known).
- ``none``: never stop early.
"""

from __future__ import annotations

import math
import re

AUTO_FIRST = 20  # ``auto``: this many tasks failed and none succeeded
MIN_SAMPLE = 20  # ``N%``: judged only once at least this many tasks ended


class FailureLimit:
    """A parsed ``--max-failures``: ``kind`` is auto, count, percent or none. (Written out, not
    a dataclass: every rank checks the option at its start, and a dataclass costs half a
    millisecond to define.)"""

    __slots__ = ("kind", "value")
    kind: str
    value: float

    def __init__(self, kind: str = "auto", value: float = 0.0) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "value", value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        if type(other) is not FailureLimit:
            return NotImplemented
        return (self.kind, self.value) == (other.kind, other.value)

    def __hash__(self) -> int:
        return hash((self.kind, self.value))

    def __repr__(self) -> str:
        return f"FailureLimit(kind={self.kind!r}, value={self.value!r})"

    @classmethod
    def parse(cls, text: object) -> FailureLimit:
        """'auto', 'none', '10', '5%' (or an int, or a FailureLimit). Raises ValueError naming the value."""
        if isinstance(text, FailureLimit):
            return text
        if isinstance(text, bool):
            raise ValueError(f"max failures must be a number, N%, auto or none, not {text!r}")
        if isinstance(text, int):
            if text < 0:
                raise ValueError(f"max failures must be at least 0, not {text}")
            return cls("count", text)
        s = str(text).strip().lower()
        if s in ("auto", "none"):
            return cls(s)
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", s)
        if m:
            pct = float(m.group(1))
            if not 0 < pct < 100:
                raise ValueError(f"max failures {text!r}: a percentage must be between 0% and 100% (excluded)")
            return cls("percent", pct)
        if re.fullmatch(r"\d+", s):
            return cls("count", int(s))
        raise ValueError(f"max failures {text!r} is not a number of tasks (10), a percentage (5%), auto or none")

    def __str__(self) -> str:
        if self.kind == "count":
            return str(int(self.value))
        if self.kind == "percent":
            return f"{self.value:g}%"
        return self.kind

    def reached(self, done: int, failed: int, total: int | None = None) -> str | None:
        """Why the run must stop now (``done`` and ``failed`` tasks ended so far, of ``total``),
        or None to go on."""
        if failed == 0 or self.kind == "none":
            return None
        if self.kind == "auto":
            if done == 0 and failed >= AUTO_FIRST:
                return f"the first {failed} tasks all failed and none succeeded"
            return None
        if self.kind == "count":
            if failed > self.value:
                return f"{failed} tasks failed, more than the limit of {self}"
            return None
        ended = done + failed
        over = failed * 100 > self.value * ended
        sample = max(MIN_SAMPLE, math.ceil(100 / self.value))
        if over and ended >= sample:
            return (f"{failed} of the {ended} tasks that ended failed ({100 * failed / ended:.1f}%),"
                    f" more than the limit of {self}")
        if total and failed * 100 > self.value * total:
            return f"{failed} of {total} tasks failed, more than the limit of {self} of them"
        return None
