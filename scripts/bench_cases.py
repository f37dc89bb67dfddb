"""The MPI programs of the benchmark suite, one per case; ``scripts/bench.py`` drives them.

    mpiexec -n 2 python scripts/bench_cases.py mem  --method mpigather --size 67108864 --count 16
    mpiexec -n 2 python scripts/bench_cases.py file --method h5_stream --size 268435456 --count 8 --dir /tmp/x
    mpiexec -n 3 python scripts/bench_cases.py tiny --method futures --chunksize 1 --count 20000 --dir /tmp/x
    mpiexec -n 3 python scripts/bench_cases.py rss  --method h5 --sizes 2415919104,268435456x7 --dir /tmp/x
    mpiexec -n 3 python scripts/bench_cases.py cpu  --method mpigather --count 6 --spin 1.0
             python scripts/bench_cases.py sched --workers 1000 --count 200000

Each program prints exactly one line ``BENCH {json}`` on rank 0 with its measurement
(``value`` in ``unit``, plus details). Workers print nothing. Each measurement is taken once
per launch; the driver repeats launches. Timed regions start after a barrier, once every
rank has built (and touched) the arrays it will return, so a task costs about nothing and
what is measured is the gathering itself.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

GiB = 1 << 30
MiB = 1 << 20

# -- task functions (module level, so mpi4py.futures can pickle them by name) ----------------

_CACHE: dict[int, np.ndarray] = {}


def make_array(size: int) -> np.ndarray:
    """A preallocated, fully touched uint8 array of ``size`` bytes, cached per size."""
    a = _CACHE.get(size)
    if a is None:
        a = np.empty(size, dtype=np.uint8)
        a.fill(7)
        _CACHE[size] = a
    return a


_SIZES: list[int] = []  # task i returns _CACHE[_SIZES[i]] (rss case)


def cached(i: int) -> np.ndarray:
    """Task ``i`` of a uniform gather: the cached array (the only size in the cache)."""
    return _CACHE[_SIZES[i] if _SIZES else next(iter(_CACHE))]


def ident(i: int) -> Any:
    """A tiny task: its argument as a numpy scalar."""
    return np.int64(i)


def spin(seconds: float) -> Any:
    """Burn one core for ``seconds`` (a CPU-bound task)."""
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        for _ in range(1000):
            x += 1
    return np.int64(x)


# -- helpers ----------------------------------------------------------------------------------


def emit(rank: int, rec: dict[str, Any]) -> None:
    if rank == 0:
        rec.setdefault("peak_rss_mib_rank0", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
        print("BENCH " + json.dumps(rec), flush=True)


def rss_mib() -> float:
    try:
        import psutil

        return round(psutil.Process().memory_info().rss / MiB, 1)
    except ImportError:  # pragma: no cover
        return float("nan")


def prewarm(nbytes: int) -> None:
    """Touch and free ``nbytes`` of memory, so that the receiver's fresh allocations that follow
    find guest pages the hypervisor has already backed. On this VM the first touch of memory the
    guest has not used recently runs at ~0.7 GiB/s, and warm fresh memory at ~3 GiB/s; without
    this step, whichever variant happens to get cold pages looks 4x slower."""
    if nbytes <= 0:
        return
    b = np.empty(nbytes, dtype=np.uint8)
    b.fill(1)
    del b


def comm_world():
    from mpi4py import MPI

    return MPI, MPI.COMM_WORLD


def parse_sizes(text: str) -> list[int]:
    """'2415919104,268435456x7' -> [2415919104, 268435456, ... (7 times)]."""
    out: list[int] = []
    for item in text.split(","):
        if "x" in item:
            s, n = item.split("x")
            out += [int(s)] * int(n)
        else:
            out.append(int(item))
    return out


# -- case 1: gather bandwidth into memory ------------------------------------------------------


def case_mem(a: argparse.Namespace) -> None:
    MPI, comm = comm_world()
    rank = comm.Get_rank()
    size, count, method = a.size, a.count, a.method
    total = size * count
    if rank != 0:
        make_array(size)
    keep: list[Any] = []
    extra: dict[str, Any] = {}
    if a.prewarm:  # every rank: the receiver's results, and the pickles of the peers, are fresh memory
        prewarm(total)
    import mpi4py.futures  # noqa: F401 - imports stay out of the timed region

    import mpigather
    comm.Barrier()
    t0 = time.perf_counter()
    if method == "mpigather":
        s = mpigather.run(cached, range(count), out=None, progress="off",
                          **({"chunk_size": a.chunk} if a.chunk else {}))
        if rank == 0:
            assert s is not None and s.done == count and s.bytes == total
            keep.append(s.results)
            extra = {"summary_wall": s.wall, "master": s.master}
    elif method in ("raw_prealloc", "raw_fresh"):
        if rank == 0:
            if method == "raw_prealloc":
                buf = np.empty(size, dtype=np.uint8)
                buf.fill(0)  # touched: a reused, preallocated buffer
                comm.Barrier()
                t0 = time.perf_counter()
                for _ in range(count):
                    comm.Recv([buf, MPI.BYTE], source=1, tag=5)
            else:
                comm.Barrier()
                t0 = time.perf_counter()
                for _ in range(count):
                    buf = np.empty(size, dtype=np.uint8)  # fresh memory, kept like a memory sink keeps it
                    comm.Recv([buf, MPI.BYTE], source=1, tag=5)
                    keep.append(buf)
        else:
            arr = make_array(size)
            comm.Barrier()
            for _ in range(count):
                comm.Send([arr, MPI.BYTE], dest=0, tag=5)
    elif method in ("futures", "futures_pkl5"):
        ex: Any
        with mpi4py.futures.MPICommExecutor(comm, root=0, use_pkl5=(method == "futures_pkl5")) as ex:
            if ex is not None:
                res = list(ex.map(cached, range(count)))
                assert len(res) == count and all(r.nbytes == size for r in res)
                keep.append(res)
    elif method == "gather":
        for _ in range(count):
            got = comm.gather(None if rank == 0 else make_array(size), root=0)
            if rank == 0:
                keep.append(got[1])
    else:
        raise SystemExit(f"unknown method {method}")
    dt = time.perf_counter() - t0
    comm.Barrier()
    emit(rank, {"case": "mem", "method": method, "size": size, "count": count, "bytes": total, "seconds": dt,
                "value": total / dt / GiB, "unit": "GiB/s", **extra})


# -- case 2: gather bandwidth into files -------------------------------------------------------


def case_file(a: argparse.Namespace) -> None:
    MPI, comm = comm_world()
    rank = comm.Get_rank()
    size, count, method = a.size, a.count, a.method
    total = size * count
    base = Path(a.dir)
    extra: dict[str, Any] = {}
    import mpigather  # imports stay out of the timed region
    from mpigather.sinks import fsync_dir
    if method == "tofile":  # the limit: one process writes the same bytes, each result a file + fsync
        arr = make_array(size)
        d = base / "plain"
        if rank == 0:
            d.mkdir()
        comm.Barrier()
        t0 = time.perf_counter()
        if rank == 0:
            for i in range(count):
                with open(d / f"{i}.bin", "wb") as fh:
                    arr.tofile(fh)
                    fh.flush()
                    os.fsync(fh.fileno())
            fsync_dir(d)
        dt = time.perf_counter() - t0
    else:
        sink, mode = method.split("_")
        out = base / ("out.h5" if sink == "h5" else "out.d")
        if rank != 0:
            make_array(size)
        comm.Barrier()
        t0 = time.perf_counter()
        s = mpigather.run(cached, range(count), out=str(out), mode=mode, progress="off",
                          **({"chunk_size": a.chunk} if a.chunk else {}))
        dt = time.perf_counter() - t0
        if rank == 0:
            assert s is not None and s.done == count and s.bytes == total
            extra = {"summary_wall": s.wall, "master": s.master}
    comm.Barrier()
    emit(rank, {"case": "file", "method": method, "size": size, "count": count, "bytes": total, "seconds": dt,
                "value": total / dt / GiB, "unit": "GiB/s", **extra})


# -- case 3: tiny-task throughput --------------------------------------------------------------


def case_tiny(a: argparse.Namespace) -> None:
    MPI, comm = comm_world()
    rank = comm.Get_rank()
    n, method = a.count, a.method
    extra: dict[str, Any] = {}
    import mpi4py.futures  # noqa: F401 - imports stay out of the timed region

    import mpigather
    comm.Barrier()
    t0 = time.perf_counter()
    if method.startswith("mpigather"):
        out = None
        if method == "mpigather_h5":
            out = str(Path(a.dir) / "tiny.h5")
        elif method == "mpigather_npy":
            out = str(Path(a.dir) / "tiny.d")
        s = mpigather.run(ident, range(n), out=out, progress="off")
        if rank == 0:
            assert s is not None and s.done == n
            extra = {"summary_wall": s.wall, "master": s.master,
                     "worker_stats": {str(r): {k: w.get(k) for k in ("tasks", "compute", "send", "idle", "wall")}
                                 for r, w in s.workers.items()}}
    elif method == "futures":
        ex: Any
        with mpi4py.futures.MPICommExecutor(comm, root=0) as ex:
            if ex is not None:
                res = list(ex.map(ident, range(n), chunksize=a.chunksize))
                assert len(res) == n and int(res[-1]) == n - 1
    else:
        raise SystemExit(f"unknown method {method}")
    dt = time.perf_counter() - t0
    comm.Barrier()
    emit(rank, {"case": "tiny", "method": method, "chunksize": a.chunksize, "count": n, "seconds": dt,
                "workers": comm.Get_size() - 1, "value": n / dt, "unit": "tasks/s", **extra})


# -- case 4: master peak RSS -------------------------------------------------------------------


def case_rss(a: argparse.Namespace) -> None:
    MPI, comm = comm_world()
    rank = comm.Get_rank()
    import mpigather
    from mpigather.config import make_options

    sizes = parse_sizes(a.sizes)
    _SIZES[:] = sizes
    total = sum(sizes)
    if rank != 0:
        for n in sorted(set(sizes)):
            make_array(n)
    chunk = make_options(**({"chunk_size": a.chunk} if a.chunk else {})).chunk_size
    workers = comm.Get_size() - 1
    out = Path(a.dir) / ("rss.h5" if a.method == "h5" else "rss.d")
    base_rss = rss_mib()
    base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    comm.Barrier()
    t0 = time.perf_counter()
    s = mpigather.run(cached, range(len(sizes)), out=str(out), progress="off",
                      **({"chunk_size": a.chunk} if a.chunk else {}))
    dt = time.perf_counter() - t0
    rec: dict[str, Any] = {}
    if rank == 0:
        assert s is not None and s.done == len(sizes) and s.bytes == total
        peak = float(s.master["peak_rss_mib"])
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        limit = 2 * chunk * workers / MiB + 200
        rec = {"case": "rss", "method": a.method, "bytes": total, "seconds": dt, "gib_s": total / dt / GiB,
               "chunk_mib": chunk / MiB, "workers": workers, "value": peak, "unit": "MiB",
               "peak_rss_getrusage_mib": round(ru, 1), "rss_before_mib": base_rss,
               "maxrss_before_mib": round(base_max, 1), "limit_mib": limit,
               "ratio_to_chunk_x_workers": peak / (chunk * workers / MiB), "master": s.master}
    comm.Barrier()
    emit(rank, rec)


# -- case 5: CPU of a waiting master -----------------------------------------------------------


def case_cpu(a: argparse.Namespace) -> None:
    MPI, comm = comm_world()
    rank, nprocs = comm.Get_rank(), comm.Get_size()
    n, secs = a.count, a.spin
    import mpigather

    comm.Barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    if a.method == "mpigather":
        s = mpigather.run(spin, [secs] * n, out=None, progress="off")
        if rank == 0:
            assert s is not None and s.done == n
    elif a.method == "plain_recv":  # the textbook master: blocking recv(ANY_SOURCE), hand out the next task
        if rank == 0:
            st = MPI.Status()
            nxt = 0
            for w in range(1, nprocs):
                comm.send(secs if nxt < n else None, dest=w, tag=1)
                nxt += 1 if nxt < n else 0
            got = 0
            while got < n:
                comm.recv(source=MPI.ANY_SOURCE, tag=2, status=st)
                got += 1
                w = st.Get_source()
                if nxt < n:
                    comm.send(secs, dest=w, tag=1)
                    nxt += 1
                else:
                    comm.send(None, dest=w, tag=1)
        else:
            while True:
                task = comm.recv(source=0, tag=1)
                if task is None:
                    break
                comm.send(spin(task), dest=0, tag=2)
    else:
        raise SystemExit(f"unknown method {a.method}")
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    comm.Barrier()
    workers = nprocs - 1
    ideal = -(-n // workers) * secs
    emit(rank, {"case": "cpu", "method": a.method, "count": n, "spin": secs, "workers": workers, "seconds": dt,
                "cpu_seconds": cpu, "value": 100.0 * cpu / dt, "unit": "% of a core",
                "ideal_seconds": ideal, "slowdown": dt / ideal})


# -- case 6: scheduler cost per event, no MPI --------------------------------------------------


def case_sched(a: argparse.Namespace) -> None:
    """Drive the Scheduler the way Master._loop does, with simulated workers that finish at once.

    Messages (hello, results, revoke acks) wait in an inbox; the loop handles one at a time and
    runs housekeeping (tick + dispatch + the master's health check, ``healthy_workers()``) only
    when the inbox is empty or ``house`` seconds (Master: 5 ms) have passed since the last pass.
    ``--policy master`` times that interval from the *start* of the previous pass, as
    ``Master._loop`` does (``last_house = now`` taken before the pass), so a pass that itself
    takes longer than ``house`` makes the next message trigger another pass; ``--policy after``
    times it from the *end* of the previous pass (the one-line change that keeps a burst of
    messages between two passes). Every task dispatched becomes a result message; a steal
    (Revoke with ack) drops the victim's result and sends an ack, like a worker that had not
    started it. Events: worker_ready, one per task dispatched, one per result
    (result_begin + task_done), one per revoke ack. The run stops after ``--max-seconds``;
    the cost per event is over the events handled until then.
    """
    from collections import deque

    from mpigather.scheduler import Revoke, Scheduler, Send, Stop

    W, T, dur, house = a.workers, a.count, a.duration, a.house
    after = a.policy == "after"
    sched = Scheduler(((i, i) for i in range(T)), prefetch=2, batch_window=0.02)
    inbox: deque[tuple] = deque(("ready", r, None, None) for r in range(1, W + 1))
    dropped: set[Any] = set()
    n_ready = n_disp = n_done = n_acks = n_stop = n_house = 0
    t_disp = t_tick = t_health = 0.0
    max_pass = 0.0
    per = time.perf_counter
    t0 = per()
    deadline = t0 + a.max_seconds
    last_house = t0
    finished = False
    while True:
        now = per()
        if inbox:
            kind, rank, tid, att = inbox.popleft()
            if kind == "done":
                if tid in dropped:
                    dropped.discard(tid)
                    continue  # the worker dropped it unstarted: no message
                if sched.result_begin(rank, tid, att, now):
                    sched.task_done(rank, tid, att, now, dur)
                n_done += 1
            elif kind == "revoked":
                sched.revoked(rank, tid, now)
                n_acks += 1
            else:
                sched.worker_ready(rank, now)
                n_ready += 1
            if now - last_house < house:
                continue
            if now > deadline:
                break
        last_house = now
        n_house += 1
        t1 = per()
        sched.tick(now)
        t2 = per()
        ds = sched.dispatch(now)
        t3 = per()
        t_tick += t2 - t1
        t_disp += t3 - t2
        for d in ds:
            if isinstance(d, Send):
                for tid, att, _ in d.tasks:
                    inbox.append(("done", d.rank, tid, att))
                n_disp += len(d.tasks)
            elif isinstance(d, Revoke) and d.expect_ack:
                dropped.update(d.tids)
                inbox.append(("revoked", d.rank, list(d.tids), None))
            elif isinstance(d, Stop):
                n_stop += 1
        t4 = per()
        ws = sched.workers()  # Master._check_workers, every housekeeping pass
        _ = sched.finished or not ws or sched.healthy_workers()
        t5 = per()
        t_health += t5 - t4
        max_pass = max(max_pass, t5 - t1)
        if after:
            last_house = t5
        if sched.finished and n_stop == W and not inbox:
            finished = True
            break
    wall = per() - t0
    n_events = n_ready + n_disp + n_done + n_acks
    if finished:
        assert n_done == T and sched.n_done == T, (n_done, sched.n_done)
    emit(0, {"case": "sched", "policy": a.policy, "workers": W, "tasks": T, "duration": dur, "finished": finished,
             "tasks_done": n_done, "workers_ready": n_ready, "events": n_events, "seconds": wall,
             "value": 1e6 * wall / max(n_events, 1), "unit": "us/event", "housekeeping_passes": n_house,
             "events_per_pass": n_events / max(n_house, 1), "dispatch_seconds": t_disp,
             "max_pass_ms": 1e3 * max_pass, "tick_seconds": t_tick, "health_seconds": t_health,
             "us_per_event_outside_housekeeping": 1e6 * (wall - t_disp - t_tick - t_health) / max(n_events, 1)})


CASES = {"mem": case_mem, "file": case_file, "tiny": case_tiny, "rss": case_rss, "cpu": case_cpu,
         "sched": case_sched}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("case", choices=sorted(CASES))
    p.add_argument("--method", default="mpigather")
    p.add_argument("--size", type=int, default=MiB)
    p.add_argument("--sizes", default="")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--chunk", type=int, default=0, help="mpigather chunk_size in bytes (0: its default)")
    p.add_argument("--chunksize", type=int, default=1, help="map chunksize for mpi4py.futures")
    p.add_argument("--dir", default="", help="scratch directory for file outputs")
    p.add_argument("--prewarm", type=int, default=1, help="mem: touch and free the total on rank 0 first (0: off)")
    p.add_argument("--spin", type=float, default=1.0)
    p.add_argument("--workers", type=int, default=1000)
    p.add_argument("--duration", type=float, default=1.0, help="sched: task duration reported to the scheduler")
    p.add_argument("--house", type=float, default=0.005, help="sched: housekeeping interval (Master: 5 ms)")
    p.add_argument("--policy", choices=("master", "after"), default="master",
                   help="sched: interval from the start (as Master._loop) or the end of the last pass")
    p.add_argument("--max-seconds", type=float, default=20.0, help="sched: stop the simulation after this long")
    a = p.parse_args(argv)
    for k in list(os.environ):
        if k.startswith("MPIGATHER_"):
            del os.environ[k]
    CASES[a.case](a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
