"""The task file source: one JSON object per line, checked in one pass while its first tasks run."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..crc import crc32c
from .lines import _NO_ID, _file_signature, _iter_jsonl_hashed, _open_tasks, _parse, _quick_id
from .params import _check_one, _check_ranges, _task_id, describe, timeout_of
from .scan import Scan
from .source import TaskSource

if TYPE_CHECKING:
    from ..journal import DoneSet

# A file of up to this many tasks is checked whole before a run starts (bad input fails before
# the output is made); a longer one starts once its first block of lines is checked, and the pass
# goes on while its tasks run
STREAM_AFTER = 50_000


def scan_jsonl(path: str | os.PathLike[str], done: DoneSet | None = None) -> int:
    """Validate a task file without keeping it in memory (JSON, ids, duplicates: 8 bytes a task
    held); with ``done`` (a resume), every done task must still have the parameters it had.
    Returns the number of tasks."""
    source = JsonlSource(path)
    source.stream = False
    return source.prepare(done, None) or 0


class JsonlSource(TaskSource):
    """A task file, one JSON object per line; a line's ``id`` key is its id, else its 0-based line
    number. Checked in one pass (``scan.Scan``, on a thread): a file of up to ``STREAM_AFTER``
    tasks is checked whole before the run starts (so that bad input fails before the output is
    made); a longer one starts once its first block of lines is checked, and hands out the tasks
    checked so far while the pass checks the rest;
    a bad line found later stops the run (UsageError, from ``take``). A resume checks the whole
    file first, and one whose file did not change (same size and checksum) skips that pass and
    reads no done line. A task's parameter hash is the crc32c of its line, without surrounding
    white space. ``on_total(total, signature)`` is called once a pass that went on during the
    run has ended (the journal keeps the signature, for a resume).

    During the run a task's payload is its line, as text: the worker parses it (``decode``), so
    the master reads the file without parsing it again, but for the ids it cannot see at once."""

    decode = "json"
    stream = True  # False: ``prepare`` checks the whole file (``scan_jsonl``)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = path
        self._sig: dict[str, Any] | None = None
        self._scan: Scan | None = None  # the checking pass, while it goes on
        self._seq = -1  # the position of the last line read by ``take``
        self.on_total: Callable[[int, dict[str, Any]], None] | None = None

    def scan_early(self) -> None:
        """Start the checking pass now, in a thread, while the other ranks start (MPI's waits
        release the GIL): ``prepare`` takes its result, or its error."""
        self._scan = Scan(self.path, hashes=False, stream_after=STREAM_AFTER if self.stream else None).start()

    def prepare(self, done: DoneSet | None, before: dict[str, Any] | None) -> int | None:
        if done is not None and before and before.get("kind") == "jsonl" and before.get("total") is not None:
            if _file_signature(self.path) == (before.get("size"), before.get("crc")):
                self.total = before["total"]
                self._sig = dict(before)
                return self.total  # unchanged since that run: checked then, nothing to check now
        scan, self._scan = self._scan, None
        if scan is None or (done and not scan.hashes):
            scan = Scan(self.path, hashes=bool(done), stream_after=STREAM_AFTER if self.stream and not done else None)
            scan.start()
        if self.stream and not done:
            scan.wait_to_start()  # (raises a bad line's error)
        else:
            scan.wait()
        if not scan.finished:
            self._scan = scan  # the rest is checked while the first tasks run,
            scan.hold()  # after the first results are stored (``started``)
            return None
        hashes = self._found(scan)
        if done:
            for _lineno, tid, _obj, seq, h in _iter_jsonl_hashed(self.path):
                _check_one(done, tid, h, seq)
            _check_ranges(done, hashes, self._id_at)
        return self.total

    def _found(self, scan: Scan) -> Any:
        """The total and signature from a pass that ended well; returns each task's hash."""
        assert scan.result is not None
        self.total, size, crc, hashes = scan.result
        self._sig = {"kind": "jsonl", "size": size, "crc": crc, "total": self.total}
        return hashes

    def _end_scan(self) -> None:
        """The pass has ended (or must, first): take its result, or raise its error."""
        scan, self._scan = self._scan, None
        assert scan is not None
        scan.wait()
        self._found(scan)
        if self.on_total is not None:
            self.on_total(self.total or 0, dict(self._sig or {}))

    def started(self) -> None:
        """The run's first results are durable: the pass goes on (see ``scan.Scan.hold``)."""
        if self._scan is not None:
            self._scan.go_on()

    def close(self) -> None:
        if self._scan is not None:
            self._scan.stop = True  # (it ends at its next block)
            self._scan.go_on()

    def available(self) -> int:
        """Tasks that could be handed out now (checked, not yet read), done ones counted too."""
        ready = self._scan.ready if self._scan is not None else (self.total or 0)
        return max(0, ready - self._seq - 1)

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
        from ..scheduler import WAIT, Chunk

        scan = self._scan
        if scan is not None and (scan.finished or scan.error is not None or self._steps or self._bits):
            self._end_scan()  # (raises a bad line's error: the run stops; a resume waits for all of it)
            scan = None
        if self._steps:
            return super().take(n)  # (tasks that resume at a step: the general way)
        if self._it is None:
            self._it = enumerate(_open_tasks(self.path))  # type: ignore[assignment]
            self._seq = -1
        lines: Any = self._it
        if scan is not None:  # while the pass goes on, only lines it checked (no line is done: a fresh run)
            n = min(n, scan.ready - self._seq - 1)
            if n <= 0:
                scan.go_on()  # (every line checked so far is out: a hold would keep workers waiting)
                return WAIT
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
            if self._scan is not None:
                self._end_scan()  # every line read: the pass ends with the last one's check
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
