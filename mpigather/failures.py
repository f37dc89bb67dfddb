"""Distinct errors: identical failures are kept once, with a count and the tasks they hit.

Two failures are the same error when they have the same exception type and were raised at the
same place (``worker.where``: type, file, line, function); a failure with no exception (a
lease that expired, a checksum that did not match) is known by the last line of its text.
The tasks an error hit are kept compactly: their positions in the task list as ranges (as the
journal's ``rows`` records do), and the ids of tasks that have no position (a fan-out's children).
A storm of 200,000 identical failures is one error, a count and a few ranges.
"""

from __future__ import annotations

from typing import Any

SIGNATURE = "the task function's signature"  # the key of a task the function's signature cannot take
SAMPLE = 5  # ids of each error's first tasks, shown in the summary
TEXTS_KEPT = 1000  # failures whose own text the summary keeps; later ones share their error's first text


def error_key(where: str, text: str | None) -> str:
    """What makes two failures the same error."""
    if where:
        return where
    lines = (text or "failed").strip().splitlines()
    return lines[-1] if lines else "failed"


def last_line(text: str | None) -> str:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else (text or "")


class Ranges:
    """Positions as ``[[start, count], ...]``, a run of consecutive ones as one range."""

    __slots__ = ("ranges",)

    def __init__(self, ranges: list[list[int]] | None = None) -> None:
        self.ranges: list[list[int]] = ranges if ranges is not None else []

    def add(self, pos: int) -> None:
        r = self.ranges
        if r and r[-1][0] + r[-1][1] == pos:
            r[-1][1] += 1
        else:
            r.append([pos, 1])

    def __len__(self) -> int:
        return sum(n for _, n in self.ranges)


class Error:
    """One distinct error: its key, the text of its first failure, and the tasks it ended.
    (Written out, not a dataclass, which costs half a millisecond to define at the master's start.)"""

    __slots__ = ("k", "key", "text", "first", "count", "positions", "ids", "sample")

    def __init__(self, k: int, key: str, text: str, first: Any) -> None:
        self.k = k
        self.key = key
        self.text = text
        self.first = first  # the id of the first task it hit
        self.count = 0  # tasks that ended failed with it
        self.positions = Ranges()
        self.ids: list[Any] = []  # tasks with no position
        self.sample: list[Any] = []  # the ids of the first few tasks it ended

    def __repr__(self) -> str:
        return f"Error(k={self.k!r}, key={self.key!r}, count={self.count!r}, first={self.first!r})"

    def describe(self) -> dict[str, Any]:
        """As ``status --json`` and the summary show it."""
        return {"error": last_line(self.text), "where": self.key, "count": self.count, "first": self.first,
                "positions": self.positions.ranges, "ids": self.ids, "shown": self.sample}


class ErrorLog:
    """The distinct errors of a run, in the order they were first seen. Pure: no I/O."""

    def __init__(self) -> None:
        self.errors: list[Error] = []
        self._by_key: dict[str, Error] = {}

    def error(self, key: str, text: str, tid: Any) -> tuple[Error, bool]:
        """The error with this key (made from ``text`` and ``tid`` if new), and whether it is new."""
        e = self._by_key.get(key)
        if e is not None:
            return e, False
        e = self._by_key[key] = Error(len(self.errors), key, text, tid)
        self.errors.append(e)
        return e, True

    def ended(self, e: Error, tid: Any, seq: int) -> None:
        """Task ``tid`` (at position ``seq``, or -1) ended failed with error ``e``."""
        e.count += 1
        if len(e.sample) < SAMPLE:
            e.sample.append(tid)
        if seq >= 0:
            e.positions.add(seq)
        else:
            e.ids.append(tid)

    def __len__(self) -> int:
        return len(self.errors)

    def describe(self) -> list[dict[str, Any]]:
        return [e.describe() for e in self.errors if e.count]


def show(errors: list[dict[str, Any]], failed: int, limit: int = 10, ids: int = 5) -> list[str]:
    """Lines for a person: each distinct error once, with its count and the first tasks it hit
    (``errors`` as ``Error.describe`` gives them, most frequent first)."""
    errs = sorted(errors, key=lambda e: -e["count"])
    out = []
    if len(errs) > 1 or failed > 1:
        out.append(f"  {failed} task(s) failed with {len(errs)} distinct error(s):")
    for e in errs[:limit]:
        who = _first_ids(e, ids)
        out.append(f"  FAILED {who} ({e['count']} task{'s' if e['count'] != 1 else ''}): {e['error']}")
        if " at " in (e.get("where") or ""):
            out.append(f"      at {e['where']}")
    if len(errs) > limit:
        out.append(f"  ... and {len(errs) - limit} more distinct errors (see `mpigather status --json`)")
    return out


def _first_ids(e: dict[str, Any], n: int) -> str:
    shown: list[str] = []
    if "shown" in e:
        shown = [repr(t) if not isinstance(t, int) else str(t) for t in e["shown"][:n]]
    else:
        for s, k in e["positions"]:
            for x in range(s, s + min(k, n - len(shown))):
                shown.append(f"#{x}")
            if len(shown) >= n:
                break
        shown += [repr(t) if not isinstance(t, int) else str(t) for t in e["ids"][: n - len(shown)]]
    more = e["count"] - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")
