"""Append-only journal of task states: the record that makes a run resumable and observable.

One JSON object per line, in a file next to the output (``OUT.journal``). A task is
written as done only after its data is on disk. Lines are buffered and made durable by
``commit()``: one fsync covers every record since the previous one (group commit), so
durability costs one fsync per batch of completions, not one per task.

Record types (key ``ev``): ``start`` (run parameters), ``dispatch`` (ids sent to a rank),
``done`` (id, attempt, rank, bytes, crc, duration, path), ``failed`` (id, attempt, rank,
error, final), ``end`` (how the run ended), ``stats`` (per-rank time accounting).
A torn last line (the job was killed mid-write) is ignored and cut off before appending.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUFFIX = ".journal"


def journal_path(out: str | os.PathLike[str]) -> Path:
    p = Path(out)
    return p.with_name(p.name.rstrip("/") + SUFFIX)


class Journal:
    """Writer side. Not thread-safe; only the master writes it."""

    def __init__(self, path: str | os.PathLike[str], *, resume: bool = False) -> None:
        self.path = Path(path)
        if resume and self.path.exists():
            _cut_torn_tail(self.path)
        self._f = open(self.path, "ab", buffering=1 << 20)
        self._dirty = False
        self.n_commits = 0

    def write(self, rec: dict[str, Any]) -> None:
        self._f.write(json.dumps(rec, separators=(",", ":"), default=str).encode() + b"\n")
        self._dirty = True

    def done(self, tid: Any, attempt: int, rank: int, nbytes: int, crc: int, duration: float, path: str | None) -> None:
        rec = {"ev": "done", "id": tid, "att": attempt, "rank": rank, "bytes": nbytes, "crc": crc,
               "dur": round(duration, 6), "t": round(time.time(), 3)}
        if path is not None:
            rec["path"] = path
        self.write(rec)

    def commit(self) -> bool:
        """Make every record written so far durable. Returns False when there was nothing to do."""
        if not self._dirty:
            return False
        self._f.flush()
        os.fsync(self._f.fileno())
        self._dirty = False
        self.n_commits += 1
        return True

    def close(self) -> None:
        if not self._f.closed:
            self.commit()
            self._f.close()


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
    """Every complete record of a journal; a torn or corrupt last line is skipped."""
    with open(path, "rb") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.endswith(b"\n"):
            break  # torn tail
        try:
            rec = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"journal {path}, line {i + 1}: corrupt record") from None
        yield rec


@dataclass
class State:
    """What a journal says about a run: the basis of ``--resume`` and ``status``."""

    start: dict[str, Any] = field(default_factory=dict)
    done: dict[Any, dict[str, Any]] = field(default_factory=dict)
    failed: dict[Any, dict[str, Any]] = field(default_factory=dict)
    running: dict[Any, int] = field(default_factory=dict)  # id -> rank
    ends: list[dict[str, Any]] = field(default_factory=list)
    stats: list[dict[str, Any]] = field(default_factory=list)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)  # rank -> state, seen_ago, task
    workers_time: float | None = None
    first_time: float | None = None
    done_times: list[float] = field(default_factory=list)
    bytes_done: int = 0
    runs: int = 0

    @property
    def total(self) -> int | None:
        return self.start.get("total")


def load_state(path: str | os.PathLike[str]) -> State:
    st = State()
    for rec in read_records(path):
        ev = rec.get("ev")
        if ev == "start":
            st.runs += 1
            st.start = rec
            st.running.clear()  # whatever ran before a restart did not finish
            st.first_time = st.first_time or rec.get("time")
        elif ev == "dispatch":
            for tid in rec["ids"]:
                if tid not in st.done:
                    st.running[tid] = rec["rank"]
        elif ev == "done":
            tid = rec["id"]
            if tid not in st.done:
                st.bytes_done += rec.get("bytes", 0)
                if "t" in rec:
                    st.done_times.append(rec["t"])
            st.done[tid] = rec
            st.failed.pop(tid, None)
            st.running.pop(tid, None)
        elif ev == "failed":
            tid = rec["id"]
            st.running.pop(tid, None)
            if rec.get("final", True) and tid not in st.done:
                st.failed[tid] = rec
        elif ev == "end":
            st.ends.append(rec)
            st.running.clear()
        elif ev == "stats":
            st.stats.append(rec)
        elif ev == "workers":
            st.workers, st.workers_time = rec["table"], rec["time"]
    return st


def now() -> float:
    return time.time()
