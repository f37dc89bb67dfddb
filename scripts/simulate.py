#!/usr/bin/env python
"""Drive the real master with thousands of simulated workers, in one process.

The master is mpigather's own (``api.run_on`` on rank 0: the loop, the scheduler, the sinks,
the journal and its heartbeat records, the lock), unchanged. Its ``Link`` is ``SimLink``: the
N workers behind it are a heap of timed events, not threads. When the master hands a worker
``Tasks``, that worker's next task ends at now + a drawn duration (wall time, so the master's
real cost per result is what is measured); it then answers as ``worker.py`` does: a ``Hello``
first, results as table ``Rows``, inline ``Item``s or a streamed ``Item`` with its raw chunks
and ``Trailer`` (encoded with mpigather's own ``results`` and ``table`` functions), batched
and flushed by the worker's rules, ``Heartbeat``s during long tasks, ``Revoked`` answers,
and a ``Bye`` with its time accounting and spans on ``Stop`` or ``Abort``.

The simulator's own CPU (drawing durations, building and pickling the workers' messages,
unpickling and handling the master's) is timed with the thread CPU clock around each of its
entry points and subtracted from the process's CPU time: ``master_cpu_us_per_result`` is the
rest (the master's loop, unpickling and storing results, its committer and write threads).
Receiving a streamed chunk counts as the master's (a memcpy into its buffer, as MPI's
receive is). Peak RSS is the whole process's; ``sim_rss_mib`` is what it was before the
master started (imports and the simulated workers).

Usage: python scripts/simulate.py --workers N --tasks M --task-seconds T [--result-bytes B]
       [--out PATH|none] [--seed S] [--interrupt-after S] [--profile FILE]
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import pickle
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's mpigather, whatever the venv has installed

from mpigather import messages as M  # noqa: E402
from mpigather import results as R  # noqa: E402
from mpigather import signals  # noqa: E402
from mpigather import table_schema as T  # noqa: E402
from mpigather.api import run_on  # noqa: E402
from mpigather.config import make_options  # noqa: E402
from mpigather.journal import journal_path  # noqa: E402
from mpigather.master.core import peak_rss_mib  # noqa: E402
from mpigather.tasks import source_of  # noqa: E402
from mpigather.workerstats import SpanLog  # noqa: E402

# what worker.py uses (kept equal by hand: the simulated workers follow its rules)
FLUSH_BYTES = 1 << 20
SPANS_KEPT = 5000
HELPER_LAG = 0.0005  # seconds: a worker's helper thread notices an aged batch within about this
_HIGHEST = pickle.HIGHEST_PROTOCOL
_EV_HELLO, _EV_DONE, _EV_FLUSH, _EV_HB = range(4)
_STAMP = 8  # the first bytes of an array result hold its task id


# -- what each task returns (the test imports these to check what was stored) ----------------


def record_value(t: int, seed: int) -> dict[str, Any]:
    """A small record: a table row of three columns."""
    return {"i": t, "x": ((t * 2654435761 + seed) % 1000003) / 1000003.0, "ok": t % 3 == 0}


_bases: dict[tuple[int, int], np.ndarray] = {}


def _base(nbytes: int, seed: int) -> np.ndarray:
    key = (nbytes, seed)
    b = _bases.get(key)
    if b is None:
        b = _bases[key] = np.random.default_rng(seed).integers(0, 256, nbytes + 251, dtype=np.uint8)
    return b


def array_value(t: int, nbytes: int, seed: int) -> np.ndarray:
    """A raw uint8 array of ``nbytes``: a seeded pattern shifted by the task id, which its first
    8 bytes also hold (little-endian)."""
    s = t % 251
    a = _base(nbytes, seed)[s : s + nbytes].copy()
    k = min(_STAMP, nbytes)
    a[:k] = np.array([t], dtype="<i8").view(np.uint8)[:k]
    return a


def expected(t: int, result_bytes: int, seed: int) -> Any:
    """What task ``t`` returned in a run with these options."""
    return record_value(t, seed) if result_bytes <= 0 else array_value(t, result_bytes, seed)


# -- the messages the master receives ---------------------------------------------------------


class _Msg:
    """A pickled control message from a simulated worker (``Incoming``)."""

    __slots__ = ("source", "tag", "count", "_payload", "res")

    def __init__(self, source: int, payload: bytes, res: bool) -> None:
        self.source, self.tag, self.count = source, M.CTRL, len(payload)
        self._payload, self.res = payload, res

    def obj(self) -> Any:
        return pickle.loads(self._payload)

    def into(self, buf: Any) -> None:
        raise RuntimeError("a control message has no raw bytes")


class _Chunk:
    """A raw chunk of a streamed array result: its bytes are made when the master receives it."""

    __slots__ = ("source", "tag", "count", "_sim", "_w", "_tid", "_off", "_last", "res")

    def __init__(self, sim: SimLink, w: _Worker, tid: int, off: int, n: int, last: bool) -> None:
        self.source, self.tag, self.count = w.rank, M.DATA, n
        self._sim, self._w, self._tid, self._off, self._last = sim, w, tid, off, last
        self.res = True

    def obj(self) -> Any:
        raise RuntimeError("a raw chunk has no object")

    def into(self, buf: Any) -> None:
        sim, n, off, t = self._sim, self.count, self._off, self._tid
        dst = np.frombuffer(buf, dtype=np.uint8)
        s = t % 251
        dst[:n] = sim.base[s + off : s + off + n]  # the receive's copy: the master's cost, as with MPI
        if off < _STAMP:
            k = min(_STAMP, sim.result_bytes) - off
            if k > 0:
                dst[: min(k, n)] = np.array([t], dtype="<i8").view(np.uint8)[off : off + min(k, n)]
        if self._last:
            c0 = time.thread_time()
            sim._stream_sent(self._w, t)
            sim.sim_cpu += time.thread_time() - c0


# -- the simulated workers -----------------------------------------------------------------------


class _Local:
    """A leased block as the worker holds it (worker._Local)."""

    __slots__ = ("bid", "attempt", "tids", "next", "end")

    def __init__(self, blk: M.Block) -> None:
        self.bid, self.attempt, self.tids = blk.bid, blk.attempt, blk.tids
        self.next, self.end = 0, len(blk.tids)


class _Rows:
    """Consecutive table rows of one block, gathered until the batch is sent (worker._RowsAcc)."""

    __slots__ = ("bid", "start", "tid0", "attempt", "rows", "durations", "match", "next")

    def __init__(self, bid: int, start: int, tid0: Any, attempt: int, schema: Any) -> None:
        self.bid, self.start, self.tid0, self.attempt = bid, start, tid0, attempt
        self.rows = T.RowsBuilder(schema)
        self.durations: list[float] = []
        self.match = T.matcher(schema)
        self.next = start

    def message(self) -> M.Rows:
        cols = self.rows.columns()
        return M.Rows(self.bid, self.start, self.rows.n, self.tid0, self.attempt, self.rows.schema, cols,
                      T.checksum(cols), np.array(self.durations, dtype=np.float32), None, None)


class _Worker:
    __slots__ = ("rank", "host", "queue", "waiting", "running", "token", "stopping", "gone", "streaming",
                 "pending", "pending_bytes", "pending_since", "fgen", "rows", "compute", "tasks", "nbytes",
                 "idle", "idle_since", "start", "spans")

    def __init__(self, rank: int, host: str) -> None:
        self.rank, self.host = rank, host
        self.queue: deque[_Local] = deque()
        self.waiting = 0  # tasks queued, not started
        self.running: tuple[_Local, int, float, float] | None = None  # block, index, start, duration
        self.token = 0  # bumped when the running task is dropped: its end event is then stale
        self.stopping = self.gone = self.streaming = False
        self.pending: list[Any] = []
        self.pending_bytes = 0
        self.pending_since = 0.0
        self.fgen = 0  # bumped at each flush: an aged-batch check of an earlier batch is stale
        self.rows: _Rows | None = None
        self.compute = self.idle = 0.0
        self.tasks = self.nbytes = 0
        self.idle_since: float | None = None
        self.start = 0.0
        self.spans = SpanLog(SPANS_KEPT)  # as a real worker keeps them (times from its start)
        self.spans.origin = 0.0  # (the real worker's origin is its start, and its spans' times are from 0 too)


class SimLink:
    """Rank 0's ``Link`` to ``n`` simulated workers (ranks 1..n)."""

    survives_failures = False
    in_process = True  # no other process to abort: the run's end is the simulator's

    def __init__(self, n: int, *, task_seconds: float, dist: str = "exp", result_bytes: int = 0,
                 seed: int = 0, chunk_size: int, inline_max: int, batch_window: float, heartbeat: float,
                 per_node: int = 64, hello_spread: float = 0.0) -> None:
        self.rank, self.size = 0, n + 1
        self.host = socket.gethostname()
        self.task_seconds, self.dist = task_seconds, dist
        self.result_bytes, self.seed = result_bytes, seed
        self.chunk_size, self.inline_max = chunk_size, inline_max
        self.flush_age = batch_window / 2
        self.heartbeat = heartbeat
        self.hello_spread = hello_spread
        self._rng = random.Random(seed)
        self.workers = [_Worker(r, f"node{(r - 1) // per_node:05d}") for r in range(1, n + 1)]
        self._heap: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self._out: deque[Any] = deque()
        self.base = _base(result_bytes, seed) if result_bytes > 0 else np.zeros(0, np.uint8)
        self._stream_header: R.Header | None = None
        if result_bytes > inline_max:
            self._stream_header = R.encode(np.zeros(result_bytes, np.uint8), with_crc=False)[0]
        # measurements
        self.sim_cpu = 0.0
        self.cpu_first = self.cpu_last = self.sim_cpu_first = self.sim_cpu_last = 0.0  # at the first and last result
        self.launched: float | None = None
        self.first_task: float | None = None
        self.first_result: float | None = None
        self.last_result: float | None = None
        self.max_backlog = 0
        self.messages_in = self.messages_out = 0
        self.byes = 0

    # -- the Link interface (what the master calls) ------------------------------------------

    def start(self) -> None:
        """Launch: every worker says hello now (or spread over ``hello_spread`` seconds)."""
        now = time.monotonic()
        self.launched = now
        for w in self.workers:
            t = now + (self._rng.random() * self.hello_spread if self.hello_spread > 0 else 0.0)
            self._push(t, _EV_HELLO, w.rank, 0)

    def poll(self, source: int | None = None) -> Any:
        out = self._out
        if not out:
            heap = self._heap
            if not heap or heap[0][0] > time.monotonic():
                return None
            c0 = time.thread_time()
            self._advance()
            self.sim_cpu += time.thread_time() - c0
            if not out:
                return None
        if source is not None:  # (the master polls any source)
            for k, m in enumerate(out):
                if m.source == source:
                    del out[k]
                    return m
            return None
        m = out.popleft()
        if m.res:
            self.last_result = time.monotonic()
            self.cpu_last, self.sim_cpu_last = time.process_time(), self.sim_cpu
            if self.first_result is None:
                self.first_result = self.last_result
                self.cpu_first, self.sim_cpu_first = self.cpu_last, self.sim_cpu
        return m

    def send(self, obj: Any, dest: int, tag: int) -> None:
        data = pickle.dumps(obj, protocol=_HIGHEST)  # the master's cost: MPI pickles it too
        c0 = time.thread_time()
        self.messages_out += 1
        self._deliver(dest, pickle.loads(data), time.monotonic())
        self.sim_cpu += time.thread_time() - c0

    def post(self, obj: Any, dest: int, tag: int, limit: int | None = None) -> None:
        self.send(obj, dest, tag)

    def progress(self) -> int:
        return 0

    def flush(self, timeout: float = 30.0) -> bool:
        return True

    def send_bufs(self, bufs: Any, dest: int = 0, tag: int = 12, window: int = 2, on_posted: Any = None) -> None:
        raise NotImplementedError("the master sends no raw buffers")

    def gather(self, obj: Any) -> list[Any] | None:
        raise NotImplementedError("no collectives in a simulated run")

    def bcast(self, obj: Any) -> Any:
        raise NotImplementedError("no collectives in a simulated run")

    def abort(self, code: int) -> None:
        raise SystemExit(code)

    def close(self) -> None:
        pass

    # -- events ----------------------------------------------------------------------------------

    def _push(self, t: float, kind: int, rank: int, token: int) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, rank, token))

    def _emit(self, w: _Worker, msg: Any, res: bool = False) -> None:
        self.messages_in += 1
        self._out.append(_Msg(w.rank, pickle.dumps(msg, protocol=_HIGHEST), res))

    def _advance(self) -> None:
        """Every event due by now, in time order; each acts at its own time."""
        heap, now = self._heap, time.monotonic()
        workers = self.workers
        while heap and heap[0][0] <= now:
            t, _, kind, rank, token = heapq.heappop(heap)
            w = workers[rank - 1]
            if w.gone:
                continue
            if kind == _EV_DONE:
                if token == w.token and w.running is not None:
                    self._task_done(w, t)
            elif kind == _EV_FLUSH:
                if token == w.fgen and w.pending and t - w.pending_since > self.flush_age:
                    self._flush(w)
            elif kind == _EV_HB:
                if token == w.token and w.running is not None:
                    b, i, t0, _ = w.running
                    self._emit(w, M.Heartbeat(b.tids[i], t - t0))
                    self._push(t + self.heartbeat, _EV_HB, w.rank, token)
            else:
                w.start = w.idle_since = t
                self._emit(w, M.Hello(w.host, 100000 + w.rank, ()))
        if len(self._out) > self.max_backlog:
            self.max_backlog = len(self._out)

    def _duration(self) -> float:
        m, rng = self.task_seconds, self._rng
        if m <= 0:
            return 0.0
        if self.dist == "const":
            return m
        if self.dist == "uniform":  # from m/2 to 3m/2
            return m * (0.5 + rng.random())
        if self.dist == "lognormal":  # sigma 0.5, mean m
            return rng.lognormvariate(math.log(m) - 0.125, 0.5)
        return rng.expovariate(1.0 / m)

    def _start_next(self, w: _Worker, at: float) -> None:
        q = w.queue
        while q:
            b = q[0]
            if b.next < b.end:
                i = b.next
                b.next += 1
                w.waiting -= 1
                dur = self._duration()
                w.token += 1
                w.running = (b, i, at, dur)
                if w.idle_since is not None:
                    w.idle += at - w.idle_since
                    w.idle_since = None
                self._push(at + dur, _EV_DONE, w.rank, w.token)
                if dur > self.heartbeat:
                    self._push(at + self.heartbeat, _EV_HB, w.rank, w.token)
                return
            q.popleft()
        w.running = None
        if w.stopping:
            self._leave(w, at)
        elif w.idle_since is None:
            w.idle_since = at

    def _deliver(self, dest: int, msg: Any, now: float) -> None:
        """A message from the master reaches worker ``dest`` (worker._handle)."""
        w = self.workers[dest - 1]
        if w.gone:
            return
        match msg:
            case M.Tasks(blocks):
                if self.first_task is None:
                    self.first_task = now
                for blk in blocks:
                    w.queue.append(_Local(blk))
                    w.waiting += len(blk.tids)
                if w.running is None and not w.streaming:
                    self._start_next(w, now)
            case M.Revoke(cuts, ack):
                answer = self._revoke(w, cuts)
                if ack:
                    self._flush(w)  # results first: the master must see them before the ack
                    self._emit(w, M.Revoked(answer))
            case M.Stop():
                w.stopping = True
                if w.running is None and not w.streaming:
                    self._start_next(w, now)  # (the queue is empty: it leaves)
            case M.Abort(_reason, interrupted):
                w.queue.clear()
                w.waiting = 0
                w.stopping = True
                if interrupted and w.running is not None:  # its Ctrl-C ends the task too (mpiexec forwards it)
                    w.token += 1
                    w.running = None
                if w.running is None and not w.streaming:
                    self._leave(w, now)
            case _:
                raise TypeError(f"unexpected message from the master: {msg!r}")

    @staticmethod
    def _revoke(w: _Worker, cuts: list[tuple[int, int]]) -> list[tuple[int, int | None]]:
        answer: list[tuple[int, int | None]] = []
        where = {b.bid: b for b in w.queue}
        for bid, k in cuts:
            b = where.get(bid)
            k = max(k, b.next) if b is not None else k
            if b is None or k >= b.end:
                answer.append((bid, None))
                continue
            w.waiting -= b.end - k
            b.end = k
            answer.append((bid, k))
        if any(b.next >= b.end for b in w.queue):
            w.queue = deque(b for b in w.queue if b.next < b.end)
        return answer

    # -- results -----------------------------------------------------------------------------------

    def _task_done(self, w: _Worker, t: float) -> None:
        assert w.running is not None
        b, i, t0, dur = w.running
        w.running = None
        tid = b.tids[i]
        w.compute += dur
        w.tasks += 1
        w.spans.append((str(tid), t0 - w.start, dur, "done", "task"))
        nb = self.result_bytes
        if nb <= T.ARRAY_MAX:  # a record, or an array small enough for a table row
            self._row(w, b, i, record_value(tid, self.seed) if nb <= 0 else array_value(tid, nb, self.seed), dur, t)
            w.nbytes += max(nb, 0)
        elif nb <= self.inline_max:
            header, bufs = R.encode(array_value(tid, nb, self.seed))
            self._queue(w, M.Item(b.bid, i, tid, b.attempt, header, dur, [bytearray(x) for x in bufs], None), nb, t)
            w.rows = None
            w.nbytes += nb
            self._maybe_flush(w, dur, t)
        else:
            self._stream(w, b, i, tid, dur, t)
            return  # the next task starts once the master took the last chunk
        self._start_next(w, t)

    def _row(self, w: _Worker, b: _Local, i: int, value: Any, dt: float, t: float) -> None:
        acc = w.rows
        if acc is not None and acc.next == i and acc.bid == b.bid:
            leaves = acc.match(value)
            if leaves is not None:
                acc.rows.rows.append(leaves)
                acc.durations.append(dt)
                acc.next = i + 1
                w.pending_bytes += 16 * len(leaves)
                self._maybe_flush(w, dt, t)
                return
        schema = T.schema_of(value, True)  # (a record, or an array in a run with table=True)
        assert schema is not None
        acc = _Rows(b.bid, i, b.tids[i], b.attempt, schema)
        acc.rows.add(T.leaves_of(value, schema))  # type: ignore[arg-type]
        acc.durations.append(dt)
        acc.next = i + 1
        self._queue(w, acc, 16 * len(schema[1]), t)
        w.rows = acc
        self._maybe_flush(w, dt, t)

    def _stream(self, w: _Worker, b: _Local, i: int, tid: int, dur: float, t: float) -> None:
        header = self._stream_header
        assert header is not None
        w.rows = None
        self._queue(w, M.Item(b.bid, i, tid, b.attempt, header, dur, None, None), 0, t)
        self._flush(w)
        w.streaming = True
        w.nbytes += self.result_bytes
        plan = R.chunk_plan(header, self.chunk_size)
        for k, (_part, off, n) in enumerate(plan):
            self._out.append(_Chunk(self, w, tid, off, n, k == len(plan) - 1))

    def _stream_sent(self, w: _Worker, tid: int) -> None:
        """The master took the last chunk: the trailer follows, and the worker goes on."""
        nb = self.result_bytes
        s, k = tid % 251, min(_STAMP, nb)
        crc = R.crc_update(0, np.array([tid], dtype="<i8").view(np.uint8)[:k])
        crc = R.crc_update(crc, self.base[s + k : s + nb])
        self._emit(w, M.Trailer(tid, crc), res=True)
        w.streaming = False
        if not w.gone:
            self._start_next(w, time.monotonic())

    def _queue(self, w: _Worker, item: Any, nbytes: int, t: float) -> None:
        if not w.pending:
            w.pending_since = t
            self._push(t + self.flush_age + HELPER_LAG, _EV_FLUSH, w.rank, w.fgen)
        w.pending.append(item)
        w.pending_bytes += nbytes

    def _maybe_flush(self, w: _Worker, dt: float, t: float) -> None:
        if (w.waiting <= 0 or dt > self.flush_age or w.pending_bytes > FLUSH_BYTES
                or t - w.pending_since > self.flush_age):
            self._flush(w)

    def _flush(self, w: _Worker) -> None:
        if w.pending:
            items = [x.message() if type(x) is _Rows else x for x in w.pending]
            w.pending, w.pending_bytes, w.rows = [], 0, None
            w.fgen += 1
            self._emit(w, M.Results(items), res=True)

    def _leave(self, w: _Worker, t: float) -> None:
        self._flush(w)
        if w.idle_since is not None:
            w.idle += t - w.idle_since
            w.idle_since = None
        stats = {"compute": w.compute, "send": 0.0, "idle": w.idle, "tasks": w.tasks, "bytes": w.nbytes,
                 "wall": t - w.start, "host": w.host, **w.spans.export(0.0, len(self.workers))}
        self._emit(w, M.Bye(stats))
        w.gone = True
        w.spans = SpanLog(SPANS_KEPT)
        self.byes += 1


# -- the run ------------------------------------------------------------------------------------


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20), 1)
    except OSError:
        return 0.0


def _probe_status(out: str, sim: SimLink, after: float, done: threading.Event, box: dict[str, Any]) -> None:
    """``mpigather status OUT --json`` from another process while the run is live: how long it takes."""
    if done.wait(after):
        box["status_s"] = None
        box["status_error"] = f"the run ended before the probe, {after} s after the launch"
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, "-m", "mpigather", "status", out, "--json"], capture_output=True,
                           text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        box["status_s"] = None
        box["status_error"] = "timed out after 120 s"
        return
    box["status_s"] = round(time.monotonic() - t0, 3)
    box["status_bytes"] = len(p.stdout)
    box["status_live"] = not done.is_set()
    if p.returncode not in (0, 1):
        box["status_error"] = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    else:
        try:
            box["status_state"] = json.loads(p.stdout).get("state")
        except ValueError:
            box["status_error"] = "not JSON"


def simulate(args: argparse.Namespace) -> dict[str, Any]:
    opts = make_options(progress="off", chunk_size=args.chunk_size, prefetch=args.prefetch,
                        heartbeat=args.heartbeat, batch_window=args.batch_window, timeout=args.timeout,
                        overwrite=args.overwrite or None,
                        # arrays small enough for a row travel as rows, as in a run that asks for a table of arrays
                        table=0 < args.result_bytes <= T.ARRAY_MAX or None)
    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="mpigather-sim-")
        out: str | None = os.path.join(tmp, "sim.h5")
    else:
        out = None if args.out == "none" else args.out
    sim = SimLink(args.workers, task_seconds=args.task_seconds, dist=args.dist, result_bytes=args.result_bytes,
                  seed=args.seed, chunk_size=opts.chunk_size, inline_max=opts.inline_max,
                  batch_window=opts.batch_window, heartbeat=opts.heartbeat, per_node=args.per_node,
                  hello_spread=args.hello_spread)
    source = source_of(range(args.tasks))
    signals.reset()
    old = signals.install(master=True)
    done = threading.Event()
    box: dict[str, Any] = {}
    threads = []
    if out is not None and args.status_after is not None and args.status_after >= 0:
        th = threading.Thread(target=_probe_status, args=(out, sim, args.status_after, done, box), daemon=True)
        threads.append(th)
    kill_at: list[float] = []
    if args.interrupt_after is not None:
        def interrupt() -> None:
            if not done.wait(args.interrupt_after):
                kill_at.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGINT)  # the master's own handler, as a Ctrl-C gives it
        threads.append(threading.Thread(target=interrupt, daemon=True))
    prof = None
    if args.profile:
        import cProfile

        # the main thread's CPU time, not wall time: a busy machine does not blur the profile
        prof = cProfile.Profile(time.thread_time)
    masters: list[Any] = []  # the Master object, to read what it left behind
    rss0 = _rss_mib()
    cpu0 = time.process_time()
    sim.start()
    for th in threads:
        th.start()
    try:
        if prof is not None:
            prof.enable()
        summary = run_on(sim, _never, source, out, opts, total=args.tasks, hooks={"master": masters.append})
    finally:
        if prof is not None:
            prof.disable()
        t_exit = time.monotonic()
        cpu_exit = time.process_time()
        cpu = cpu_exit - cpu0
        done.set()
        signals.restore(old)
    for th in threads:
        th.join(130)
    assert summary is not None and sim.launched is not None
    t_text = time.monotonic()
    text = summary.text()  # what the command line prints at the end
    text_s = time.monotonic() - t_text
    n = summary.done
    master_cpu = cpu - sim.sim_cpu
    busy = sum(w.compute for w in sim.workers)
    span = (sim.last_result or t_exit) - sim.launched
    steady_cpu, steady_sim = sim.cpu_last - sim.cpu_first, sim.sim_cpu_last - sim.sim_cpu_first
    res: dict[str, Any] = {
        "workers": args.workers, "tasks": args.tasks, "done": n, "failed": len(summary.failed),
        "seconds": round(t_exit - sim.launched, 3),
        "master_cpu_us_per_result": round(1e6 * master_cpu / max(n, 1), 1),
        # from the first result to the last: the loop at work, without the start and the end
        "master_cpu_us_per_result_steady": round(1e6 * (steady_cpu - steady_sim) / max(n - 1, 1), 1),
        "master_cpu_s": round(master_cpu, 3), "sim_cpu_s": round(sim.sim_cpu, 3),
        "master_rss_mib": peak_rss_mib(),
        "sim_rss_mib": rss0,
        "start_s": None if sim.first_task is None else round(sim.first_task - sim.launched, 3),
        "first_result_s": None if sim.first_result is None else round(sim.first_result - sim.launched, 3),
        "end_s": None if sim.last_result is None else round(t_exit - sim.last_result, 3),
        # CPU seconds of that end, the master's and the simulated workers' goodbyes (a busy machine
        # stretches end_s; these it does not)
        "end_master_cpu_s": None if sim.last_result is None else
        round(cpu_exit - sim.cpu_last - (sim.sim_cpu - sim.sim_cpu_last), 3),
        "end_sim_cpu_s": None if sim.last_result is None else round(sim.sim_cpu - sim.sim_cpu_last, 3),
        "journal_bytes": os.path.getsize(journal_path(out)) if out is not None and journal_path(out).exists() else 0,
        "out_bytes": os.path.getsize(out) if out is not None and os.path.isfile(out) else None,
        "results_per_s": round(n / max(span, 1e-9), 1),
        "worker_busy": round(busy / max(args.workers * span, 1e-9), 3),
        "task_seconds": args.task_seconds, "result_bytes": args.result_bytes, "dist": args.dist,
        "max_backlog": sim.max_backlog, "messages_in": sim.messages_in, "messages_out": sim.messages_out,
        "byes": sim.byes, "exit_code": summary.exit_code, "summary_text_s": round(text_s, 4),
        "summary_text_lines": text.count("\n") + 1, "out": out,
    }
    res.update(box)
    if kill_at:
        res["ctrlc_s"] = round(t_exit - kill_at[0], 3)
        res["interrupted"] = summary.ctrl_c
        # workers whose goodbye the master had not handled when it gave up waiting (an MPI run then aborts)
        res["unreleased"] = len(masters[0].unreleased) if masters else None
    if prof is not None:
        prof.dump_stats(args.profile)
        res["profile"] = args.profile
    if args.verify:
        res["verified"] = verify(out, summary, args.tasks, args.result_bytes, args.seed)
    if args.keep is False and tmp is not None:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        res["out"] = None
    return res


def _never(task: Any) -> Any:
    raise AssertionError("the simulated workers run no function")


def verify(out: str | None, summary: Any, tasks: int, result_bytes: int, seed: int) -> bool:
    """Every task's value, as stored, equals what its simulated worker returned."""
    if out is None:
        got = summary.results
    else:
        from mpigather import load

        got = load(out)
    if len(got) != tasks:
        return False
    for t in range(tasks):
        v, want = got[t], expected(t, result_bytes, seed)
        ok = (np.array_equal(v, want) and v.dtype == want.dtype) if isinstance(want, np.ndarray) else v == want
        if not ok:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, required=True, help="simulated workers (ranks 1..N)")
    p.add_argument("--tasks", type=int, required=True, help="tasks 0..M-1 (a range)")
    p.add_argument("--task-seconds", type=float, required=True, help="mean task duration (wall seconds)")
    p.add_argument("--dist", choices=("exp", "lognormal", "uniform", "const"), default="exp",
                   help="task durations (default exp; uniform is m/2..3m/2)")
    p.add_argument("--result-bytes", type=int, default=0,
                   help="0: a small record (3 table columns); B: a uint8 array of B bytes (a table row up to"
                        " 4 KiB, inline up to inline_max, streamed in chunks above)")
    p.add_argument("--out", default=None, help="output (default: sim.h5 in a temporary folder; 'none': in memory)")
    p.add_argument("--keep", action="store_true", help="keep the default temporary output")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", default=None, help="the run's chunk size (default: mpigather's)")
    p.add_argument("--prefetch", type=int, default=None)
    p.add_argument("--heartbeat", type=float, default=None)
    p.add_argument("--timeout", type=float, default=None, help="the run's per-task lease (seconds)")
    p.add_argument("--batch-window", type=float, default=None)
    p.add_argument("--per-node", type=int, default=64, help="simulated workers per host name")
    p.add_argument("--hello-spread", type=float, default=0.0, help="workers say hello over this many seconds")
    p.add_argument("--status-after", type=float, default=1.0,
                   help="seconds after launch to time `mpigather status OUT --json` (negative: never)")
    p.add_argument("--interrupt-after", type=float, default=None, help="send the master a SIGINT after S seconds")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="cProfile the master's run (its main thread's CPU time) into FILE")
    p.add_argument("--verify", action="store_true", help="read every result back and compare (slow for many)")
    args = p.parse_args(argv)
    if args.workers < 1 or args.tasks < 0:
        p.error("--workers must be at least 1 and --tasks at least 0")
    res = simulate(args)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
