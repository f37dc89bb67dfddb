"""Task sources for ranges, lists and iterables: each gives the scheduler chunks of consecutive
tasks (ids, payloads and positions in the task list). From an iterable, a dict payload's ``id``
key is its id, else its 0-based position. On resume, done tasks are left out by position.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..sinks.layout import check_id
from .params import _check_one, _check_ranges, _task_id, describe, timeout_of

if TYPE_CHECKING:
    from ..journal import DoneSet


def range_tasks(n: int) -> Iterator[tuple[int, int, int]]:
    if n < 0:
        raise UsageError(f"--range must be 0 or more, not {n}")
    return ((i, i, i) for i in range(n))


def iterable_tasks(items: Iterable[Any], files: bool = True) -> Iterator[tuple[Any, Any, int]]:
    """Ids for a user's iterable (or a dict of id -> task); duplicates are caught as they appear.
    ``files``: each id must also name a file (results may be stored whole in a file output),
    and two ids that name the same file are duplicates; else any str or int id will do."""
    seen: set[Any] = set()
    pairs = items.items() if isinstance(items, dict) else ((_task_id(p, i), p) for i, p in enumerate(items))
    for i, (tid, payload) in enumerate(pairs):
        if files:
            key: Any = check_id(tid)
        elif (type(tid) is str or type(tid) is int) and tid is not True:
            key = tid
        else:
            key = check_id(tid)  # (raises, naming the type)
        if key in seen:
            raise UsageError(f"task {i}: duplicate task id {tid!r}")
        seen.add(key)
        yield tid, payload, i


# -- sources: the tasks of a run, in chunks of consecutive positions -------------------------------


class TaskSource:
    """A run's tasks for the scheduler: ``take(n)`` gives up to ``n`` consecutive tasks not done
    yet (``scheduler.Chunk``), each with its parameter hash when ``hashed`` (an output that a
    resume will check). A chunk ends where done tasks are skipped, and a task that resumes at
    a later step comes alone. ``prepare`` runs first, once the output is locked."""

    total: int | None = None

    def __init__(self) -> None:
        self.hashed = False
        self._done: DoneSet | None = None
        self._bits = b""
        self._steps: dict[Any, dict[str, Any]] = {}
        self._it: Iterator[tuple[Any, Any, int, int | None]] | None = None
        self._held: tuple[Any, Any, int, int | None] | None = None

    def prepare(self, done: DoneSet | None, before: dict[str, Any] | None) -> int | None:
        """Check the tasks before any work; on resume, that every done one keeps its parameters
        (``before``: what the journal's first run recorded of the source). Returns the total."""
        if done:
            self.check(done)
        return self.total

    def close(self) -> None:
        """The run is over: stop any work still going on for it."""

    def signature(self) -> dict[str, Any] | None:
        """What the journal keeps of the source, so that a resume can tell it did not change."""
        return None

    def check(self, done: DoneSet) -> None:
        """Raise UsageError naming the first done task whose parameters changed."""
        hashes: list[int] = []
        ids: list[Any] = []
        for tid, payload, seq, h in self._all():
            hashes.append(h if h is not None else self.hash_of(payload, None))
            ids.append(tid)
            _check_one(done, tid, hashes[-1], seq)
        _check_ranges(done, hashes, ids.__getitem__)

    def skip(self, done: DoneSet | None, hashed: bool) -> None:
        """From now on, leave out what ``done`` calls done; keep hashes if ``hashed``."""
        self._done, self.hashed = done, hashed
        self._bits = done.bits.tobytes() if done is not None else b""
        self._steps = (done.steps or {}) if done is not None else {}

    def hash_of(self, payload: Any, raw: bytes | None) -> int:
        return describe(payload)[1]

    def describe(self, payload: Any) -> tuple[str, int]:
        """A task's parameters as text, and their hash (for the output's task table)."""
        return describe(payload)

    def timeout_of(self, payload: Any) -> float | None:
        """A task's own lease (its ``timeout`` key), or None."""
        return timeout_of(payload)

    decode: str | None = None  # how workers turn a payload into the task: "json" (a line of a task file)

    def _all(self) -> Iterator[tuple[Any, Any, int, int | None]]:
        """Every task: (id, payload, position, hash or None)."""
        raise NotImplementedError

    def _todo(self) -> Iterator[tuple[Any, Any, int, int | None]]:
        """The tasks not done, in order (subclasses skip done ones without reading them)."""
        bits = self._bits
        for item in self._all():
            if item[2] < len(bits) and bits[item[2]]:
                continue
            yield item

    def take(self, n: int) -> Any:
        from ..scheduler import Chunk

        if self._it is None:
            self._it = self._todo()
        tids: list[Any] = []
        payloads: list[Any] = []
        hashes: list[int] | None = [] if self.hashed else None
        seq0 = expect = -1
        steps = self._steps
        while len(tids) < n:
            item = self._held if self._held is not None else next(self._it, None)
            self._held = None
            if item is None:
                break
            tid, payload, seq, h = item
            if tids and seq != expect:
                self._held = item  # a gap: done tasks were left out
                break
            if hashes is not None and h is None:
                h = self.hash_of(payload, None)
            call = self._resume_at(tid, payload, seq, h) if steps and tid in steps else None
            if call is not None:
                if tids:
                    self._held = item
                    break
                return Chunk([tid], [payload], seq, call, None if hashes is None else [h or 0])
            if not tids:
                seq0 = seq
            tids.append(tid)
            payloads.append(payload)
            if hashes is not None:
                hashes.append(h or 0)
            expect = seq + 1
        if not tids:
            return None
        return Chunk(tids, payloads, seq0, None, hashes)

    def _resume_at(self, tid: Any, payload: Any, seq: int, h: int | None) -> Any:
        """A multi-step task whose later step's input is stored: the call that resumes it there."""
        from ..steps import StepCall

        rec = self._steps.get(tid)
        if rec is None or rec.get("parent") is not None or not os.path.exists(rec["path"]):
            return None
        if rec.get("h") and (h if h is not None else self.hash_of(payload, None)) != rec["h"]:
            raise UsageError(f"task {seq}: task {tid!r} has other parameters than when its step {rec['n']} began;"
                             " the task list changed since that run: restore it, or start a new output")
        return StepCall(rec["n"], rec["next"], rec.get("needs"), rec.get("timeout"), rec["path"])


class RangeSource(TaskSource):
    """``--range N``: task ``i`` is the int ``i``, its id too."""

    def __init__(self, n: int) -> None:
        super().__init__()
        if n < 0:
            raise UsageError(f"--range must be 0 or more, not {n}")
        self.total = n
        self._next = 0

    def prepare(self, done: DoneSet | None, before: dict[str, Any] | None) -> int | None:
        return self.total  # nothing can change: a task is its position

    def hash_of(self, payload: Any, raw: bytes | None) -> int:
        return 0

    def _all(self) -> Iterator[tuple[Any, Any, int, int | None]]:
        return ((i, i, i, 0) for i in range(self.total or 0))

    def take(self, n: int) -> Any:
        from ..scheduler import Chunk

        total, bits = self.total or 0, self._bits
        a = self._next
        if self._steps:
            return super().take(n)
        while a < total and a < len(bits) and bits[a]:  # done: left out
            a += 1
        if a >= total:
            return None
        b = min(total, a + n)
        if a < len(bits):
            stop = bits.find(1, a, b)
            b = b if stop < 0 else stop
        self._next = b
        ids = list(range(a, b))
        return Chunk(ids, ids, a, None, [0] * len(ids) if self.hashed else None)


class ItemsSource(TaskSource):
    """Tasks already given as ``(id, payload, position)`` items (``iterable_tasks``), read once."""

    def __init__(self, items: Iterable[tuple[Any, Any, int]], total: int | None = None) -> None:
        super().__init__()
        self.items, self.total = items, total

    def prepare(self, done: DoneSet | None, before: dict[str, Any] | None) -> int | None:
        return self.total  # read only once: done tasks are checked as they come

    def _todo(self) -> Iterator[tuple[Any, Any, int, int | None]]:
        bits, done = self._bits, self._done
        for tid, payload, seq in self.items:
            if seq < len(bits) and bits[seq]:
                if done is not None:
                    _check_one(done, tid, self.hash_of(payload, None), seq)
                continue
            yield tid, payload, seq, None

    def take(self, n: int) -> Any:
        """The common case (no task resumes at a step, nothing done, no hashes) in one tight loop."""
        if self._steps or self._bits or self.hashed:
            return super().take(n)
        from ..scheduler import Chunk

        if self._it is None:
            self._it = iter(self.items)  # type: ignore[assignment]
        tids: list[Any] = []
        payloads: list[Any] = []
        seq0 = expect = -1
        held, self._held = self._held, None
        items: Any = self._it if held is None else itertools.chain([held[:3]], self._it)  # type: ignore[arg-type]
        for tid, payload, seq in items:
            if tids and seq != expect:
                self._held = (tid, payload, seq, None)
                break
            if not tids:
                seq0 = seq
            tids.append(tid)
            payloads.append(payload)
            expect = seq + 1
            if len(tids) >= n:
                break
        return Chunk(tids, payloads, seq0) if tids else None


class ListSource(ItemsSource):
    """A user's list, tuple, range or dict (id -> task) of tasks: positions are indices. A resume
    checks every done task's parameters before the run."""

    def __init__(self, items: Any) -> None:
        super().__init__((), len(items))
        self.tasks = items
        self._pos = 0  # (the fast path) the next position to hand out
        self._sliced: bool | None = None  # (decided at the first take) chunks are slices

    def take(self, n: int) -> Any:
        """A range, or a list or tuple without dicts: every id is a position, so a chunk is a
        slice, taken without looking at its items one by one (dicts may hold ids: the general path)."""
        if self._sliced is None:
            tasks = self.tasks
            self._sliced = (not (self._steps or self._bits or self.hashed)
                            and (type(tasks) is range or (isinstance(tasks, (list, tuple))
                                                          and not any(isinstance(x, dict) for x in tasks))))
        if not self._sliced:
            return super().take(n)
        from ..scheduler import Chunk

        a = self._pos
        b = min(len(self.tasks), a + n)
        if a >= b:
            return None
        self._pos = b
        return Chunk(list(range(a, b)), list(self.tasks[a:b]), a)

    def skip(self, done: DoneSet | None, hashed: bool) -> None:
        super().skip(done, hashed)
        self.items = iterable_tasks(self.tasks, files=hashed)  # (ids name files only in a file output)

    def prepare(self, done: DoneSet | None, before: dict[str, Any] | None) -> int | None:
        return TaskSource.prepare(self, done, before)

    def _all(self) -> Iterator[tuple[Any, Any, int, int | None]]:
        return ((tid, payload, seq, None) for tid, payload, seq in iterable_tasks(self.tasks))

    def _todo(self) -> Iterator[tuple[Any, Any, int, int | None]]:
        return TaskSource._todo(self)  # done ones were checked by prepare


class IterableSource(ItemsSource):
    """Any other iterable of tasks (a generator): read once, as far as needed."""

    def __init__(self, items: Iterable[Any]) -> None:
        super().__init__(())
        self.tasks = items

    def skip(self, done: DoneSet | None, hashed: bool) -> None:
        super().skip(done, hashed)
        self.items = iterable_tasks(self.tasks, files=hashed)  # (ids name files only in a file output)


def source_of(tasks: Any) -> TaskSource:
    """The source for ``mpigather.run``'s ``tasks``: a sized collection, or any iterable."""
    if isinstance(tasks, TaskSource):
        return tasks
    if isinstance(tasks, (list, tuple, dict, range)):
        return ListSource(tasks)
    return IterableSource(tasks)
