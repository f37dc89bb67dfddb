"""Replaying a journal: its records folded into a ``State`` (``load_state``), one method per
record type; the basis of ``--resume``, ``status`` and ``report``."""

from __future__ import annotations

import array
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .doneset import DoneSet, id_key
from .records import HEARTBEAT_PREFIX, done_columns, read_records


@dataclass
class RunRecord:
    """One run of a journal (a start record to the next)."""

    start: dict[str, Any]
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    fleet: dict[str, Any] | None = None  # the ``fleet`` record (newer journals)
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
        from ..failures import Ranges, last_line

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
        self.heartbeat_line: bytes | None = None  # the last heartbeat, parsed at the end

    def finish(self) -> None:
        """Parse the last heartbeat of the last run (a long run writes one a second: status reads one)."""
        if self.heartbeat_line is not None:
            try:
                rec = json.loads(self.heartbeat_line)
            except ValueError:  # a damaged line: as if there were no heartbeat
                return
            self.heartbeat_line = None
            self.st.heartbeat = rec
            t = rec.get("time")
            if t is not None and (self.st.last_record_time is None or t > self.st.last_record_time):
                self.st.last_record_time = t

    def feed(self, rec: dict[str, Any]) -> None:
        if "raw" in rec and rec.get("ev") is None:  # a heartbeat: only the last one of the run counts
            self.heartbeat_line = rec["raw"]
            return
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
        self.heartbeat_line = None
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
            from ..failures import last_line

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

    def _on_fleet(self, rec: dict[str, Any], t: float | None) -> None:
        if self.st.runs:
            self.st.runs[-1].fleet = {k: v for k, v in rec.items() if k != "ev"}

    def _on_stats(self, rec: dict[str, Any], t: float | None) -> None:
        if self.st.runs:
            self.st.runs[-1].stats[str(rec["rank"])] = {k: v for k, v in rec.items() if k != "ev"}

def load_state(path: str | os.PathLike[str], *, want_done: bool = False) -> State:
    """Read a whole journal, streamed. ``want_done`` also builds the set of done ids (for a resume)."""
    loader = _Loader(want_done)
    for rec in read_records(path, lazy=HEARTBEAT_PREFIX):
        loader.feed(rec)
    loader.finish()
    st = loader.st
    if want_done:
        st.done_set = DoneSet(np.frombuffer(loader.keys, dtype=np.int64),
                              np.frombuffer(loader.hashes, dtype=np.uint32),
                              np.frombuffer(loader.positions, dtype=np.int64), loader.ranges, loader.unplaced)
        st.n_done = len(st.done_set)
    return st
