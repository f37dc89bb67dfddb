"""The writer: records appended to ``OUT.journal``, buffered, and made durable by ``commit()``
(one fsync per batch of completions: group commit); a torn tail is cut before appending."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

SUFFIX = ".journal"
_DUMPS = json.JSONEncoder(separators=(",", ":"), default=str).encode


def journal_path(out: str | os.PathLike[str]) -> Path:
    p = Path(out)
    return p.with_name(p.name.rstrip("/") + SUFFIX)

def now() -> float:
    return time.time()

class Journal:
    """Writer side: the master's loop writes its records, and its committer thread writes the
    done records of a batch it made durable and fsyncs (``commit``); a lock keeps each record
    whole and the pending failures consistent, and the fsync itself runs outside it."""

    def __init__(self, path: str | os.PathLike[str], *, resume: bool = False) -> None:
        self.path = Path(path)
        if resume and self.path.exists():
            _cut_torn_tail(self.path)
        self._f = open(self.path, "ab", buffering=1 << 20)
        self._lock = threading.RLock()
        self._dirty = False
        self.n_commits = 0
        self._failed: dict[tuple[int, bool], tuple[list[list[int]], list[Any]]] = {}  # not yet written

    def _write(self, rec: dict[str, Any]) -> None:
        line = _DUMPS(rec).encode() + b"\n"
        with self._lock:
            self._f.write(line)
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
        """Rows of the table that the sink made durable (``sinks.table_base.RowsDone``), as one record:
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
        with self._lock:
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
        with self._lock:
            if not self._failed:
                return
            batch, self._failed = self._failed, {}
            self._write_batch(batch)

    def _write_batch(self, batch: dict[tuple[int, bool], tuple[list[list[int]], list[Any]]]) -> None:
        for (k, final), (pos, ids) in batch.items():
            rec: dict[str, Any] = {"ev": "failed", "err": k, "final": final}
            if pos:
                rec["pos"] = _merged(pos)
            if ids:
                rec["id"] = ids
            self._write(rec)

    def workers(self, part: dict[str, Any], running: int, queued: int, done: int,
                failed: int, by_step: dict[str, list[int]] | None = None) -> None:
        """The master's heartbeat; flushed to the file system (not fsynced) so that status sees it.
        ``part``: its workers, as ``workerstats.heartbeat`` gives them (bounded above 16 workers)."""
        self._write_failed()
        rec = {"ev": "workers", "time": round(now(), 3), "running": running, "queued": queued,
               "done": done, "failed": failed, **part}
        if by_step:
            rec["steps"] = by_step
        with self._lock:
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

    def fleet(self, summary: dict[str, Any]) -> None:
        """The workers' totals, percentiles, outliers and profiles (``workerstats.summarise``)."""
        self._write({"ev": "fleet", **summary})

    def end(self, **info: Any) -> None:
        self._write_failed()
        self._write({"ev": "end", "time": round(now(), 3), **info})

    # -- durability -----------------------------------------------------------------------

    def commit(self) -> bool:
        """Make every record written so far durable. Returns False when there was nothing to do.
        (Records written by another thread during the fsync wait for the next commit.)"""
        with self._lock:
            if not self._dirty:
                return False
            self._write_failed()
            self._f.flush()
            self._dirty = False
            self.n_commits += 1
        os.fsync(self._f.fileno())
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
