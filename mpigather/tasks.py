"""Task sources, read lazily: a JSONL file, a range, or any iterable.

Each gives the scheduler chunks of consecutive tasks: ids, payloads and positions in the task
list. In a JSONL file, a line's ``id`` key is its id, else its 0-based line number. From an
iterable, a dict payload's ``id`` key is its id, else its 0-based position. A file is checked
in one streaming pass before the run (JSON, ids, duplicates), holding 8 bytes per task, so
that bad input fails at once. On resume, done tasks are left out by position, unread.

A task's parameters are described for the output's task table: as canonical JSON where they
are JSON, else by their ``repr``. Their hash (of a file's line; of the JSON, or of the pickle,
for other tasks) lets a resume check that each done task still has the parameters it had.
"""

from __future__ import annotations

import array
import itertools
import json
import os
import pickle
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .crc import crc32c
from .errors import UsageError
from .journal import DoneSet
from .sinks.layout import check_id

PARAMS_MAX = 10_000  # characters of a non-JSON task's repr kept in the task table
_CANON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def describe(payload: Any) -> tuple[str, int]:
    """(parameters as text, their 32-bit hash)."""
    try:
        text = _CANON(payload)
    except (TypeError, ValueError):
        try:
            h = crc32c(pickle.dumps(payload, protocol=4))
        except Exception:
            h = 0
        return repr(payload)[:PARAMS_MAX], h
    return text, crc32c(text.encode("utf-8", "surrogatepass"))


def block_hash(hashes: Sequence[int] | np.ndarray) -> int:
    """One parameter hash for consecutive tasks (a resume recomputes it the same way)."""
    return int(crc32c(np.asarray(hashes, dtype=np.uint32).tobytes()))


def _task_id(payload: Any, default: int) -> Any:
    if isinstance(payload, dict) and "id" in payload:
        return payload["id"]
    return default


def scan_jsonl(path: str | os.PathLike[str], done: DoneSet | None = None) -> int:
    """Validate a task file without keeping it in memory (JSON, ids, duplicates: 8 bytes a task
    held); with ``done`` (a resume), every done task must still have the parameters it had.
    Returns the number of tasks."""
    return JsonlSource(path).prepare(done, None) or 0


def _report_duplicate(path: str | os.PathLike[str], suspects: set[int]) -> None:
    seen: dict[str, int] = {}
    for lineno, tid, _ in _iter_jsonl(path):
        if hash((type(tid) is int, tid)) in suspects:
            name = check_id(tid)
            if name in seen:
                raise UsageError(f"task file {path}, line {lineno}: duplicate task id {tid!r}"
                                 f" (also on line {seen[name]})")
            seen[name] = lineno


def _iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any, Any]]:
    with _open_tasks(path) as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            obj = _parse(path, i, line)
            yield i + 1, _task_id(obj, i), obj


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
        from .scheduler import Chunk

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
        from .steps import StepCall

        rec = self._steps.get(tid)
        if rec is None or rec.get("parent") is not None or not os.path.exists(rec["path"]):
            return None
        if rec.get("h") and (h if h is not None else self.hash_of(payload, None)) != rec["h"]:
            raise UsageError(f"task {seq}: task {tid!r} has other parameters than when its step {rec['n']} began;"
                             " the task list changed since that run: restore it, or start a new output")
        return StepCall(rec["n"], rec["next"], rec.get("needs"), rec.get("timeout"), rec["path"])


def _check_one(done: DoneSet, tid: Any, h: int, seq: int) -> None:
    """A task stored whole that is done must keep its parameter hash."""
    want = done.lookup(tid)
    if want and want != h:
        raise UsageError(f"task {seq}: task {tid!r} has other parameters than when it was done; the task list"
                         " changed since that run: restore it, or start a new output")


def _check_ranges(done: DoneSet, hashes: Sequence[int] | np.ndarray, id_at: Any) -> None:
    """Rows of the table that are done must keep the hash of their tasks' parameters
    (``id_at(position)``: a task's id, for the message)."""
    for s0, n, want in done.ranges:
        if want and (s0 + n > len(hashes) or block_hash(hashes[s0 : s0 + n]) != want):
            if s0 + n > len(hashes):
                which = f"task {s0} (or one after it)"
            elif n == 1:
                which = f"task {s0}: task {id_at(s0)!r}"
            else:
                which = f"one of tasks {s0} to {s0 + n - 1} ({id_at(s0)!r} to {id_at(s0 + n - 1)!r})"
            raise UsageError(f"{which} has other parameters than when it was done; the task list changed since"
                             " that run: restore it, or start a new output")


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
        from .scheduler import Chunk

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
        from .scheduler import Chunk

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
        from .scheduler import Chunk

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


class JsonlSource(TaskSource):
    """A task file, one JSON object per line; a line's ``id`` key is its id, else its 0-based line
    number. Checked in one streaming pass before the run; a resume whose file did not change
    (same size and checksum) skips that pass and reads no done line. A task's parameter hash is
    the crc32c of its line, without surrounding white space.

    During the run a task's payload is its line, as text: the worker parses it (``decode``), so
    the master reads the file without parsing it again, but for the ids it cannot see at once."""

    decode = "json"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = path
        self._sig: dict[str, Any] | None = None
        self._early: Any = None

    def scan_early(self) -> None:
        """Start the checking pass now, in a thread, while the other ranks start (MPI's waits
        release the GIL): ``prepare`` takes its result, or its error."""
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(1, thread_name_prefix="mpigather-scan")
        self._early = pool.submit(_scan, self.path)
        pool.shutdown(wait=False)

    def prepare(self, done: DoneSet | None, before: dict[str, Any] | None) -> int | None:
        if done is not None and before and before.get("kind") == "jsonl" and before.get("total") is not None:
            if _file_signature(self.path) == (before.get("size"), before.get("crc")):
                self.total = before["total"]
                self._sig = dict(before)
                return self.total  # unchanged since that run: checked then, nothing to check now
        early, self._early = self._early, None
        self.total, size, crc, hashes = early.result() if early is not None else _scan(self.path)
        self._sig = {"kind": "jsonl", "size": size, "crc": crc, "total": self.total}
        if done:
            for _lineno, tid, _obj, seq, h in _iter_jsonl_hashed(self.path):
                _check_one(done, tid, h, seq)
            _check_ranges(done, hashes, self._id_at)
        return self.total

    def signature(self) -> dict[str, Any] | None:
        return self._sig

    def _id_at(self, pos: int) -> Any:
        return next(tid for _, tid, _, seq, _ in _iter_jsonl_hashed(self.path) if seq == pos)

    def hash_of(self, payload: Any, raw: bytes | None) -> int:
        if raw is None and type(payload) is str:
            raw = payload.encode()
        return int(crc32c(raw.strip())) if raw is not None else describe(payload)[1]

    def describe(self, payload: Any) -> tuple[str, int]:
        return describe(json.loads(payload) if type(payload) is str else payload)

    def timeout_of(self, payload: Any) -> float | None:
        if type(payload) is str:
            if '"timeout"' not in payload:
                return None
            payload = json.loads(payload)
        return timeout_of(payload)

    def _all(self) -> Iterator[tuple[Any, Any, int, int | None]]:
        return ((tid, obj, seq, h) for _, tid, obj, seq, h in _iter_jsonl_hashed(self.path))

    def take(self, n: int) -> Any:
        """Up to ``n`` consecutive lines not done, read (and their ids found) in one loop."""
        from .scheduler import Chunk

        if self._steps:
            return super().take(n)  # (tasks that resume at a step: the general way)
        if self._it is None:
            self._it = enumerate(_open_tasks(self.path))  # type: ignore[assignment]
            self._seq = -1
        lines: Any = self._it
        bits, nb, path = self._bits, len(self._bits), self.path
        tids: list[Any] = []
        payloads: list[Any] = []
        hashes: list[int] | None = [] if self.hashed else None
        seq = self._seq
        seq0 = seq + 1
        for i, line in lines:
            stripped = line.strip()
            if not stripped:
                continue
            seq += 1
            if seq < nb and bits[seq]:  # done: not even parsed
                if tids:
                    break  # a gap ends the chunk
                seq0 = seq + 1
                continue
            text = stripped.decode()
            tid = _quick_id(text)
            if tid is _NO_ID:
                tid = _task_id(_parse(path, i, text), i)
            elif tid is None:
                tid = i
            tids.append(tid)
            payloads.append(text)
            if hashes is not None:
                hashes.append(crc32c(stripped))
            if len(tids) >= n:
                break
        self._seq = seq
        if not tids:
            return None
        return Chunk(tids, payloads, seq0, None, hashes)

    def _todo(self) -> Iterator[tuple[Any, Any, int, int | None]]:
        bits = self._bits
        path = self.path
        f = _open_tasks(path)
        with f:
            seq = -1
            for i, line in enumerate(f):
                stripped = line.strip()
                if not stripped:
                    continue
                seq += 1
                if seq < len(bits) and bits[seq]:
                    continue  # done: not even parsed
                text = stripped.decode()
                tid = _quick_id(text)
                if tid is _NO_ID:
                    tid = _task_id(_parse(path, i, stripped), i)
                elif tid is None:
                    tid = i
                yield tid, text, seq, crc32c(stripped)


_NO_ID = object()
_ID_PREFIX = '{"id": '


def _quick_id(line: str) -> Any:
    """A line's id without parsing it, where it comes first as a plain string or int
    (``{"id": "p17", ...}``); None: the line has no ``id`` key; _NO_ID: parse the line to know."""
    if not line.startswith(_ID_PREFIX):
        return _NO_ID if '"id"' in line else None
    rest = line[len(_ID_PREFIX):]
    if rest[:1] == '"':
        end = rest.find('"', 1)
        tid = rest[1:end]
        if end < 0 or "\\" in tid or rest[end + 1 : end + 2] not in (",", "}"):
            return _NO_ID
        return tid
    end = next((k for k, c in enumerate(rest) if c in ",}"), -1)
    num = rest[:end]
    return int(num) if end > 0 and num.isdigit() and (num == "0" or num[0] != "0") else _NO_ID


def _open_tasks(path: str | os.PathLike[str]) -> Any:
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise UsageError(f"task file {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"cannot read task file {path}: {e.strerror}") from None


def _parse(path: str | os.PathLike[str], i: int, line: bytes | str) -> Any:
    try:
        obj = json.loads(line)
    except ValueError as e:
        msg = getattr(e, "msg", str(e))
        raise UsageError(f"task file {path}, line {i + 1}: invalid JSON ({msg})") from None
    if not isinstance(obj, dict):
        raise UsageError(f"task file {path}, line {i + 1}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _iter_jsonl_hashed(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any, Any, int, int]]:
    """(line number, id, object, position, hash) of every task of a file."""
    seq = -1
    with _open_tasks(path) as f:
        for i, line in enumerate(f):
            stripped = line.strip()
            if not stripped:
                continue
            seq += 1
            obj = _parse(path, i, line)
            yield i + 1, _task_id(obj, i), obj, seq, crc32c(stripped)


def _file_signature(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(size, crc32c) of a file, read in large blocks (about 2 GB/s here)."""
    crc = size = 0
    with _open_tasks(path) as f:
        while block := f.read(8 << 20):
            crc = crc32c(block, crc)
            size += len(block)
    return size, crc


def _scan(path: str | os.PathLike[str]) -> tuple[int, int, int, np.ndarray]:
    """One pass over a task file: JSON, ids and duplicates checked, 12 bytes a task held while it
    runs (a hash of the id that this process alone uses, confirmed by a second pass on a clash,
    and the line's crc32c) and 4 kept. Returns (tasks, size, crc32c of the file, each task's
    hash as a uint32 array)."""
    keys: array.array[int] = array.array("q")
    hashes: array.array[int] = array.array("I")
    crc = size = 0
    seq = -1
    with _open_tasks(path) as f:
        for i, line in enumerate(f):
            crc = crc32c(line, crc)
            size += len(line)
            stripped = line.strip()
            if not stripped:
                continue
            seq += 1
            obj = _parse(path, i, stripped.decode())
            tid = _task_id(obj, i)
            check_id(tid)
            keys.append(hash((type(tid) is int, tid)))
            hashes.append(crc32c(stripped))
    k = np.frombuffer(keys, dtype=np.int64)
    if len(k) > 1:
        s = np.sort(k)
        dup = s[1:][s[1:] == s[:-1]]
        if len(dup):
            _report_duplicate(path, set(int(x) for x in dup))
    return len(k), size, crc, np.frombuffer(hashes, dtype=np.uint32)  # 4 bytes a task (a list: ~36)


def source_of(tasks: Any) -> TaskSource:
    """The source for ``mpigather.run``'s ``tasks``: a sized collection, or any iterable."""
    if isinstance(tasks, TaskSource):
        return tasks
    if isinstance(tasks, (list, tuple, dict, range)):
        return ListSource(tasks)
    return IterableSource(tasks)


def timeout_of(payload: Any) -> float | None:
    if isinstance(payload, dict) and "timeout" in payload:
        t = payload["timeout"]
        if not isinstance(t, (int, float)) or isinstance(t, bool) or t <= 0:
            raise UsageError(f"task {payload.get('id')!r}: timeout must be a positive number of seconds, not {t!r}")
        return float(t)
    return None
