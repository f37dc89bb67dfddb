"""Append-only journal of task states: the record that makes a run resumable and observable.

One JSON object per line, in a file next to the output (``OUT.journal``). A task is
written as done only after its data is on disk. Lines are buffered and made durable by
``commit()``: one fsync covers every record since the previous one (group commit), so
durability costs one fsync per batch of completions, not one per task.

Record types (key ``ev``), each written by one method of ``Journal``:
- ``start``: the run's parameters (total, argv, pid, host, mode...);
- ``source``: the total and signature of a task file checked while the run went on (they
  complete the ``start`` record, which could not say them yet);
- ``done``: a batch of finished tasks, column by column (ids, positions, parameter hashes,
  attempts, ranks, bytes, crc32c, durations, and paths in direct mode): about 40 bytes a task;
- ``rows``: a batch of rows of the table of small results: their positions in the task list
  as ranges (not their ids), and a parameter hash, attempt, rank, bytes, crc32c and duration
  per range: a few dozen bytes for thousands of tasks;
- ``error``: a distinct error, once, at its first failure: its number ``k`` in this run, its
  key (exception type and where it was raised), the text of that first failure, the task's id;
- ``failed``: failed tasks, batched by error and commit: the error's ``k``, ``final`` (the task
  ended failed) or not (an attempt that is retried), their positions as ranges (``pos``) and the
  ids of tasks with no position (``id``): a storm of 200,000 identical failures writes a few
  hundred such small records, not 200,000 tracebacks. (Older journals have one record per
  failed attempt: id, position, attempt, rank, error, final; they are still read.)
- ``workers``: every few seconds, the master's heartbeat: each worker's state, and how many
  tasks are running and queued;
- ``reset``: the output was found damaged and set aside: forget the earlier done records;
- ``stats``: per-rank time accounting at the end of a run; ``end``: how the run ended.

A torn last line (the job was killed mid-write) is ignored and cut off before appending.
Reading is streamed, so a journal of ten million tasks is read in bounded memory.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SUFFIX = ".journal"
_DUMPS = json.JSONEncoder(separators=(",", ":"), default=str).encode


def journal_path(out: str | os.PathLike[str]) -> Path:
    p = Path(out)
    return p.with_name(p.name.rstrip("/") + SUFFIX)


def now() -> float:
    return time.time()


class Journal:
    """Writer side. Not thread-safe; only the master writes it."""

    def __init__(self, path: str | os.PathLike[str], *, resume: bool = False) -> None:
        self.path = Path(path)
        if resume and self.path.exists():
            _cut_torn_tail(self.path)
        self._f = open(self.path, "ab", buffering=1 << 20)
        self._dirty = False
        self.n_commits = 0
        self._failed: dict[tuple[int, bool], tuple[list[list[int]], list[Any]]] = {}  # not yet written

    def _write(self, rec: dict[str, Any]) -> None:
        self._f.write(_DUMPS(rec).encode() + b"\n")
        self._dirty = True

    # -- the records ----------------------------------------------------------------------

    def start(self, **info: Any) -> None:
        self._write({"ev": "start", "time": round(now(), 3), **info})

    def source(self, **info: Any) -> None:
        self._write({"ev": "source", "time": round(now(), 3), **info})

    def done(self, ready: list[tuple[Any, dict[str, Any]]]) -> None:
        """A batch of results that the sink made durable, as one record."""
        if not ready:
            return
        metas = [m for _, m in ready]
        rec: dict[str, Any] = {
            "ev": "done", "t": round(now(), 3), "id": [t for t, _ in ready],
            "seq": [-1 if m.get("child") else m.get("seq", -1) for m in metas],  # a fan-out's child has none
            "h": [m.get("hash", 0) for m in metas],
            "att": [m.get("attempt", 1) for m in metas], "rank": [m.get("rank", 0) for m in metas],
            "bytes": [m.get("bytes", 0) for m in metas], "crc": [m.get("crc32c") or 0 for m in metas],
            "dur": [round(m.get("duration") or 0.0, 6) for m in metas],
        }
        if any("path" in m for m in metas):
            rec["path"] = [m.get("path") for m in metas]
        if any("ran" in m for m in metas):  # multi-step tasks: the step whose output is the result
            rec["ran"] = [m.get("ran") for m in metas]
        self._write(rec)

    def rows(self, rows: list[Any]) -> None:
        """Rows of the table that the sink made durable (``sinks.table.RowsDone``), as one record:
        their positions in the task list as ranges, not their ids."""
        if not rows:
            return
        self._write({"ev": "rows", "t": round(now(), 3), "pos": [[r.seq0, r.n] for r in rows],
                     "h": [r.hash for r in rows], "att": [r.attempt for r in rows], "rank": [r.rank for r in rows],
                     "bytes": [r.nbytes for r in rows], "crc": [r.crc for r in rows],
                     "dur": [round(r.duration, 6) for r in rows]})

    def error(self, k: int, key: str, text: str | None, tid: Any) -> None:
        """A distinct error, at its first failure (``failures.Error``)."""
        self._write({"ev": "error", "k": k, "key": key, "error": text, "id": tid, "t": round(now(), 3)})

    def failed(self, k: int, tid: Any, seq: int = -1, *, final: bool = True) -> None:
        """Task ``tid`` (at position ``seq``) failed with error ``k``; ``final``: it ended so.
        Kept in memory and written, grouped by error, with the next commit or heartbeat."""
        pos, ids = self._failed.setdefault((k, final), ([], []))
        if seq >= 0:
            if pos and pos[-1][0] + pos[-1][1] == seq:
                pos[-1][1] += 1
            else:
                pos.append([seq, 1])
        else:
            ids.append(tid)
        self._dirty = True

    def _write_failed(self) -> None:
        if not self._failed:
            return
        batch, self._failed = self._failed, {}
        for (k, final), (pos, ids) in batch.items():
            rec: dict[str, Any] = {"ev": "failed", "err": k, "final": final}
            if pos:
                rec["pos"] = _merged(pos)
            if ids:
                rec["id"] = ids
            self._write(rec)

    def workers(self, table: dict[int, dict[str, Any]], running: int, queued: int, done: int,
                failed: int, by_step: dict[str, list[int]] | None = None) -> None:
        """The master's heartbeat; flushed to the file system (not fsynced) so that status sees it."""
        self._write_failed()
        rec = {"ev": "workers", "time": round(now(), 3), "running": running, "queued": queued,
               "done": done, "failed": failed, "table": table}
        if by_step:
            rec["steps"] = by_step
        self._write(rec)
        self._f.flush()

    def step(self, tid: Any, n: int, func: str, needs: str | None, timeout: float | None, path: str,
             h: int, *, parent: Any = None, ran: str = "") -> None:
        """The input of step ``n`` of a task is stored at ``path``: a resume starts the task there."""
        rec: dict[str, Any] = {"ev": "step", "id": tid, "n": n, "next": func, "path": path, "h": h, "ran": ran,
                               "t": round(now(), 3)}
        if needs is not None:
            rec["needs"] = needs
        if timeout is not None:
            rec["timeout"] = timeout
        if parent is not None:
            rec["parent"] = parent
        self._write(rec)

    def fanout(self, tid: Any, children: list[Any]) -> None:
        """A step split a task into these child tasks."""
        self._write({"ev": "fanout", "id": tid, "children": children, "t": round(now(), 3)})

    def reset(self, reason: str) -> None:
        self._write({"ev": "reset", "time": round(now(), 3), "reason": reason})

    def stats(self, rank: int, stats: dict[str, Any]) -> None:
        """A worker's time accounting; its spans (at most ``worker.SPANS_KEPT``, for the timeline)
        in microseconds: about 40 bytes a span instead of 70."""
        if stats.get("spans"):
            stats = {**stats, "spans": [[sp[0], round(sp[1], 6), round(sp[2], 6), *sp[3:]] if len(sp) > 2 else sp
                                        for sp in stats["spans"]]}
        self._write({"ev": "stats", "rank": rank, **stats})

    def end(self, **info: Any) -> None:
        self._write_failed()
        self._write({"ev": "end", "time": round(now(), 3), **info})

    # -- durability -----------------------------------------------------------------------

    def commit(self) -> bool:
        """Make every record written so far durable. Returns False when there was nothing to do."""
        if not self._dirty:
            return False
        self._write_failed()
        self._f.flush()
        os.fsync(self._f.fileno())
        self._dirty = False
        self.n_commits += 1
        return True

    def close(self) -> None:
        if not self._f.closed:
            try:
                self.commit()
            finally:
                self._f.close()


def _merged(ranges: list[list[int]]) -> list[list[int]]:
    """``[[start, count]]`` sorted, touching ranges joined (workers finish blocks out of order)."""
    out: list[list[int]] = []
    for s0, n in sorted(ranges):
        if out and out[-1][0] + out[-1][1] >= s0:
            out[-1][1] = max(out[-1][1], s0 + n - out[-1][0])
        else:
            out.append([s0, n])
    return out


def _cut_torn_tail(path: Path) -> None:
    """Truncate a journal to its last complete line, so appends start on a fresh line."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        pos = size
        block = 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            data = f.read(pos - start)
            i = data.rfind(b"\n")
            if i >= 0:
                end = start + i + 1
                if end != size:
                    f.truncate(end)
                return
            pos = start
        f.truncate(0)


def read_records(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """Every complete record of a journal, streamed; a torn or corrupt last line is skipped."""
    with open(path, "rb") as f:
        lineno = 0
        pending: bytes | None = None  # a corrupt line is an error only if another follows it
        for line in f:
            lineno += 1
            if pending is not None:
                raise ValueError(f"journal {path}, line {lineno - 1}: corrupt record")
            if not line.endswith(b"\n"):
                return  # torn tail
            try:
                rec = json.loads(line)
            except ValueError:
                pending = line
                continue
            yield rec


def _as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else [x]


def done_columns(rec: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """(id, seq, hash, attempt, rank, bytes, crc, duration, path) for each task of a done record
    (also the one-task records of older journals)."""
    ids = _as_list(rec["id"])
    n = len(ids)

    def col(key: str, default: Any) -> list[Any]:
        v = rec.get(key)
        return [default] * n if v is None else _as_list(v)

    return zip(ids, col("seq", -1), col("h", 0), col("att", 1), col("rank", 0), col("bytes", 0), col("crc", 0),
               col("dur", 0.0), col("path", None))


def id_key(tid: Any) -> int:
    """A stable 64-bit key of a task id (ids of any length, ten million of them in 80 MB)."""
    raw = (b"i" + str(tid).encode()) if type(tid) is int else (b"s" + str(tid).encode("utf-8", "surrogatepass"))
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little", signed=True)


def _array(values: Iterable[int], dtype: Any) -> np.ndarray:
    if isinstance(values, np.ndarray):
        return values.astype(dtype, copy=False)
    return np.fromiter(values, dtype=dtype)


class DoneSet:
    """What a journal calls done: results stored whole, as sorted 64-bit id keys with their
    parameter hashes (12 bytes a task, whatever the ids look like), and every done task's
    position in the task list as one bit; rows of the table as ranges of positions, each with
    the hash of its tasks' parameters."""

    steps: dict[Any, dict[str, Any]] | None = None  # on resume: unfinished tasks' last stored steps

    def __init__(self, keys: Iterable[int] = (), hashes: Iterable[int] = (), positions: Iterable[int] = (),
                 ranges: Iterable[tuple[int, int, int]] = (), unplaced: int | None = None) -> None:
        k = _array(keys, np.int64)
        h = _array(hashes, np.uint32)
        order = np.argsort(k, kind="stable")
        k, h = k[order], h[order]
        if len(k) > 1:  # a task done twice keeps its last record
            last = np.ones(len(k), dtype=bool)
            last[:-1] = k[1:] != k[:-1]
            k, h = k[last], h[last]
        self._keys, self._hashes = k, h
        self.ranges = [(int(s), int(n), int(x)) for s, n, x in ranges]
        pos = _array(positions, np.int64)
        top = max([int(pos.max()) + 1 if len(pos) else 0] + [s + n for s, n, _ in self.ranges])
        bits = np.zeros(top, dtype=bool)
        bits[pos] = True
        for s, n, _ in self.ranges:
            bits[s : s + n] = True
        self.bits = bits
        # whole results with no position of their own (a fan-out's children)
        self.unplaced = max(0, len(k) - len(np.unique(pos))) if unplaced is None else unplaced

    def __len__(self) -> int:
        return int(np.count_nonzero(self.bits)) + self.unplaced

    @property
    def n_whole(self) -> int:
        """Results stored whole (each with a row of the output's task list)."""
        return len(self._keys)

    def done_at(self, seq: int) -> bool:
        return 0 <= seq < len(self.bits) and bool(self.bits[seq])

    def lookup(self, tid: Any) -> int | None:
        """The parameter hash recorded for ``tid`` stored whole, or None if it is not."""
        if not len(self._keys):
            return None
        k = id_key(tid)
        i = int(np.searchsorted(self._keys, k))
        if i < len(self._keys) and self._keys[i] == k:
            return int(self._hashes[i])
        return None

    def __contains__(self, tid: Any) -> bool:
        return self.lookup(tid) is not None


@dataclass
class RunRecord:
    """One run of a journal (a start record to the next)."""

    start: dict[str, Any]
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    end: dict[str, Any] | None = None
    done: int = 0
    failed: int = 0


@dataclass
class State:
    """What a journal says about a run: the basis of ``--resume``, ``status`` and ``report``."""

    start: dict[str, Any] = field(default_factory=dict)  # of the last run
    n_done: int = 0  # done records since the last reset (distinct when ``done_set`` was built)
    done_set: DoneSet | None = None  # with ``want_done``
    failed: dict[Any, Any] = field(default_factory=dict)  # ids of final failures not done since: their error
    failed_at: dict[int, Any] = field(default_factory=dict)  # positions of final failures not done since: error
    errors: dict[Any, dict[str, Any]] = field(default_factory=dict)  # the last run's distinct errors (their records)
    last_record_time: float | None = None
    heartbeat: dict[str, Any] | None = None  # the last ``workers`` record of the last run
    runs: list[RunRecord] = field(default_factory=list)
    bytes_done: int = 0
    done_in_run: int = 0  # done by the last run
    first_done_in_run: float | None = None
    last_done_time: float | None = None
    steps: dict[Any, dict[str, Any]] = field(default_factory=dict)  # unfinished tasks: their last stored step
    step_counts: dict[str, int] = field(default_factory=dict)  # steps done, by the name of the step
    children: int = 0  # tasks made by fan-outs
    _fanned: set[Any] = field(default_factory=set)

    @property
    def total(self) -> int | None:
        return self.start.get("total")

    @property
    def n_failed(self) -> int:
        return len(self.failed) + len(self.failed_at)

    def distinct_errors(self) -> list[dict[str, Any]]:
        """Each distinct error of the failed tasks once, with its count, the positions (as
        ranges) and ids of the tasks it ended, most frequent first (``failures.Error.describe``)."""
        from .failures import Ranges, last_line

        out: dict[Any, dict[str, Any]] = {}

        def group(k: Any) -> dict[str, Any]:
            g = out.get(k)
            if g is None:
                e = self.errors.get(k) or {}
                g = out[k] = {"error": last_line(e.get("error")) or str(k), "where": e.get("key", ""), "count": 0,
                              "first": e.get("id"), "positions": Ranges(), "ids": []}
            return g

        for seq in sorted(self.failed_at):
            g = group(self.failed_at[seq])
            g["count"] += 1
            g["positions"].add(seq)
        for tid, k in self.failed.items():
            g = group(k)
            g["count"] += 1
            g["ids"].append(tid)
        for g in out.values():
            g["positions"] = g["positions"].ranges
        return sorted(out.values(), key=lambda g: -g["count"])

    @property
    def ends(self) -> list[dict[str, Any]]:
        return [r.end for r in self.runs if r.end is not None]

    @property
    def last_run(self) -> RunRecord | None:
        return self.runs[-1] if self.runs else None


class _Loader:
    """Folds a journal's records into a ``State``, one method per record type."""

    def __init__(self, want_done: bool) -> None:
        self.st = State()
        self.want_done = want_done
        self.keys: array.array[int] = array.array("q")
        self.hashes: array.array[int] = array.array("I")
        self.positions: array.array[int] = array.array("q")  # of whole results
        self.ranges: list[tuple[int, int, int]] = []  # rows: (first position, count, hash)
        self.unplaced = 0

    def feed(self, rec: dict[str, Any]) -> None:
        t = rec.get("time") or rec.get("t")
        if t is not None:
            self.st.last_record_time = t
        handler = getattr(self, f"_on_{rec.get('ev')}", None)
        if handler is not None:
            handler(rec, t)

    def _on_done(self, rec: dict[str, Any], t: float | None) -> None:
        st, n = self.st, 0
        for tid, seq, h, _att, _rank, nbytes, _crc, _dur, _path in done_columns(rec):
            n += 1
            st.bytes_done += nbytes or 0
            if self.want_done:
                self.keys.append(id_key(tid))
                self.hashes.append(int(h) & 0xFFFFFFFF)
                if seq is not None and seq >= 0:
                    self.positions.append(seq)
                else:
                    self.unplaced += 1
            if st.failed_at and seq is not None:
                st.failed_at.pop(seq, None)
            if st.failed:
                st.failed.pop(tid, None)  # failed in an earlier run, done since
            if st.steps:
                st.steps.pop(tid, None)
        st.n_done += n
        st.done_in_run += n
        for name in rec.get("ran") or ():
            if name:
                st.step_counts[name] = st.step_counts.get(name, 0) + 1
        if st.runs:
            st.runs[-1].done += n
        if t is not None:
            st.first_done_in_run = st.first_done_in_run or t
            st.last_done_time = t

    def _on_rows(self, rec: dict[str, Any], t: float | None) -> None:
        st, n = self.st, 0
        hashes = rec.get("h") or [0] * len(rec["pos"])
        for (s0, k), h, nbytes in zip(rec["pos"], hashes, rec.get("bytes") or [0] * len(rec["pos"])):
            n += k
            st.bytes_done += nbytes or 0
            if self.want_done:
                self.ranges.append((s0, k, int(h) & 0xFFFFFFFF))
            if st.failed_at:  # failed in an earlier run, done since
                near = range(s0, s0 + k) if k < len(st.failed_at) else [x for x in st.failed_at if s0 <= x < s0 + k]
                for seq in near:
                    st.failed_at.pop(seq, None)
        st.n_done += n
        st.done_in_run += n
        if st.runs:
            st.runs[-1].done += n
        if t is not None:
            st.first_done_in_run = st.first_done_in_run or t
            st.last_done_time = t

    def _on_start(self, rec: dict[str, Any], t: float | None) -> None:
        st = self.st
        st.start = rec
        st.failed.clear()  # a resumed run tries them again
        st.failed_at.clear()
        st.errors.clear()
        st.runs.append(RunRecord(rec))
        st.heartbeat = None
        st.done_in_run = 0
        st.first_done_in_run = None

    def _on_source(self, rec: dict[str, Any], t: float | None) -> None:
        self.st.start["total"] = rec.get("total")  # (the run's record too: it holds the same dict)
        self.st.start["source"] = rec.get("source")

    def _on_error(self, rec: dict[str, Any], t: float | None) -> None:
        self.st.errors[rec["k"]] = rec

    def _on_failed(self, rec: dict[str, Any], t: float | None) -> None:
        if not rec.get("final", True):
            return
        st, n = self.st, 0
        if "err" in rec:  # a batch of one error's failures
            k = rec["err"]
            for s0, cnt in rec.get("pos") or ():
                for seq in range(s0, s0 + cnt):
                    st.failed_at[seq] = k
                n += cnt
            for tid in rec.get("id") or ():
                st.failed[tid] = k
                n += 1
        else:  # (an older journal: one record per failure, the whole error in it)
            from .failures import last_line

            k = "old: " + last_line(rec.get("error"))
            st.errors.setdefault(k, {"key": "", "error": rec.get("error"), "id": rec["id"]})
            st.failed[rec["id"]] = k
            n = 1
        if st.runs:
            st.runs[-1].failed += n

    def _on_workers(self, rec: dict[str, Any], t: float | None) -> None:
        self.st.heartbeat = rec

    def _on_fanout(self, rec: dict[str, Any], t: float | None) -> None:
        if rec["id"] not in self.st._fanned:  # a resumed run may fan the same task out again
            self.st._fanned.add(rec["id"])
            self.st.children += len(rec.get("children") or ())

    def _on_step(self, rec: dict[str, Any], t: float | None) -> None:
        self.st.steps[rec["id"]] = rec
        name = rec.get("ran") or "?"
        self.st.step_counts[name] = self.st.step_counts.get(name, 0) + 1

    def _on_reset(self, rec: dict[str, Any], t: float | None) -> None:
        self.st.steps.clear()
        self.st.n_done = self.st.bytes_done = 0
        self.keys, self.hashes = array.array("q"), array.array("I")
        self.positions, self.ranges, self.unplaced = array.array("q"), [], 0

    def _on_end(self, rec: dict[str, Any], t: float | None) -> None:
        if self.st.runs:
            self.st.runs[-1].end = rec

    def _on_stats(self, rec: dict[str, Any], t: float | None) -> None:
        if self.st.runs:
            self.st.runs[-1].stats[str(rec["rank"])] = {k: v for k, v in rec.items() if k != "ev"}


def load_state(path: str | os.PathLike[str], *, want_done: bool = False) -> State:
    """Read a whole journal, streamed. ``want_done`` also builds the set of done ids (for a resume)."""
    loader = _Loader(want_done)
    for rec in read_records(path):
        loader.feed(rec)
    st = loader.st
    if want_done:
        st.done_set = DoneSet(np.frombuffer(loader.keys, dtype=np.int64),
                              np.frombuffer(loader.hashes, dtype=np.uint32),
                              np.frombuffer(loader.positions, dtype=np.int64), loader.ranges, loader.unplaced)
        st.n_done = len(st.done_set)
    return st
