"""The checking pass over a task file: JSON, ids and duplicates, in bounded memory, on a thread.

It checks the file in blocks of lines and says, as it goes, how many tasks are checked
(``ready``): the run hands those out while it checks the rest. Every task handed out has been
checked whole: its line is JSON, its id is valid, and no line before it has the same id. A
bad line found later stops the run as bad input does at the start (``error``).
"""

from __future__ import annotations

import array
import os
import threading

import numpy as np

from ..crc import crc32c
from ..errors import UsageError
from ..sinks.layout import check_id
from .lines import _iter_jsonl, _open_tasks, _parse
from .params import _task_id

FIRST_BLOCK = 1024  # lines checked before the first ones are handed out
MAX_BLOCK = 65536  # lines checked at a time, at most (blocks double up to this)
MAX_RUN = 1 << 21  # ids in one sorted run, at most: a merge needs no more than 32 MB more, whatever the file
# The longest a pass holds (``hold``) while the run starts, in seconds. The pass holds the GIL
# but for its reads, and the master's main thread, which gives the GIL up at each system call,
# waits up to the interpreter's 5 ms switch interval to get it back each time: measured, the
# first result of a 1M-line sweep took 0.15 s of wall time for 16 ms of CPU to store, and as
# long again to commit, beside a pass
HOLD_MAX = 1.0


def _report_duplicate(path: str | os.PathLike[str], suspects: set[int], stop: int | None = None) -> None:
    """Raise UsageError naming the first duplicate id among the ids whose key is in ``suspects``
    (in lines up to ``stop``, 1-based); nothing if the keys only clashed."""
    seen: dict[str, int] = {}
    for lineno, tid, _ in _iter_jsonl(path):
        if stop is not None and lineno > stop:
            return
        if hash((type(tid) is int, tid)) in suspects:
            name = check_id(tid)
            if name in seen:
                raise UsageError(f"task file {path}, line {lineno}: duplicate task id {tid!r}"
                                 f" (also on line {seen[name]})")
            seen[name] = lineno


class Scan:
    """One pass over a task file, JSON, ids and duplicates checked, 12 bytes a task held while it
    runs (a hash of the id that this process alone uses, confirmed by a second pass on a clash,
    and the line's crc32c) and 4 kept. ``run`` does it (on a thread: ``start``); ``ready``: tasks
    checked so far; ``wait`` blocks until enough are; ``result``: (tasks, size, crc32c of the
    file, each task's hash as a uint32 array: empty unless ``hashes``, for a resume's checks),
    once it ended without ``error``."""

    def __init__(self, path: str | os.PathLike[str], hashes: bool = True, stream_after: int | None = None) -> None:
        self.path = path
        self.hashes = hashes
        self.stream_after = stream_after  # a file of more tasks than this may start after its first block
        self.long: bool | None = None  # (known once counted: more tasks than ``stream_after``)
        self.stop = False  # set: end at the next block (the run no longer needs it)
        self.ready = 0
        self.finished = False
        self.error: BaseException | None = None
        self.result: tuple[int, int, int, np.ndarray] | None = None
        self._runs: list[np.ndarray] = []  # the keys of the ids checked so far, in sorted runs
        self._cond = threading.Condition()
        self._go = threading.Event()  # cleared: the pass holds (``hold``)
        self._go.set()

    def start(self) -> Scan:
        threading.Thread(target=self.run, name="mpigather-scan", daemon=True).start()
        return self

    def wait(self, tasks: int | None = None) -> None:
        """Until ``tasks`` tasks are checked (None: all), or the pass ended; raise its error."""
        with self._cond:
            while not self.finished and (tasks is None or self.ready < tasks):
                self._cond.wait(0.5)
        if self.error is not None:
            raise self.error

    def hold(self) -> None:
        """Pause the pass within its next 1024 lines, until ``go_on`` or for ``HOLD_MAX`` s at
        most: while the run starts, its first results are stored without a thread that keeps
        the GIL (the lines checked so far can be handed out meanwhile)."""
        self._go.clear()

    def go_on(self) -> None:
        """End a ``hold``."""
        self._go.set()

    def wait_to_start(self) -> None:
        """Until the run may start: the whole file checked, but for a file of more than
        ``stream_after`` tasks only its first block (the rest is checked while its tasks run).
        Raises the pass's error, if it ended with one."""
        with self._cond:
            while not self.finished and not (self.long and self.ready > 0):
                self._cond.wait(0.5)
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        try:
            if self.stream_after is not None:
                long = more_tasks_than(self.path, self.stream_after)
                with self._cond:
                    self.long = long
            result = self._pass()
        except BaseException as e:  # (a bad line: UsageError) said to whoever waits or takes
            self.error = e
        else:
            self.result = result
        with self._cond:
            self.finished = True
            self._cond.notify_all()

    def _pass(self) -> tuple[int, int, int, np.ndarray]:
        path = self.path
        keys: array.array[int] = array.array("q")
        hashes: array.array[int] = array.array("I")
        keep = hashes.append if self.hashes else None
        crc = size = 0
        seq = -1
        block = FIRST_BLOCK
        go = self._go
        with _open_tasks(path) as f:
            for i, line in enumerate(f):
                crc = crc32c(line, crc)
                size += len(line)
                stripped = line.strip()
                if not stripped:
                    continue
                seq += 1
                if not seq & 1023 and not go.is_set():
                    go.wait(HOLD_MAX)
                    go.set()  # (held once: a hold that timed out ends)
                tid = _task_id(_parse(path, i, stripped), i)
                check_id(tid)
                keys.append(hash((type(tid) is int, tid)))
                if keep is not None:
                    keep(crc32c(stripped))
                if len(keys) >= block:
                    if self.stop:
                        raise UsageError("the check of the task file was stopped")
                    self._checked(keys, i + 1)
                    keys = array.array("q")
                    block = min(2 * block, MAX_BLOCK)
        self._checked(keys, None)
        self._runs = []
        return seq + 1, size, crc, np.frombuffer(hashes, dtype=np.uint32)  # 4 bytes a task (a list: ~36)

    def _checked(self, keys: array.array[int], lineno: int | None) -> None:
        """A block of ids (up to line ``lineno``) parsed: check that none was seen before, then
        say its tasks are ready. Sorted runs of doubling length (up to ``MAX_RUN``) keep this
        O(n log n) overall."""
        s = np.sort(np.frombuffer(keys, dtype=np.int64))
        if not len(s):
            return
        clash = [s[1:][s[1:] == s[:-1]]]
        for run in self._runs:
            at = np.minimum(np.searchsorted(run, s), len(run) - 1)
            clash.append(s[run[at] == s])
        suspects = np.concatenate(clash)
        if len(suspects):
            _report_duplicate(self.path, set(int(x) for x in suspects), lineno)
        runs = self._runs
        runs.append(s)
        while len(runs) > 1 and len(runs[-2]) <= len(runs[-1]) and len(runs[-2]) + len(runs[-1]) <= MAX_RUN:
            merged = np.concatenate(runs[-2:])
            del runs[-2:]
            merged.sort(kind="stable")  # (two sorted runs: merged in linear time)
            runs.append(merged)
        with self._cond:
            self.ready += len(keys)
            self._cond.notify_all()


def more_tasks_than(path: str | os.PathLike[str], n: int) -> bool:
    """Whether a task file holds more than ``n`` tasks (lines not blank), reading no further than
    it must: a few milliseconds for 50,000 lines, in large reads (a read releases the GIL, and a
    thread that wants it back waits for it)."""
    count = 0
    tail = b""
    with _open_tasks(path) as f:
        while block := f.read(1 << 20):
            lines = (tail + block).split(b"\n")
            tail = lines.pop()
            count += sum(1 for line in lines if line.strip())
            if count > n:
                return True
    return count + (1 if tail.strip() else 0) > n


def _scan(path: str | os.PathLike[str]) -> tuple[int, int, int, np.ndarray]:
    """The whole pass, here: (tasks, size, crc32c of the file, each task's hash)."""
    scan = Scan(path)
    scan.run()
    if scan.error is not None:
        raise scan.error
    assert scan.result is not None
    return scan.result


__all__ = ["Scan", "_report_duplicate", "_scan", "more_tasks_than"]
